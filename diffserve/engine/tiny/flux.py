"""Tiny FLUX.1 pipelines with random weights, built offline (tiny-flux, tiny-flux-kontext).

The components follow FLUX.1-dev's layout, narrowed: a FluxTransformer2DModel with guidance
embedding (FLUX.1-dev is guidance-distilled, so `guidance_scale` acts), a CLIP text encoder whose
pooled output feeds `pooled_projection_dim`, a T5 encoder whose hidden size is the transformer's
`joint_attention_dim`, a 16-channel AutoencoderKL that downsamples 8x (with FLUX.1's scaling and
shift factors) and FLUX.1-dev's FlowMatchEulerDiscreteScheduler configuration. The transformer
works on 2x2-packed latents, so its `in_channels` is 16 * 4 = 64 and image sides must be
multiples of 16.

Tokenizers: CLIP's real BPE vocabulary (see engine/tiny/sd.py) and a T5 Unigram tokenizer built
from a fixed word list (CLIP's most frequent word-final BPE tokens plus printable ASCII
characters, so ordinary prompts never hit <unk>), with T5's special tokens and 100 sentinels.

`build_tiny_flux_components` is shared with the other Flux families (Canny/Depth control, Redux):
import it rather than building another tiny Flux.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from diffserve.core.request import ModelLimits
from diffserve.engine.tiny.sd import clip_vocab_and_merges, write_clip_tokenizer
from diffserve.engine.tiny.build import build_atomically, seeded, write_marker

TINY_FLUX_RECIPE_VERSION = 1

# Tiny widths. T5 hidden == transformer joint_attention_dim; CLIP hidden == pooled_projection_dim.
T5_HIDDEN = 32
CLIP_HIDDEN = 32
FLUX_LATENT_CHANNELS = 16
T5_MAX_LENGTH = 512  # FLUX.1-dev's max_sequence_length
T5_WORDS = 8000  # word pieces taken from CLIP's vocabulary

# Tiny Flux models: sides are multiples of 16 (8x VAE, then 2x2 latent packing); batch up to 8
# (Qolaba's `batch`), guidance up to 30 (Qolaba's range). Dialects apply their own caps on top.
FLUX_TINY_LIMITS = ModelLimits(
    min_size=32, max_size=512, size_multiple=16, max_samples=8,
    min_guidance=1.0, max_guidance=30.0, default_guidance=3.5, default_steps=28, default_strength=0.7,
)
# The same limits for real FLUX.1 weights (1024 px class; Qolaba accepts inputs up to 1536).
FLUX_LIMITS = ModelLimits(
    min_size=256, max_size=1536, size_multiple=16, max_samples=8,
    min_guidance=1.0, max_guidance=30.0, default_guidance=3.5, default_steps=28, default_strength=0.7,
)

FLUX_REQUIRED_FILES = (
    "model_index.json",
    "README.md",
    "diffserve_tiny.json",
    "transformer/config.json",
    "transformer/diffusion_pytorch_model.safetensors",
    "vae/config.json",
    "vae/diffusion_pytorch_model.safetensors",
    "text_encoder/config.json",
    "text_encoder/model.safetensors",
    "text_encoder_2/config.json",
    "text_encoder_2/model.safetensors",
    "tokenizer/vocab.json",
    "tokenizer/merges.txt",
    "tokenizer_2/tokenizer.json",
    "scheduler/scheduler_config.json",
)

_README = """\
# diffserve tiny {title} (random weights)

A complete diffusers-format `{pipeline}` folder built offline by diffserve
(`diffserve.engine.tiny.flux`, recipe version {version}), laid out like black-forest-labs/{reference}.

* transformer/, vae/, text_encoder/, text_encoder_2/: tiny architectures with **seeded random
  weights**, never trained: every image is noise. For testing loading and serving code only.
