"""FLUX.1 PuLID: the identity comes from the face in the init image."""

from diffserve.engine.models.specs.base import FamilyControls, FamilySpec, TinyBuild
from diffserve.engine.tiny.flux import FLUX_LIMITS
from diffserve.engine.tiny.flux_pulid import FLUX_PULID_TINY_LIMITS

SPEC = FamilySpec(
    name="flux-pulid",
    pipeline="diffserve.engine.families.flux_pulid:FluxPuLIDFamily",
    controls=FamilyControls(needs_face=True),
    bf16=True,
    limits=FLUX_LIMITS.model_copy(update={"default_strength": FLUX_PULID_TINY_LIMITS.default_strength}),
    tiny=TinyBuild("tiny-flux-pulid", "diffserve.engine.tiny.flux_pulid:build_tiny_flux_pulid",
                   FLUX_PULID_TINY_LIMITS, "FLUX.1 PuLID (identity from the face)"),
)
