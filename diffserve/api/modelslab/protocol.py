"""ModelsLab v6 img2img request fields, in the vendor page's order, in the loose forms clients send."""

from __future__ import annotations

from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field

from diffserve.core.errors import InvalidInput
from diffserve.core.request import RequestDraft, check_range
from diffserve.api.loose import LooseBool, LooseFloat, LooseInt, LooseStr, Text

# The v6 page's own caps, whatever a model allows (a Flux model takes 8 samples and guidance 30 on Qolaba).
MAX_SAMPLES = 4
MIN_GUIDANCE, MAX_GUIDANCE = 1, 20


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

    def to_draft(self, default_model: str, mode: str = "img2img", mask_image: str | None = None) -> RequestDraft:
        """mode: img2img (this page), txt2img (the text2img page: no init image) or inpaint (+ mask_image)."""
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
            scheduler=_none_word(self.scheduler),
            use_karras_sigmas=_default_yes(self.use_karras_sigmas),
            algorithm_type=_none_word(self.algorithm_type),
            clip_skip=self.clip_skip,
            lora_models=loras,
            lora_strengths=_split_floats("lora_strength", self.lora_strength),
            vae=_none_word(self.vae),
            embeddings_model=_none_word(self.embeddings_model),
            ip_adapter_id=_none_word(self.ip_adapter_id),
            ip_adapter_scale=self.ip_adapter_scale,
            ip_adapter_image=self.ip_adapter_image or None,
            safety_checker=True if self.safety_checker is None else self.safety_checker,
            safety_checker_type=self.safety_checker_type or "sensitive_content_text",
            enhance_prompt=_default_yes(self.enhance_prompt),
            enhance_style=_none_word(self.enhance_style),
            tomesd=_default_yes(self.tomesd),
            output_base64=bool(self.base64),
            temp=bool(self.temp),
            webhook=_check_url("webhook", self.webhook),
            track_id=self.track_id,
        )


class FetchRequest(BaseModel):
    """POST /api/v6/images/fetch[/{id}]: the id comes from the path or from `request_id`."""

    model_config = ConfigDict(extra="ignore")

    key: LooseStr = None
    request_id: LooseInt = Field(None, description="the job id (when it is not in the path)")


def _default_yes(flag: bool | None) -> bool:
    """The page's default for use_karras_sigmas, tomesd and enhance_prompt is "yes" when the field is absent."""
    return True if flag is None else flag


def _none_word(value: str | None) -> str | None:
    """Clients send "none"/"no"/"null" for an unset choice (the vendor's own meta says "no")."""
    if value is None or value.strip().lower() in ("", "none", "no", "null"):
        return None
    return value.strip()


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


def _check_url(field: str, value: str | None) -> str | None:
    if not value or not value.strip():
        return None
    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidInput(f"{field} must be an http(s) URL", field=field)
    return value.strip()
