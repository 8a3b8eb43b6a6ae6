"""The photos demo-sd learned from and is measured on: scikit-image's bundled sample data, with each licence.

Only images whose licence scikit-image's own documentation (skimage/data/_fetchers.py docstrings) states as
public domain or CC0 are used. Excluded, licence not stated or only "no known copyright restrictions":
coins, ihc (immunohistochemistry), moon, page, logo (scikit-image's trademark), color (colour wheel),
phantom, chessboard_*, motorcycle_left/right (Middlebury 2014, no licence stated), lfw_subset.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

# file -> (licence as stated by scikit-image, author / source)
LICENCES: dict[str, tuple[str, str]] = {
    "astronaut.png": ("public domain", "NASA (Great Images database)"),
    "coffee.png": ("CC0", "Rachel Michetti, courtesy of Pikolo Espresso Bar"),
    "hubble_deep_field.jpg": ("public domain", "NASA"),
    "retina.jpg": ("CC0 1.0", "Häggström, Mikael (2014), WikiJournal of Medicine"),
    "camera.png": ("CC0", "Lav Varshney"),
    "brick.png": ("CC0", "CC0Textures (Bricks25)"),
    "grass.png": ("CC0", "CC0Textures"),
    "gravel.png": ("CC0", "CC0Textures (Gravel04)"),
    "cell.png": ("CC0", "scikit-image (cell image)"),
    "horse.png": ("CC0", "Andreas Preuss (marauder)"),
    "clock_motion.png": ("public domain", "Stefan van der Walt"),
    "text.png": ("public domain", "scikit-image (text image)"),
    "chelsea.png": ("CC0", "Stefan van der Walt"),
    "rocket.jpg": ("public domain", "SpaceX"),
}
# Never seen in training: the evaluation (bench/demo_quality.py, tests/test_demo_sd.py) and README example.
HELD_OUT: tuple[str, ...] = ("chelsea.png", "rocket.jpg")
TRAIN_IMAGES: tuple[str, ...] = tuple(name for name in LICENCES if name not in HELD_OUT)


def data_dir() -> Path:
    """skimage/data inside the installed scikit-image (found without importing it)."""
    spec = importlib.util.find_spec("skimage")
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / "data"
        if candidate.is_dir():
            return candidate
    raise RuntimeError("scikit-image is not installed: its bundled sample photos are demo-sd's data")


def load(name: str) -> np.ndarray:
    """One image as RGB floats in [0, 1] (gray images repeated, an alpha channel composited on white)."""
    from PIL import Image

    with Image.open(data_dir() / name) as image:
        if image.mode in ("RGBA", "LA", "P"):
            image = image.convert("RGBA")
            background = Image.new("RGBA", image.size, (255, 255, 255, 255))
            image = Image.alpha_composite(background, image)
        return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
