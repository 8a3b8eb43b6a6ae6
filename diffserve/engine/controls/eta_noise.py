"""A1111's `eta_noise_seed_delta` (ENSD): the noise a sampler draws *between* steps (ancestral and SDE samplers'
eta noise: Euler a, DPM2 a, DPM++ 2M SDE; also LCM's and DDPM's) comes from generators seeded seed + i +
delta, while the initial noise keeps seed + i -- as A1111's ImageRNG re-seeds its generators with seed + delta
after drawing the first noise. 0 (the default) changes nothing: one generator per sample for both.

Single call: the scheduler's `step` gets the delta's generators for the call (its `generator` argument replaced);
the batched loop: the row's own step arguments (`row_step_kwargs`, engine/batching.py).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from diffserve.core.request import GenerationRequest
    from diffserve.engine.controls.base import ControlContext
    from diffserve.engine.families.base import RunInputs


def eta_generators(req: GenerationRequest) -> list[torch.Generator]:
    return [torch.Generator(device="cpu").manual_seed((req.seed + i + req.eta_noise_seed_delta) % 2**64)
            for i in range(req.samples)]


def row_step_kwargs(req: GenerationRequest, kwargs: dict[str, Any]) -> dict[str, Any]:
    """A batched row's scheduler.step arguments with the delta's generators (unchanged for delta 0)."""
    if not req.eta_noise_seed_delta or "generator" not in kwargs:
        return kwargs
    return {**kwargs, "generator": eta_generators(req)}


@contextmanager
def eta_noise_control(pipe: Any, inputs: RunInputs, ctx: ControlContext) -> Iterator[None]:
    req, scheduler = inputs.request, getattr(pipe, "scheduler", None)
    if not req.eta_noise_seed_delta or scheduler is None:
        yield
        return
    generators, step = eta_generators(req), scheduler.step

    @functools.wraps(step)  # the pipelines pass `generator` only to a step whose signature names it
    def step_with_eta_noise(*args: Any, **kwargs: Any) -> Any:
        if "generator" in kwargs:
            kwargs["generator"] = generators
        return step(*args, **kwargs)

    scheduler.step = step_with_eta_noise  # this call's only (the pipeline passes `generator` by name)
    try:
        yield
    finally:
        del scheduler.step
