"""FLUX.1 Kontext: image editing; reference images are stitched beside the init image."""

from diffserve.engine.models.specs.base import FamilyControls, FamilySpec, TinyBuild
from diffserve.engine.tiny.flux import FLUX_LIMITS, FLUX_TINY_LIMITS

SPEC = FamilySpec(
    name="flux-kontext",
    pipeline="diffserve.engine.families.flux_kontext:FluxKontextFamily",
    controls=FamilyControls(reference_images=True),
    bf16=True,
    limits=FLUX_LIMITS,
    tiny=TinyBuild("tiny-flux-kontext", "diffserve.engine.tiny.flux:build_tiny_flux_kontext", FLUX_TINY_LIMITS,
                   "FLUX.1 Kontext image editing"),
)
