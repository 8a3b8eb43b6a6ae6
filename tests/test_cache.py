"""The pipeline cache: LRU eviction by a memory budget and a model count, loads counted, memory released.

Unit tests on real torch modules of known sizes, then the engine's cache on the tiny built-in
models (sizes measured from their parameters and buffers, expected sizes from their weight files).
"""

from __future__ import annotations

import gc
import weakref
from pathlib import Path

import pytest
import torch

from diffserve.config import Settings
from diffserve.engine.models.cache import (
    GIB,
    PipelineCache,
    default_budget_bytes,
    modules_bytes,
    reachable_modules,
    weights_bytes,
)
from diffserve.engine.generate import Engine
from diffserve.engine.models.precision import itemsize
from diffserve.engine.models.registry import ModelRegistry
from diffserve.workers.worker import model_cache_budget

from .family_models import build_tiny, tiny_ids

MB = 1_000_000


class Model:
    """A stand-in pipeline holding one real module of `mb` megabytes (float32)."""

    def __init__(self, name: str, mb: float) -> None:
        self.name = name
        self.module = torch.nn.Linear(int(mb * MB / 4), 1, bias=False)


def make_cache(sizes: dict[str, float], *, budget_mb: float | None, max_models: int = 10,
               expected: dict[str, float] | None = None):
    log: list[tuple[str, list[str]]] = []  # (model loaded, what was cached when it started loading)
    cache: PipelineCache[Model] = PipelineCache(
        lambda mid: log.append((mid, cache.loaded())) or Model(mid, sizes[mid]),
        max_models,
        budget_bytes=None if budget_mb is None else int(budget_mb * MB),
        size_of=lambda m: modules_bytes([m.module]),
        expected_bytes=lambda mid: int(expected[mid] * MB) if expected and mid in expected else None,
    )
    return cache, log


def test_budget_that_fits_two_evicts_the_least_recently_used_for_a_third():
    cache, log = make_cache({"a": 4, "b": 4, "c": 4}, budget_mb=10)
    cache.get("a")
    cache.get("b")
    cache.get("a")  # a is now the most recently used
    cache.get("c")
    assert cache.loaded() == ["a", "c"] and cache.loads == 3 and cache.evictions == 1
    assert cache.used_bytes() <= 10 * MB


def test_a_cached_model_is_never_loaded_twice():
    cache, _ = make_cache({"a": 1, "b": 1}, budget_mb=10)
    first = cache.get("a")
    for _ in range(3):
        assert cache.get("a") is first
    cache.get("b")
    assert cache.get("a") is first
    assert cache.loads == 2


def test_eviction_before_loading_uses_the_known_or_expected_size():
    cache, log = make_cache({"a": 4, "b": 4, "c": 4}, budget_mb=10, expected={"c": 4})
    cache.get("a")
    cache.get("b")
    cache.get("c")  # expected 4 MB: "a" leaves before "c" starts loading (no moment with all three)
    assert log[-1] == ("c", ["b"])
    cache.get("a")  # measured before: "b" leaves first
    assert log[-1] == ("a", ["c"]) and cache.loaded() == ["c", "a"]


def test_unknown_size_is_evicted_for_after_loading():
    cache, log = make_cache({"a": 4, "b": 4, "c": 4}, budget_mb=10)
    cache.get("a")
    cache.get("b")
    cache.get("c")
    assert log[-1] == ("c", ["a", "b"]) and cache.loaded() == ["b", "c"]


def test_a_model_bigger_than_the_budget_loads_alone(caplog):
    cache, _ = make_cache({"a": 2, "b": 2, "huge": 12}, budget_mb=10)
    cache.get("a")
    cache.get("b")
    cache.get("huge")
    assert cache.loaded() == ["huge"]
    assert "more than the model cache budget" in caplog.text
    cache.get("a")  # the next one evicts it again
    assert cache.loaded() == ["a"]


