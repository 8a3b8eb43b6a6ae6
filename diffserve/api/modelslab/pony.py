"""ModelsLab enterprise pony img2img fields, in the vendor page's order, with the page's defaults:
512x512 output, 21 steps (21, 31 or 41 allowed), its own scheduler list, guidance 1-20, 1-4 samples.

Pony models are SDXL models. A request without `model_id` (the page requires one) gets the server's
pony model (`DIFFSERVE_PONY_MODEL`, default the built-in tiny SDXL).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from diffserve.core.errors import InvalidInput
from diffserve.core.request import RequestDraft, check_choice, check_range
from diffserve.api.loose import LooseBool, LooseFloat, LooseInt, LooseStr, Text
from diffserve.api.modelslab.protocol import (MAX_GUIDANCE, MAX_SAMPLES, MAX_SIDE, MIN_GUIDANCE, DraftContext,
                                              V6Img2ImgRequest)

DEFAULT_SIZE = 512
STEPS = (21, 31, 41)
DEFAULT_STEPS = 21
SCHEDULERS = (
    "EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler", "LMSDiscreteScheduler", "HeunDiscreteScheduler",
    "KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler", "DPMSolverMultistepScheduler",
    "DPMSolverSinglestepScheduler", "DDIMScheduler", "DDPMScheduler", "PNDMScheduler", "UniPCMultistepScheduler",
    "DEISMultistepScheduler", "LCMScheduler", "IPNDMScheduler",
)


class PonyImg2ImgRequest(BaseModel):
    """POST /api/v1/enterprise/pony/img2img. Unknown fields are ignored, like the vendor does."""

    model_config = ConfigDict(extra="ignore")

    key: LooseStr = Field(None, description="Your enterprise API key")
    model_id: LooseStr = Field(None, description="an SDXL (pony) model id from the registry")
    prompt: Text = None
    negative_prompt: Text = None
    init_image: Text = Field(None, description="http(s) URL, raw base64, or data:image/...;base64,...")
    width: LooseInt = Field(None, description="default 512, at most 1024")
    height: LooseInt = Field(None, description="default 512, at most 1024")
    samples: LooseInt = Field(None, description="images to return, 1-4")
    num_inference_steps: LooseInt = Field(None, description="21, 31 or 41 (default 21)")
    safety_checker: LooseBool = Field(None, description='"yes"/"no", default yes')
    safety_checker_type: LooseStr = Field(None, description="blur | sensitive_content_text | pixelate | black")
    enhance_prompt: LooseBool = None
    guidance_scale: LooseFloat = Field(None, description="1-20, default 7.5")
    strength: LooseFloat = Field(None, description="0-1, default 0.7")
    scheduler: LooseStr = Field(None, description="one of the page's schedulers")
    seed: LooseInt = Field(None, description="null for a random seed (returned in meta)")
    lora_model: LooseStr = Field(None, description="comma-separated LoRA ids")
    tomesd: LooseBool = None
    use_karras_sigmas: LooseBool = None
    vae: LooseStr = None
    lora_strength: LooseStr = Field(None, description="comma-separated, one per LoRA, 0.1-1")
    clip_skip: LooseInt = Field(None, description="1-8")
    webhook: LooseStr = None
    track_id: LooseStr = None
    # ModelsLab conventions shared with v6 (companion endpoints), not on the pony page itself
    base64: LooseBool = None
    temp: LooseBool = None
    instant_response: LooseBool = None

    def mask(self) -> str | None:
        return None

    def to_draft(self, ctx: DraftContext) -> RequestDraft:
        """ctx.default_model: the server's pony model (the page requires a model_id; a request without one
        gets it)."""
        if self.num_inference_steps is not None and self.num_inference_steps not in STEPS:
            raise InvalidInput(f"num_inference_steps must be one of: 21, 31, 41 (got {self.num_inference_steps})",
                               field="num_inference_steps")
        check_range("samples", self.samples, 1, MAX_SAMPLES)
        check_range("guidance_scale", self.guidance_scale, MIN_GUIDANCE, MAX_GUIDANCE)
        draft = V6Img2ImgRequest.model_construct(**self.model_dump()).base_draft(ctx.default_model)
        check_choice("scheduler", draft.scheduler, SCHEDULERS)
        return draft.model_copy(update={
            "steps": self.num_inference_steps or DEFAULT_STEPS,
            "width": self.width or DEFAULT_SIZE,
            "height": self.height or DEFAULT_SIZE,
            "max_side": MAX_SIDE,  # at most 1024 (or the model's own maximum if lower)
        })
