"""ModelsLab request fields (v6 img2img, text2img, inpaint; fetch), in the vendor page's order, in the loose
forms clients send; the caps every ModelsLab page shares; the context a page's request becomes a draft in."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field

from diffserve.config import Settings
from diffserve.core.errors import InvalidInput
from diffserve.core.request import ModelLimits, RequestDraft, check_range
from diffserve.api.loose import LooseBool, LooseFloat, LooseInt, LooseStr, Text, unset_word

# The ModelsLab pages' own caps, whatever a model allows (a Flux model takes 8 samples and guidance 30 on Qolaba).
MAX_SAMPLES = 4
MIN_GUIDANCE, MAX_GUIDANCE = 1, 20
MAX_SIDE = 1024  # realtime and pony outputs, and v7's aspect_ratio size (or the model's own maximum if lower)


@dataclass(frozen=True)
class DraftContext:
    """What a page's request needs beyond its body: the settings, the route's default model and mode."""

    settings: Settings
    default_model: str
    mode: str = "img2img"  # img2img, txt2img (no init image) or inpaint (+ mask_image)
    limits_of: Callable[[str], ModelLimits] | None = None  # a model's limits (v7's aspect_ratio)


class V6Img2ImgRequest(BaseModel):
    """POST /api/v6/images/img2img. Unknown fields are ignored, like the vendor does."""

    model_config = ConfigDict(extra="ignore")

    key: LooseStr = Field(None, description="Your API key")
    model_id: LooseStr = Field(None, description="Model id from the registry (default: the server's default model)")
    prompt: Text = None
    negative_prompt: Text = None
    init_image: Text = Field(None, description="http(s) URL, raw base64, or data:image/...;base64,...")
    samples: LooseInt = Field(None, description="images to return, 1-4")
    num_inference_steps: LooseInt = None
    safety_checker: LooseBool = None
    safety_checker_type: LooseStr = None
    enhance_prompt: LooseBool = None
    enhance_style: LooseStr = None
    guidance_scale: LooseFloat = None
    tomesd: LooseBool = None
    use_karras_sigmas: LooseBool = None
    algorithm_type: LooseStr = None
    vae: LooseStr = None
    lora_strength: LooseStr = Field(None, description="comma-separated, one per LoRA, 0.1-1")
    lora_model: LooseStr = Field(None, description="comma-separated LoRA ids")
    strength: LooseFloat = None
    seed: LooseInt = Field(None, description="null for a random seed (returned in meta)")
    scheduler: LooseStr = None
    webhook: LooseStr = None
    track_id: LooseStr = None
    ip_adapter_id: LooseStr = None
    ip_adapter_scale: LooseFloat = None
    ip_adapter_image: Text = None
    clip_skip: LooseInt = None
    base64: LooseBool = None
    temp: LooseBool = None
    embeddings_model: LooseStr = None
    width: LooseInt = None
    height: LooseInt = None
    instant_response: LooseBool = None

    def mask(self) -> str | None:
        """The inpaint pages' mask_image (none on this page)."""
        return None

    def to_draft(self, ctx: DraftContext) -> RequestDraft:
        return self.base_draft(ctx.default_model, ctx.mode, self.mask())

    def base_draft(self, default_model: str, mode: str = "img2img", mask_image: str | None = None) -> RequestDraft:
        """The v6 conversion the other pages share. mode: img2img (this page), txt2img (the text2img page: no
        init image) or inpaint (+ mask_image)."""
        if not self.prompt or not self.prompt.strip():
            raise InvalidInput("prompt is required", field="prompt")
        if mode != "txt2img" and (not self.init_image or not self.init_image.strip()):
            raise InvalidInput("init_image is required", field="init_image")
        check_range("samples", self.samples, 1, MAX_SAMPLES)
        check_range("guidance_scale", self.guidance_scale, MIN_GUIDANCE, MAX_GUIDANCE)
        loras = _split_list(self.lora_model)
        return RequestDraft(
            model_id=(self.model_id or "").strip() or default_model,
            prompt=self.prompt,
            init_image=(self.init_image or "").strip() if mode != "txt2img" else "",
            mode=mode,
            mask_image=mask_image,
            negative_prompt=self.negative_prompt,
            width=self.width,
            height=self.height,
            samples=self.samples,
            steps=self.num_inference_steps,
            guidance_scale=self.guidance_scale,
            strength=self.strength,
            seed=self.seed,
            scheduler=unset_word(self.scheduler),
            use_karras_sigmas=_default_yes(self.use_karras_sigmas),
            algorithm_type=unset_word(self.algorithm_type),
            clip_skip=self.clip_skip,
            lora_models=loras,
            lora_strengths=_split_floats("lora_strength", self.lora_strength),
            vae=unset_word(self.vae),
            embeddings_model=unset_word(self.embeddings_model),
            ip_adapter_id=unset_word(self.ip_adapter_id),
            ip_adapter_scale=self.ip_adapter_scale,
            ip_adapter_image=self.ip_adapter_image or None,
            safety_checker=True if self.safety_checker is None else self.safety_checker,
            safety_checker_type=self.safety_checker_type or "sensitive_content_text",
            enhance_prompt=_default_yes(self.enhance_prompt),
            enhance_style=unset_word(self.enhance_style),
            tomesd=_default_yes(self.tomesd),
            output_base64=bool(self.base64),
            temp=bool(self.temp),
            webhook=check_url("webhook", self.webhook),
            track_id=self.track_id,
        )


class V6InpaintRequest(V6Img2ImgRequest):
    """POST /api/v6/images/inpaint (and its enterprise and v7 twins): the v6 fields plus the mask."""

    mask_image: Text = Field(None, description="the mask: URL, base64 or data URI; white = repaint, black = keep")

    def mask(self) -> str | None:
        return (self.mask_image or "").strip() or None


class FetchRequest(BaseModel):
    """POST /api/v6/images/fetch[/{id}]: the id comes from the path or from `request_id`."""

    model_config = ConfigDict(extra="ignore")

    key: LooseStr = None
    request_id: LooseInt = Field(None, description="the job id (when it is not in the path)")


def _default_yes(flag: bool | None) -> bool:
    """The page's default for use_karras_sigmas, tomesd and enhance_prompt is "yes" when the field is absent."""
    return True if flag is None else flag


def _split_list(value: str | None) -> list[str]:
    return [p.strip() for p in (value or "").split(",") if p.strip()]


def _split_floats(field: str, value: str | None) -> list[float]:
    out = []
    for part in _split_list(value):
        try:
            out.append(float(part))
        except ValueError:
            raise InvalidInput(f"{field} must be comma-separated numbers (got {part!r})", field=field) from None
    return out


def check_url(field: str, value: str | None) -> str | None:
    """An http(s) URL with a host, stripped; None when blank; a 400 naming `field` otherwise."""
    if not value or not value.strip():
        return None
    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidInput(f"{field} must be an http(s) URL", field=field)
    return value.strip()


class RequestCountRequest(BaseModel):
    """POST /api/v6/processing/request_count: how many of this key's jobs are queued or running."""

    model_config = ConfigDict(extra="ignore")

    key: LooseStr = None
