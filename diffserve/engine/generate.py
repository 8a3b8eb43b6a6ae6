"""The engine: a canonical request and its init image in, images out.

Per request: the family's pipeline comes from the cache (loaded once), the controls are applied
around the call and undone after it, then the family runs the pipeline.
"""

from __future__ import annotations

import io
import logging
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ..core.request import GenerationRequest
from .cache import PipelineCache
from .controls import CONTROLS, POSTPROCESSORS, ControlContext
from .families import family
from .families.base import RunInputs
from .registry import ModelRegistry
from .tiny import build_tiny_sd

log = logging.getLogger(__name__)

TINY_BUILDERS = {"tiny-sd": build_tiny_sd}


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


@dataclass
class _Loaded:
    pipe: Any
    state: dict[str, Any] = field(default_factory=dict)


class Engine:
    def __init__(self, registry: ModelRegistry, *, device: str = "cpu", dtype: torch.dtype = torch.float32,
                 max_models: int = 2) -> None:
        self._registry = registry
        self._device = device
        self._dtype = dtype
        self.pipelines: PipelineCache[_Loaded] = PipelineCache(self._load, max_models=max_models)

    def _load(self, model_id: str) -> _Loaded:
        entry = self._registry.get(model_id)
        if entry.builtin:
            TINY_BUILDERS[entry.builtin](Path(entry.location))  # returns at once when already built
        log.info("loading model %s (%s %s %s)", model_id, entry.family, entry.kind, entry.location)
        return _Loaded(family(entry.family).load(entry.source(), device=self._device, dtype=self._dtype))

    def generate(self, req: GenerationRequest, init_image: Image.Image,
                 extra_images: list[Image.Image] | None = None,
                 ip_adapter_image: Image.Image | None = None) -> GenerationResult:
        entry = self._registry.get(req.model_id)
        loaded = self.pipelines.get(req.model_id)
        if init_image.size != (req.width, req.height):
            init_image = init_image.resize((req.width, req.height), Image.Resampling.LANCZOS)
        if int(req.steps * req.strength) < 1:
            # strength 0 (or so low that no step runs) means "no change": the init image itself.
            return GenerationResult([init_image.copy() for _ in range(req.samples)], [False] * req.samples)
        inputs = RunInputs(
            request=req,
            init_image=init_image,
            extra_images=list(extra_images or []),
            generators=[torch.Generator(device="cpu").manual_seed((req.seed + i) % 2**64)
                        for i in range(req.samples)],
            prompt=req.prompt,
            negative_prompt=req.negative_prompt,
            ip_adapter_image=ip_adapter_image,
        )
        ctx = ControlContext(req.model_id, entry, self._registry, self._device, loaded.state)
        with torch.inference_mode(), ExitStack() as stack:
            for control in CONTROLS:
                stack.enter_context(control(loaded.pipe, inputs, ctx))
            images = family(entry.family).run(loaded.pipe, inputs)
            nsfw = [False] * len(images)
            for post in POSTPROCESSORS:
                images, nsfw = post(loaded.pipe, images, nsfw, inputs, ctx)
        return GenerationResult(images, nsfw)

    def loaded_models(self) -> list[str]:
        return self.pipelines.loaded()
