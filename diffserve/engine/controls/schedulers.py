"""The scheduler control: `scheduler`, `use_karras_sigmas`, `algorithm_type` for one call.

The requested scheduler class is built `from_config` of the model's ORIGINAL scheduler config
(kept in the pipeline's per-model state the first time), swapped in for the call and the original
put back after it: no model reload, and the next request sees the model's own scheduler. A
request that asks for what the model already has (same class, same overrides) runs the original
object untouched, so it gives byte-identical images to a request that named no scheduler.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from diffserve.core.errors import InvalidInput
from diffserve.engine.models.capabilities import SCHEDULERS, family_controls

if TYPE_CHECKING:
    from diffserve.engine.controls.base import ControlContext
    from diffserve.engine.families.base import RunInputs

_ORIGINAL = "original_scheduler"


def scheduler_for(original: Any, name: str | None, *, karras: bool, algorithm_type: str | None) -> Any:
    """The scheduler object a request runs with: `original` itself when nothing changes."""
    if name is None:
        return original
    spec = SCHEDULERS.get(name)
    if spec is None:
        if name == type(original).__name__:  # the model's own scheduler, outside the v6 vocabulary
            return original
        raise InvalidInput(f"scheduler must be one of: {', '.join(SCHEDULERS)} (got {name!r})", field="scheduler")
    overrides = spec.config_overrides(karras=karras, algorithm_type=algorithm_type)
    if spec.cls == type(original).__name__ and all(original.config.get(k) == v for k, v in overrides.items()):
        return original
    import diffusers

    return getattr(diffusers, spec.cls).from_config(original.config, **overrides)


@contextmanager
def scheduler_control(pipe: Any, inputs: RunInputs, ctx: ControlContext) -> Iterator[None]:
    req = inputs.request
    if not family_controls(ctx.entry.family).schedulers or not hasattr(pipe, "scheduler"):
        yield
        return
    original = ctx.state.setdefault(_ORIGINAL, pipe.scheduler)
    chosen = scheduler_for(original, req.scheduler, karras=req.use_karras_sigmas,
                           algorithm_type=req.algorithm_type)
    pipe.scheduler = chosen
    try:
        yield
    finally:
        pipe.scheduler = original
