"""Stable Diffusion XL img2img (SDXL base and its fine-tunes: Pony Diffusion, Juggernaut XL...).

The call is Stable Diffusion's (prompt, negative prompt, init image, strength, steps, CFG scale);
SDXL's size/crop conditioning (original_size, target_size) defaults to the init image's size,
which the engine has already made the request's width x height.
"""

from __future__ import annotations

from typing import Any

import torch

from diffserve.engine.models.loading import ModelSource, load_img2img_pipeline
from diffserve.engine.families.checks import require_pipeline
from diffserve.engine.families.sd import StableDiffusionFamily

SDXL_PIPELINES = ("StableDiffusionXLImg2ImgPipeline",)


class StableDiffusionXLFamily(StableDiffusionFamily):
    name = "sdxl"

    def load(self, source: ModelSource, *, device: str, dtype: torch.dtype) -> Any:
        pipe = load_img2img_pipeline(source, device=device, dtype=dtype)
        return require_pipeline(pipe, self.name, SDXL_PIPELINES, source)
