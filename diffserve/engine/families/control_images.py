"""Control images computed from the init image, for structure-conditioned models (Flux Canny/Depth).

* Canny: OpenCV's Canny edge detector (`cv2.Canny`) on the grayscale image, hysteresis thresholds
  100/200 by default (OpenCV's and the FLUX.1-Canny-dev examples' usual pair): white one-pixel
  edges on black, same size as the input, as RGB.
* Depth: a transformers depth-estimation model (Depth Anything, DPT/MiDaS... anything
  `AutoModelForDepthEstimation` loads) and its image processor. The predicted depth is resized to
  the input's size by the processor's own post-processing, then min-max normalised to 0..255
  (near = bright for the relative-depth models FLUX.1-Depth-dev was trained with), as RGB.

Image processors are loaded with transformers' PIL backend (no torchvision needed).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from diffserve.core.errors import InvalidInput

CANNY_LOW_THRESHOLD = 100
CANNY_HIGH_THRESHOLD = 200


def canny_edges(image: Image.Image, low: int = CANNY_LOW_THRESHOLD, high: int = CANNY_HIGH_THRESHOLD) -> Image.Image:
    """OpenCV Canny edge map of `image`: white edges on black, same size, RGB.

    low/high: hysteresis thresholds on the gradient magnitude (0..255 image): gradients above
    `high` start an edge, those above `low` continue one.
    """
    import cv2

    if not 0 <= low <= high:
        raise ValueError(f"Canny thresholds need 0 <= low <= high, got {low}/{high}")
    gray = cv2.cvtColor(np.asarray(image.convert("RGB")), cv2.COLOR_RGB2GRAY)
    edges = cv2.Canny(gray, low, high)
    return Image.fromarray(edges).convert("RGB")


@dataclass
class DepthEstimator:
    """A transformers depth-estimation model with its image processor, on one device."""

    model: torch.nn.Module
    processor: Any
    location: str

    @classmethod
    def load(cls, location: str | Path, *, device: str = "cpu", dtype: torch.dtype = torch.float32,
             revision: str | None = None) -> DepthEstimator:
        """Load from a local folder (config.json + weights + preprocessor_config.json) or a hub id
        (through the Hugging Face cache; HF_HUB_OFFLINE is honoured by transformers).

        Raises InvalidInput(field="model_id") naming the depth model when it cannot be loaded.
        """
        from transformers import AutoImageProcessor, AutoModelForDepthEstimation

        where = str(location)
        local = Path(where).is_dir()
        kwargs: dict[str, Any] = {"local_files_only": True} if local else {"revision": revision}
        try:
            processor = AutoImageProcessor.from_pretrained(where, backend="pil", **kwargs)
            model = AutoModelForDepthEstimation.from_pretrained(where, dtype=dtype, **kwargs)
        except Exception as exc:  # noqa: BLE001 - any loader failure: the depth model is unusable
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            raise InvalidInput(f"Could not load the depth model {where}: {reason}", field="model_id") from exc
        return cls(model=model.to(device).eval(), processor=processor, location=where)

    @torch.inference_mode()
    def depth_map(self, image: Image.Image) -> Image.Image:
        """The depth map of `image`, normalised to 0..255, same size as `image`, RGB. Deterministic."""
        image = image.convert("RGB")
        param = next(self.model.parameters())
        inputs = self.processor(images=image, return_tensors="pt")
        pixel_values = inputs["pixel_values"].to(device=param.device, dtype=param.dtype)
        outputs = self.model(pixel_values=pixel_values)
        depth = self.processor.post_process_depth_estimation(
            outputs, target_sizes=[(image.height, image.width)]
        )[0]["predicted_depth"]
        return depth_to_image(depth)


def depth_to_image(depth: torch.Tensor) -> Image.Image:
    """A (H, W) depth tensor, min-max normalised to 0..255, as an RGB image (flat depth: black)."""
    d = depth.detach().float().cpu().numpy()
    lo, hi = float(d.min()), float(d.max())
    if not np.isfinite([lo, hi]).all():
        raise ValueError("the depth model returned non-finite values")
    scaled = (d - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(d)
    return Image.fromarray(np.round(scaled).astype(np.uint8)).convert("RGB")
