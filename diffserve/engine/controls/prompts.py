"""`enhance_prompt` and `enhance_style`: prompt rewriting, pure Python (no model involved).

Applied once at submit time, so the job stores (and `meta` shows) the prompts the model actually
gets. Order: the style template wraps the client's prompt first, then `enhance_prompt` appends
the quality terms; negative terms are appended to the client's negative prompt the same way.

The style presets (every style name on the ModelsLab v6 img2img page) are data, in style_presets.json:
name -> {"prompt": a template holding `{prompt}` once, "negative": terms added to the negative prompt}.
Written for this project: short, and distinct for each style. Read once, on first use.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

from diffserve.core.errors import InvalidInput

QUALITY_TERMS = "highly detailed, sharp focus, balanced composition, natural lighting, rich color, high quality"
QUALITY_NEGATIVE = ("blurry, low quality, lowres, jpeg artifacts, noisy, watermark, signature, text, "
                    "deformed, bad anatomy, extra limbs, cropped, out of frame")


@cache
def styles() -> dict[str, tuple[str, str]]:
    """style name -> (prompt template, negative terms)."""
    presets = json.loads((Path(__file__).with_name("style_presets.json")).read_text(encoding="utf-8"))
    return {name: (preset["prompt"], preset["negative"]) for name, preset in presets.items()}


def style_name(value: str | None) -> str | None:
    """The canonical style name (case and surrounding spaces ignored), or a 400 naming the value."""
    if value is None:
        return None
    name = value.strip().lower()
    if name not in styles():
        raise InvalidInput(
            f"enhance_style {value!r} is not a known style; use one of the style names of the "
            f"ModelsLab v6 img2img page (e.g. cinematic, anime, watercolor, pixel-art)",
            field="enhance_style",
        )
    return name


def enhance(prompt: str, negative_prompt: str | None, *, enhance_prompt: bool,
            style: str | None) -> tuple[str, str | None]:
    """(prompt, negative_prompt) after the style preset and the quality terms."""
    negatives = [negative_prompt.strip()] if negative_prompt and negative_prompt.strip() else []
    if style is not None:
        template, style_negative = styles()[style]
        prompt = template.format(prompt=prompt.strip())
        negatives.append(style_negative)
    if enhance_prompt:
        prompt = f"{prompt.strip()}, {QUALITY_TERMS}"
        negatives.append(QUALITY_NEGATIVE)
    return prompt, (", ".join(negatives) if negatives else negative_prompt)
