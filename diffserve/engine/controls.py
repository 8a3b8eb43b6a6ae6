"""Per-request generation controls, applied around one pipeline call and undone after it.

A control is a context manager `control(pipe, inputs, ctx)`: it may change the pipeline for the
duration of the call (scheduler, LoRA weights, VAE...), restoring it on exit so the next request
sees the base model untouched (no bleed), and/or add pipeline call arguments to
`inputs.call_kwargs`. The engine enters every control in CONTROLS order, then runs the family.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Callable

from PIL import Image

from .clip_skip import clip_skip_control
from .embeddings import use_embedding
from .families.base import RunInputs
from .families.flux_control import control_image_control
from .ip_adapter import use_ip_adapter
from .lora import apply_loras
from .registry import ModelEntry, ModelRegistry
from .safety import safety_postprocessor
from .schedulers import scheduler_control
from .tome import tomesd_control
from .vae import use_vae


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

# Order matters: pipeline-replacing controls (VAE, scheduler) before weight patches (LoRA) and call args.
CONTROLS: list[Control] = [scheduler_control, use_vae, apply_loras, use_embedding, tomesd_control,
                           clip_skip_control, use_ip_adapter, control_image_control]
POSTPROCESSORS: list[PostProcessor] = [safety_postprocessor]
