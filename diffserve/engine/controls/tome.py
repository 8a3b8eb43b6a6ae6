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

Speed inside a step batch: tomesd's own matching picks each row's tokens with `torch.gather` on an index
expanded to every channel, a gather that reads an index per float; a batch of 8 rows with CFG (16 forward
rows) spent 3-4 % of its UNet time there at 128 px. With the fixed pattern the split into source and
destination tokens is the same for every row, so `fixed_matching` (installed in tomesd's place by
`tomesd_control`; tomesd's random pattern still goes to tomesd) splits with `index_select` and moves each row's
merged tokens with `index_select` / `index_copy_` over flattened rows: the same copies, the same
`scatter_reduce`, the same similarity matmul and argsort, so its merges are bit-identical to tomesd's
(`tests/test_batching_tome.py`), 5-6x faster for those gathers.

Checked with tomesd 0.1.3 on diffusers 0.42: its block forward covers diffusers'
BasicTransformerBlock as SD 1.x/2.x/XL build it (layer norms, no positional embedding, no
feed-forward chunking, no GLIGEN); other block kinds are refused rather than run wrong.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
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

    install_fixed_matching(tomesd.merge)
    tomesd.apply_patch(unet, ratio=TOME_RATIO, max_downsample=first_attention_downsample(unet), use_rand=False)
    try:
        yield
    finally:
        tomesd.remove_patch(unet)


def install_fixed_matching(merge_module: Any) -> None:
    """tomesd's matching (`merge_module.bipartite_soft_matching_random2d`, looked up by tomesd at each forward)
    answered by `fixed_matching` for the fixed pattern; the random one stays tomesd's. Idempotent; the results
    are tomesd's own, bit for bit, so installing it changes no image."""
    original = merge_module.bipartite_soft_matching_random2d
    if getattr(original, "diffserve_fixed", False):
        return

    def matching(metric: Any, w: int, h: int, sx: int, sy: int, r: int, no_rand: bool = False,
                 generator: Any = None) -> tuple[Callable, Callable]:
        if not no_rand:
            return original(metric, w, h, sx, sy, r, no_rand=no_rand, generator=generator)
        return fixed_matching(metric, w, h, sx, sy, r)

    matching.diffserve_fixed = True  # type: ignore[attr-defined]
    matching.tomesd_original = original  # type: ignore[attr-defined]  # tomesd's own (tests compare against it)
    merge_module.bipartite_soft_matching_random2d = matching


def _keep(x: Any, mode: str | None = None) -> Any:
    return x


def fixed_matching(metric: Any, w: int, h: int, sx: int, sy: int, r: int) -> tuple[Callable, Callable]:
    """tomesd's `bipartite_soft_matching_random2d(..., no_rand=True)`: the same merge / unmerge, bit for bit,
    with the per-channel gathers replaced by row copies (metric: [B, N, C]; w, h: tokens; sx, sy: the
    destination stride; r: tokens to remove)."""
    import torch

    batch, tokens, _ = metric.shape
    if r <= 0:
        return _keep, _keep
    device = metric.device
    with torch.no_grad():
        # tomesd's destination pattern with no_rand (the first token of each sy x sx stride), built and sorted
        # exactly as tomesd does, so the source / destination orders are its own
        hsy, wsx = h // sy, w // sx
        first = torch.zeros(hsy, wsx, 1, device=device, dtype=torch.int64)
        view = torch.zeros(hsy, wsx, sy * sx, device=device, dtype=torch.int64)
        view.scatter_(dim=2, index=first, src=-torch.ones_like(first))
        view = view.view(hsy, wsx, sy, sx).transpose(1, 2).reshape(hsy * sy, wsx * sx)
        if hsy * sy < h or wsx * sx < w:
            buffer = torch.zeros(h, w, device=device, dtype=torch.int64)
            buffer[:hsy * sy, :wsx * sx] = view
        else:
            buffer = view
        order = buffer.reshape(1, -1, 1).argsort(dim=1).reshape(-1)
        num_dst = hsy * wsx
        a_idx, b_idx = order[num_dst:], order[:num_dst]  # sources, destinations (the same for every row)
        sources = tokens - num_dst

        normed = metric / metric.norm(dim=-1, keepdim=True)
        scores = normed.index_select(1, a_idx) @ normed.index_select(1, b_idx).transpose(-1, -2)
        r = min(sources, r)
        node_max, node_idx = scores.max(dim=-1)
        edge_idx = node_max.argsort(dim=-1, descending=True)[..., None]
        unm_idx, src_idx = edge_idx[..., r:, 0], edge_idx[..., :r, 0]  # per row: kept sources, merged ones
        dst_idx = torch.gather(node_idx, dim=-1, index=src_idx)  # per row: where each merged source goes
        rows = torch.arange(batch, device=device)[:, None]
        unm_flat = (unm_idx + rows * sources).reshape(-1)  # into the rows' sources, flattened
        src_flat = (src_idx + rows * sources).reshape(-1)
        dst_flat = (dst_idx + rows * num_dst).reshape(-1)  # into the rows' destinations, flattened
        unm_to = (a_idx[unm_idx] + rows * tokens).reshape(-1)  # where each kept / merged source was
        src_to = (a_idx[src_idx] + rows * tokens).reshape(-1)
        kept = sources - r

    def merge(x: Any, mode: str = "mean") -> Any:
        n, _, c = x.shape
        src = x.index_select(1, a_idx).reshape(n * sources, c)
        dst = x.index_select(1, b_idx)
        unm = src.index_select(0, unm_flat).view(n, kept, c)
        merged = src.index_select(0, src_flat).view(n, r, c)
        dst = dst.scatter_reduce(-2, dst_idx[..., None].expand(n, r, c), merged, reduce=mode)
        return torch.cat([unm, dst], dim=1)

    def unmerge(x: Any) -> Any:
        c = x.shape[-1]
        unm, dst = x[..., :kept, :], x[..., kept:, :]
        src = dst.reshape(batch * num_dst, c).index_select(0, dst_flat)
        out = torch.empty(batch, tokens, c, device=x.device, dtype=x.dtype)  # every token written below
        out.index_copy_(1, b_idx, dst)
        flat = out.view(batch * tokens, c)
        flat.index_copy_(0, unm_to, unm.reshape(batch * kept, c))
        flat.index_copy_(0, src_to, src)
        return out

    return merge, unmerge
