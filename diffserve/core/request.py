"""The canonical generation request: the one engine-facing type every dialect converts into.

Dialects parse their vendor's loose fields into a RequestDraft; service/validation.py's `validate` checks it
in one stated order (the range checks here quote the bad value in the vendor's wording) and resolves it into a
GenerationRequest. Nothing in here knows which vendor asked.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from diffserve.core.errors import InvalidInput
from diffserve.core.step_cache import StepCache
from diffserve.core.text import check_text

MAX_SEED = 2**64 - 1  # torch.Generator.manual_seed accepts 0 .. 2**64-1


class ModelLimits(BaseModel):
    """What one model accepts. Defaults follow the ModelsLab v6 page."""

    model_config = ConfigDict(frozen=True)

    min_size: int = 64
    max_size: int = 1024
    size_multiple: int = 8
    min_steps: int = 1
    max_steps: int = 50
    default_steps: int = 31
    min_guidance: float = 1.0
    max_guidance: float = 20.0
    default_guidance: float = 7.5
    max_samples: int = 4
    default_strength: float = 0.7
    default_width: int | None = None  # output size when the request gives none; None: follow the init image
    default_height: int | None = None

    def default_size(self) -> tuple[int, int]:
        """The size with no init image to follow (text to image, warm-up): the defaults, else 512 px (or the
        largest allowed) on the model's multiple."""
        side = min(512, self.max_size) // self.size_multiple * self.size_multiple
        return self.default_width or side, self.default_height or side


class RequestOptions(BaseModel):
    """The fields a draft carries unchanged into the resolved request: controls, assets, delivery."""

    model_id: str
    prompt: str
    negative_prompt: str | None = None
    scheduler: str | None = None
    use_karras_sigmas: bool = False
    algorithm_type: str | None = None
    clip_skip: int | None = None
    eta_noise_seed_delta: int = 0  # ancestral/SDE samplers' between-step noise from seed + i + this (A1111's ENSD)
    lora_models: list[str] = Field(default_factory=list)
    lora_strengths: list[float] = Field(default_factory=list)
    vae: str | None = None
    embeddings_model: str | None = None
    ip_adapter_id: str | None = None
    ip_adapter_scale: float | None = None
    ip_adapter_image: str | None = None
    safety_checker: bool = True
    safety_checker_type: str = "sensitive_content_text"
    enhance_prompt: bool = False
    enhance_style: str | None = None
    tomesd: bool = False
    # per-request step caching (core/step_cache.py); None: the model's own setting (models.json), else off
    step_cache: StepCache | None = None
    tiling: bool = False  # seamless tiles: circular padding in the UNet's and VAE's convolutions (A1111's tiling)
    output_base64: bool = False
    temp: bool = False
    webhook: str | None = None
    track_id: str | None = None
    worker_label: str | None = None  # run only on workers with this label (GPU class); None: any worker
    mode: Literal["img2img", "txt2img", "inpaint"] = Field(
        "img2img", description="img2img (init image + strength), txt2img (no init image) or inpaint (init image + "
                               "mask: white is repainted)")


class GenerationRequest(RequestOptions):
    """Everything the engine needs for one job, already resolved (seed chosen, size decided)."""

    model_config = ConfigDict(frozen=True)

    init_image_key: str = Field(description="storage key of the decoded init image (PNG, already width x height); "
                                            "empty for txt2img")
    mask_image_key: str | None = Field(None, description="inpaint: storage key of the mask (PNG, width x height)")
    extra_image_keys: list[str] = Field(default_factory=list, description="reference images (PNG), as sent")
    ip_adapter_image_key: str | None = None
    width: int
    height: int
    samples: int = 1
    steps: int
    guidance_scale: float
    strength: float
    seed: int


def check_range(field: str, value: float | int | None, lo: float, hi: float) -> None:
    """The vendor's wording, then the value sent (as diffusers' check_inputs quotes it):
    'samples must be between 1 and 4 but is 5'."""
    if value is not None and not (lo <= value <= hi):
        raise InvalidInput(f"{field} must be between {_num(lo)} and {_num(hi)} but is {quoted(value)}", field=field)


def check_size(field: str, value: int | None, limits: ModelLimits) -> None:
    """'height must be divisible by 8 but is 1001'."""
    if value is None:
        return
    check_range(field, value, limits.min_size, limits.max_size)
    if value % limits.size_multiple:
        raise InvalidInput(f"{field} must be divisible by {limits.size_multiple} but is {quoted(value)}", field=field)


