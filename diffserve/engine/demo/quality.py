"""How well demo-sd does what it was trained for, measured on held-out photos (bench/demo_quality.py prints
the figures, tests/test_demo_sd.py asserts their directions).

For an edit word: the output should be closer to the edit's target than a neutral prompt's output
(`word_gain`, in dB of PSNR; `target_gain` compares with the input itself), and the edit's own measure
should move the expected way from the neutral output (`EFFECTS`). For a prompt outside the vocabulary: the
output should stay close to the input. Torch and diffusers are imported inside functions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from diffserve.engine.demo import DEMO_SD_LIMITS, edits

DEFAULT_STEPS = DEMO_SD_LIMITS.default_steps
DEFAULT_STRENGTH = DEMO_SD_LIMITS.default_strength


def _luma_correlation(before: np.ndarray, after: np.ndarray) -> float:
    a, b = before @ np.array([0.299, 0.587, 0.114]), after @ np.array([0.299, 0.587, 0.114])
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


@dataclass(frozen=True)
class Effect:
    """One edit's measure: `measure(image)` (or `measure(input, output)` when `paired`), and which way it moves."""

    name: str
    measure: Callable[..., float]
    direction: int  # +1: the edit raises it, -1: lowers it
    paired: bool = False

    def value(self, before: np.ndarray, after: np.ndarray) -> float:
        return self.measure(before, after) if self.paired else self.measure(after)

    def moved(self, before: np.ndarray, after: np.ndarray) -> float:
        """How far the measure moved in the edit's direction (positive: the right way)."""
        start = 1.0 if self.paired else self.measure(before)
        return self.direction * (self.value(before, after) - start)


def _sepia_distance(x: np.ndarray) -> float:
    """How far the colours are from the sepia tone: the angle (degrees) between each pixel's RGB and the tone
    that sepia gives a grey, weighted by the pixel's brightness (0: every pixel is a shade of the tone)."""
    tone = edits.sepia(np.full((1, 1, 3), 0.5, dtype=np.float32))[0, 0]
    tone = tone / np.linalg.norm(tone)
    norm = np.linalg.norm(x, axis=-1)
    cos = (x @ tone) / np.maximum(norm, 1e-6)
    angle = np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))
    return float((angle * norm).sum() / max(float(norm.sum()), 1e-6))


EFFECTS: dict[str, Effect] = {
    "grayscale": Effect("saturation", edits.saturation, -1),
    "sepia": Effect("distance to the sepia tone", _sepia_distance, -1),
    "invert": Effect("luma correlation with input", _luma_correlation, -1, paired=True),
    "blur": Effect("high-frequency energy", edits.high_frequency, -1),
    "sharpen": Effect("high-frequency energy", edits.high_frequency, +1),
    "posterize": Effect("outline (near-black) fraction", edits.dark_fraction, +1),
    # a sketch is dark lines on white paper: the brightness rises with the share of it applied (a part-sketch
    # is a paler picture with its edges drawn in; a count of white pixels stays 0 until most of it is there)
    "sketch": Effect("brightness (mean luma)", edits.mean_luma, +1),
    "warm": Effect("warmth (R - B)", edits.warmth, +1),
    "cool": Effect("warmth (R - B)", edits.warmth, -1),
}


def target_gain(word: str, image: np.ndarray, output: np.ndarray) -> float:
    """PSNR(output, target) - PSNR(input, target): dB the output came closer to the edit's target."""
    target = edits.apply(word, image)
    return edits.psnr(output, target) - edits.psnr(image, target)


def word_gain(word: str, image: np.ndarray, neutral: np.ndarray, output: np.ndarray) -> float:
    """PSNR(output, target) - PSNR(neutral, target): dB the edit word brought the output closer to the
    edit's target than a neutral prompt's output (same seed, strength and steps) is. This is the word's own
    effect, without what the autoencoder and the denoising lose of the photo (both outputs lose it)."""
    target = edits.apply(word, image)
    return edits.psnr(output, target) - edits.psnr(neutral, target)


def edit_amount(word: str, image: np.ndarray, neutral: np.ndarray, output: np.ndarray) -> float:
    """How much of the edit the word applied: the output's change from the neutral prompt's output (same seed,
    strength and steps) projected on the exact edit's change of the input, as a fraction of that change
    (0: none of it, 1: all of it; what the denoising loses of the photo is in both outputs and cancels)."""
    change = edits.apply(word, image).astype(np.float64) - image
    return float(((output - neutral) * change).sum() / max(float((change * change).sum()), 1e-12))


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    from skimage.metrics import structural_similarity

    return float(structural_similarity(a, b, channel_axis=-1, data_range=1.0))


def held_out_images(side: int = 256) -> dict[str, np.ndarray]:
    """The held-out photos, centre-cropped to squares and resized to `side` (the sizes the tables use)."""
    from PIL import Image

    from diffserve.engine.demo import data

    images = {}
    for name in data.HELD_OUT:
        pil = edits.to_pil(data.load(name))
        short = min(pil.size)
        left, top = (pil.width - short) // 2, (pil.height - short) // 2
        pil = pil.crop((left, top, left + short, top + short)).resize((side, side), Image.LANCZOS)
        images[Path(name).stem] = edits.from_pil(pil)
    return images


def load_pipeline(folder: Path, dtype: str = "float32"):
    """demo-sd's img2img pipeline from a built folder, on the CPU in `dtype` (a torch type's name), no safety
    checker."""
    import torch
    from diffusers import StableDiffusionImg2ImgPipeline

    pipe = StableDiffusionImg2ImgPipeline.from_pretrained(str(folder), torch_dtype=getattr(torch, dtype),
                                                          safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate(pipe, image: np.ndarray, prompt: str, *, strength: float, steps: int = DEFAULT_STEPS,
             guidance: float = 1.0, seed: int = 0, scheduler: str | None = None, karras: bool = False) -> np.ndarray:
    """One img2img output, by default with the steps a request gets (the model's limits) and the folder's
    scheduler (Euler) unless `scheduler` names another diffusers class; `karras`: with Karras sigmas (what a
    ModelsLab v6 request gets unless it sends "use_karras_sigmas": "no")."""
    import diffusers
    import torch

    own = pipe.scheduler
    if scheduler or karras:
        overrides = {"use_karras_sigmas": True} if karras else {}
        pipe.scheduler = getattr(diffusers, scheduler or type(own).__name__).from_config(own.config, **overrides)
    try:
        generator = torch.Generator().manual_seed(seed)
        out = pipe(prompt=prompt, image=edits.to_pil(image), strength=strength, num_inference_steps=steps,
                   guidance_scale=guidance, generator=generator).images[0]
    finally:
        pipe.scheduler = own
    return edits.from_pil(out)


def reconstruct(pipe, image: np.ndarray) -> np.ndarray:
    """The VAE alone (encode, decode): the ceiling of every PSNR in the tables."""
    import torch

    x = (torch.from_numpy(image).permute(2, 0, 1)[None] * 2 - 1).to(pipe.vae.dtype)
    with torch.no_grad():
        latents = pipe.vae.encode(x).latent_dist.mode()
        y = pipe.vae.decode(latents).sample
    return ((y[0].permute(1, 2, 0).float().numpy() + 1) / 2).clip(0, 1)
