"""Stable Diffusion XL (SDXL base and its fine-tunes: Pony Diffusion, Juggernaut XL...)."""

from diffserve.engine.models.specs.base import FamilyControls, FamilySpec, TinyBuild
from diffserve.engine.tiny.sdxl import SDXL_LIMITS, SDXL_TINY_LIMITS

SPEC = FamilySpec(
    name="sdxl",
    pipeline="diffserve.engine.families.sdxl:StableDiffusionXLFamily",
    controls=FamilyControls(schedulers=True, clip_skip_offset=2, tomesd=True, tiling=True, txt2img=True,
                            inpaint=True, step_cache="deepcache"),
    batch_loop="diffserve.engine.families.sdxl_batch:StableDiffusionXLBatchLoop",
    limits=SDXL_LIMITS,
    tiny=TinyBuild("tiny-sdxl", "diffserve.engine.tiny.sdxl:build_tiny_sdxl", SDXL_TINY_LIMITS,
                   "Stable Diffusion XL img2img"),
)
