"""Qolaba getImagetoImage fields, in the vendor page's order, in the loose forms clients send."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from pydantic_core import PydanticCustomError

from diffserve.core.errors import InvalidInput
from diffserve.core.request import RequestDraft, check_range
from diffserve.media.inputs import is_base64_image
from diffserve.api.loose import LooseBool, LooseFloat, LooseInt, LooseStr, Text
from diffserve.api.qolaba.apps import ResolvedApp, sizes_text

INFERENCE_TYPES = ("a10g", "a100", "h100")
MAX_INPUT_SIDE = 1536  # "adjusted to fit within 1536x1536 ... preserving the original aspect ratio"
MIN_SIDE, MAX_SIDE = 256, 1536
MAX_BATCH = 8
MIN_GUIDANCE, MAX_GUIDANCE = 1, 30


def _to_url_list(v: Any) -> list[str] | None:
    """`file_urls`: a JSON list of URLs (or base64 images), or one URL as a string."""
    if v is None or v == "" or v == []:
        return None
    if isinstance(v, str):
        return [v.strip()]
    if isinstance(v, list) and all(isinstance(item, str) and item.strip() for item in v):
        return [item.strip() for item in v]
    raise PydanticCustomError("url_list", "must be a list of image URLs")


UrlList = Annotated[list[str] | None, BeforeValidator(_to_url_list)]


class QolabaImg2ImgRequest(BaseModel):
    """POST /getImagetoImage (and /getImageToImage). The key is the `Authorization: Bearer` token."""

    model_config = ConfigDict(extra="ignore")

    app_id: LooseStr = Field(None, description="which model: see the app id table")
    image: Text = Field(None, description="URL (or base64) of the reference image; fitted within 1536x1536")
    prompt: Text = None
    file_urls: UrlList = Field(None, description="extra reference images (Flux Kontext: several inputs)")
    guidance_scale: LooseFloat = Field(None, description="1-30")
    batch: LooseInt = Field(None, description="images to generate, 1-8")
    strength: LooseFloat = Field(None, description="0-1: how far from the reference image")
    height: LooseInt = Field(None, description="256-1536; apps with fixed sizes need one of theirs")
    width: LooseInt = Field(None, description="256-1536; apps with fixed sizes need one of theirs")
    negative_prompt: Text = None
    celery: LooseBool = Field(None, description="true: answer PENDING with a task_id at once")
    inference_type: LooseStr = Field(None, description="a10g | a100 | h100: the GPU class to run on")

    def required_app_id(self) -> str:
        if not self.app_id or not self.app_id.strip():
            raise InvalidInput("app_id is required", field="app_id")
        return self.app_id.strip()

    def to_draft(self, app: ResolvedApp, size_multiple: int, worker_label: str | None) -> RequestDraft:
        if not self.image or not self.image.strip():
            raise InvalidInput("image is required", field="image")
        if self.inference_type is not None and self.inference_type.strip().lower() not in INFERENCE_TYPES:
            raise InvalidInput(f"inference_type must be one of: {', '.join(INFERENCE_TYPES)} "
                               f"(got {self.inference_type!r})", field="inference_type")
        check_range("batch", self.batch, 1, MAX_BATCH)
        check_range("guidance_scale", self.guidance_scale, MIN_GUIDANCE, MAX_GUIDANCE)
        check_range("strength", self.strength, 0, 1)
        if not app.sizes:  # apps with fixed sizes check the pair against their list instead
            check_range("height", self.height, MIN_SIDE, MAX_SIDE)
            check_range("width", self.width, MIN_SIDE, MAX_SIDE)
        height, width = self._size(app, size_multiple)
        return RequestDraft(
            model_id=app.model_id,
            prompt=self.prompt or "",
            init_image=self.image.strip(),
            init_image_field="image",
            extra_images=list(self.file_urls or []),
            negative_prompt=self.negative_prompt or None,
            width=width,
            height=height,
            samples=self.batch,
            guidance_scale=self.guidance_scale,
            strength=self.strength,
            worker_label=worker_label,
            max_side=MAX_INPUT_SIDE,
        )

    def _size(self, app: ResolvedApp, multiple: int) -> tuple[int | None, int | None]:
        """Apps with fixed sizes: one of theirs (default 1024x1024 when offered, else the first), rounded
        down to the model's multiple. Other apps take the input image's size (height/width ignored)."""
        if not app.sizes:
            return None, None
        if self.height is None and self.width is None:
            height, width = (1024, 1024) if (1024, 1024) in app.sizes else app.sizes[0]
        elif (self.height, self.width) in app.sizes:
            height, width = self.height, self.width
        else:
            raise InvalidInput(f"height x width must be one of {sizes_text(app.sizes)} for {app.name} "
                               f"(got {self.height}x{self.width})", field="height")
        return height // multiple * multiple, width // multiple * multiple

    def echo(self) -> dict[str, Any]:
        """The request as the envelope's `input` shows it (images sent as base64 are not echoed back)."""
        out = self.model_dump()
        if self.image and is_base64_image(self.image):
            out["image"] = "base64"
        if self.file_urls:
            out["file_urls"] = ["base64" if is_base64_image(u) else u for u in self.file_urls]
        return out


class GetImageRequest(BaseModel):
    """POST /getImage: the task status of a request made with `celery: true` (or any other)."""

    model_config = ConfigDict(extra="ignore")

    id: LooseStr = Field(None, description="the task_id")
    refID: LooseStr = Field(None, description="your own reference, echoed back")  # noqa: N815 (vendor name)
