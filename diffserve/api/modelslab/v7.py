"""ModelsLab v7 image-to-image (the path ModelsLab's CLI calls): the v6 request, plus

`init_image` as a string or a list (the first is the init image, the rest -- and `init_image_2` -- are
reference images where the model takes them, else a 400 naming init_image) and `aspect_ratio` ("1:1",
"16:9"... when no width/height: the longer side is the model's largest size up to 1024). The key may come in
a `Key` header (common.key_text).
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from diffserve.api.loose import LooseStr, Text
from diffserve.api.modelslab.protocol import MAX_SIDE, DraftContext, V6Img2ImgRequest
from diffserve.core.errors import InvalidInput
from diffserve.core.request import ModelLimits, RequestDraft


class V7Img2ImgRequest(V6Img2ImgRequest):
    """POST /api/v7/images/image-to-image."""

    init_image: Any = Field(None, description="one image (URL, base64, data URI) or a list of them")
    init_image_2: Text = Field(None, description="a second (reference) image")
    aspect_ratio: LooseStr = Field(None, description='output aspect ratio, e.g. "1:1", "16:9" (no width/height)')

    def to_draft(self, ctx: DraftContext) -> RequestDraft:
        images = self.init_image if isinstance(self.init_image, list) else [self.init_image]
        if not images or not all(isinstance(i, str) or i is None for i in images):
            raise InvalidInput("init_image must be a string or a list of strings", field="init_image")
        first, *extra = [i for i in images if i and i.strip()] or [None]
        if self.init_image_2 and self.init_image_2.strip():
            extra.append(self.init_image_2.strip())
        draft = self.model_copy(update={"init_image": first}).base_draft(ctx.default_model, ctx.mode)
        update: dict[str, Any] = {"extra_images": extra, "extra_images_field": "init_image"}
        if self.aspect_ratio and self.width is None and self.height is None:
            assert ctx.limits_of is not None, "the v7 page's context names the models' limits"
            update["width"], update["height"] = aspect_size(self.aspect_ratio, ctx.limits_of(draft.model_id))
        return draft.model_copy(update=update)


def aspect_size(ratio: str, limits: ModelLimits) -> tuple[int, int]:
    try:
        w, h = (float(part) for part in ratio.split(":"))
        if w <= 0 or h <= 0 or max(w / h, h / w) > 16:
            raise ValueError
    except ValueError:
        raise InvalidInput(f'aspect_ratio must look like "16:9" (got {ratio!r})', field="aspect_ratio") from None
    side, step = min(limits.max_size, MAX_SIDE), limits.size_multiple
    long_, short = side, max(limits.min_size, int(side * min(w, h) / max(w, h)) // step * step)
    return (long_, short) if w >= h else (short, long_)
