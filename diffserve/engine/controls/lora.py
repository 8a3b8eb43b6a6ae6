"""LoRAs per request: `lora_model` (ids from the registry) at `lora_strength`.

Loading goes through diffusers (`load_lora_weights(..., adapter_name=...)`, PEFT backend), which
reads diffusers/PEFT files and converts kohya/A1111 ones by their keys. A LoRA loaded once stays
loaded in the pipeline (up to MAX_LOADED per pipeline, least recently used ones deleted past
that); each request activates exactly its own with `set_adapters(names, weights)` and disables
every LoRA layer on exit, so the next request runs the base weights: a disabled PEFT layer
returns its base layer's output untouched.
"""

from __future__ import annotations

import re
import warnings
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from diffserve.core.errors import InvalidInput
from diffserve.engine.models.asset_entries import LoraEntry
from diffserve.engine.models.asset_files import asset_root, inside
from diffserve.engine.models.loading import _PASS_THROUGH, _reason

if TYPE_CHECKING:
    from diffserve.engine.controls.base import ControlContext
    from diffserve.engine.families.base import RunInputs

FIELD = "lora_model"
MAX_LOADED = 8  # adapters kept loaded per pipeline
DEFAULT_STRENGTH = 1.0
_STATE = "loras"


@dataclass
class _Adapter:
    name: str  # the adapter name inside the pipeline
    entry: LoraEntry  # what it was loaded from (reloaded when the registry entry changes)


@contextmanager
def apply_loras(pipe: Any, inputs: RunInputs, ctx: ControlContext) -> Iterator[None]:
    """Activate the request's LoRAs for the call; disable them all after it."""
    lora_ids = list(inputs.request.lora_models)
    if not lora_ids:
        yield
        return
    if not hasattr(pipe, "load_lora_weights"):
        raise InvalidInput(f"{FIELD}: model {ctx.model_id} does not take LoRAs", field=FIELD)
    weights = lora_weights(lora_ids, list(inputs.request.lora_strengths))
    try:
        names = [_loaded(pipe, ctx, lora_id) for lora_id in lora_ids]
        pipe.enable_lora()
        pipe.set_adapters(names, adapter_weights=weights)
        yield
    finally:
        if _has_adapters(pipe):
            pipe.disable_lora()


def lora_weights(lora_ids: list[str], strengths: list[float]) -> list[float]:
    """One weight per LoRA: none given -> 1.0 each; one given -> that for all; else one each."""
    if not strengths:
        return [DEFAULT_STRENGTH] * len(lora_ids)
    if len(strengths) == 1:
        return strengths * len(lora_ids)
    if len(strengths) != len(lora_ids):
        raise InvalidInput(f"lora_strength has {len(strengths)} values for {len(lora_ids)} lora_model ids",
                           field="lora_strength")
    return strengths


def _loaded(pipe: Any, ctx: ControlContext, lora_id: str) -> str:
    """The adapter name of `lora_id` in this pipeline, loading it first if needed."""
    entry = ctx.registry.asset("loras", lora_id)
    cache: OrderedDict[str, _Adapter] = ctx.state.setdefault(_STATE, OrderedDict())
    known = cache.get(lora_id)
    if known is not None and known.entry == entry:
        cache.move_to_end(lora_id)
        return known.name
    if known is not None:  # the registry entry changed: drop the old weights
        _delete(pipe, cache.pop(lora_id).name)
    while len(cache) >= MAX_LOADED:
        _, oldest = cache.popitem(last=False)
        _delete(pipe, oldest.name)
    name = _adapter_name(lora_id, ctx.state)
    _load(pipe, entry, lora_id, name)
    cache[lora_id] = _Adapter(name, entry)
    return name


def _load(pipe: Any, entry: LoraEntry, lora_id: str, name: str) -> None:
    weights = inside(entry.subfolder, entry.weight_name) if entry.weight_name else None
    root = asset_root(
        entry, field=FIELD, name=f"LoRA {lora_id}", needs=[weights] if weights else [],
        patterns=[weights] if weights else [inside(entry.subfolder, "*.safetensors")],
    )
    try:
        with warnings.catch_warnings():  # PEFT warns about every adapter after the first: expected here
            warnings.filterwarnings("ignore", message=".*Already found a `peft_config` attribute.*")
            _load_weights(pipe, entry, root, name)
    except _PASS_THROUGH:
        raise
    except Exception as exc:  # noqa: BLE001 - a LoRA that does not load is the request's problem
        _delete(pipe, name)  # a half-loaded adapter must not stay behind
        raise InvalidInput(f"{FIELD}: could not load LoRA {lora_id}: {_reason(exc)}", field=FIELD) from exc


def _load_weights(pipe: Any, entry: LoraEntry, root: Path, name: str) -> None:
    if entry.kind == "file":
        pipe.load_lora_weights(str(root), adapter_name=name)
    else:
        folder = root / entry.subfolder if entry.subfolder else root
        pipe.load_lora_weights(str(folder), weight_name=entry.weight_name, adapter_name=name, local_files_only=True)


def _adapter_name(lora_id: str, state: dict[str, Any]) -> str:
    """A name PEFT accepts (module keys cannot hold dots), unique within the pipeline."""
    state["lora_counter"] = state.get("lora_counter", 0) + 1
    return f"{re.sub(r'[^0-9A-Za-z_]', '_', lora_id)[:48]}_{state['lora_counter']}"


def _has_adapters(pipe: Any) -> bool:
    try:
        return any(pipe.get_list_adapters().values())
    except (ValueError, AttributeError):  # no PEFT layers yet
        return False


def _delete(pipe: Any, name: str) -> None:
    if any(name in names for names in pipe.get_list_adapters().values()):
        pipe.delete_adapters(name)
