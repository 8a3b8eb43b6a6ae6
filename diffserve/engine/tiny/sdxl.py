"""A tiny Stable Diffusion XL pipeline with random weights, built offline (tiny-sdxl).

Laid out like stabilityai/stable-diffusion-xl-base-1.0 (a StableDiffusionXLPipeline folder that
the engine loads as StableDiffusionXLImg2ImgPipeline), narrowed: two CLIP text encoders (the second
with a text projection, whose pooled output goes into the UNet's "text_time" added embedding
together with six size/crop time ids), a UNet whose `projection_class_embeddings_input_dim`
= 6 * addition_time_embed_dim + text_encoder_2's projection_dim, an 8x VAE with SDXL's scaling
factor, and SDXL's EulerDiscreteScheduler configuration. Both tokenizers use CLIP's real BPE
vocabulary. Pony Diffusion models are SDXL fine-tunes: the same family and layout.
"""

from __future__ import annotations

from pathlib import Path

from diffserve.core.request import ModelLimits
from diffserve.engine.tiny.sd import CLIP_MAX_LENGTH, CLIP_VOCAB_SIZE, write_clip_tokenizer
from diffserve.engine.tiny.build import build_atomically, seeded, write_marker

TINY_SDXL_RECIPE_VERSION = 1

_TE1_HIDDEN = 32
_TE2_HIDDEN = 32
_TE2_PROJECTION = 32
_TIME_EMBED_DIM = 8

SDXL_TINY_LIMITS = ModelLimits(min_size=32, max_size=512, size_multiple=8, max_samples=8, max_guidance=30.0)
# For real SDXL / Pony weights (1024 px class; Qolaba's SDXL sizes are 256..1536).
SDXL_LIMITS = ModelLimits(min_size=256, max_size=1536, size_multiple=8, max_samples=8, max_guidance=30.0)

SDXL_REQUIRED_FILES = (
    "model_index.json",
    "README.md",
    "diffserve_tiny.json",
    "unet/config.json",
    "unet/diffusion_pytorch_model.safetensors",
    "vae/config.json",
    "vae/diffusion_pytorch_model.safetensors",
    "text_encoder/config.json",
    "text_encoder/model.safetensors",
    "text_encoder_2/config.json",
    "text_encoder_2/model.safetensors",
    "tokenizer/vocab.json",
    "tokenizer/merges.txt",
    "tokenizer_2/vocab.json",
    "tokenizer_2/merges.txt",
    "scheduler/scheduler_config.json",
)

_README = f"""\
# diffserve tiny Stable Diffusion XL (random weights)

A complete diffusers-format StableDiffusionXLPipeline folder built offline by diffserve
(`diffserve.engine.tiny.sdxl`, recipe version {TINY_SDXL_RECIPE_VERSION}), laid out like
stabilityai/stable-diffusion-xl-base-1.0.

* unet/, vae/, text_encoder/, text_encoder_2/: tiny architectures with **seeded random weights**,
  never trained: every image is noise. For testing loading and serving code only.
* tokenizer/, tokenizer_2/: the real CLIP BPE vocabulary.
* scheduler/: SDXL base 1.0's EulerDiscreteScheduler configuration. No watermarker.
"""


def _tiny_unet():
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        transformer_layers_per_block=(1, 2),
        cross_attention_dim=_TE1_HIDDEN + _TE2_HIDDEN,  # both encoders' hidden states, concatenated
        addition_embed_type="text_time",
        addition_time_embed_dim=_TIME_EMBED_DIM,
        # original size (2) + crop top-left (2) + target size (2) time ids, plus the pooled text embedding
        projection_class_embeddings_input_dim=6 * _TIME_EMBED_DIM + _TE2_PROJECTION,
        norm_num_groups=32,
    )


def _tiny_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(32, 32, 64, 64), layers_per_block=1, latent_channels=4,
        norm_num_groups=32, sample_size=64, scaling_factor=0.13025, force_upcast=True,
    )


def _clip_config(hidden: int, projection: int):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=CLIP_VOCAB_SIZE, hidden_size=hidden, intermediate_size=37, projection_dim=projection,
        num_hidden_layers=3, num_attention_heads=4, max_position_embeddings=CLIP_MAX_LENGTH,
        hidden_act="gelu", layer_norm_eps=1e-5, bos_token_id=49406, eos_token_id=49407, pad_token_id=1,
    )


def _tiny_text_encoder():
    from transformers import CLIPTextModel

    return CLIPTextModel(_clip_config(_TE1_HIDDEN, _TE1_HIDDEN))


def _tiny_text_encoder_2():
    from transformers import CLIPTextModelWithProjection

    return CLIPTextModelWithProjection(_clip_config(_TE2_HIDDEN, _TE2_PROJECTION))


def _sdxl_scheduler():
    from diffusers import EulerDiscreteScheduler

    # stabilityai/stable-diffusion-xl-base-1.0/scheduler/scheduler_config.json
    return EulerDiscreteScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        prediction_type="epsilon", interpolation_type="linear", use_karras_sigmas=False,
        timestep_spacing="leading", steps_offset=1,
    )


def _write_pipeline(folder: Path) -> None:
    from diffusers import StableDiffusionXLPipeline

    tokenizer = write_clip_tokenizer(folder / "tokenizer")
    tokenizer_2 = write_clip_tokenizer(folder / "tokenizer_2")
    pipe = StableDiffusionXLPipeline(
        vae=seeded(_tiny_vae),
        text_encoder=seeded(_tiny_text_encoder),
        text_encoder_2=seeded(_tiny_text_encoder_2),
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=seeded(_tiny_unet),
        scheduler=_sdxl_scheduler(),
        image_encoder=None,
        feature_extractor=None,
        force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )
    pipe.save_pretrained(str(folder), safe_serialization=True)
    write_marker(folder, model="tiny-sdxl", recipe_version=TINY_SDXL_RECIPE_VERSION, readme=_README)


def build_tiny_sdxl(dest: Path) -> Path:
    """Build (deterministically, atomically) the tiny SDXL folder at `dest` unless already complete."""
    return build_atomically(Path(dest), _write_pipeline, SDXL_REQUIRED_FILES, "tiny-sdxl")
