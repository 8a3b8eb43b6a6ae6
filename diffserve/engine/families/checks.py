"""Checks a family makes on the pipeline it loaded: the model must be what the registry says it is."""

from __future__ import annotations

from typing import Any

from diffserve.core.errors import InvalidInput
from diffserve.engine.models.loading import ModelSource


def require_pipeline(pipe: Any, family: str, expected: tuple[str, ...], source: ModelSource) -> Any:
    """Return `pipe` if its class is one of `expected`; otherwise InvalidInput naming model_id."""
    name = type(pipe).__name__
    if name not in expected:
        raise InvalidInput(
            f"Model {source.location} loads as {name}, which is not a {family} model "
            f"(expected {' or '.join(expected)}); check the model's family in the registry",
            field="model_id",
        )
    return pipe
