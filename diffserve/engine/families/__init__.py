"""The model families' worker-side code, found through their specs (engine/models/specs/): each spec names
its pipeline class (`load`, `run`) and its batched loop, imported here when a worker first needs them."""

from __future__ import annotations

from pkgutil import resolve_name
from typing import TYPE_CHECKING

from diffserve.engine.models.specs import family_spec

if TYPE_CHECKING:
    from diffserve.engine.families.base import Family
    from diffserve.engine.families.batched import BatchLoop


def family(name: str) -> Family:
    """The family's pipeline (load and run); ValueError for a family no spec names."""
    return resolve_name(family_spec(name).pipeline)()


def batch_loop(name: str) -> BatchLoop | None:
    """The family's step-level batched loop (engine/batching.py), or None: its requests run one at a time."""
    loop = family_spec(name).batch_loop
    return resolve_name(loop)() if loop is not None else None
