"""Loaded pipelines, kept per model id, within a memory budget and a model count.

`PipelineCache.get(model_id)` returns the cached pipeline or loads it. A model is loaded at most
once while it is cached (`loads` counts the loads). When a new model would not fit, the least
recently used models are evicted until it does:

* before loading, by the model's expected size: its measured size when it was loaded before,
  else the caller's estimate (`expected_bytes`, e.g. from the weight files' headers), else 0;
* after loading, by its measured size (`size_of`), never evicting the model just loaded.

A model bigger than the whole budget still loads: alone, every other model evicted first. The
budget covers what the cache can see (parameter and buffer bytes of each pipeline's modules, and
of models kept with it such as a depth estimator), not activations or the allocator's slack: leave
headroom for those when choosing it. It is enforced when a model is loaded; what a cached model
gains later (a depth estimator loaded on first use) counts from the next load on.

An evicted pipeline is released for real: the cache drops its only reference, runs the garbage
collector, and returns CUDA's cached blocks to the driver (`torch.cuda.empty_cache()`) when CUDA
is in use, so the next model can use that memory.
"""

from __future__ import annotations

import gc
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Generic, TypeVar

import torch

log = logging.getLogger(__name__)

P = TypeVar("P")

GIB = 1024**3
DEFAULT_MAX_MODELS = 2


class PipelineCache(Generic[P]):
    """LRU cache of loaded pipelines bounded by `max_models` and `budget_bytes` (None: no byte bound)."""

    def __init__(
        self,
        load: Callable[[str], P],
        max_models: int = DEFAULT_MAX_MODELS,
        *,
        budget_bytes: int | None = None,
        size_of: Callable[[P], int] | None = None,
        expected_bytes: Callable[[str], int | None] | None = None,
        observer: Any = None,
    ) -> None:
        """observer: told of each load (`model_loaded(model_id, seconds)`) and eviction (`model_evicted`)."""
        if budget_bytes is not None and budget_bytes <= 0:
            raise ValueError(f"budget_bytes must be positive, got {budget_bytes}")
        self._load = load
        self._max = max(1, max_models)
        self.budget_bytes = budget_bytes
        self._size_of = size_of or (lambda _pipe: 0)
        self._expected_bytes = expected_bytes or (lambda _model_id: None)
        self._pipes: OrderedDict[str, P] = OrderedDict()
        self._measured: dict[str, int] = {}  # last measured size per model id, kept after eviction
        self._observer = observer
        self.loads = 0  # how many times a model was loaded (a test counts this)
        self.evictions = 0

    def get(self, model_id: str) -> P:
        if model_id in self._pipes:
            self._pipes.move_to_end(model_id)
            return self._pipes[model_id]
        expected = self._measured.get(model_id)
        if expected is None:
            expected = self._expected_bytes(model_id) or 0
        self._make_room(expected, count=1, keep=None)
        started = time.monotonic()
        pipe = self._load(model_id)
        self.loads += 1
        if self._observer is not None:
            self._observer.model_loaded(model_id, time.monotonic() - started)
        self._pipes[model_id] = pipe
        size = self._measured[model_id] = self._size_of(pipe)
        if self.budget_bytes is not None and size > self.budget_bytes:
            log.warning("model %s needs %.2f GiB, more than the model cache budget of %.2f GiB: it runs alone",
                        model_id, size / GIB, self.budget_bytes / GIB)
        self._make_room(0, count=0, keep=model_id)
        return pipe

    def used_bytes(self) -> int:
        """Measured bytes of every cached pipeline now (adapters loaded since are included)."""
        return sum(self._remeasure(model_id) for model_id in self._pipes)

    def size(self, model_id: str) -> int | None:
        """Last measured size of a model (cached or evicted), None when never loaded."""
        return self._measured.get(model_id)

    def loaded(self) -> list[str]:
        """Cached model ids, least recently used first."""
        return list(self._pipes)

    def evict(self, model_id: str) -> bool:
        if model_id not in self._pipes:
            return False
        self._drop(model_id)
        release_memory()
        return True

    def clear(self) -> None:
        for model_id in list(self._pipes):
            self._drop(model_id)
        release_memory()

    def _remeasure(self, model_id: str) -> int:
        size = self._measured[model_id] = self._size_of(self._pipes[model_id])
        return size

    def _make_room(self, incoming: int, *, count: int, keep: str | None) -> None:
        """Evict LRU models (never `keep`) until `count` more models and `incoming` more bytes fit."""
        evicted = False
        while True:
            victims = [mid for mid in self._pipes if mid != keep]
            if not victims:
                break
            over_count = len(self._pipes) + count > self._max
            over_budget = self.budget_bytes is not None and self.used_bytes() + incoming > self.budget_bytes
            if not (over_count or over_budget):
                break
            log.info("evicting model %s from the cache (%s)", victims[0],
                     "model count" if over_count else "memory budget")
            self._drop(victims[0])
            evicted = True
        if evicted:
            release_memory()

    def _drop(self, model_id: str) -> None:
        del self._pipes[model_id]
        self.evictions += 1
        if self._observer is not None:
            self._observer.model_evicted(model_id)


