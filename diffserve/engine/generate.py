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

from diffserve.core.request import GenerationRequest
from diffserve.engine.models.cache import PipelineCache, modules_bytes, reachable_modules, weights_bytes
from diffserve.engine.controls.base import ControlContext
from diffserve.engine.controls.chain import CONTROLS, POSTPROCESSORS
from diffserve.engine.families import family
from diffserve.engine.families.base import RunInputs
from diffserve.engine.models.registry import ModelRegistry
from diffserve.engine.controls.safety import SHARED_KEY, SafetyCheckers
from diffserve.engine.tiny.sd import build_tiny_sd
from diffserve.engine.tiny.flux import build_tiny_flux, build_tiny_flux_kontext, build_tiny_flux_redux
from diffserve.engine.tiny.flux_control import build_tiny_flux_canny, build_tiny_flux_depth
from diffserve.engine.tiny.flux_pulid import build_tiny_flux_pulid
from diffserve.engine.tiny.hidream import build_tiny_hidream
from diffserve.engine.tiny.sdxl import build_tiny_sdxl

log = logging.getLogger(__name__)

TINY_BUILDERS = {"tiny-sd": build_tiny_sd}
TINY_BUILDERS.update({"tiny-sdxl": build_tiny_sdxl, "tiny-flux": build_tiny_flux,
                      "tiny-flux-kontext": build_tiny_flux_kontext, "tiny-flux-redux": build_tiny_flux_redux})
TINY_BUILDERS.update({"tiny-flux-canny": build_tiny_flux_canny, "tiny-flux-depth": build_tiny_flux_depth,
                      "tiny-hidream": build_tiny_hidream})
TINY_BUILDERS["tiny-flux-pulid"] = build_tiny_flux_pulid


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
                 max_models: int = 2, safety_checker: str = "auto", models_dir: Path | None = None,
                 cache_budget_bytes: int | None = None) -> None:
        """max_models / cache_budget_bytes: the pipeline cache's bounds (engine/models/cache.py); a budget of
        None bounds the count only."""
        self._registry = registry
        self._device = device
        self._dtype = dtype
        # engine-wide objects the controls share (ControlContext.shared): the safety checkers, loaded once
        self.shared: dict[str, Any] = {
            SHARED_KEY: SafetyCheckers(safety_checker, models_dir=models_dir, device=device)}
        self.pipelines: PipelineCache[_Loaded] = PipelineCache(
            self._load, max_models=max_models, budget_bytes=cache_budget_bytes,
            size_of=lambda loaded: modules_bytes(reachable_modules(loaded.pipe, loaded.state)),
            expected_bytes=self._expected_bytes)

    def _expected_bytes(self, model_id: str) -> int | None:
        """A model's size before it is loaded, from its weight files' headers (None: unknown)."""
        from diffserve.engine.models.loading import _cached_snapshot

        try:
            entry = self._registry.get(model_id)
            location = _cached_snapshot(entry.source(), None) if entry.kind == "hub" else Path(entry.location)
        except Exception:  # noqa: BLE001 - an estimate only; the load itself reports real problems
            return None
        itemsize = torch.finfo(self._dtype).bits // 8 if self._dtype.is_floating_point else None
        return weights_bytes(location, itemsize) if location is not None else None

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
        ctx = ControlContext(req.model_id, entry, self._registry, self._device, loaded.state, self.shared)
        with torch.inference_mode():
            if int(req.steps * req.strength) < 1:
                # strength 0 (or so low that no step runs) means "no change": the init image itself
                images = [init_image.copy() for _ in range(req.samples)]
            else:
                with ExitStack() as stack:
                    for control in CONTROLS:
                        stack.enter_context(control(loaded.pipe, inputs, ctx))
                    images = family(entry.family).run(loaded.pipe, inputs)
            nsfw = [False] * len(images)
            for post in POSTPROCESSORS:  # the safety checker sees every output, the unchanged ones too
                images, nsfw = post(loaded.pipe, images, nsfw, inputs, ctx)
        return GenerationResult(images, nsfw)

    def loaded_models(self) -> list[str]:
        return self.pipelines.loaded()
