"""A running job's progress, as the worker reports it: throttled writes, previews, and the cancel check.

The engine calls the reporter after every denoising step; it writes to the store once every
`interval_s` (the first write after `interval_s`: a job shorter than that writes nothing, and its cancel check
before the first step uses the flag its start answered, Ledger.begin), with a preview of the latents, and reads
back whether a client asked to cancel: then it raises Cancelled and the pipeline call stops between two
steps. A "finish now" (A1111's /interrupt) is answered True instead: the loop ends its denoising there and
decodes the latents so far (engine/progress.py, the batched tick), and the job succeeds with `stopped_at_step`
in its run meta. A finished job needs no last write: its status says all steps ran.

Fenced: the reporter writes for one attempt. Once the job was handed on (requeued, maybe running elsewhere),
its next write -- or the next step after the worker's heartbeat found it (`lost`) -- raises ClaimLost, and
the runner leaves the job silently (workers/runner.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sqlalchemy.exc import SQLAlchemyError

from diffserve.core.errors import Cancelled
from diffserve.store.ledger import ClaimLost
from diffserve.store.progress import CANCEL, FINISH, ProgressStore

if TYPE_CHECKING:  # imported where it runs: the worker process (the API process never imports torch)
    import torch


@dataclass
class ProgressReporter:
    job_id: int
    store: ProgressStore
    interval_s: float = 0.25
    latent_rgb: tuple[tuple[float, float, float], ...] | None = None  # the model's preview factors, if its own
    attempt: int | None = None  # the attempt this reporter writes for (None: unfenced)
    lost: set[int] | None = None  # job ids the worker's heartbeat found handed on (shared with the runner)
    cancel_known: bool | None = None  # whether a cancel was asked, as the job's start answered (None: read it)
    _started: float = field(default_factory=time.monotonic)
    _last_write: float | None = None
    steps: int = 0
    stopped_at: int | None = None  # the step a "finish now" ended the denoising at

    def check_cancelled(self) -> None:
        """Before the first step: lost, or a cancel asked? The first check uses what the start answered (no
        read of its own); a later one reads the store."""
        if self.lost is not None and self.job_id in self.lost:
            raise ClaimLost(self.job_id, self.attempt)
        known, self.cancel_known = self.cancel_known, None
        if known if known is not None else self.store.cancel_requested(self.job_id):
            raise Cancelled()

    def run_meta(self) -> dict[str, int]:
        """What the job's run meta says of an early end: {"stopped_at_step": n}, or nothing."""
        return {} if self.stopped_at is None else {"stopped_at_step": self.stopped_at}

    def __call__(self, step: int, total: int, latents: torch.Tensor | None) -> bool:
        """After a step: True when the denoising must end here (a client asked to finish now)."""
        from diffserve.engine.progress import preview_jpeg

        if self.lost is not None and self.job_id in self.lost:
            raise ClaimLost(self.job_id, self.attempt)
        self.steps += 1
        if self.stopped_at is not None:
            return True
        now = time.monotonic()
        if now - (self._last_write or self._started) < self.interval_s:
            return False
        self._last_write = now
        step_s = (now - self._started) / step if step else None
        preview = preview_jpeg(latents, latent_rgb=self.latent_rgb)
        try:
            asked = self.store.report(self.job_id, step, total, step_s, preview, attempt=self.attempt)
        except SQLAlchemyError:  # the store is away for a moment: the image goes on, the next write catches up
            return False
        if asked == CANCEL:
            raise Cancelled()
        if asked == FINISH and step < total:
            self.stopped_at = step
        return self.stopped_at is not None