* tokenizer/: the real CLIP BPE vocabulary. tokenizer_2/: a T5 Unigram tokenizer built from a fixed
  word list (not T5's SentencePiece model).
* scheduler/: FLUX.1-dev's FlowMatchEulerDiscreteScheduler configuration.
"""


# --------------------------------------------------------------------------------------------
# T5 tokenizer from a fixed word list
# --------------------------------------------------------------------------------------------


def t5_vocab(words: int = T5_WORDS) -> list[tuple[str, float]]:
    """(piece, log-probability) list in T5's layout: <pad>, </s>, <unk>, pieces, then 100 sentinels.

    Pieces: the first `words` word-final tokens of CLIP's BPE vocabulary (merge order ~ frequency),
    each as a word start ("▁cat") and as a word continuation ("cat"), and every printable ASCII
    character in both forms, scored so that whole words beat spelling them out.
    """
    vocab, _ = clip_vocab_and_merges()
    seen: set[str] = set()
    pieces: list[tuple[str, float]] = []

    def add(piece: str, score: float) -> None:
        if piece not in seen:
            seen.add(piece)
            pieces.append((piece, score))

    rank = 0
    for token in vocab:  # insertion order = CLIP id order: bytes, bytes</w>, merges by rank
        if not token.endswith("</w>") or len(token) <= 5 or not token[:-4].isascii() or not token[:-4].isprintable():
            continue
        word = token[:-4]
        score = -(2.0 + math.log1p(rank))
        add("▁" + word, score)
        add(word, score - 1.0)
        rank += 1
        if rank >= words:
            break
    for code in range(33, 127):
        add("▁" + chr(code), -20.0)
        add(chr(code), -21.0)
    add("▁", -22.0)
    specials = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    sentinels = [(f"<extra_id_{i}>", 0.0) for i in range(99, -1, -1)]
    return specials + pieces + sentinels


def build_t5_tokenizer():
    """A T5TokenizerFast (tokenizers Unigram) over `t5_vocab()`, max length 512 like FLUX.1's."""
    from transformers import T5TokenizerFast

    return T5TokenizerFast(vocab=t5_vocab(), extra_ids=100, model_max_length=T5_MAX_LENGTH)


# --------------------------------------------------------------------------------------------
# Components
# --------------------------------------------------------------------------------------------


def tiny_flux_transformer(in_channels: int = FLUX_LATENT_CHANNELS * 4, out_channels: int | None = None):
    from diffusers import FluxTransformer2DModel

    return FluxTransformer2DModel(
        patch_size=1,
        in_channels=in_channels,
        out_channels=out_channels,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=T5_HIDDEN,
        pooled_projection_dim=CLIP_HIDDEN,
        guidance_embeds=True,
        axes_dims_rope=(4, 6, 6),  # sums to attention_head_dim
    )


def tiny_clip_text_encoder():
    from transformers import CLIPTextConfig, CLIPTextModel

    from diffserve.engine.tiny.sd import CLIP_MAX_LENGTH, CLIP_VOCAB_SIZE

    return CLIPTextModel(CLIPTextConfig(
        vocab_size=CLIP_VOCAB_SIZE, hidden_size=CLIP_HIDDEN, intermediate_size=37, projection_dim=CLIP_HIDDEN,
        num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=CLIP_MAX_LENGTH,
        hidden_act="quick_gelu", layer_norm_eps=1e-5, bos_token_id=49406, eos_token_id=49407, pad_token_id=1,
    ))


def tiny_t5_encoder(vocab_size: int):
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(
        vocab_size=vocab_size, d_model=T5_HIDDEN, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, feed_forward_proj="gated-gelu", dropout_rate=0.0,
        is_encoder_decoder=False, use_cache=False, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    ))


def tiny_flux_vae():
    from diffusers import AutoencoderKL

    # 4 blocks -> 8x like FLUX.1's VAE; 16 latent channels; no quant convs; FLUX.1's factors.
    return AutoencoderKL(
        in_channels=3, out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(32, 32, 64, 64), layers_per_block=1, latent_channels=FLUX_LATENT_CHANNELS,
        norm_num_groups=32, sample_size=64, use_quant_conv=False, use_post_quant_conv=False,
        scaling_factor=0.3611, shift_factor=0.1159,
    )