def release_memory() -> None:
    """Collect garbage and give CUDA's cached blocks back to the driver (when CUDA is in use)."""
    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


# --------------------------------------------------------------------------------------------
# Sizes
# --------------------------------------------------------------------------------------------


def modules_bytes(modules: Iterable[Any]) -> int:
    """Bytes held by the parameters and buffers of the torch modules among `modules` (each tensor once)."""
    seen: set[int] = set()
    total = 0
    for module in modules:
        if not isinstance(module, torch.nn.Module):
            continue
        for tensor in (*module.parameters(), *module.buffers()):
            if id(tensor) in seen or tensor.device.type == "meta":
                continue
            seen.add(id(tensor))
            total += tensor.numel() * tensor.element_size()
    return total


def reachable_modules(*objects: Any) -> list[torch.nn.Module]:
    """The torch modules a loaded model holds: modules themselves; a diffusers pipeline's components
    and the modules or pipelines attached to it as attributes (e.g. Redux's prior); objects with a
    `model` module (e.g. a DepthEstimator); the values of dicts (per-model state)."""
    found: list[torch.nn.Module] = []
    seen: set[int] = set()
    stack = list(objects)
    while stack:
        obj = stack.pop()
        if obj is None or isinstance(obj, (str, bytes, int, float, bool)) or id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, torch.nn.Module):
            found.append(obj)
        elif isinstance(obj, dict):
            stack.extend(obj.values())
        elif isinstance(getattr(obj, "components", None), dict):  # a diffusers pipeline
            stack.extend(obj.components.values())
            stack.extend(v for v in vars(obj).values()
                         if isinstance(v, torch.nn.Module) or isinstance(getattr(v, "components", None), dict))
        elif isinstance(getattr(obj, "model", None), torch.nn.Module):
            stack.append(obj.model)
    return found


def safetensors_bytes(paths: Iterable[Path], itemsize: int | None = None) -> int:
    """Bytes the tensors in these .safetensors files take once loaded, read from the file headers only.

    itemsize: bytes per element of floating-point tensors once loaded (2 for fp16/bf16, 4 for
    fp32); None keeps each tensor's stored dtype.
    """
    from safetensors import safe_open

    total = 0
    for path in paths:
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():
                piece = f.get_slice(name)
                numel = 1
                for dim in piece.get_shape():
                    numel *= dim
                stored = _SAFETENSORS_ITEMSIZE.get(piece.get_dtype(), 4)
                floating = piece.get_dtype() in _SAFETENSORS_FLOATS
                total += numel * (itemsize if itemsize and floating else stored)
    return total


def weights_bytes(location: Path, itemsize: int | None = None) -> int | None:
    """Expected loaded size of the model at `location` (a diffusers folder or one .safetensors
    file), from its safetensors headers; None when it has no safetensors weights to read."""
    location = Path(location)
    if location.is_file():
        files = [location] if location.suffix == ".safetensors" else []
    elif location.is_dir():
        files = _weight_files(location)
    else:
        files = []
    if not files:
        return None
    try:
        return safetensors_bytes(files, itemsize)
    except Exception:  # noqa: BLE001 - an estimate only: unreadable headers mean "unknown"
        log.warning("could not read the weight headers under %s", location, exc_info=True)
        return None


def _weight_files(folder: Path) -> list[Path]:
    """The .safetensors files a diffusers folder loads: in each component folder the plain files
    (`model.safetensors`, shards `model-00001-of-00002.safetensors`), not variants such as
    `model.fp16.safetensors`, unless a folder holds variants only. A pipeline folder's own top
    level is skipped: repos such as FLUX.1-dev keep a single-file checkpoint there that
    `from_pretrained` does not load."""
    is_pipeline = (folder / "model_index.json").is_file()
    by_dir: dict[Path, list[Path]] = {}
    for path in sorted(folder.rglob("*.safetensors")):
        if not (is_pipeline and path.parent == folder):
            by_dir.setdefault(path.parent, []).append(path)
    files = []
    for paths in by_dir.values():
        plain = [p for p in paths if len(p.name.split(".")) == 2]
        files += plain or paths
    return files


_SAFETENSORS_ITEMSIZE = {
    "F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2, "I16": 2, "U16": 2,
    "F8_E4M3": 1, "F8_E5M2": 1, "I8": 1, "U8": 1, "BOOL": 1,
}
_SAFETENSORS_FLOATS = {"F64", "F32", "F16", "BF16"}


# --------------------------------------------------------------------------------------------
# The default budget
# --------------------------------------------------------------------------------------------


def default_budget_bytes(device: str) -> int:
    """A budget from the device's memory: 80% of what is free on a CUDA device when the worker starts
    (other processes on the same GPU keep theirs); 50% of the machine's RAM for the CPU (the rest is for
    activations, the server and the OS)."""
    if device.startswith("cuda") and torch.cuda.is_available():
        index = torch.device(device).index
        if index is None:
            index = torch.cuda.current_device()
        free, _total = torch.cuda.mem_get_info(index)
        return int(free * 0.8)
    return int(physical_memory_bytes() * 0.5)


def physical_memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # not POSIX: assume a modest machine
        return 16 * GIB
