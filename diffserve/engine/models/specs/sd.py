"""Stable Diffusion 1.x / 2.x."""

from diffserve.core.request import ModelLimits
from diffserve.engine.models.specs.base import FamilyControls, FamilySpec, TinyBuild

SPEC = FamilySpec(
    name="sd",
    pipeline="diffserve.engine.families.sd:StableDiffusionFamily",
    controls=FamilyControls(schedulers=True, clip_skip_offset=1, tomesd=True, tiling=True, txt2img=True,
                            inpaint=True, step_cache="deepcache"),
    batch_loop="diffserve.engine.families.sd_batch:StableDiffusionBatchLoop",
    tiny=TinyBuild("tiny-sd", "diffserve.engine.tiny.sd:build_tiny_sd", ModelLimits(min_size=32, max_size=512),
                   "Stable Diffusion"),
)
