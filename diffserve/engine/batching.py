"""One open batch of the engine: a loaded model whose rows (requests) share each denoising tick.

The engine opens it for a first request (`Engine.open_batch`); the worker's batcher (workers/batcher.py)
joins more requests between ticks, ticks, and finishes each row as soon as its last step is done. The
weight-changing controls (VAE, LoRA, embeddings: equal for every row, core/batching.py) are entered once
for the batch's life with its first request; the per-row ones (scheduler, clip_skip) around each row's
start only, the row keeping its own scheduler copy. Post-processing (the safety checker) runs per row.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from contextlib import AbstractContextManager, ExitStack
from typing import Any

import torch
from PIL import Image

from diffserve.core.errors import DiffserveError
from diffserve.core.request import GenerationRequest
from diffserve.engine.controls.base import ControlContext
from diffserve.engine.controls.chain import BATCH_CONTROLS, POSTPROCESSORS, ROW_CONTROLS
from diffserve.engine.controls.eta_noise import row_step_kwargs
from diffserve.engine.families.base import RunInputs
from diffserve.engine.families.batched import BatchLoop, Row, StepReport, tick
from diffserve.engine.models.cache import release_memory
from diffserve.engine.stepcache import row_cache


class Batch:
    def __init__(self, loop: BatchLoop, pipe: Any, ctx: ControlContext, first: RunInputs, *,
                 check: Callable[[GenerationRequest], None],
                 vae_memory: Callable[[GenerationRequest], AbstractContextManager[None]], device: str,
                 dtype: str = "fp32") -> None:
        """check(req): refuses a request the device cannot hold; vae_memory(req): the engine's VAE tiling."""
        self.loop, self.pipe, self.ctx = loop, pipe, ctx
        self.rows: list[Row] = []
        self._check, self._vae_memory = check, vae_memory
        self.device, self.dtype = device, dtype  # where and in what the batch runs (the jobs' meta)
        self._stack = ExitStack()
        try:
            with torch.inference_mode():
                for control in BATCH_CONTROLS:
                    self._stack.enter_context(control(pipe, first, ctx))
        except BaseException:
            self._stack.close()
            raise

    def close(self) -> None:
        self._stack.close()

    def __enter__(self) -> Batch:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    @property
    def size(self) -> int:
        """Rows (samples) active now."""
        return sum(row.samples for row in self.rows)

    def join(self, req: GenerationRequest, init_image: Image.Image, report: StepReport | None = None) -> Row:
        """Start the request's row (it runs from the next tick). Raises for this request alone."""
        row = self.start(req, init_image, report)
        self.add(row)
        return row

    def add(self, row: Row) -> None:
        """A started row joins: it runs from the next tick (call it between two ticks, on the ticking thread)."""
        self.rows.append(row)

    def start(self, req: GenerationRequest, init_image: Image.Image, report: StepReport | None = None) -> Row:
        """The request's row, started (prompt encoded, init image encoded and noised) but not yet in the batch:
        `add` puts it in. It uses the text encoder, the VAE and a scheduler copy, never the denoiser or the
        rows, so it may run on another thread while a tick runs (the worker's batcher does: workers/batcher.py),
        as may `finish`; `start` and `finish` calls must not overlap each other (they share the VAE). Raises
        for this request alone."""
        self._check(req)
        size = (req.width, req.height)
        if init_image.size != size:
            init_image = init_image.resize(size, Image.Resampling.LANCZOS)
        inputs = RunInputs.for_request(req, init_image)
        with torch.inference_mode(), ExitStack() as stack, self._vae_memory(req):
            for control in ROW_CONTROLS:
                stack.enter_context(control(self.pipe, inputs, self.ctx))
            row = self.loop.start(self.pipe, inputs, copy.deepcopy(self.pipe.scheduler))
        row.step_kwargs = row_step_kwargs(req, row.step_kwargs)  # eta_noise_seed_delta's generators
        row.cache = row_cache(req.step_cache)
        row.report = report
        return row

    def tick(self) -> list[Row]:
        """One step for every row; the rows that left (last step done, or their own step / report raised)."""
        try:
            with torch.inference_mode():
                tick(self.loop, self.pipe, self.rows)
        except torch.OutOfMemoryError:
            release_memory()
            raise DiffserveError(f"Out of memory on {self.device} running a batch of {self.size} images: "
                                 "use a smaller width/height or fewer samples") from None
        left = [row for row in self.rows if row.done or row.error is not None]
        self.rows = [row for row in self.rows if row not in left]
        return left

    def leave(self, row: Row) -> None:
        if row in self.rows:
            self.rows.remove(row)

    def finish(self, row: Row) -> tuple[list[Image.Image], list[bool]]:
        """The done row's images (decoded, post-processed: the safety checker) and NSFW flags."""
        with torch.inference_mode(), self._vae_memory(row.inputs.request):
            images = self.loop.finish(self.pipe, row)
            nsfw = [False] * len(images)
            for post in POSTPROCESSORS:
                images, nsfw = post(self.pipe, images, nsfw, row.inputs, self.ctx)
        return images, nsfw
