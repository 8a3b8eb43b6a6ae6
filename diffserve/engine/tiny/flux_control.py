"""Tiny FLUX.1 Canny / Depth pipelines with random weights, built offline (tiny-flux-canny, tiny-flux-depth).

Laid out like black-forest-labs/FLUX.1-Canny-dev and FLUX.1-Depth-dev: a `FluxControlPipeline`
folder (diffserve loads it as `FluxControlImg2ImgPipeline`) whose transformer takes the noisy
latents and the control image's latents concatenated: `in_channels` = 2 x 16 x 4 = 128, and
`out_channels` = 64. Every other component is tiny-flux's (engine/tiny/flux.py).

tiny-flux-depth also holds the depth model that turns an init image into its control image:
`depth_estimator/`, a tiny Depth Anything (`DepthAnythingForDepthEstimation` on a 2-layer DINOv2
backbone, random weights) with Depth Anything's image processor settings at a 56 px working size.
With real weights the same folder layout holds e.g. LiheYoung/depth-anything-large-hf, or the
model entry names one (`depth_model`).
"""

from __future__ import annotations

from pathlib import Path

from diffserve.engine.tiny.build import build_atomically, seeded
from diffserve.engine.tiny.flux import FLUX_REQUIRED_FILES, FLUX_TINY_LIMITS, tiny_flux_transformer, write_flux_folder

DEPTH_SUBFOLDER = "depth_estimator"
CONTROL_IN_CHANNELS = 16 * 4 * 2  # packed latents + packed control latents
CONTROL_OUT_CHANNELS = 16 * 4

# FLUX.1-Canny-dev is used at guidance 30, FLUX.1-Depth-dev at 10 (their model cards).
CANNY_TINY_LIMITS = FLUX_TINY_LIMITS.model_copy(update={"default_guidance": 30.0})
DEPTH_TINY_LIMITS = FLUX_TINY_LIMITS.model_copy(update={"default_guidance": 10.0})

_DEPTH_FILES = tuple(f"{DEPTH_SUBFOLDER}/{name}" for name in ("config.json", "model.safetensors",
                                                               "preprocessor_config.json"))


def _control_transformer():
    return tiny_flux_transformer(CONTROL_IN_CHANNELS, CONTROL_OUT_CHANNELS)


def tiny_depth_estimator():
    """(model, image processor): a tiny random Depth Anything with Depth Anything's preprocessing."""
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config
    from transformers.models.dpt.image_processing_pil_dpt import DPTImageProcessorPil

    backbone = Dinov2Config(
        image_size=56, patch_size=14, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=37, out_features=["stage1", "stage2"], reshape_hidden_states=False, apply_layernorm=True,
    )
    config = DepthAnythingConfig(
        backbone_config=backbone, patch_size=14, reassemble_hidden_size=32, reassemble_factors=[2, 1],
        neck_hidden_sizes=[16, 32], fusion_hidden_size=16, head_hidden_size=8, depth_estimation_type="relative",
    )
    model = seeded(lambda: DepthAnythingForDepthEstimation(config))
    # LiheYoung/depth-anything-large-hf's preprocessing, at 56 px instead of 518.
    processor = DPTImageProcessorPil(
        size={"height": 56, "width": 56}, keep_aspect_ratio=True, ensure_multiple_of=14, resample=3,
        do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
        image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225], do_pad=False,
    )
    return model, processor


def build_tiny_flux_canny(dest: Path) -> Path:
    """tiny-flux-canny: a FluxControlPipeline folder like FLUX.1-Canny-dev."""
    return build_atomically(
        Path(dest),
        lambda staging: write_flux_folder(staging, pipeline_class_name="FluxControlPipeline", model="tiny-flux-canny",
                                          reference="FLUX.1-Canny-dev", transformer=seeded(_control_transformer)),
        FLUX_REQUIRED_FILES,
        "tiny-flux-canny",
    )


def build_tiny_flux_depth(dest: Path) -> Path:
    """tiny-flux-depth: a FluxControlPipeline folder like FLUX.1-Depth-dev, plus depth_estimator/."""

    def write(staging: Path) -> None:
        write_flux_folder(staging, pipeline_class_name="FluxControlPipeline", model="tiny-flux-depth",
                          reference="FLUX.1-Depth-dev", transformer=seeded(_control_transformer))
        model, processor = tiny_depth_estimator()
        model.save_pretrained(str(staging / DEPTH_SUBFOLDER), safe_serialization=True)
        processor.save_pretrained(str(staging / DEPTH_SUBFOLDER))

    return build_atomically(Path(dest), write, FLUX_REQUIRED_FILES + _DEPTH_FILES, "tiny-flux-depth")
