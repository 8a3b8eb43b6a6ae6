"""What every per-request control shares: the context it is given and the shapes of a control and a
post-processor. Below every control module; chain.py (above them) lists them in order.

A control is a context manager `control(pipe, inputs, ctx)`: it may change the pipeline for the
duration of the call (scheduler, LoRA weights, VAE...), restoring it on exit so the next request
sees the base model untouched (no bleed), and/or add pipeline call arguments to
`inputs.call_kwargs`.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Callable

from PIL import Image

from diffserve.engine.families.base import RunInputs
from diffserve.engine.models.registry import ModelEntry, ModelRegistry


@dataclass
class ControlContext:
    """What a control may need besides the pipeline and the request."""

    model_id: str
    entry: ModelEntry
    registry: ModelRegistry
    device: str
    state: dict[str, Any]  # per-pipeline scratch space that outlives one request (e.g. loaded adapters)
    shared: dict[str, Any] = field(default_factory=dict)  # engine-wide objects, one per worker (safety checker)


Control = Callable[[Any, RunInputs, ControlContext], AbstractContextManager[None]]

# Runs on the finished images: (images, nsfw flags so far) -> (images, nsfw flags). The safety checker is one.
PostProcessor = Callable[[Any, list[Image.Image], list[bool], RunInputs, ControlContext],
                         tuple[list[Image.Image], list[bool]]]
