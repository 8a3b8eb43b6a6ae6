"""What may share a denoising tick: the one place that decides it (torch-free, so the queue can use it).

Two requests may run in one batch -- one UNet / transformer forward per tick over all their latents --
when their `batch_key`s are equal and not None. The key is what changes the model's weights or the
latent shape: the loaded model, the output size, the weight-changing controls (LoRA set and
strengths, textual-inversion embedding, custom VAE), and tomesd (token merging patches the shared UNet for
every row of a tick; its merges are per row, so a tomesd row's image does not depend on its batch-mates:
engine/controls/tome.py). Everything else (prompt, negative prompt, seed,
samples, strength, steps, guidance, scheduler, clip_skip, safety checker) is per row.

None means "never batched, runs alone as without batching": text to image and inpainting (their
pipelines are other diffusers classes), IP-Adapter (per-request image embeddings through patched
attention processors), and a strength
so low that no step runs (the init image is returned). Whether the model's family has a batched loop at
all is the engine's to say (families with `batch_loop`); a key only compares requests of one model.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

BatchKey = tuple[Any, ...]


def batch_key(request: Mapping[str, Any]) -> BatchKey | None:
    """`request`: a GenerationRequest's fields (its model_dump, or the job row's stored request)."""
    if request.get("mode", "img2img") != "img2img" or request.get("mask_image_key"):
        return None
    if request.get("ip_adapter_id"):
        return None
    if int(request["steps"] * request["strength"]) < 1:
        return None
    return (request["model_id"], request["width"], request["height"],
            tuple(request.get("lora_models") or ()), tuple(request.get("lora_strengths") or ()),
            request.get("embeddings_model") or None, request.get("vae") or None, bool(request.get("tomesd")),
            bool(request.get("tiling")))
