"""Per-step progress out of a pipeline call: diffusers' `callback_on_step_end`, and small step previews.

`step_kwargs(report)` gives the pipeline call arguments that call `report(step, total, latents)` after
every denoising step (step counts from 1; total is the steps this img2img call runs, after `strength`).
`report` may raise (e.g. core.errors.Cancelled) to stop the call between two steps, or answer True to end the
denoising there and keep the image so far: the pipeline's own early end (`pipe._interrupt`, which diffusers'
pipelines check before each step; they then decode the current latents).

`preview_jpeg(latents)` makes a small JPEG of SD / SDXL latents without the VAE: a linear map of the 4
latent channels to RGB (the approximation A1111 and ComfyUI use for live previews; the factors below are
SD 1.x's; a model entry's `preview_rgb` gives its own). Families whose latents are packed or have other
channel counts (Flux, HiDream) give None.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any, Callable

import torch
from PIL import Image

Report = Callable[[int, int, torch.Tensor | None], bool | None]

LATENT_RGB = torch.tensor([[0.3512, 0.2297, 0.3227],
                           [0.3250, 0.4974, 0.2350],
                           [-0.2829, 0.1762, 0.2721],
                           [-0.2120, -0.2616, -0.7177]])
PREVIEW_SIDE = 128


def step_kwargs(report: Report) -> dict[str, Any]:
    def on_step_end(pipe: Any, step: int, _timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        total = getattr(pipe, "_num_timesteps", None) or step + 1
        if report(step + 1, int(total), kwargs.get("latents")):
            pipe._interrupt = True  # the remaining steps are skipped, the latents so far decoded
        return kwargs

    return {"callback_on_step_end": on_step_end, "callback_on_step_end_tensor_inputs": ["latents"]}


def preview_jpeg(latents: torch.Tensor | None, quality: int = 70,
                 latent_rgb: Sequence[Sequence[float]] | None = None) -> bytes | None:
    """The first image of a (batch, channels, h, w) latent batch as a JPEG at most PREVIEW_SIDE px: each
    channel adds its row of `latent_rgb` (default: SD 1.x's, for 4 channels); None if they do not fit."""
    factors = LATENT_RGB if latent_rgb is None else torch.tensor(latent_rgb, dtype=torch.float32)
    if latents is None or latents.ndim != 4 or latents.shape[1] != factors.shape[0]:
        return None
    rgb = torch.einsum("chw,cr->hwr", latents[0].detach().float().cpu(), factors)
    pixels = ((rgb + 1) * 127.5).clamp(0, 255).to(torch.uint8).numpy()
    image = Image.fromarray(pixels)
    image.thumbnail((PREVIEW_SIDE, PREVIEW_SIDE))
    if max(image.size) < PREVIEW_SIDE:  # latents are 1/8 of the output: scale small ones up to be seen
        scale = PREVIEW_SIDE / max(image.size)
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))))
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()
