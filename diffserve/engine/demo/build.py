"""Assemble demo-sd's diffusers folder: the committed weights (weights/) plus the real CLIP tokenizer.

The tokenizer files (about 4 MB) are not committed: they are written from the CLIP BPE vocabulary that
`make install` extracts (engine/tiny/sd.py), exactly as for tiny-sd. The weights are copied, so the built
folder is a plain diffusers SD 1.x folder that any diffusers code loads. Atomic like the tiny builds.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from diffserve.engine.demo import DEMO_SD_VERSION, WEIGHT_FILES, WEIGHTS, weights_present
from diffserve.engine.tiny.build import MARKER_FILE, build_atomically
from diffserve.engine.tiny.sd import write_clip_tokenizer

_PARTS = ("unet", "vae", "text_encoder", "scheduler")
REQUIRED = (*WEIGHT_FILES, MARKER_FILE, "tokenizer/vocab.json", "tokenizer/merges.txt",
            "tokenizer/tokenizer_config.json")


def _write(folder: Path, weights: Path) -> None:
    if not weights_present(weights):
        raise FileNotFoundError(f"demo-sd's weights are missing from {weights}: run scripts/train_demo_sd.py")
    for part in _PARTS:
        shutil.copytree(weights / part, folder / part)
    shutil.copy(weights / "model_index.json", folder / "model_index.json")
    shutil.copy(weights / "README.md", folder / "README.md")
    write_clip_tokenizer(folder / "tokenizer").save_pretrained(str(folder / "tokenizer"))
    (folder / MARKER_FILE).write_text(
        json.dumps({"model": "demo-sd", "recipe_version": DEMO_SD_VERSION, "weights": "trained"}, indent=2) + "\n",
        encoding="utf-8")


def build_demo_sd(dest: Path, weights: Path = WEIGHTS) -> Path:
    """Write demo-sd's folder at `dest` (a complete one is returned as is); return `dest`."""
    return build_atomically(Path(dest), lambda folder: _write(folder, weights), REQUIRED, "demo-sd")
