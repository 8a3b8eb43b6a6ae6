"""Request bodies shared by the delivery/limits/hostile tests (small, test-friendly sizes and steps)."""

from __future__ import annotations

IMG2IMG = "/api/v6/images/img2img"


def body(key, image_host=None, **over) -> dict:
    """A valid v6 img2img body on the tiny model; `init_image` defaults to the image host's cat."""
    b = {
        "key": key,
        "model_id": "tiny-sd",
        "prompt": "a cat on a sofa",
        "init_image": image_host.url("/cat.png") if image_host is not None else None,
        "samples": "1",
        "num_inference_steps": "4",
        "guidance_scale": 7.5,
        "strength": 0.7,
        "seed": None,
    }
    b.update(over)
    return b