def flux_dev_scheduler():
    from diffusers import FlowMatchEulerDiscreteScheduler

    # black-forest-labs/FLUX.1-dev/scheduler/scheduler_config.json
    return FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True,
        base_shift=0.5, max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096,
    )


def build_tiny_flux_components(
    tokenizer_dir: Path, *, transformer_in_channels: int = FLUX_LATENT_CHANNELS * 4,
    transformer_out_channels: int | None = None,
) -> dict[str, Any]:
    """Seeded tiny FLUX.1-dev components, keyed by FluxPipeline's argument names.

    tokenizer_dir: where CLIP's vocab.json/merges.txt are written (use `<pipeline folder>/tokenizer`).
    transformer_in_channels: 64 for FluxPipeline/Img2Img/Kontext; 128 for Flux Canny/Depth
        (control latents concatenated), with transformer_out_channels=64.
    """
    tokenizer_2 = build_t5_tokenizer()
    return {
        "transformer": seeded(lambda: tiny_flux_transformer(transformer_in_channels, transformer_out_channels)),
        "text_encoder": seeded(tiny_clip_text_encoder),
        "tokenizer": write_clip_tokenizer(Path(tokenizer_dir)),
        "text_encoder_2": seeded(lambda: tiny_t5_encoder(len(tokenizer_2))),
        "tokenizer_2": tokenizer_2,
        "vae": seeded(tiny_flux_vae),
        "scheduler": flux_dev_scheduler(),
    }


# --------------------------------------------------------------------------------------------
# Folders
# --------------------------------------------------------------------------------------------


def write_flux_folder(folder: Path, *, pipeline_class_name: str = "FluxPipeline", model: str = "tiny-flux",
                      reference: str = "FLUX.1-dev", **component_overrides: Any) -> None:
    """Write a tiny Flux diffusers folder (not atomic; see `build_tiny_flux_folder`).

    component_overrides replace or add components (e.g. `transformer=...` with in_channels 128, or
    `image_encoder=None, feature_extractor=None` for pipelines that take them).
    """
    import diffusers

    folder = Path(folder)
    components = build_tiny_flux_components(folder / "tokenizer")
    components.update(component_overrides)
    pipeline_class = getattr(diffusers, pipeline_class_name)
    pipe = pipeline_class(**components)
    pipe.save_pretrained(str(folder), safe_serialization=True)
    write_marker(folder, model=model, recipe_version=TINY_FLUX_RECIPE_VERSION, readme=_README.format(
        title=model, pipeline=pipeline_class_name, version=TINY_FLUX_RECIPE_VERSION, reference=reference))


def build_tiny_flux_folder(dest: Path, *, pipeline_class_name: str = "FluxPipeline", model: str = "tiny-flux",
                           reference: str = "FLUX.1-dev", required: tuple[str, ...] = FLUX_REQUIRED_FILES,
                           **component_overrides: Any) -> Path:
    """Build (deterministically, atomically) a tiny Flux folder at `dest` unless it is already complete."""
    return build_atomically(
        Path(dest),
        lambda staging: write_flux_folder(staging, pipeline_class_name=pipeline_class_name, model=model,
                                          reference=reference, **component_overrides),
        required,
        model,
    )


def build_tiny_flux(dest: Path) -> Path:
    """tiny-flux: a FluxPipeline folder (loaded as FluxImg2ImgPipeline), like FLUX.1-dev."""
    return build_tiny_flux_folder(dest)


def build_tiny_flux_kontext(dest: Path) -> Path:
    """tiny-flux-kontext: a FluxKontextPipeline folder, like FLUX.1-Kontext-dev."""
    return build_tiny_flux_folder(
        dest, pipeline_class_name="FluxKontextPipeline", model="tiny-flux-kontext", reference="FLUX.1-Kontext-dev",
        image_encoder=None, feature_extractor=None,
    )


