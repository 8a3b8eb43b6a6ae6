"""FLUX.1 Canny: the control image is the init image's edges."""

from diffserve.engine.models.specs.base import FamilySpec, TinyBuild
from diffserve.engine.tiny.flux import FLUX_LIMITS
from diffserve.engine.tiny.flux_control import CANNY_TINY_LIMITS

SPEC = FamilySpec(
    name="flux-canny",
    pipeline="diffserve.engine.families.flux_control:FluxCannyFamily",
    bf16=True,
    limits=FLUX_LIMITS.model_copy(update={"default_guidance": CANNY_TINY_LIMITS.default_guidance}),
    tiny=TinyBuild("tiny-flux-canny", "diffserve.engine.tiny.flux_control:build_tiny_flux_canny", CANNY_TINY_LIMITS,
                   "FLUX.1 Canny (edges of the init image)"),
)
