"""The `tomesd` control: token merging (ToMe for Stable Diffusion) for one call.

Uses the `tomesd` package (Bolya & Hoffman): its patch swaps the class of the UNet's
BasicTransformerBlocks for one that merges similar tokens (bipartite soft matching) before
self-attention and unmerges after, so attention runs on fewer tokens. Applied for the call and
removed after it (`tomesd.remove_patch` restores the blocks' classes), so nothing bleeds into
the next request.

Settings: ratio 0.5 (half the tokens of each merged layer; the package's default), merging only
in the highest-resolution level that has attention (SD 1.x: the first level, tomesd's
`max_downsample=1`; SDXL, whose first level has no attention: 2), 2x2 destination strides, the
destination token of each stride fixed (its first: tomesd's `use_rand=False`). Fixed, a row's merges
depend on its own tokens only -- the similarity scores, their ranking and the gathers are per batch
element -- so a request gives the same image alone and inside a step batch (core/batching.py lets tomesd
rows share a tick with each other). tomesd's random destinations instead draw one pattern per forward
for the whole batch from one generator, so a row's pattern would depend on which forward of the batch it
met, i.e. on its batch-mates. The ToMe-SD authors offer the fixed pattern as the switch for artefacts;
its speed is the same (same token count per layer).

Checked with tomesd 0.1.3 on diffusers 0.42: its block forward covers diffusers'
BasicTransformerBlock as SD 1.x/2.x/XL build it (layer norms, no positional embedding, no
feed-forward chunking, no GLIGEN); other block kinds are refused rather than run wrong.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from diffserve.core.errors import InvalidInput
from diffserve.engine.models.capabilities import family_controls

if TYPE_CHECKING:
    from diffserve.engine.controls.base import ControlContext
    from diffserve.engine.families.base import RunInputs

TOME_RATIO = 0.5


def transformer_blocks(unet: Any) -> list[Any]:
    return [m for m in unet.modules() if type(m).__name__ == "BasicTransformerBlock"]


def mergeable(block: Any) -> bool:
    """True when tomesd's replacement forward computes what this block's own forward does."""
    return (getattr(block, "norm_type", "layer_norm") == "layer_norm"
            and getattr(block, "pos_embed", None) is None
            and getattr(block, "_chunk_size", None) is None
            and not hasattr(block, "fuser"))  # GLIGEN's gated attention


def first_attention_downsample(unet: Any) -> int:
    """Downsampling factor of the highest-resolution UNet level with attention (1, 2, 4...)."""
    for i, block in enumerate(unet.down_blocks):
        if getattr(block, "attentions", None):
            return 2**i
    return 1


@contextmanager
def tomesd_control(pipe: Any, inputs: RunInputs, ctx: ControlContext) -> Iterator[None]:
    req = inputs.request
    if not req.tomesd:
        yield
        return
    unet = getattr(pipe, "unet", None)
    blocks = transformer_blocks(unet) if unet is not None else []
    if not family_controls(ctx.entry.family).tomesd or not blocks or not all(map(mergeable, blocks)):
        raise InvalidInput(f"tomesd is not supported by model {ctx.model_id}", field="tomesd")
    import tomesd

    tomesd.apply_patch(unet, ratio=TOME_RATIO, max_downsample=first_attention_downsample(unet), use_rand=False)
    try:
        yield
    finally:
        tomesd.remove_patch(unet)
