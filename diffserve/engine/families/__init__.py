"""The model families the engine knows, by the name the registry uses."""

from __future__ import annotations

from .base import Family
from .sd import StableDiffusionFamily


def family(name: str) -> Family:
    try:
        return _FAMILIES[name]()
    except KeyError:
        raise ValueError(f"unknown model family {name!r}; known: {', '.join(sorted(_FAMILIES))}") from None


def family_names() -> list[str]:
    return sorted(_FAMILIES)


_FAMILIES: dict[str, type] = {
    "sd": StableDiffusionFamily,
}
