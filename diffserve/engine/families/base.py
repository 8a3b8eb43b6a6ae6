"""What a model family provides to the engine: how to build its tiny offline model, how to load a
pipeline, and how to run one request on it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import torch
from PIL import Image

from diffserve.core.request import GenerationRequest
from diffserve.engine.models.loading import ModelSource


@dataclass
class RunInputs:
    """Everything one pipeline call needs, after the controls had their say."""

    request: GenerationRequest
    init_image: Image.Image  # already width x height
    extra_images: list[Image.Image]  # reference images (Qolaba file_urls, Kontext inputs...)
    generators: list[torch.Generator]  # one per sample, seeded seed+i
    prompt: str
    negative_prompt: str | None
    ip_adapter_image: Image.Image | None = None
    call_kwargs: dict[str, Any] = field(default_factory=dict)  # added by controls (clip_skip, ip_adapter_image...)


class Family(Protocol):
    name: str

    def load(self, source: ModelSource, *, device: str, dtype: torch.dtype) -> Any:
        """Load a pipeline for this family (diffusers' own loaders)."""

    def run(self, pipe: Any, inputs: RunInputs) -> list[Image.Image]:
        """Generate `request.samples` images."""


TinyBuilder = Callable[[Path], Path]
