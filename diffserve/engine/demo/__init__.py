"""demo-sd: the small SD 1.x model trained in this repository (scripts/train_demo_sd.py) on scikit-image's
bundled photos, to follow a few edit words (edits.py). `weights/` holds its committed fp16 weights and model
card; build.py assembles them with the CLIP tokenizer into a diffusers folder under the models folder.
This module is torch-free: the API process reads the limits below.

demo-sd is a built-in model (and the default) while `weights/` holds its weights and card (weights_present);
a checkout without them lists tiny-sd only."""

import json
from pathlib import Path

from diffserve.core.request import ModelLimits

WEIGHTS = Path(__file__).resolve().parent / "weights"
WEIGHT_FILES = ("model_index.json", "README.md", "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
                "vae/config.json", "vae/diffusion_pytorch_model.safetensors", "text_encoder/config.json",
                "text_encoder/model.safetensors", "scheduler/scheduler_config.json")


def weights_present(weights: Path = WEIGHTS) -> bool:
    """True when `weights` holds trained weights and a model card (scripts/train_demo_sd.py writes them)."""
    return all((weights / name).is_file() for name in WEIGHT_FILES)


def preview_rgb(weights: Path = WEIGHTS) -> tuple[tuple[float, float, float], ...]:
    """Step-preview factors: demo-sd's latents 0-2 are the picture's R, G, B times the VAE's scaling factor
    (its autoencoder is an exact average-pool: scripts/train_demo_sd.py construct_vae), latent 3 is unused."""
    config = json.loads((weights / "vae" / "config.json").read_text(encoding="utf-8"))
    k = 1.0 / float(config.get("scaling_factor") or 1.0)
    return ((k, 0.0, 0.0), (0.0, k, 0.0), (0.0, 0.0, k), (0.0, 0.0, 0.0))

# Bump with every retraining that changes weights/: the built folder's name carries it, so a new
# version is built beside an old one instead of being mistaken for it.
DEMO_SD_VERSION = 7
DEMO_SD_FOLDER = f"demo-sd-v{DEMO_SD_VERSION}"
# Trained on 64 px crops, measured at 256 px; the output follows the init image, scaled to 512 px at most.
# It runs without classifier-free guidance (its UNet has a guidance input with a zero projection, so diffusers
# skips CFG, as for LCM UNets): the guidance scale and the negative prompt change nothing. With CFG the
# edits overshoot (the empty negative prompt is trained as "keep the image"): the model card's table.
# 8 steps: its pictures get grainier with more steps (its errors add up step by step: the model card).
# Strength 0.3: about half to three quarters of an edit is applied at 0.3 (a tenth at 0.2), more above, and the
# higher the strength the more of the picture the small model redraws, grainy (the neutral prompt's output
# 25.3 dB from the input at 0.3, 21.1 at 0.7: the model card); 0.3 keeps the picture and applies the edit.
DEMO_SD_LIMITS = ModelLimits(min_size=64, max_size=512,
                             default_steps=8, default_guidance=1.0, default_strength=0.3)
DEMO_SD_DESCRIPTION = ("Small SD 1.x model trained here on scikit-image's sample photos to follow edit words: "
                       "grayscale, sepia, invert, blur, sharpen, sketch, warm, cool (posterize / cartoon partly); "
                       "half or more of an edit from strength 0.3 (the default) up; higher strengths redraw more of "
                       "the picture, grainy; any other prompt keeps the image. No guidance: guidance_scale and "
                       "negative_prompt change nothing. It draws no new content (see its model card).")
