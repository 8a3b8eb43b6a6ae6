"""Finding the face in an identity image (Flux PuLID), no torch.

Torch-free on purpose: the API process checks at submit, with the detector the model's worker will
use (`SubmitFaceCheck`), that the image has a face (400, nothing queued otherwise); the worker finds
it again to embed it. Two detectors: OpenCV's Haar frontal-face cascade (the tiny offline model) and
InsightFace's SCRFD from the model's antelopev2 files (engine/identity/antelope.py, the official embedder).
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
from PIL import Image

from diffserve.engine.identity.errors import NoFaceFound

FACE_MARGIN = 1.3  # the crop's side / the detected box's side: keeps hair and chin like an aligned face crop
DETECT_SIDE = 256  # faces are searched in a copy whose short side is at least this (Haar's window is 24 px)
HAAR_CASCADE = "haarcascade_frontalface_default.xml"


def face_detector():
    """OpenCV's Haar frontal-face cascade (shipped with opencv-python-headless 4.x)."""
    import cv2

    path = Path(cv2.data.haarcascades) / HAAR_CASCADE
    detector = cv2.CascadeClassifier(str(path))
    if detector.empty():
        raise RuntimeError(f"OpenCV's face detector {path} could not be loaded")
    return detector


def crop_face(image: Image.Image, size: int, detector=None, *, field_name: str = "image") -> Image.Image:
    """The largest frontal face of `image`, as a square `size` x `size` RGB crop.

    Raises NoFaceFound (naming `field_name`) when there is none."""
    import cv2

    detector = detector if detector is not None else face_detector()
    rgb = np.asarray(image.convert("RGB"))
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    scale = max(1.0, DETECT_SIDE / min(gray.shape))
    if scale > 1.0:
        gray = cv2.resize(gray, (round(gray.shape[1] * scale), round(gray.shape[0] * scale)),
                          interpolation=cv2.INTER_CUBIC)
    faces = detector.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=4, minSize=(40, 40))
    if len(faces) == 0:
        raise NoFaceFound(f"{field_name}: no face found in image")
    x, y, w, h = max((tuple(map(int, f)) for f in faces), key=lambda f: f[2] * f[3])
    cx, cy, side = (x + w / 2) / scale, (y + h / 2) / scale, max(w, h) * FACE_MARGIN / scale
    box = (round(cx - side / 2), round(cy - side / 2), round(cx + side / 2), round(cy + side / 2))
    return image.convert("RGB").crop(box).resize((size, size), Image.Resampling.BICUBIC)  # outside: black


class SubmitFaceCheck:
    """Refuses, in the API process, an identity image the model's face detector finds no face in.

    Keeps one SCRFD session per detector file (reloaded when the file changes); Haar for the rest."""

    def __init__(self) -> None:
        self._finders: dict[tuple[str, int], object] = {}
        self._lock = threading.Lock()

    def require_face(self, pulid_folder: Path, image: Image.Image, *, field_name: str) -> None:
        """Raises NoFaceFound naming `field_name`; ValueError for a PuLID folder that cannot be read."""
        from diffserve.engine.identity.config import OfficialEmbedderConfig, read_config

        cfg = read_config(pulid_folder).embedder
        if not isinstance(cfg, OfficialEmbedderConfig):
            crop_face(image, 8, field_name=field_name)
            return
        finder = self._finder(Path(pulid_folder) / cfg.detector, cfg)
        finder.largest(np.asarray(image.convert("RGB")), field_name=field_name)

    def _finder(self, path: Path, cfg):
        from diffserve.engine.identity.antelope import FaceFinder

        key = (str(path), path.stat().st_mtime_ns)
        with self._lock:
            if key not in self._finders:
                self._finders = {k: v for k, v in self._finders.items() if k[0] != key[0]}
                self._finders[key] = FaceFinder(path, det_size=cfg.det_size, det_thresh=cfg.det_thresh,
                                                providers=["CPUExecutionProvider"])
            return self._finders[key]
