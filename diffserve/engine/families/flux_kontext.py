"""FLUX.1 Kontext image editing (FLUX.1-Kontext-dev), through FluxKontextPipeline.

Kontext does not noise the init image: it generates from noise while attending to the reference
image's latents, following the prompt as an edit instruction. So `strength` has no effect here
(except the engine's rule that strength 0 returns the init image unchanged).

Several input images: diffusers' FluxKontextPipeline takes one reference image (a list is a
batch, one image per sample). Extra images (Qolaba `file_urls`) are therefore stitched side by
side with the init image into one reference, the way Kontext multi-image workflows do: every
image is scaled to one common height (aspect kept; the output height, or less when the strip
would exceed the output's area), they are joined left to right (init image first), sides rounded
down to multiples of 16. No image made on the way exceeds the output's area (see
`stitch_references`). With no extra image the reference is the init image itself.

The pipeline's own size handling is turned off: `max_area` is the output's area (otherwise it
rescales the output to about 1 megapixel) and `_auto_resize=False` (otherwise it resizes the
reference to one of Kontext's preferred training resolutions).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from PIL import Image

from diffserve.engine.models.loading import ModelSource, load_img2img_pipeline
from diffserve.engine.families.base import RunInputs
from diffserve.engine.families.checks import require_pipeline
from diffserve.engine.families.flux import negative_prompt_kwargs

KONTEXT_PIPELINES = ("FluxKontextPipeline",)
SIZE_MULTIPLE = 16  # 8x VAE, then 2x2 latent packing


def stitch_references(images: list[Image.Image], *, height: int, max_area: int,
                      multiple: int = SIZE_MULTIPLE) -> Image.Image:
    """Join `images` left to right at one common height, the strip within `max_area` pixels.

    The pixel budget holds for every image made on the way, whatever the references' shapes: the common height
    is the output `height`, lowered so that the strip (each image at that height, aspect kept) fits `max_area`,
    and each image is scaled straight to it (never first to the output height: a 2048x1 reference at 1024 px
    high would be 2 gigapixels). The strip's sides are rounded down to `multiple` (at least `multiple`); a strip
    flatter than `multiple` px is narrowed to keep within the budget, so extreme aspect ratios are squeezed,
    not refused."""
    if len(images) == 1:
        return images[0]
    aspect = sum(im.width / im.height for im in images)
    common = max(1, min(height, math.floor(math.sqrt(max_area / aspect))))
    widths = [max(1, round(im.width * common / im.height)) for im in images]
    if sum(widths) * common > max_area:  # rounding overshot, or the strip is flatter than one row: squeeze it
        squeeze = max_area / (sum(widths) * common)
        widths = [max(1, math.floor(width * squeeze)) for width in widths]
    strip = Image.new("RGB", (sum(widths), common))
    x = 0
    for im, width in zip(images, widths):
        # reducing_gap: a box reduction first, so a very long reference costs ~0.1 s, not seconds (Pillow's docs:
        # at 3.0 indistinguishable from plain LANCZOS)
        strip.paste(im.convert("RGB").resize((width, common), Image.Resampling.LANCZOS, reducing_gap=3.0), (x, 0))
        x += width
    out_height = max(multiple, common // multiple * multiple)
    out_width = max(multiple, min(strip.width // multiple, max_area // out_height // multiple) * multiple)
    return strip.resize((out_width, out_height), Image.Resampling.LANCZOS, reducing_gap=3.0)


class FluxKontextFamily:
    name = "flux-kontext"

    def load(self, source: ModelSource, *, device: str, dtype: torch.dtype) -> Any:
        pipe = load_img2img_pipeline(source, device=device, dtype=dtype)
        return require_pipeline(pipe, self.name, KONTEXT_PIPELINES, source)

    def run(self, pipe: Any, inputs: RunInputs) -> list[Image.Image]:
        req = inputs.request
        reference = stitch_references([inputs.init_image, *inputs.extra_images], height=req.height,
                                      max_area=req.width * req.height)
        out = pipe(
            image=reference,
            prompt=inputs.prompt,
            height=req.height,
            width=req.width,
            max_area=req.width * req.height,
            _auto_resize=False,
            num_inference_steps=req.steps,
            guidance_scale=req.guidance_scale,
            num_images_per_prompt=req.samples,
            generator=inputs.generators,
            output_type="pil",
            **negative_prompt_kwargs(inputs),
            **inputs.call_kwargs,
        )
        return list(out.images)
