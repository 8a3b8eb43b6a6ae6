"""Step-level batching: what a family's batched denoising loop provides, and the tick they share.

A `Row` is one request inside a batch: its own scheduler (a copy, `set_timesteps(steps)`, begun at its
strength's index), timesteps, latents (one per sample), generators, prompt embeddings and guidance.
A family's `BatchLoop` builds a row from the request (`start`, the pipeline's own encode / prepare
steps), runs one denoiser forward over many rows (`forward`, one timestep per batch row, guidance
applied per request) and decodes a finished row (`finish`). `tick` is the loop body every family
shares: one forward, then each row's own `scheduler.step` on its slice.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import torch
from PIL import Image

from diffserve.engine.families.base import RunInputs

StepReport = Callable[[int, int, torch.Tensor | None], bool | None]  # True: end the denoising here


@dataclass(kw_only=True)
class Row:
    inputs: RunInputs
    scheduler: Any
    timesteps: torch.Tensor
    latents: torch.Tensor  # (samples, ...) in the family's latent layout
    guidance: float
    cfg: bool  # classifier-free guidance: an unconditional row per sample in the forward
    cond: dict[str, torch.Tensor] = field(default_factory=dict)  # family-specific, already (forward rows, ...)
    fixed: dict[str, Any] = field(default_factory=dict)  # the same for every row of a batch (Flux's position ids)
    step_kwargs: dict[str, Any] = field(default_factory=dict)
    report: StepReport | None = None
    index: int = 0
    batch_size: int = 0  # the most rows (samples) it shared a tick with
    cache: Any = None  # its own step cache (engine/stepcache), None: every step runs the whole network
    error: BaseException | None = None  # its own step or progress report raised (a cancel...): it leaves
    stopped: bool = False  # its report asked to end the denoising now (finish now): done, decoded as it is

    @property
    def done(self) -> bool:
        return self.stopped or self.index >= len(self.timesteps)

    @property
    def samples(self) -> int:
        return self.latents.shape[0]

    @property
    def t(self) -> torch.Tensor:
        return self.timesteps[self.index]


class BatchLoop(Protocol):
    def start(self, pipe: Any, inputs: RunInputs, scheduler: Any) -> Row:
        """The request's row: prompt encoded, timesteps set for its steps and strength, init latents noised."""

    def forward(self, pipe: Any, rows: list[Row]) -> list[torch.Tensor]:
        """One denoiser call over every row; each row's guided model output, (samples, ...) each."""

    def finish(self, pipe: Any, row: Row) -> list[Image.Image]:
        """The finished row's images."""


def tick(loop: BatchLoop, pipe: Any, rows: list[Row]) -> None:
    """One denoising step for every row (all not done, none failed): one forward, then each row's scheduler
    step and progress report (a report answering True ends that row's denoising: finish now). What one row's
    step or report raises (a client's cancel) is kept on that row
    (`error`) and the others go on; only the shared forward failing raises."""
    total = sum(row.samples for row in rows)
    outputs = loop.forward(pipe, rows)
    for row, output in zip(rows, outputs, strict=True):
        row.batch_size = max(row.batch_size, total)
        try:
            row.latents = row.scheduler.step(output, row.t, row.latents, **row.step_kwargs, return_dict=False)[0]
            row.index += 1
            if row.report is not None and row.report(row.index, len(row.timesteps), row.latents):
                row.stopped = True
        except Exception as e:  # noqa: BLE001 - the row's own failure, reported for it alone
            row.error = e


def split_guided(output: torch.Tensor, rows: list[Row]) -> list[torch.Tensor]:
    """The forward's output split back per row, CFG applied with each row's own scale (uncond rows first)."""
    out, at = [], 0
    for row in rows:
        n = row.samples * (2 if row.cfg else 1)
        part = output[at:at + n]
        at += n
        if row.cfg:
            uncond, text = part.chunk(2)
            part = uncond + row.guidance * (text - uncond)
        out.append(part)
    return out


def step_kwargs(scheduler: Any, generators: list[torch.Generator], eta: float = 0.0) -> dict[str, Any]:
    """What the row's own scheduler.step takes besides the model output (the pipelines' prepare_extra_step_kwargs)."""
    accepted = set(inspect.signature(scheduler.step).parameters)
    kwargs: dict[str, Any] = {}
    if "eta" in accepted:
        kwargs["eta"] = eta
    if "generator" in accepted:
        kwargs["generator"] = generators
    return kwargs


@contextmanager
def scheduler_of(pipe: Any, scheduler: Any) -> Iterator[None]:
    """`pipe.scheduler` is the row's for the pipeline's own helpers (get_timesteps, prepare_latents)."""
    original = pipe.scheduler
    pipe.scheduler = scheduler
    try:
        yield
    finally:
        pipe.scheduler = original
