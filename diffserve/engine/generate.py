"""The engine: a canonical request and its init image in, images out.

Per request: the family's pipeline comes from the cache (loaded once, in the model's dtype on the
worker's device), the controls are applied around the call and undone after it, then the family runs
the pipeline. Device memory: the VAE decodes in tiles above `vae_tiling_pixels` (and one image at a
time on CUDA), and a request that runs out of device memory fails alone, with a message naming its
size; the worker frees what the failed call held and takes the next job.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from diffserve.core.batching import batch_key
from diffserve.core.errors import DiffserveError, ModelNotFound
from diffserve.core.request import GenerationRequest
from diffserve.engine.models.cache import (PipelineCache, modules_bytes, reachable_modules, release_memory,
                                           weights_bytes)
from diffserve.engine.models.precision import itemsize, resolve_dtype, torch_dtype
from diffserve.engine.models.speedups import apply_speedups
from diffserve.engine.progress import Report, step_kwargs
from diffserve.engine.controls.base import ControlContext
from diffserve.engine.controls.chain import CONTROLS, POSTPROCESSORS
from diffserve.engine.batching import Batch
from diffserve.engine.families import batch_loop, family
from diffserve.engine.families.base import RunInputs
from diffserve.engine.models.registry import ModelRegistry
from diffserve.engine.controls.safety import SHARED_KEY, SafetyCheckers
from diffserve.engine.demo.build import build_demo_sd
from diffserve.engine.models.specs import FAMILIES, tiny_build
from diffserve.engine.stepcache import describe

log = logging.getLogger(__name__)


def build_builtin(name: str, dest: Path) -> Path:
    """Build the built-in model `name` (a family spec's tiny build, or demo-sd) into `dest`; returns at once
    when it is already there. KeyError for a name no spec builds."""
    if name == "demo-sd":
        return build_demo_sd(dest)  # not tiny nor random: the trained demo model, from the package
    tiny = tiny_build(name)
    if tiny is None:
        raise KeyError(name)
    return tiny.build(dest)


# model id -> builder(dest) of every built-in model, from the family specs (bench/ builds one by its id)
TINY_BUILDERS: dict[str, Callable[[Path], Path]] = {
    **{spec.tiny.model_id: spec.tiny.build for spec in FAMILIES if spec.tiny}, "demo-sd": build_demo_sd}


# The VAE decoder's full-resolution peak, per output pixel and sample, in float32 (128 channels, about
# three live tensors): the coarse activation estimate an explicit DIFFSERVE_ACTIVATION_BUDGET_GB is held to.
ACTIVATION_BYTES_PER_PIXEL_FP32 = 128 * 3 * 4


class OutOfDeviceMemory(DiffserveError):
    """A request the device cannot hold: the job fails with this message, the worker goes on."""


@dataclass
class GenerationResult:
    images: list[Image.Image]
    nsfw: list[bool]
    device: str = "cpu"
    dtype: str = "fp32"
    step_cache: dict[str, Any] | str = "off"  # what ran (engine/stepcache.describe)

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
    dtype: str = "fp32"
    speedups: list[str] = field(default_factory=list)
    state: dict[str, Any] = field(default_factory=dict)


class Engine:
    def __init__(self, registry: ModelRegistry, *, device: str = "cpu", dtype: str = "auto",
                 max_models: int = 2, safety_checker: str = "auto", models_dir: Path | None = None,
                 cache_budget_bytes: int | None = None, activation_budget_bytes: int | None = None,
                 vae_tiling_pixels: int = 2048 * 2048, compile_backend: str = "inductor",
                 compile_mode: str | None = None, cache_observer: Any = None) -> None:
        """max_models / cache_budget_bytes: the pipeline cache's bounds (engine/models/cache.py); a budget of
        None bounds the count only. dtype: auto | fp32 | fp16 | bf16 (engine/models/precision.py), a model's
        own `dtype` wins. activation_budget_bytes: refuse a request whose estimated activations exceed it
        (None: no estimate; a real out-of-memory error still fails the request cleanly)."""
        self._registry = registry
        self._device = device
        self._dtype = dtype
        self._activation_budget = activation_budget_bytes
        self._vae_tiling_pixels = vae_tiling_pixels
        self._compile = (compile_backend, compile_mode)
        # engine-wide objects the controls share (ControlContext.shared): the safety checkers, loaded once
        self.shared: dict[str, Any] = {
            SHARED_KEY: SafetyCheckers(safety_checker, models_dir=models_dir, device=device)}
        self.pipelines: PipelineCache[_Loaded] = PipelineCache(
            self._load, max_models=max_models, budget_bytes=cache_budget_bytes,
            size_of=lambda loaded: modules_bytes(reachable_modules(loaded.pipe, loaded.state)),
            expected_bytes=self._expected_bytes, observer=cache_observer)

    def _expected_bytes(self, model_id: str) -> int | None:
        """A model's size before it is loaded, from its weight files' headers (None: unknown)."""
        from diffserve.engine.models.loading import _cached_snapshot

        try:
            entry = self._registry.get(model_id)
            location = _cached_snapshot(entry.source(), None) if entry.kind == "hub" else Path(entry.location)
        except Exception:  # noqa: BLE001 - an estimate only; the load itself reports real problems
            return None
        return weights_bytes(location, itemsize(self.dtype_for(model_id))) if location is not None else None

    @property
    def device(self) -> str:
        return self._device

    def default_dtype(self) -> str:
        """What an SD-family model without its own `dtype` runs in here (system_details)."""
        return resolve_dtype(self._dtype, "sd", self._device)

    def dtype_for(self, model_id: str) -> str:
        """fp32 | fp16 | bf16: what `model_id` runs in here (its models.json `dtype`, else the server's)."""
        entry = self._registry.get(model_id)
        return resolve_dtype(entry.dtype or self._dtype, entry.family, self._device)

    def _load(self, model_id: str) -> _Loaded:
        entry = self._registry.get(model_id)
        if entry.builtin:
            build_builtin(entry.builtin, Path(entry.location))  # returns at once when already built
        dtype = self.dtype_for(model_id)
        log.info("loading model %s (%s %s %s) on %s in %s", model_id, entry.family, entry.kind, entry.location,
                 self._device, dtype)
        pipe = family(entry.family).load(entry.source(), device=self._device, dtype=torch_dtype(dtype))
        backend, mode = self._compile
        loaded = _Loaded(pipe, dtype, apply_speedups(pipe, compile=entry.compile, channels_last=entry.channels_last,
                                                     backend=backend, mode=mode))
        if entry.compile:
            self._warm_up(model_id, loaded)
        return loaded

    def _warm_up(self, model_id: str, loaded: _Loaded) -> None:
        """One short generation at the model's default size, so the first request does not compile."""
        limits = self._registry.get(model_id).limits
        width, height = limits.default_size()
        req = GenerationRequest(model_id=model_id, prompt="warm-up", init_image_key="", width=width, height=height,
                                steps=2, guidance_scale=limits.default_guidance, strength=1.0, seed=0)
        log.info("warming up %s (%s) at %dx%d", model_id, ", ".join(loaded.speedups), width, height)
        self._run(req, loaded, Image.new("RGB", (width, height), "gray"), [], None)

    def generate(self, req: GenerationRequest, init_image: Image.Image | None,
                 extra_images: list[Image.Image] | None = None,
                 ip_adapter_image: Image.Image | None = None, progress: Report | None = None,
                 mask_image: Image.Image | None = None) -> GenerationResult:
        """init_image: None for txt2img. mask_image: inpaint's mask (white = repaint).
        progress(step, total, latents): called after every denoising step; may raise to stop the call."""
        loaded = self.pipelines.get(req.model_id)
        size = (req.width, req.height)
        if init_image is not None and init_image.size != size:
            init_image = init_image.resize(size, Image.Resampling.LANCZOS)
        if mask_image is not None and mask_image.size != size:
            mask_image = mask_image.resize(size, Image.Resampling.LANCZOS)
        self._check_activations(req, loaded)
        cached = req.step_cache is not None and req.step_cache.on and not extra_images and init_image is not None
        try:
            if cached and (batch := self.open_batch(req)) is not None:
                return self._run_alone_in_batch(batch, req, init_image, progress)
            images, nsfw = self._run(req, loaded, init_image, extra_images, ip_adapter_image, progress, mask_image)
        except torch.OutOfMemoryError:
            log.warning("out of memory on %s for %s (%d x %dx%d)", self._device, req.model_id, req.samples,
                        req.width, req.height)
            release_memory()  # what the failed call held goes back before the next job
            raise OutOfDeviceMemory(self._oom_message(req, loaded)) from None
        return GenerationResult(images, nsfw, device=self._device, dtype=loaded.dtype)

    @staticmethod
    def _run_alone_in_batch(batch: Batch, req: GenerationRequest, init_image: Image.Image,
                            progress: Report | None) -> GenerationResult:
        """A request with a step cache runs as the one row of its own batch: the cache lives in the batched
        loop, so the request alone gives what it gives in a batch with others."""
        with batch:
            row = batch.join(req, init_image, progress)
            while not row.done:
                batch.tick()
                if row.error is not None:
                    raise row.error
            images, nsfw = batch.finish(row)
        return GenerationResult(images, nsfw, device=batch.device, dtype=batch.dtype,
                                step_cache=describe(row.cache))

    def _oom_message(self, req: GenerationRequest, loaded: _Loaded) -> str:
        return (f"Out of memory on {self._device} generating {req.samples} x {req.width}x{req.height} with "
                f"{req.model_id} ({loaded.dtype}): use a smaller width/height or fewer samples")

    def _check_activations(self, req: GenerationRequest, loaded: _Loaded) -> None:
        if self._activation_budget is None:
            return
        per_pixel = ACTIVATION_BYTES_PER_PIXEL_FP32 * max(itemsize(loaded.dtype), 4) // 4  # VAE may upcast
        tiled = req.width * req.height >= self._vae_tiling_pixels
        pixels = min(req.width * req.height, 512 * 512) if tiled else req.width * req.height
        needed = pixels * (1 if tiled or not self._device.startswith("cuda") else req.samples) * per_pixel
        if needed > self._activation_budget:
            raise OutOfDeviceMemory(self._oom_message(req, loaded))

    def _run(self, req: GenerationRequest, loaded: _Loaded, init_image: Image.Image | None,
             extra_images: list[Image.Image] | None, ip_adapter_image: Image.Image | None,
             progress: Report | None = None, mask_image: Image.Image | None = None
             ) -> tuple[list[Image.Image], list[bool]]:
        entry = self._registry.get(req.model_id)
        inputs = RunInputs.for_request(req, init_image, extra_images=extra_images, ip_adapter_image=ip_adapter_image,
                                       mask_image=mask_image)
        if progress is not None:
            inputs.call_kwargs.update(step_kwargs(progress))
        ctx = ControlContext(req.model_id, entry, self._registry, self._device, loaded.state, self.shared)
        with torch.inference_mode():
            if req.mode != "txt2img" and int(req.steps * req.strength) < 1:
                # strength 0 (or so low that no step runs) means "no change": the init image itself
                images = [init_image.copy() for _ in range(req.samples)]
            else:
                with ExitStack() as stack:
                    stack.enter_context(self._vae_memory(loaded.pipe, req))
                    for control in CONTROLS:
                        stack.enter_context(control(loaded.pipe, inputs, ctx))
                    images = family(entry.family).run(loaded.pipe, inputs)
            nsfw = [False] * len(images)
            for post in POSTPROCESSORS:  # the safety checker sees every output, the unchanged ones too
                images, nsfw = post(loaded.pipe, images, nsfw, inputs, ctx)
        return images, nsfw

    @contextmanager
    def _vae_memory(self, pipe: Any, req: GenerationRequest) -> Iterator[None]:
        """VAE tiling for large outputs, slicing (one image at a time) for several samples on CUDA; both
        switched off again after the call. Below the tiling size the output is unchanged, byte for byte."""
        vae = getattr(pipe, "vae", None)
        tiling = req.width * req.height >= self._vae_tiling_pixels and hasattr(vae, "enable_tiling")
        slicing = req.samples > 1 and self._device.startswith("cuda") and hasattr(vae, "enable_slicing")
        if tiling:
            vae.enable_tiling()
        if slicing:
            vae.enable_slicing()
        try:
            yield
        finally:
            if tiling:
                vae.disable_tiling()
            if slicing:
                vae.disable_slicing()

    def open_batch(self, req: GenerationRequest) -> Batch | None:
        """A batch (engine/batching.py) opened for `req`, which then joins it; None when `req` cannot be batched
        (its family has no batched loop, or core/batching.py says it runs alone)."""
        entry = self._registry.get(req.model_id)
        loop = batch_loop(entry.family)
        if loop is None or batch_key(req.model_dump()) is None:
            return None
        loaded = self.pipelines.get(req.model_id)
        ctx = ControlContext(req.model_id, entry, self._registry, self._device, loaded.state, self.shared)
        return Batch(loop, loaded.pipe, ctx, RunInputs.for_request(req, None),
                     check=lambda r: self._check_activations(r, loaded),
                     vae_memory=lambda r: self._vae_memory(loaded.pipe, r), device=self._device,
                     dtype=loaded.dtype)

    def preview_rgb(self, model_id: str) -> tuple[tuple[float, float, float], ...] | None:
        """The model's own step-preview factors (its registry entry), None for SD 1.x's or an unknown model."""
        try:
            return self._registry.get(model_id).preview_rgb
        except ModelNotFound:  # it fails where it is loaded, not in its previews
            return None

    def loaded_models(self) -> list[str]:
        return self.pipelines.loaded()
