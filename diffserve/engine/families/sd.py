"""Stable Diffusion 1.x/2.x img2img (and any family whose diffusers img2img pipeline takes the same call)."""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image

from diffserve.engine.models.loading import ModelSource, load_img2img_pipeline
from diffserve.engine.families.base import RunInputs, call_in_mode


class StableDiffusionFamily:
    name = "sd"

    def load(self, source: ModelSource, *, device: str, dtype: torch.dtype) -> Any:
        return load_img2img_pipeline(source, device=device, dtype=dtype)

    def run(self, pipe: Any, inputs: RunInputs) -> list[Image.Image]:
        req = inputs.request
        return call_in_mode(pipe, inputs, dict(
            prompt=inputs.prompt,
            negative_prompt=inputs.negative_prompt or None,
            image=[inputs.init_image] * req.samples,  # one per sample: diffusers deprecates duplicating one
            strength=req.strength,
            num_inference_steps=req.steps,
            guidance_scale=req.guidance_scale,
            num_images_per_prompt=req.samples,
            generator=inputs.generators,
            output_type="pil",
            **inputs.call_kwargs,
        ))
