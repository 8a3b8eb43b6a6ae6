"""The procedural edits demo-sd was trained to follow, and the measures that say whether an image shows them.

Each edit maps an RGB float image (H x W x 3, values in [0, 1]) to its target. The training script
(scripts/train_demo_sd.py) pairs an image with `EDITS[word](image)` under a caption naming the word;
bench/demo_quality.py and tests/test_demo_sd.py use the same functions and measures on held-out images.
numpy and Pillow only: no model stack, nothing runs at import time.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image, ImageFilter

__all__ = ["EDITS", "VOCABULARY", "apply", "from_pil", "to_pil", "saturation", "mean_hue", "mean_luma",
           "high_frequency", "dark_fraction", "psnr", "warmth"]

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
_SEPIA = np.array([[0.393, 0.769, 0.189], [0.349, 0.686, 0.168], [0.272, 0.534, 0.131]], dtype=np.float32)


def from_pil(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0


def to_pil(array: np.ndarray) -> Image.Image:
    return Image.fromarray((np.clip(array, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8))


def _gray(x: np.ndarray) -> np.ndarray:
    return x @ _LUMA


def _blurred(x: np.ndarray, radius: float) -> np.ndarray:
    return from_pil(to_pil(x).filter(ImageFilter.GaussianBlur(radius)))


def grayscale(x: np.ndarray) -> np.ndarray:
    return np.repeat(_gray(x)[..., None], 3, axis=-1)


def sepia(x: np.ndarray) -> np.ndarray:
    return np.clip(x @ _SEPIA.T, 0.0, 1.0)


def invert(x: np.ndarray) -> np.ndarray:
    return 1.0 - x


# blur and sharpen work at 4-5 px: demo-sd's autoencoder keeps no detail finer than 4 px (its decoder
# interpolates), so a finer blur is what every output already shows (the autoencoder's round trip of a 2.5 px
# blur is further from it than the round trip of the photo) and a finer sharpening cannot be shown
def blur(x: np.ndarray) -> np.ndarray:
    return _blurred(x, 5.0)


def sharpen(x: np.ndarray) -> np.ndarray:
    return np.clip(x + 2.0 * (x - _blurred(x, 4.0)), 0.0, 1.0)


def _edges(x: np.ndarray, radius: float) -> np.ndarray:
    """Gradient magnitude of the luma of x blurred by `radius` px (per px; 0 in flat areas)."""
    gy, gx = np.gradient(_gray(_blurred(x, radius)))
    return np.hypot(gx, gy)


def posterize(x: np.ndarray) -> np.ndarray:
    # the cartoon look: flat areas of colour (4 levels per channel of a 2 px blur) inside dark outlines (the
    # strong edges of a 3 px blur, 3 px wide). Levels alone change the latents too little to be learned
    # (the model card); the outlines are what makes it show.
    flat = np.clip((np.floor(_blurred(x, 2.0) * 4.0) + 0.5) / 4.0, 0.0, 1.0)
    lines = np.clip((_edges(x, 3.0) * 24.0 - 0.3) * 3.0, 0.0, 1.0)
    lines = from_pil(to_pil(lines).filter(ImageFilter.MaxFilter(3)))[..., 0]  # 3 px wide
    return flat * (1.0 - lines)[..., None]


def sketch(x: np.ndarray) -> np.ndarray:
    # dark edges on white: 1 - gradient magnitude of the (slightly blurred) luma
    edges = np.clip(_edges(x, 1.0) * 8.0, 0.0, 1.0)
    return np.repeat((1.0 - edges)[..., None], 3, axis=-1)


def warm(x: np.ndarray) -> np.ndarray:
    return np.clip(x * np.array([1.15, 1.0, 0.8], dtype=np.float32) + np.array([0.04, 0.01, 0.0], dtype=np.float32),
                   0.0, 1.0)


def cool(x: np.ndarray) -> np.ndarray:
    return np.clip(x * np.array([0.8, 1.0, 1.15], dtype=np.float32) + np.array([0.0, 0.01, 0.04], dtype=np.float32),
                   0.0, 1.0)


EDITS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "grayscale": grayscale, "sepia": sepia, "invert": invert, "blur": blur, "sharpen": sharpen,
    "posterize": posterize, "sketch": sketch, "warm": warm, "cool": cool,
}
# Words that name the same edit in a prompt (trained as captions too).
SYNONYMS: dict[str, str] = {"cartoon": "posterize", "greyscale": "grayscale", "edges": "sketch"}
VOCABULARY: tuple[str, ...] = (*EDITS, *SYNONYMS)


def apply(word: str, x: np.ndarray) -> np.ndarray:
    """The target of one vocabulary word (a synonym names its edit); KeyError for other words."""
    return EDITS[SYNONYMS.get(word, word)](x)


# ---- measures ------------------------------------------------------------------------------------


def saturation(x: np.ndarray) -> float:
    """Mean HSV saturation (0 for a gray image)."""
    hi, lo = x.max(axis=-1), x.min(axis=-1)
    return float(np.mean(np.where(hi > 1e-3, (hi - lo) / np.maximum(hi, 1e-3), 0.0)))


def mean_hue(x: np.ndarray) -> float:
    """Circular mean hue in degrees (0-360), weighted by saturation; sepia is near 30-40."""
    hsv = np.asarray(to_pil(x).convert("HSV"), dtype=np.float32) / 255.0
    angle, weight = hsv[..., 0] * 2 * np.pi, hsv[..., 1]
    mean = np.arctan2((weight * np.sin(angle)).sum(), (weight * np.cos(angle)).sum())
    return float(np.degrees(mean) % 360.0)


def mean_luma(x: np.ndarray) -> float:
    return float(_gray(x).mean())


def warmth(x: np.ndarray) -> float:
    """Mean red minus mean blue: > 0 warm, < 0 cool."""
    return float(x[..., 0].mean() - x[..., 2].mean())


def high_frequency(x: np.ndarray) -> float:
    """Mean absolute Laplacian of the luma: falls with blur, rises with sharpening."""
    g = _gray(x)
    lap = 4 * g[1:-1, 1:-1] - g[:-2, 1:-1] - g[2:, 1:-1] - g[1:-1, :-2] - g[1:-1, 2:]
    return float(np.abs(lap).mean())


def dark_fraction(x: np.ndarray) -> float:
    """Fraction of near-black pixels (luma < 0.1): a cartoon's outlines (posterize) raise it."""
    return float((_gray(x) < 0.1).mean())


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 99.0 if mse < 1e-10 else float(10.0 * np.log10(1.0 / mse))
