"""The engine: a canonical request and its init image in, images out."""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from ..core.request import GenerationRequest
from .cache import PipelineCache
from .loading import load_img2img_pipeline
from .registry import ModelRegistry
from .tiny import build_tiny_sd

log = logging.getLogger(__name__)

_BUILDERS = {"tiny-sd": build_tiny_sd}


@dataclass
class GenerationResult:
    images: list[Image.Image]
    nsfw: list[bool]

    def png_bytes(self) -> list[bytes]:
        out = []
        for img in self.images:
            buf = io.BytesIO()
            img.save(buf, format="PNG")
            out.append(buf.getvalue())
        return out


class Engine:
    def __init__(self, registry: ModelRegistry, *, device: str = "cpu", max_models: int = 2) -> None:
        self._registry = registry
        self._device = device
        self.pipelines: PipelineCache = PipelineCache(self._load, max_models=max_models)

    def _load(self, model_id: str):
        entry = self._registry.get(model_id)
        if entry.builtin and not Path(entry.location).exists():
            log.info("building built-in model %s at %s", entry.builtin, entry.location)
            _BUILDERS[entry.builtin](Path(entry.location))
        log.info("loading model %s (%s %s)", model_id, entry.kind, entry.location)
        return load_img2img_pipeline(entry.source(), device=self._device)

    def generate(self, req: GenerationRequest, init_image: Image.Image) -> GenerationResult:
        pipe = self.pipelines.get(req.model_id)
        if init_image.size != (req.width, req.height):
            init_image = init_image.resize((req.width, req.height), Image.Resampling.LANCZOS)
        if int(req.steps * req.strength) < 1:
            # strength 0 (or so low that no step runs) means "no change": the init image itself.
            return GenerationResult([init_image.copy() for _ in range(req.samples)], [False] * req.samples)
        generators = [
            torch.Generator(device=self._device).manual_seed((req.seed + i) % 2**64) for i in range(req.samples)
        ]
        with torch.inference_mode():
            out = pipe(
                prompt=req.prompt,
                negative_prompt=req.negative_prompt or None,
                image=[init_image] * req.samples,  # one per sample: diffusers deprecates duplicating one
                strength=req.strength,
                num_inference_steps=req.steps,
                guidance_scale=req.guidance_scale,
                num_images_per_prompt=req.samples,
                generator=generators,
                output_type="pil",
            )
        return GenerationResult(list(out.images), [False] * req.samples)

    def loaded_models(self) -> list[str]:
        return self.pipelines.loaded()
