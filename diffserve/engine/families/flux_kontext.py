"""FLUX.1 Kontext image editing (FLUX.1-Kontext-dev), through FluxKontextPipeline.

Kontext does not noise the init image: it generates from noise while attending to the reference
image's latents, following the prompt as an edit instruction. So `strength` has no effect here
(except the engine's rule that strength 0 returns the init image unchanged).

Several input images: diffusers' FluxKontextPipeline takes one reference image (a list is a
batch, one image per sample). Extra images (Qolaba `file_urls`) are therefore stitched side by
side with the init image into one reference, the way Kontext multi-image workflows do: every
image is scaled to the output height (aspect kept), they are joined left to right (init image
first), and the strip is scaled down to at most the output's area, sides rounded down to
multiples of 16. With no extra image the reference is the init image itself.

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
    """Join `images` left to right at `height`, then fit the strip within `max_area` pixels."""
    if len(images) == 1:
        return images[0]
    scaled = [
        im.convert("RGB").resize((max(1, round(im.width * height / im.height)), height), Image.Resampling.LANCZOS)
        for im in images
    ]
    strip = Image.new("RGB", (sum(im.width for im in scaled), height))
    x = 0
    for im in scaled:
        strip.paste(im, (x, 0))
        x += im.width
    scale = min(1.0, math.sqrt(max_area / (strip.width * strip.height)))
    width = max(multiple, int(strip.width * scale) // multiple * multiple)
    height = max(multiple, int(strip.height * scale) // multiple * multiple)
    return strip.resize((width, height), Image.Resampling.LANCZOS)


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
