"""The `tiling` control: seamless tiles, as A1111's "Tiling" makes them. For the call, every Conv2d of the UNet
and of the VAE pads circularly (the image's left edge continues its right, its top its bottom), so the image
repeats without a seam; the padding modes are put back after the call. Entered after `use_vae` (a request's
own VAE is the one patched) and, in a step batch, once for the batch (core/batching.py's key keeps tiling and
non-tiling rows apart): decoding happens inside it.
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


def convolutions(pipe: Any) -> list[Any]:
    """The Conv2d layers of the pipeline's UNet and VAE."""
    import torch

    models = [getattr(pipe, name, None) for name in ("unet", "vae")]
    return [m for model in models if model is not None for m in model.modules() if isinstance(m, torch.nn.Conv2d)]


@contextmanager
def tiling_control(pipe: Any, inputs: RunInputs, ctx: ControlContext) -> Iterator[None]:
    if not getattr(inputs.request, "tiling", False):
        yield
        return
    convs = convolutions(pipe)
    if not family_controls(ctx.entry.family).tiling or getattr(pipe, "unet", None) is None or not convs:
        raise InvalidInput(f"tiling is not supported by model {ctx.model_id}", field="tiling")
    before = [conv.padding_mode for conv in convs]
    for conv in convs:
        conv.padding_mode = "circular"
    try:
        yield
    finally:
        for conv, mode in zip(convs, before):
            conv.padding_mode = mode