def test_max_models_bounds_the_count_too():
    cache, _ = make_cache({m: 0.1 for m in "abc"}, budget_mb=None, max_models=2)
    for m in "abca":
        cache.get(m)
    assert cache.loaded() == ["c", "a"] and cache.loads == 4


def test_an_evicted_model_is_released():
    cache, _ = make_cache({"a": 4, "b": 4}, budget_mb=6)
    ref = weakref.ref(cache.get("a").module)
    cache.get("b")
    gc.collect()
    assert ref() is None  # nothing kept it alive: its memory is free


def test_sizes_count_each_tensor_once_and_reach_attached_models():
    shared = torch.nn.Linear(100, 10)  # 1010 float32 = 4040 bytes

    class Pipe:  # what a diffusers pipeline looks like to the cache
        def __init__(self):
            self.components = {"a": shared, "b": shared, "tokenizer": object()}
            self.extra = torch.nn.Linear(10, 10)  # 110 floats, attached like Redux's prior

    class Estimator:
        model = torch.nn.Linear(1, 1)  # 2 floats

    assert modules_bytes(reachable_modules(Pipe(), {"depth": Estimator(), "name": "x"})) == (1010 + 110 + 2) * 4


def test_budget_setting_and_device_default(monkeypatch):
    monkeypatch.setenv("DIFFSERVE_MODEL_CACHE_GB", "1.5")
    assert model_cache_budget(Settings(), "cpu") == int(1.5 * GIB)
    monkeypatch.delenv("DIFFSERVE_MODEL_CACHE_GB")
    assert model_cache_budget(Settings(), "cpu") == default_budget_bytes("cpu") > 0
    with pytest.raises(ValueError):
        Settings(model_cache_gb=0)


# --------------------------------------------------------------------------------------------
# The engine's cache on tiny models
# --------------------------------------------------------------------------------------------

TINY = tiny_ids("flux-canny", "flux-depth", "hidream")


@pytest.fixture(scope="module")
def tiny_registry(models_root: Path) -> ModelRegistry:
    build_tiny(models_root, *TINY)
    return ModelRegistry.load(models_root / "no-models.json", models_root)


def test_expected_size_from_the_weight_files_matches_the_loaded_size(tiny_registry, models_root):
    engine = Engine(tiny_registry, max_models=1)  # dtype auto: bf16 on a CPU with AVX512_BF16 or AMX, else fp32
    expected = weights_bytes(models_root / "tiny-hidream", itemsize=itemsize(engine.dtype_for("tiny-hidream")))
    engine.pipelines.get("tiny-hidream")
    measured = engine.pipelines.size("tiny-hidream")
    assert abs(expected - measured) / measured < 0.01


def test_engine_cache_with_a_budget_for_two_tiny_models(tiny_registry, models_root):
    canny, depth, hidream = (weights_bytes(models_root / m, itemsize=4) for m in TINY)
    budget = max(canny + hidream, depth + hidream) + MB  # any two fit, all three do not
    assert canny + depth + hidream > budget

    engine = Engine(tiny_registry, max_models=10, cache_budget_bytes=budget, dtype="fp32")  # 4 bytes per weight
    cache = engine.pipelines
    cache.get("tiny-flux-canny")
    ref = weakref.ref(cache.get("tiny-flux-depth").pipe.transformer)
    cache.get("tiny-flux-canny")
    cache.get("tiny-hidream")  # the third: evicts the least recently used (depth)
    assert cache.loaded() == ["tiny-flux-canny", "tiny-hidream"] and cache.loads == 3
    gc.collect()
    assert ref() is None
    cache.get("tiny-flux-canny")  # cached: not loaded again
    assert cache.loads == 3
    cache.get("tiny-flux-depth")  # evicts hidream, the least recently used now
    assert cache.loaded() == ["tiny-flux-canny", "tiny-flux-depth"] and cache.loads == 4
    assert cache.used_bytes() <= budget
