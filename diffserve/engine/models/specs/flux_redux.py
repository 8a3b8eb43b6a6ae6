"""FLUX.1 Redux: image variation; each reference image goes through the Redux prior."""

from diffserve.engine.models.specs.base import FamilyControls, FamilySpec, TinyBuild
from diffserve.engine.tiny.flux import FLUX_REDUX_LIMITS, FLUX_REDUX_TINY_LIMITS

SPEC = FamilySpec(
    name="flux-redux",
    pipeline="diffserve.engine.families.flux_redux:FluxReduxFamily",
    controls=FamilyControls(reference_images=True),
    bf16=True,
    limits=FLUX_REDUX_LIMITS,
    tiny=TinyBuild("tiny-flux-redux", "diffserve.engine.tiny.flux:build_tiny_flux_redux", FLUX_REDUX_TINY_LIMITS,
                   "FLUX.1 Redux image variation"),
)
