"""Where a model's weights are: a plain value (no torch or diffusers import), so the API process,
which only validates requests against the registry, never imports the model stack."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

SourceKind = Literal["hub", "folder", "single_file"]
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")


@dataclass(frozen=True)
class ModelSource:
    """Where a model's weights are.

    kind: "hub" (location = repo id), "folder" (location = diffusers folder path) or
        "single_file" (location = path of a .safetensors/.ckpt checkpoint).
    config: single_file only: local diffusers config folder (model_index.json + component
        configs and tokenizer files; weights not needed). Required when loading offline.
    revision: hub only: branch, tag or commit (default: main).
    """

    kind: SourceKind
    location: str
    config: str | None = None
    revision: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("hub", "folder", "single_file"):
            raise ValueError(f"Unknown model source kind {self.kind!r}")
        if not self.location:
            raise ValueError("A model source needs a location")
        if self.config is not None and self.kind != "single_file":
            raise ValueError("`config` applies to single_file sources only")
        if self.revision is not None and self.kind != "hub":
            raise ValueError("`revision` applies to hub sources only")
