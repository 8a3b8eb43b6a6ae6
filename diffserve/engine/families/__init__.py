"""The model families the engine knows, by the name the registry uses."""

from __future__ import annotations

from .base import Family
from .flux import FluxFamily
from .flux_control import FluxCannyFamily, FluxDepthFamily
from .flux_kontext import FluxKontextFamily
from .flux_pulid import FluxPuLIDFamily
from .flux_redux import FluxReduxFamily
from .hidream import HiDreamFamily
from .sd import StableDiffusionFamily
from .sdxl import StableDiffusionXLFamily


def family(name: str) -> Family:
    try:
        return _FAMILIES[name]()
    except KeyError:
        raise ValueError(f"unknown model family {name!r}; known: {', '.join(sorted(_FAMILIES))}") from None


_FAMILIES: dict[str, type] = {
    "sd": StableDiffusionFamily,
    "sdxl": StableDiffusionXLFamily,
    "flux": FluxFamily,
    "flux-kontext": FluxKontextFamily,
    "flux-redux": FluxReduxFamily,
    "flux-canny": FluxCannyFamily,
    "flux-depth": FluxDepthFamily,
    "flux-pulid": FluxPuLIDFamily,
    "hidream": HiDreamFamily,
}