# --------------------------------------------------------------------------------------------
# Flux Redux: prior_redux/ (SigLIP + Redux embedder) beside flux/ (the base pipeline)
# --------------------------------------------------------------------------------------------

SIGLIP_HIDDEN = 32
SIGLIP_IMAGE_SIZE = 32

FLUX_REDUX_REQUIRED_FILES = (
    "README.md",
    "diffserve_tiny.json",
    "prior_redux/model_index.json",
    "prior_redux/image_encoder/config.json",
    "prior_redux/image_encoder/model.safetensors",
    "prior_redux/image_embedder/config.json",
    "prior_redux/image_embedder/diffusion_pytorch_model.safetensors",
    "prior_redux/feature_extractor/preprocessor_config.json",
    *(f"flux/{name}" for name in FLUX_REQUIRED_FILES),
)

_REDUX_README = """\
# diffserve tiny FLUX.1 Redux (random weights)

Built offline by diffserve (`diffserve.engine.tiny.flux`, recipe version {version}). Two diffusers folders:

* prior_redux/: a FluxPriorReduxPipeline like black-forest-labs/FLUX.1-Redux-dev (SigLIP vision
  encoder, feature extractor, Redux image embedder), tiny and with **seeded random weights**.
* flux/: a tiny FLUX.1-dev-like FluxPipeline (see its README).

Every image is noise: for testing loading and serving code only.
"""


def tiny_siglip_vision():
    from transformers import SiglipVisionConfig, SiglipVisionModel

    return SiglipVisionModel(SiglipVisionConfig(
        hidden_size=SIGLIP_HIDDEN, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
        image_size=SIGLIP_IMAGE_SIZE, patch_size=8,
    ))


def siglip_feature_extractor():
    from transformers import SiglipImageProcessor

    # google/siglip-so400m-patch14-384's processor (bicubic, mean/std 0.5), at the tiny size.
    return SiglipImageProcessor(
        do_resize=True, size={"height": SIGLIP_IMAGE_SIZE, "width": SIGLIP_IMAGE_SIZE}, resample=3,
        do_rescale=True, rescale_factor=1 / 255, do_normalize=True, image_mean=[0.5] * 3, image_std=[0.5] * 3,
    )


def tiny_redux_embedder():
    from diffusers.pipelines.flux.modeling_flux import ReduxImageEncoder

    return ReduxImageEncoder(redux_dim=SIGLIP_HIDDEN, txt_in_features=T5_HIDDEN)


def write_flux_redux_folder(folder: Path) -> None:
    from diffusers import FluxPriorReduxPipeline

    folder = Path(folder)
    prior = FluxPriorReduxPipeline(
        image_encoder=seeded(tiny_siglip_vision),
        feature_extractor=siglip_feature_extractor(),
        image_embedder=seeded(tiny_redux_embedder),
    )
    prior.save_pretrained(str(folder / "prior_redux"), safe_serialization=True)
    write_flux_folder(folder / "flux")
    write_marker(folder, model="tiny-flux-redux", recipe_version=TINY_FLUX_RECIPE_VERSION,
                 readme=_REDUX_README.format(version=TINY_FLUX_RECIPE_VERSION))


def build_tiny_flux_redux(dest: Path) -> Path:
    """tiny-flux-redux: prior_redux/ + flux/ (see engine/families/flux_redux.py for the layout)."""
    return build_atomically(Path(dest), write_flux_redux_folder, FLUX_REDUX_REQUIRED_FILES, "tiny-flux-redux")


# Redux is image variation: by default the init image reaches the output only through the prior.
FLUX_REDUX_TINY_LIMITS = FLUX_TINY_LIMITS.model_copy(update={"default_strength": 1.0})
FLUX_REDUX_LIMITS = FLUX_LIMITS.model_copy(update={"default_strength": 1.0})
