"""Shared plumbing for the tiny offline models: seeded construction and atomic folder builds.

Every tiny builder (sd.py, sdxl.py, flux.py...) and anyone adding another tiny model use these helpers so
every build is deterministic (same weight bytes each time) and atomic (a half-written folder is never visible).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

__all__ = ["MARKER_FILE", "build_atomically", "folder_is_complete", "seeded", "write_marker"]

MARKER_FILE = "diffserve_tiny.json"  # written last: its presence means the build finished
_SEED = 0


def seeded(factory):
    """Build one module from the fixed tiny-model seed without disturbing the caller's global RNG."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_SEED)
        module = factory()
    return module.eval()


def make_world_readable(folder: Path) -> None:
    # mkdtemp makes 0700 and the safetensors writers leave 0600: make the shared folder readable.
    os.chmod(folder, 0o755)
    for root, dirs, files in os.walk(folder):
        for name in dirs:
            os.chmod(os.path.join(root, name), 0o755)
        for name in files:
            os.chmod(os.path.join(root, name), 0o644)


def folder_is_complete(folder: Path, required: Iterable[str]) -> bool:
    return all((Path(folder) / name).is_file() for name in required)


def write_marker(folder: Path, *, model: str, recipe_version: int, readme: str) -> None:
    """README.md and the marker file: written last, so their presence means the build finished."""
    (folder / "README.md").write_text(readme, encoding="utf-8")
    (folder / MARKER_FILE).write_text(
        json.dumps({"model": model, "recipe_version": recipe_version, "weights": "random"}, indent=2) + "\n",
        encoding="utf-8",
    )


def build_atomically(dest: Path, write: Callable[[Path], None], required: tuple[str, ...], what: str) -> Path:
    """Run `write(staging)` in a temporary folder beside `dest`, then rename it to `dest`.

    A complete existing `dest` (every `required` file present) is returned untouched; a non-empty
    `dest` that is not complete is reported (FileExistsError) rather than overwritten. When another
    process finishes the same build first, its folder is kept.
    """
    dest = Path(dest)
    if folder_is_complete(dest, required):
        return dest
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise FileExistsError(f"{dest} exists and is not a complete {what} folder; remove it first.")

    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.building-", dir=dest.parent))
    try:
        write(staging)
        if folder_is_complete(dest, required):  # another process finished first: its folder is kept
            return dest
        missing = [name for name in required if not (staging / name).is_file()]
        if missing:
            raise RuntimeError(f"{what} build is missing {', '.join(missing)}")
        make_world_readable(staging)
        try:
            os.replace(staging, dest)  # atomic; replaces only a missing or empty dest
        except OSError:
            if folder_is_complete(dest, required):
                return dest
            raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return dest
