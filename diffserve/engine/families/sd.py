"""Stable Diffusion 1.x/2.x img2img (and any family whose diffusers img2img pipeline takes the same call)."""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image

from diffserve.engine.models.loading import ModelSource, load_img2img_pipeline
from diffserve.engine.families.base import RunInputs, call_in_mode, img2img_kwargs


class StableDiffusionFamily:
    name = "sd"

    def load(self, source: ModelSource, *, device: str, dtype: torch.dtype) -> Any:
        return load_img2img_pipeline(source, device=device, dtype=dtype)

    def run(self, pipe: Any, inputs: RunInputs) -> list[Image.Image]:
        return call_in_mode(pipe, inputs, img2img_kwargs(
            inputs, prompt=inputs.prompt, negative_prompt=inputs.negative_prompt or None))
