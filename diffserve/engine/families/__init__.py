"""The model families the engine knows, by the name the registry uses."""

from __future__ import annotations

from diffserve.engine.families.base import Family
from diffserve.engine.families.batched import BatchLoop
from diffserve.engine.families.flux import FluxFamily
from diffserve.engine.families.flux_batch import FluxBatchLoop
from diffserve.engine.families.flux_control import FluxCannyFamily, FluxDepthFamily
from diffserve.engine.families.flux_kontext import FluxKontextFamily
from diffserve.engine.families.flux_pulid import FluxPuLIDFamily
from diffserve.engine.families.flux_redux import FluxReduxFamily
from diffserve.engine.families.hidream import HiDreamFamily
from diffserve.engine.families.sd import StableDiffusionFamily
from diffserve.engine.families.sd_batch import StableDiffusionBatchLoop
from diffserve.engine.families.sdxl import StableDiffusionXLFamily
from diffserve.engine.families.sdxl_batch import StableDiffusionXLBatchLoop


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


def batch_loop(name: str) -> BatchLoop | None:
    """The family's step-level batched loop (engine/batching.py), or None: its requests run one at a time."""
    loop = _BATCH_LOOPS.get(name)
    return loop() if loop is not None else None


# Families with a batched img2img loop; the others (Kontext, Redux, the Flux control families, PuLID, HiDream)
# run each request alone through their pipeline call.
_BATCH_LOOPS: dict[str, type] = {
    "sd": StableDiffusionBatchLoop,
    "sdxl": StableDiffusionXLBatchLoop,
    "flux": FluxBatchLoop,
}
