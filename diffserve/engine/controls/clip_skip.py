"""The `clip_skip` control: which text-encoder layer conditions the image.

ModelsLab / A1111 count from 1: clip_skip 1 is the model's normal text embedding (no layer
skipped; the vendor's meta default), 2 skips the last layer, and so on. diffusers counts the
skipped layers (`clip_skip=1` uses the pre-final layer), so vendor n -> diffusers n - 1, and
vendor 1 passes nothing at all (byte-identical to leaving the field out).

diffusers reads `hidden_states[-(clip_skip + offset)]` (offset 1 for SD, 2 for SDXL, whose default
is already the penultimate layer), so a text encoder of L layers allows vendor clip_skip up to
L + 2 - offset. The API refuses deeper values at submit when the model's config is on disk
(request_rules); this control refuses them again for models it could not read there.

diffusers 0.42's SD pipelines apply `text_encoder.text_model.final_layer_norm` on that path, but
transformers >= 5.6 flattened `CLIPTextModel` (no `text_model`; huggingface/diffusers#14124, open).
For the call only, such an encoder gets a plain `text_model` attribute pointing at its own
`final_layer_norm` (not a submodule: nothing is registered, saved or moved), removed after.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from diffserve.core.errors import InvalidInput
from diffserve.engine.models.capabilities import family_controls

if TYPE_CHECKING:
    from diffserve.engine.controls.base import ControlContext
    from diffserve.engine.families.base import RunInputs

TEXT_ENCODERS = ("text_encoder", "text_encoder_2")


def max_clip_skip(layers: int, offset: int) -> int:
    """The deepest vendor clip_skip a text encoder of `layers` layers allows."""
    return layers + 2 - offset


@contextmanager
def clip_skip_control(pipe: Any, inputs: RunInputs, ctx: ControlContext) -> Iterator[None]:
    clip_skip = inputs.request.clip_skip
    if clip_skip is None or clip_skip <= 1:
        yield
        return
    offset = family_controls(ctx.entry.family).clip_skip_offset
    if offset is None:
        raise InvalidInput(f"clip_skip is not supported by model {ctx.model_id} ({ctx.entry.family} models)",
                           field="clip_skip")
    layers = [enc.config.num_hidden_layers for name in TEXT_ENCODERS
              if (enc := getattr(pipe, name, None)) is not None]
    limit = max_clip_skip(min(layers), offset) if layers else 1
    if clip_skip > limit:
        raise InvalidInput(f"clip_skip must be between 1 and {limit} for model {ctx.model_id}", field="clip_skip")
    inputs.call_kwargs["clip_skip"] = clip_skip - 1
    encoder = getattr(pipe, "text_encoder", None)
    shim = encoder is not None and not hasattr(encoder, "text_model") and hasattr(encoder, "final_layer_norm")
    if shim:
        encoder.text_model = SimpleNamespace(final_layer_norm=encoder.final_layer_norm)
    try:
        yield
    finally:
        if shim:
            del encoder.text_model
