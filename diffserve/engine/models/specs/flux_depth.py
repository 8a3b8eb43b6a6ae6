"""FLUX.1 Depth: the control image is the init image's depth map (its entry may name the depth model)."""

from diffserve.engine.models.specs.base import FamilySpec, TinyBuild
from diffserve.engine.tiny.flux import FLUX_LIMITS
from diffserve.engine.tiny.flux_control import DEPTH_TINY_LIMITS

SPEC = FamilySpec(
    name="flux-depth",
    pipeline="diffserve.engine.families.flux_control:FluxDepthFamily",
    bf16=True,
    limits=FLUX_LIMITS.model_copy(update={"default_guidance": DEPTH_TINY_LIMITS.default_guidance}),
    tiny=TinyBuild("tiny-flux-depth", "diffserve.engine.tiny.flux_control:build_tiny_flux_depth", DEPTH_TINY_LIMITS,
                   "FLUX.1 Depth (depth of the init image)"),
    entry_fields=frozenset({"depth_model"}),
)