def quoted(value: object, limit: int = 40) -> str:
    """A client's value in an error message: numbers as written (1.5, 3, 1e+308), text cut at `limit`."""
    text = _num(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)
    return text if len(text) <= limit else text[:limit] + "..."


def output_size(
    init_w: int, init_h: int, width: int | None, height: int | None, limits: ModelLimits
) -> tuple[int, int]:
    """The output size: the requested width/height when given, else the init image's size.

    An init image larger than the model's maximum is scaled down to fit (aspect kept), then the
    size is rounded down to the model's multiple (8), as the vendor states. Too small is an error.
    """
    if width is None and height is None and limits.default_width and limits.default_height:
        return limits.default_width, limits.default_height
    if width is not None and height is not None:
        return width, height
    w, h = float(init_w), float(init_h)
    if width is not None:  # one side given: keep the init image's aspect ratio
        w, h = width, h * width / w
    elif height is not None:
        w, h = w * height / h, height
    scale = min(1.0, limits.max_size / max(w, h))
    m = limits.size_multiple
    out_w, out_h = int(w * scale) // m * m, int(h * scale) // m * m
    if min(out_w, out_h) < limits.min_size:
        raise InvalidInput(
            f"init_image is too small: {init_w}x{init_h} gives {out_w}x{out_h}, "
            f"the model needs at least {limits.min_size}x{limits.min_size}",
            field="init_image",
        )
    return out_w, out_h


def _num(x: float | int) -> str:
    if isinstance(x, int):
        return str(x)
    return str(int(x)) if x.is_integer() and abs(x) < 1e16 else str(x)


class RequestDraft(RequestOptions):
    """A dialect's request after type coercion, before the model's limits and the init image are known.

    Unset numbers are None: the model's defaults fill them in `resolve`.
    """

    init_image: str = Field("", description="what the client sent: URL, base64 or data URI (empty for txt2img)")
    init_image_field: str = Field("init_image", description="the dialect's name for init_image, in errors")
    extra_images: list[str] = Field(default_factory=list, description="reference images: URL/base64 each")
    extra_images_field: str = Field("file_urls", description="the dialect's name for extra_images, in errors")
    mask_image: str | None = Field(None, description="inpaint: the mask (URL/base64; white = repaint)")
    mask_field: str = Field("mask_image", description="the dialect's name for the mask, in errors")
    width: int | None = None
    height: int | None = None
    samples: int | None = None
    steps: int | None = None
    guidance_scale: float | None = None
    strength: float | None = None
    seed: int | None = None
    max_side: int | None = Field(None, description="the dialect's cap on width/height, below the model's own")

    def check(self, limits: ModelLimits) -> None:
        """Every range check, in the vendor's wording, before any image is fetched."""
        check_range("samples", self.samples, 1, limits.max_samples)
        check_range("num_inference_steps", self.steps, limits.min_steps, limits.max_steps)
        check_range("guidance_scale", self.guidance_scale, limits.min_guidance, limits.max_guidance)
        check_range("strength", self.strength, 0, 1)
        check_size("width", self.width, limits)
        check_size("height", self.height, limits)
        check_range("seed", self.seed, 0, MAX_SEED)
        check_range("clip_skip", self.clip_skip, 1, 8)
        check_range("eta_noise_seed_delta", self.eta_noise_seed_delta, 0, 2**32 - 1)
        check_range("ip_adapter_scale", self.ip_adapter_scale, 0, 1)
        check_choice("scheduler", self.scheduler, SCHEDULERS)
        check_choice("safety_checker_type", self.safety_checker_type, SAFETY_CHECKER_TYPES)
        check_choice("ip_adapter_id", self.ip_adapter_id, IP_ADAPTER_IDS)
        check_choice("algorithm_type", self.algorithm_type, ALGORITHM_TYPES)
        for s in self.lora_strengths:
            check_range("lora_strength", s, 0.1, 1)
        if self.lora_strengths and len(self.lora_strengths) not in (1, len(self.lora_models)):
            raise InvalidInput(
                f"lora_strength has {len(self.lora_strengths)} values for {len(self.lora_models)} lora_model ids",
                field="lora_strength",
            )

    def check_lengths(self, max_prompt_chars: int, max_text_chars: int) -> None:
        """Bound every text field (images excepted: their byte limits apply) and refuse text that is not
        valid Unicode (a lone surrogate: it could be neither stored nor answered). Runs before any check
        that quotes a value, so no error echoes a huge or unprintable string."""
        for name, value in self.__dict__.items():  # the fields (no extras); iter(self) copies them to a list first
            if not isinstance(value, (str, list, dict)):  # no text in it (most fields: None)
                continue
            check_text(value, _VENDOR_NAMES.get(name, name))  # every dialect's backstop: nothing invalid is queued
            if name in _IMAGE_FIELDS:
                continue
            limit = max_prompt_chars if name in _PROMPT_FIELDS else max_text_chars
            for text in (value if isinstance(value, list) else [value]):
                if isinstance(text, str) and len(text) > limit:
                    field = _VENDOR_NAMES.get(name, name)
                    raise InvalidInput(f"{field} is too long: {len(text)} characters (max {limit})", field=field)

    def resolve(
        self, limits: ModelLimits, *, init_image_key: str, width: int, height: int, seed: int,
        extra_image_keys: list[str] | None = None, ip_adapter_image_key: str | None = None,
        mask_image_key: str | None = None,
    ) -> GenerationRequest:
        fields = self.model_dump(include=set(RequestOptions.model_fields))
        return GenerationRequest(
            **fields,
            init_image_key=init_image_key,
            extra_image_keys=extra_image_keys or [],
            ip_adapter_image_key=ip_adapter_image_key,
            mask_image_key=mask_image_key,
            width=width,
            height=height,
            samples=self.samples or 1,
            steps=self.steps if self.steps is not None else limits.default_steps,
            guidance_scale=self.guidance_scale if self.guidance_scale is not None else limits.default_guidance,
            strength=self.strength if self.strength is not None else limits.default_strength,
            seed=seed,
        )


