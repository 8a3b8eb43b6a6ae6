"""What an A1111 generation request asks beyond the draft's fields: `styles` (the style presets, applied as A1111
applies its styles) and `script_name` / `script_args` (the one script diffserve runs: img2img's "SD upscale").

Styles: each named style in order; a style prompt holding `{prompt}` wraps the prompt, another is appended
with ", "; its negative terms are appended to the negative prompt. A name diffserve has no preset for is a 422
naming `styles` (A1111 skips unknown names silently; a client's typo would then be invisible).

Scripts: an unknown `script_name` is a 422, as A1111 answers. "SD upscale" (img2img; args `[info, overlap,
upscaler, scale]`): the init image is scaled by `scale` (A1111's rounding: down to a multiple of 8; upscaler
None keeps its size, as in A1111; Lanczos and Nearest are both resized with Lanczos here), and one img2img pass
runs over the whole upscaled image at `denoising_strength`. A1111 runs the pass tile by tile (`overlap` between tiles); diffserve does not tile: the
upscaled size must fit the model's limits (a 400 naming width otherwise), and `overlap` is not used.
"""

from __future__ import annotations

from typing import Any


from diffserve.config import ImageLimits
from diffserve.core.errors import InvalidInput
from diffserve.core.offload import Offload
from diffserve.media.decode import decode_image
from diffserve.media.inputs import decode_base64
from diffserve.service.styles import style_presets

# A1111's non-neural upscalers (modules/upscaler.py: UpscalerNone, UpscalerLanczos, UpscalerNearest)
UPSCALERS = ("None", "Lanczos", "Nearest")
SCRIPTS = {"img2img": ("sd upscale",), "txt2img": ()}
MAX_STYLES = 16


class ScriptRefused(InvalidInput):
    http_status = 422


def styled(prompt: str, negative: str, names: list[str], presets: dict[str, tuple[str, str]]) -> tuple[str, str]:
    """The prompt and negative prompt with the named styles applied in order."""
    if len(names) > MAX_STYLES:
        raise ScriptRefused(f"styles: at most {MAX_STYLES} styles", field="styles")
    for name in names:
        preset = presets.get(name.strip().lower())
        if preset is None:
            raise ScriptRefused(f"styles: no style named {name[:100]!r} (see /sdapi/v1/prompt-styles)",
                                field="styles")
        template, extra_negative = preset
        prompt = template.replace("{prompt}", prompt) if "{prompt}" in template else ", ".join(
            p for p in (prompt, template) if p)
        negative = ", ".join(p for p in (negative, extra_negative) if p)
    return prompt, negative


def script(name: str | None, mode: str) -> str | None:
    """The script to run (its lower-case name), None for none, a 422 naming script_name for one not served."""
    if not name or not name.strip() or name.strip().lower() == "none":
        return None
    chosen = name.strip().lower()
    if chosen not in SCRIPTS[mode]:
        served = ", ".join(f'"{s}"' for s in SCRIPTS[mode]) or "none"
        raise ScriptRefused(f"script_name: no {mode} script named {name[:100]!r} (diffserve runs: {served})",
                            field="script_name")
    return chosen


def sd_upscale_size(init_image: str, args: list[Any], limits: ImageLimits) -> tuple[int, int, str]:
    """The upscaled size of the init image and the upscaler, from SD upscale's script_args. Blocking: decodes the
    init image through media/decode.py (header pixel count checked before any pixel is decoded)."""
    upscaler = args[2] if len(args) > 2 else "None"
    scale = args[3] if len(args) > 3 else 2.0
    if not isinstance(upscaler, str) or upscaler not in UPSCALERS:
        raise ScriptRefused(f"script_args[2]: no upscaler named {str(upscaler)[:100]!r}; diffserve has "
                            f"{', '.join(UPSCALERS)}", field="script_args")
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 1 <= scale <= 8:
        raise ScriptRefused("script_args[3]: the scale factor must be a number from 1 to 8", field="script_args")
    image = decode_image(decode_base64(init_image, field="init_images", limits=limits), field="init_images",
                         limits=limits)
    if upscaler == "None":  # A1111: the init image as it is, whatever the scale
        return image.width, image.height, upscaler
    return max(8, int(image.width * scale // 8 * 8)), max(8, int(image.height * scale // 8 * 8)), upscaler


async def prepare(req: Any, mode: str, limits: ImageLimits, offload: Offload) -> tuple[Any, str, str]:
    """The request as the script changes it (SD upscale: width and height of the upscaled init image), and the
    prompt and negative prompt with the styles applied."""
    prompt, negative = req.prompt, req.negative_prompt
    if req.styles:
        prompt, negative = styled(prompt, negative, req.styles, await offload(style_presets))
    if script(req.script_name, mode) == "sd upscale" and req.init_images:
        width, height, _ = await offload(sd_upscale_size, req.init_images[0], req.script_args, limits)
        req = req.model_copy(update={"width": width, "height": height, "resize_mode": 0})
    return req, prompt, negative
