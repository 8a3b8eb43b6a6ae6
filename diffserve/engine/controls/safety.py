"""The NSFW safety checker: `safety_checker` and `safety_checker_type`, as an engine post-processor.

The checker is diffusers' `StableDiffusionSafetyChecker` with its `CLIPImageProcessor`, loaded once
per worker on first use (`SafetyCheckers`, held by the engine) and run on every finished batch of a
request with `safety_checker` on. A flagged image is replaced by the requested treatment:

* `black`: an all-black image;
* `blur`: a Gaussian blur with a radius of 1/16 of the image's longest side;
* `pixelate`: blocks of 1/16 of the longest side (at least 4 px), each one flat colour;
* `sensitive_content_text` (the default): a dark panel with the notice "Sensitive content".

Which checker (setting `DIFFSERVE_SAFETY_CHECKER`): `auto` (default) uses the built-in tiny
checker `tiny` for the built-in tiny models (their images are noise) and
`CompVis/stable-diffusion-safety-checker` (hub id, through the HF cache) for every other model;
or name one checker for all models: a hub id, a local folder (config.json, weights,
preprocessor_config.json), `tiny` (never flags) or `tiny-flag-all` (flags everything; tests).
A checker that cannot be loaded fails the job with a reason saying how to fix it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from diffserve.core.errors import GenerationFailed
from diffserve.engine.tiny.safety import TINY_SAFETY_CHECKERS, build_tiny_safety_checker

if TYPE_CHECKING:
    from diffserve.engine.controls.base import ControlContext
    from diffserve.engine.families.base import RunInputs
    from diffserve.engine.models.registry import ModelEntry

log = logging.getLogger(__name__)

REAL_CHECKER = "CompVis/stable-diffusion-safety-checker"
SHARED_KEY = "safety_checker"  # where the engine keeps its SafetyCheckers in ControlContext.shared
NOTICE = "Sensitive content"


class SafetyCheckers:
    """The checkers one worker uses, each loaded once (lazily) and kept."""

    def __init__(self, setting: str = "auto", *, models_dir: Path | None = None, device: str = "cpu") -> None:
        self.setting = setting
        self._models_dir = models_dir
        self._device = device
        self._loaded: dict[str, tuple[Any, Any]] = {}  # source -> (checker, image processor)
        self.loads = 0

    def source_for(self, entry: ModelEntry) -> str:
        if self.setting == "auto":
            return "tiny" if entry.builtin else REAL_CHECKER
        return self.setting

    def flags(self, images: list[Image.Image], entry: ModelEntry) -> list[bool]:
        """One flag per image: True when the checker finds NSFW content."""
        checker, processor = self._get(self.source_for(entry), entry)
        pixels = processor(images=[img.convert("RGB") for img in images], return_tensors="pt").pixel_values
        arrays = [np.asarray(img, dtype=np.float32) / 255.0 for img in images]
        with torch.no_grad():
            _, flagged = checker(clip_input=pixels.to(self._device, torch.float32), images=arrays)
        return [bool(f) for f in flagged]

    def _get(self, source: str, entry: ModelEntry) -> tuple[Any, Any]:
        if source not in self._loaded:
            self._loaded[source] = self._load(source, entry)
            self.loads += 1
        return self._loaded[source]

    def _load(self, source: str, entry: ModelEntry) -> tuple[Any, Any]:
        from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
        from transformers import CLIPImageProcessor

        location = source
        try:
            if source in TINY_SAFETY_CHECKERS:
                base = self._models_dir or (Path(entry.location).parent if entry.builtin else None)
                if base is None:
                    raise FileNotFoundError("no models folder to build the tiny checker in")
                location = str(build_tiny_safety_checker(base / f"safety-checker-{source}", source))
            checker = StableDiffusionSafetyChecker.from_pretrained(location).to(self._device, torch.float32).eval()
            processor = CLIPImageProcessor.from_pretrained(location)
        except Exception as e:
            log.exception("could not load the safety checker %s", source)
            raise GenerationFailed(
                f"The safety checker {source} could not be loaded ({type(e).__name__}); the operator can set "
                f"DIFFSERVE_SAFETY_CHECKER to a local checker folder, or send safety_checker=no") from e
        # diffusers logs "a black image will be returned" for every flag: our treatment replaces it.
        logging.getLogger(StableDiffusionSafetyChecker.__module__).setLevel(logging.ERROR)
        log.info("safety checker %s loaded from %s", source, location)
        return checker, processor


# --------------------------------------------------------------------------------------------
# Treatments of a flagged image
# --------------------------------------------------------------------------------------------


def obscure(img: Image.Image, kind: str) -> Image.Image:
    img = img.convert("RGB")
    if kind == "black":
        return Image.new("RGB", img.size)
    if kind == "blur":
        return img.filter(ImageFilter.GaussianBlur(radius=max(img.size) / 16))
    if kind == "pixelate":
        return pixelate(img, max(4, max(img.size) // 16))
    if kind == "sensitive_content_text":
        return notice(img.size)
    raise ValueError(f"unknown safety_checker_type {kind!r}")


def pixelate(img: Image.Image, block: int) -> Image.Image:
    w, h = img.size
    small = img.resize((-(-w // block), -(-h // block)), Image.Resampling.BOX)
    return small.resize((small.width * block, small.height * block), Image.Resampling.NEAREST).crop((0, 0, w, h))


def notice(size: tuple[int, int]) -> Image.Image:
    """A dark panel with "Sensitive content" centred, as large as fits (two lines on narrow images)."""
    w, h = size
    panel = Image.new("RGB", size, (32, 32, 36))
    draw = ImageDraw.Draw(panel)
    font, lines = _fit(draw, w, h)
    heights = [draw.textbbox((0, 0), line, font=font)[3] for line in lines]
    y = (h - sum(heights) * 1.2) / 2
    for line, lh in zip(lines, heights, strict=True):
        draw.text((w / 2, y), line, font=font, fill=(235, 235, 235), anchor="mt")
        y += lh * 1.2
    return panel


def _fit(draw: ImageDraw.ImageDraw, w: int, h: int) -> tuple[ImageFont.FreeTypeFont, list[str]]:
    """The largest font (6 to 96 px) that fits, on one line or on two, whichever allows it larger."""
    best = (6, NOTICE.split())
    for lines in ([NOTICE], NOTICE.split()):
        for size in range(min(h // (3 * len(lines)), 96), best[0], -1):
            font = ImageFont.load_default(size=size)
            if max(draw.textlength(line, font=font) for line in lines) <= 0.9 * w:
                best = (size, lines)
                break
    return ImageFont.load_default(size=best[0]), best[1]


# --------------------------------------------------------------------------------------------
# The post-processor
# --------------------------------------------------------------------------------------------


def safety_postprocessor(pipe: Any, images: list[Image.Image], nsfw: list[bool], inputs: RunInputs,
                         ctx: ControlContext) -> tuple[list[Image.Image], list[bool]]:
    req = inputs.request
    if not req.safety_checker or not images:
        return images, nsfw
    checkers: SafetyCheckers = ctx.shared[SHARED_KEY]
    flagged = checkers.flags(images, ctx.entry)
    out = [obscure(img, req.safety_checker_type) if f else img for img, f in zip(images, flagged, strict=True)]
    return out, [a or b for a, b in zip(nsfw, flagged, strict=True)]
