"""FLUX.1 img2img (FLUX.1-dev, FLUX.1-schnell and fine-tunes)."""

from diffserve.engine.models.specs.base import FamilyControls, FamilySpec, TinyBuild
from diffserve.engine.tiny.flux import FLUX_LIMITS, FLUX_TINY_LIMITS

SPEC = FamilySpec(
    name="flux",
    pipeline="diffserve.engine.families.flux:FluxFamily",
    controls=FamilyControls(txt2img=True, inpaint=True, step_cache="fbcache"),
    batch_loop="diffserve.engine.families.flux_batch:FluxBatchLoop",
    bf16=True,
    limits=FLUX_LIMITS,
    tiny=TinyBuild("tiny-flux", "diffserve.engine.tiny.flux:build_tiny_flux", FLUX_TINY_LIMITS, "FLUX.1-dev img2img"),
)
