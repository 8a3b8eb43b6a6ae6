"""Finding the face in an identity image (Flux PuLID): OpenCV's Haar frontal-face cascade, no torch.

Torch-free on purpose: the API process runs `crop_face` at submit to refuse an image with no face
(400, nothing queued), and the worker runs it again to crop the face it embeds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

FACE_MARGIN = 1.3  # the crop's side / the detected box's side: keeps hair and chin like an aligned face crop
DETECT_SIDE = 256  # faces are searched in a copy whose short side is at least this (Haar's window is 24 px)
HAAR_CASCADE = "haarcascade_frontalface_default.xml"


class NoFaceFound(ValueError):
    """The identity image has no detectable frontal face."""


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
