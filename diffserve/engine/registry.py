"""The model registry: model_id -> where the weights are, which family, which limits.

Read from a JSON file (default `<data_dir>/models.json`), on top of the built-in tiny models that
work offline. File format:

    {"models": {
        "realistic-vision-51": {"kind": "hub", "location": "SG161222/Realistic_Vision_V5.1_noVAE"},
        "my-folder-model":     {"kind": "folder", "location": "/srv/models/my-model"},
        "my-checkpoint":       {"kind": "single_file", "location": "/srv/ckpt/model.safetensors",
                                "config": "/srv/models/sd15-config"},
        "...": {"family": "sd", "limits": {"max_size": 768}, "revision": "main"}
    }}
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from ..core.errors import ModelNotFound
from ..core.request import ModelLimits
from .loading import ModelSource

Family = Literal["sd"]

# Limits of the built-in tiny models: small sizes so tests and a laptop run them in well under a second.
TINY_LIMITS = ModelLimits(min_size=32, max_size=512)


class ModelEntry(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["hub", "folder", "single_file"]
    location: str
    config: str | None = None
    revision: str | None = None
    family: Family = "sd"
    limits: ModelLimits = ModelLimits()
    builtin: str | None = None  # name of the tiny model the engine builds here when missing
    description: str = ""

    def source(self) -> ModelSource:
        return ModelSource(kind=self.kind, location=self.location, config=self.config, revision=self.revision)


class ModelsFileError(ValueError):
    pass


class ModelRegistry:
    def __init__(self, entries: dict[str, ModelEntry]) -> None:
        self._entries = dict(entries)

    @classmethod
    def load(cls, models_path: Path, models_dir: Path) -> "ModelRegistry":
        entries = builtin_models(models_dir)
        if models_path.exists():
            entries.update(read_models_file(models_path))
        return cls(entries)

    def get(self, model_id: str) -> ModelEntry:
        try:
            return self._entries[model_id]
        except KeyError:
            raise ModelNotFound(model_id) from None

    def ids(self) -> list[str]:
        return sorted(self._entries)

    def items(self) -> list[tuple[str, ModelEntry]]:
        return sorted(self._entries.items())


def builtin_models(models_dir: Path) -> dict[str, ModelEntry]:
    return {
        "tiny-sd": ModelEntry(
            kind="folder",
            location=str(models_dir / "tiny-sd"),
            family="sd",
            limits=TINY_LIMITS,
            builtin="tiny-sd",
            description="Tiny Stable Diffusion built offline with random weights: its images are noise.",
        )
    }


def read_models_file(path: Path) -> dict[str, ModelEntry]:
    try:
        raw = json.loads(path.read_text())
        models = raw.get("models", {}) if isinstance(raw, dict) else None
        if not isinstance(models, dict):
            raise ModelsFileError(f"{path}: expected {{\"models\": {{model_id: {{...}}}}}}")
        return {str(mid): ModelEntry.model_validate(spec) for mid, spec in models.items()}
    except (OSError, json.JSONDecodeError, ValidationError) as e:
        raise ModelsFileError(f"{path}: {e}") from e
