"""HiDream-I1 img2img (on diffusers' text-to-image pipeline), and ModelsLab's `hidream-o1` on its tiny build."""

from diffserve.engine.models.specs.base import FamilySpec, TinyBuild, VendorModel
from diffserve.engine.tiny.hidream import HIDREAM_LIMITS, HIDREAM_TINY_LIMITS

SPEC = FamilySpec(
    name="hidream",
    pipeline="diffserve.engine.families.hidream:HiDreamFamily",
    bf16=True,
    limits=HIDREAM_LIMITS,
    tiny=TinyBuild("tiny-hidream", "diffserve.engine.tiny.hidream:build_tiny_hidream", HIDREAM_TINY_LIMITS,
                   "HiDream-I1 img2img"),
    # ModelsLab's `hidream-o1` (v6 img2img): the HiDream O1 page's limits (sides 1024-2048, divisible by 8,
    # default 2048; steps 20-50, default 30; guidance 1-20). Offline it runs the tiny HiDream build at those sizes.
    vendor_models=(VendorModel(
        "hidream-o1", HIDREAM_LIMITS.model_copy(update={"default_width": 2048, "default_height": 2048}),
        "HiDream O1 (ModelsLab id) on the tiny HiDream build with random weights: its images are noise."),),
)
