"""Tiny Stable Diffusion safety checkers with random weights, built offline.

The real checker (`CompVis/stable-diffusion-safety-checker`) is diffusers'
`StableDiffusionSafetyChecker`: a CLIP vision tower and projection, 17 concept embeddings and 3
"special care" embeddings, each with a threshold; an image is flagged when its cosine similarity
to any concept exceeds that concept's threshold. These builders write the same kind of folder
(config.json + model.safetensors + preprocessor_config.json for `CLIPImageProcessor`), loaded
through the same `from_pretrained` code, with a tiny random vision tower. With random weights the
similarities mean nothing, so the thresholds decide, and say so in the name:

* `tiny`: thresholds above any cosine similarity: never flags (the default for the built-in
  tiny models, whose images are noise);
* `tiny-flag-all`: concept thresholds below any cosine similarity: flags every image (to see the
  `safety_checker_type` treatments end to end).
"""

from __future__ import annotations

from pathlib import Path

from diffserve.engine.tiny.build import MARKER_FILE, build_atomically, seeded, write_marker

TINY_SAFETY_RECIPE_VERSION = 1
TINY_SAFETY_CHECKERS = {"tiny": False, "tiny-flag-all": True}  # name -> flags every image
IMAGE_SIZE = 32

_REQUIRED = ("config.json", "model.safetensors", "preprocessor_config.json", "README.md", MARKER_FILE)

_README = """\
# diffserve tiny safety checker `{name}` (random weights)

A `StableDiffusionSafetyChecker` folder built offline by `diffserve.engine.tiny.safety` (recipe
version {version}): a 2-layer CLIP vision tower on {size}x{size} inputs with seeded random weights.
Its similarities mean nothing; its thresholds make it {behaviour}. For tests only: a real
deployment uses CompVis/stable-diffusion-safety-checker.
"""


def _checker(flag_all: bool):
    import torch
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig

    config = CLIPConfig(
        text_config={"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 4},
        vision_config={"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 4,
                       "image_size": IMAGE_SIZE, "patch_size": 8},
        projection_dim=32,
    )
    checker = StableDiffusionSafetyChecker(config)
    with torch.no_grad():
        checker.concept_embeds.copy_(torch.randn_like(checker.concept_embeds))
        checker.special_care_embeds.copy_(torch.randn_like(checker.special_care_embeds))
        checker.special_care_embeds_weights.fill_(2.0)  # cosine similarity never exceeds 1
        checker.concept_embeds_weights.fill_(-2.0 if flag_all else 2.0)  # ... nor falls below -1
    return checker


def build_tiny_safety_checker(dest: Path, name: str = "tiny") -> Path:
    """Write the tiny checker `name` ("tiny" or "tiny-flag-all") at `dest` unless already there."""
    flag_all = TINY_SAFETY_CHECKERS[name]

    def write(folder: Path) -> None:
        from transformers import CLIPImageProcessor

        seeded(lambda: _checker(flag_all)).save_pretrained(str(folder), safe_serialization=True)
        CLIPImageProcessor(size={"shortest_edge": IMAGE_SIZE},
                           crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}).save_pretrained(str(folder))
        write_marker(folder, model=f"safety-checker-{name}", recipe_version=TINY_SAFETY_RECIPE_VERSION,
                     readme=_README.format(name=name, version=TINY_SAFETY_RECIPE_VERSION, size=IMAGE_SIZE,
                                           behaviour="flag every image" if flag_all else "never flag an image"))

    return build_atomically(Path(dest), write, _REQUIRED, f"tiny safety checker {name}")
