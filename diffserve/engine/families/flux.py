"""FLUX.1 img2img (FLUX.1-dev, FLUX.1-schnell and fine-tunes), through FluxImg2ImgPipeline.

Flux pipelines do not take the output size from the init image: height and width are passed
explicitly (the engine has resized the init image to them; both are multiples of 16).
`guidance_scale` is FLUX.1-dev's distilled guidance (an input of the transformer, not
classifier-free guidance), so it costs nothing extra; FLUX.1-schnell ignores it. A negative prompt
turns on diffusers' true classifier-free guidance (`true_cfg_scale`, TRUE_CFG_SCALE): it acts, and
costs a second transformer pass per step.
"""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image

from diffserve.engine.models.loading import ModelSource, load_img2img_pipeline
from diffserve.engine.families.base import RunInputs, call_in_mode, img2img_kwargs
from diffserve.engine.families.checks import require_pipeline

FLUX_PIPELINES = ("FluxImg2ImgPipeline",)
TRUE_CFG_SCALE = 4.0  # the value diffusers' Flux docs use for true CFG with a negative prompt


def negative_prompt_kwargs(inputs: RunInputs) -> dict[str, Any]:
    """Flux applies a negative prompt only through true CFG; without one nothing changes."""
    if not inputs.negative_prompt:
        return {}
    return {"negative_prompt": inputs.negative_prompt, "true_cfg_scale": TRUE_CFG_SCALE}


class FluxFamily:
    name = "flux"

    def load(self, source: ModelSource, *, device: str, dtype: torch.dtype) -> Any:
        pipe = load_img2img_pipeline(source, device=device, dtype=dtype)
        return require_pipeline(pipe, self.name, FLUX_PIPELINES, source)

    def run(self, pipe: Any, inputs: RunInputs) -> list[Image.Image]:
        req = inputs.request
        return call_in_mode(pipe, inputs, img2img_kwargs(
            inputs, prompt=inputs.prompt, height=req.height, width=req.width, **negative_prompt_kwargs(inputs)))
