"""Per-request step caching inside step-level batching (core/step_cache.py is the setting).

Each batch row holds its own cache object (`Row.cache`, made by `row_cache` when the row joins) and makes its
own decision each step; a family's batched loop splits a tick's rows by that decision and runs each group
batched: deepcache.py (UNet families), fbcache.py (Flux transformers).
"""

from __future__ import annotations

from typing import Any

from diffserve.core.step_cache import StepCache


def row_cache(setting: StepCache | None) -> Any:
    """A new row's cache for the request's setting; None when off."""
    if setting is None or not setting.on:
        return None
    if setting.method == "deepcache":
        from diffserve.engine.stepcache.deepcache import DeepCacheRow

        return DeepCacheRow(setting.interval or 1)
    from diffserve.engine.stepcache.fbcache import FBCacheRow

    return FBCacheRow(setting.threshold or 0.0)


def describe(cache: Any) -> dict[str, Any] | str:
    """What ran, for the job's meta: "off" or the method, its parameter and the row's full / cached steps."""
    return "off" if cache is None else cache.describe()
