"""A1111's hires fix (`enable_hr` on txt2img): each first-pass image is upscaled to `hr_scale` x the size (or
`hr_resize_x` x `hr_resize_y`), then redrawn by an img2img pass at `denoising_strength` (0.7 when not sent; 0
keeps the upscaled image as it is) for `hr_second_pass_steps` (0: the first pass's steps), with the image's own
seed, `hr_prompt` / `hr_negative_prompt` when given.

The upscale runs in pixel space: Lanczos, Nearest, None (Lanczos, as A1111's Upscaler ends with a Lanczos resize)
and A1111's latent modes by name (A1111's default), which A1111 runs on the latents: here the decoded image is
resized with the mode's filter (bilinear, bicubic or nearest) before the img2img pass encodes it again.
The second pass is one img2img job per image, each through the job store like any request.
"""

from __future__ import annotations

import base64
import io
from typing import Any, Awaitable, Callable

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from diffserve.core.errors import InvalidInput
from diffserve.core.job import Job
from diffserve.core.offload import Offload
from diffserve.core.request import RequestDraft

R = Image.Resampling
HR_UPSCALERS = {"None": R.LANCZOS, "Lanczos": R.LANCZOS, "Nearest": R.NEAREST, "Latent": R.BILINEAR,
                "Latent (antialiased)": R.BILINEAR, "Latent (bicubic)": R.BICUBIC,
                "Latent (bicubic antialiased)": R.BICUBIC, "Latent (nearest)": R.NEAREST,
                "Latent (nearest-exact)": R.NEAREST}
LATENT_MODES = [name for name in HR_UPSCALERS if name.startswith("Latent")]


class HiresFields(BaseModel):
    """The txt2img fields of the hires fix (A1111's names and defaults)."""

    model_config = ConfigDict(extra="ignore")

    enable_hr: bool = False
    hr_scale: float = Field(2.0, ge=1, le=4)
    hr_upscaler: str | None = None
    hr_second_pass_steps: int = Field(0, ge=0)
    hr_resize_x: int = Field(0, ge=0)
    hr_resize_y: int = Field(0, ge=0)
    hr_prompt: str = ""
    hr_negative_prompt: str = ""
    denoising_strength: float | None = Field(None, ge=0, le=1)


def hires_size(hr: HiresFields, width: int, height: int) -> tuple[int, int]:
    """The second pass's size, as A1111 works it out (one of hr_resize_x/y given: the other keeps the aspect),
    rounded down to a multiple of 8."""
    if hr.hr_resize_x or hr.hr_resize_y:
        w = hr.hr_resize_x or round(hr.hr_resize_y * width / height)
        h = hr.hr_resize_y or round(hr.hr_resize_x * height / width)
    else:
        w, h = int(width * hr.hr_scale), int(height * hr.hr_scale)
    return max(8, w // 8 * 8), max(8, h // 8 * 8)


def second_draft(hr: HiresFields, draft: RequestDraft) -> RequestDraft:
    """The second pass's draft (no init image yet): refuses an unknown upscaler; the caller checks its limits
    before the first pass runs."""
    if (hr.hr_upscaler or "Latent") not in HR_UPSCALERS:
        raise InvalidInput(f"hr_upscaler: no upscaler named {hr.hr_upscaler[:100]!r} for the hires fix; use one of "
                           f"{', '.join(HR_UPSCALERS)}", field="hr_upscaler")
    width, height = hires_size(hr, draft.width or 512, draft.height or 512)
    strength = 0.7 if hr.denoising_strength is None else hr.denoising_strength
    return draft.model_copy(update=dict(
        width=width, height=height, samples=1, strength=strength, mode="img2img",
        steps=hr.hr_second_pass_steps or draft.steps, prompt=hr.hr_prompt or draft.prompt,
        negative_prompt=hr.hr_negative_prompt or draft.negative_prompt))


def _upscaled(data: bytes, size: tuple[int, int], upscaler: str) -> tuple[bytes, str]:
    """The stored first-pass image (our own PNG) resized: as PNG bytes and as base64. Blocking."""
    image = Image.open(io.BytesIO(data)).convert("RGB").resize(size, HR_UPSCALERS[upscaler])
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue(), base64.b64encode(buf.getvalue()).decode()


async def second_pass(hr: HiresFields, draft: RequestDraft, first: Job, outputs: list[bytes],
                      run: Callable[[RequestDraft], Awaitable[list[bytes]]], offload: Offload) -> list[bytes]:
    """Each first-pass image upscaled (on `offload`) and redrawn (`run` submits a draft and answers its images)."""
    upscaler = hr.hr_upscaler or "Latent"
    result = []
    for i, data in enumerate(outputs):
        upscaled, encoded = await offload(_upscaled, data, (draft.width, draft.height), upscaler)
        if not draft.strength:  # A1111 with strength 0: the upscaled image as it is
            result.append(upscaled)
            continue
        seed = (first.request.seed + i) % 2**64
        result += await run(draft.model_copy(update={"seed": seed, "init_image": encoded}))
    return result


def infotexts(hr: HiresFields, draft: RequestDraft, info: dict[str, Any]) -> None:
    """The hires fields added to each infotext's parameters line, as A1111 writes them."""
    extra = (f", Denoising strength: {draft.strength:g}, Hires upscale: {hr.hr_scale:g}, "
             f"Hires steps: {draft.steps}, Hires upscaler: {hr.hr_upscaler or 'Latent'}")
    if hr.hr_resize_x or hr.hr_resize_y:
        extra = extra.replace(f"Hires upscale: {hr.hr_scale:g}", f"Hires resize: {draft.width}x{draft.height}")
    info["infotexts"] = [text + extra for text in info["infotexts"]]
    info["denoising_strength"] = draft.strength
