"""The built-in tiny models of the model families, taken from the family specs (engine/models/specs/):
the engine tests pick and build them here instead of naming each family's builder."""

from __future__ import annotations

from pathlib import Path

from diffserve.engine.models.specs import FAMILIES, FamilySpec, family_spec

# the families with a step-level batched loop, in the specs' order
BATCHED_FAMILIES: tuple[str, ...] = tuple(spec.name for spec in FAMILIES if spec.batch_loop)


def tiny_spec(model_id: str) -> FamilySpec:
    """The spec of the family whose tiny model is `model_id`."""
    return next(spec for spec in FAMILIES if spec.tiny and spec.tiny.model_id == model_id)


def tiny_ids(*families: str) -> tuple[str, ...]:
    """The tiny model ids of these families (every family's when none is named)."""
    specs = [family_spec(name) for name in families] if families else [s for s in FAMILIES if s.tiny]
    return tuple(spec.tiny.model_id for spec in specs)


def build_tiny(models_root: Path, *model_ids: str) -> Path:
    """Build these tiny models (by id) under models_root, once (a built one returns at once); models_root."""
    for model_id in model_ids:
        tiny_spec(model_id).tiny.build(models_root / model_id)
    return models_root