# Vendor vocabularies (ModelsLab v6 page). Which of them a model can apply is the engine's business.
SCHEDULERS = (
    "DDPMScheduler", "DDIMScheduler", "PNDMScheduler", "LMSDiscreteScheduler", "EulerDiscreteScheduler",
    "EulerAncestralDiscreteScheduler", "DPMSolverMultistepScheduler", "HeunDiscreteScheduler",
    "KDPM2DiscreteScheduler", "DPMSolverSinglestepScheduler", "KDPM2AncestralDiscreteScheduler",
    "UniPCMultistepScheduler", "DDIMInverseScheduler", "DEISMultistepScheduler", "IPNDMScheduler",
    "KarrasVeScheduler", "ScoreSdeVeScheduler", "LCMScheduler",
)
SAFETY_CHECKER_TYPES = ("blur", "sensitive_content_text", "pixelate", "black")
IP_ADAPTER_IDS = (
    "ip-adapter_sdxl", "ip-adapter_sd15", "ip-adapter-plus-face_sd15",
    "ip-adapter-plus_sdxl_vit-h", "ip-adapter-plus-face_sdxl_vit-h",
)
ALGORITHM_TYPES = ("dpmsolver+++", "dpmsolver++", "sde-dpmsolver++")  # the vendor's, then diffusers' own names


_IMAGE_FIELDS = frozenset({"init_image", "extra_images", "ip_adapter_image", "mask_image"})
_PROMPT_FIELDS = frozenset({"prompt", "negative_prompt"})
_VENDOR_NAMES = {"lora_models": "lora_model", "steps": "num_inference_steps"}


def check_batch_pixels(samples: int, width: int, height: int, max_pixels: int) -> None:
    """One request's total output (samples x width x height) against the server's bound."""
    total = samples * width * height
    if total > max_pixels:
        raise InvalidInput(
            f"samples x width x height is too large: {samples} x {width} x {height} = {total} pixels "
            f"(max {max_pixels})", field="samples")


def check_reference_count(draft: RequestDraft, max_references: int) -> None:
    """The reference images besides the init image, counted before any is fetched or decoded."""
    count = len(draft.extra_images)
    if count > max_references:
        raise InvalidInput(f"{draft.extra_images_field}: too many reference images: {count} (max {max_references} "
                           f"besides the init image)", field=draft.extra_images_field)


def check_choice(field: str, value: str | None, choices: tuple[str, ...]) -> None:
    if value is not None and value not in choices:
        raise InvalidInput(f"{field} must be one of: {', '.join(choices)} (got {value!r})", field=field)
