"""ModelsLab enterprise realtime img2img fields, in the vendor page's order; the realtime text2img page (the
same fields, init_image unused) and inpaint page (plus mask_image, white = repaint) that the official SDK's
`Realtime` calls share them.

No `model_id`, no steps, no guidance: the server's realtime model (a few-step model) serves every
request with the operator's realtime settings (`DIFFSERVE_REALTIME_MODEL`, `_SCHEDULER`, `_STEPS`,
`_GUIDANCE`). Flags are JSON booleans on this page; "yes"/"no" are accepted too.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from diffserve.core.request import RequestDraft, check_range
from diffserve.api.loose import LooseBool, LooseFloat, LooseInt, LooseStr, Text, unset_word
from diffserve.api.modelslab.protocol import MAX_SAMPLES, MAX_SIDE, DraftContext, V6Img2ImgRequest


class RealtimeImg2ImgRequest(BaseModel):
    """POST /api/v1/enterprise/realtime/img2img and /api/v6/realtime/img2img (text2img: the same fields)."""

    model_config = ConfigDict(extra="ignore")

    key: LooseStr = Field(None, description="Your API key")
    prompt: Text = None
    negative_prompt: Text = None
    init_image: Text = Field(None, description="http(s) URL, raw base64, or data:image/...;base64,...")
    width: LooseInt = Field(None, description="at most 1024 (default: the init image's width)")
    height: LooseInt = Field(None, description="at most 1024 (default: the init image's height)")
    samples: LooseInt = Field(None, description="images to return, 1-4")
    temp: LooseBool = None
    safety_checker: LooseBool = Field(None, description="default true")
    strength: LooseFloat = None
    seed: LooseInt = Field(None, description="null for a random seed (returned in meta)")
    webhook: LooseStr = None
    track_id: LooseStr = None
    base64: LooseBool = Field(None, description="answer with base64 images (default false)")
    instant_response: LooseBool = Field(None, description="answer `processing` at once (default false)")
    enhance_prompt: LooseBool = None

    def mask(self) -> str | None:
        return None

    def to_draft(self, ctx: DraftContext) -> RequestDraft:
        """ctx.mode: img2img, txt2img (init_image ignored) or inpaint (mask_image required);
        ctx.default_model: the realtime model."""
        check_range("samples", self.samples, 1, MAX_SAMPLES)
        # the v6 conversion (required fields, flags, webhook URL) is shared, on the fields this page has;
        # the v6 page's "yes" defaults do not apply to flags this page does not have
        fields = {**self.model_dump(), "enhance_prompt": bool(self.enhance_prompt)}
        v6 = V6Img2ImgRequest.model_construct(**fields, model_id=ctx.default_model, tomesd=False,
                                              use_karras_sigmas=False)
        draft = v6.base_draft(ctx.default_model, ctx.mode, self.mask())
        dialect = ctx.settings.dialects
        return draft.model_copy(update={
            "steps": dialect.realtime_steps,
            "guidance_scale": dialect.realtime_guidance,
            "scheduler": unset_word(dialect.realtime_scheduler),
            "max_side": MAX_SIDE,  # width/height at most 1024 (or the model's own maximum if lower)
        })


class RealtimeInpaintRequest(RealtimeImg2ImgRequest):
    """POST /api/v1/enterprise/realtime/inpaint and /api/v6/realtime/inpaint."""

    mask_image: Text = Field(None, description="the mask: URL, base64 or data URI; white = repaint, black = keep")

    def mask(self) -> str | None:
        return (self.mask_image or "").strip() or None
