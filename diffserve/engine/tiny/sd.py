"""A tiny Stable Diffusion 1.x pipeline with random weights, built offline.

`build_tiny_sd(dest)` writes a complete diffusers-format SD 1.x folder (the same layout as
`stable-diffusion-v1-5`: model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/)
whose models are a few MB of seeded random weights. It lets tests and demos drive diffusers'
real loading and img2img code without network access; its images are noise.

Only the tokenizer is real: the CLIP BPE vocabulary shipped inside the `open_clip_torch` wheel
(`open_clip/bpe_simple_vocab_16e6.txt.gz`, extracted by `make install`) is converted to `vocab.json` + `merges.txt`
exactly as OpenAI's `simple_tokenizer.py` builds its vocabulary, so prompts tokenize to the
same ids as `openai/clip-vit-large-patch14`.

The build is deterministic (same bytes for the weight files every time, for a given torch /
diffusers / transformers version) and atomic (built in a temporary folder beside `dest`, then
renamed into place). Nothing here runs at import time; the heavy imports happen inside the
functions.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import sys
from pathlib import Path

from diffserve.engine.tiny.build import MARKER_FILE, build_atomically, folder_is_complete, seeded

# Bump when the recipe below changes; recorded in the folder's marker file.
TINY_SD_RECIPE_VERSION = 1

# CLIP's vocabulary: 256 byte symbols, the same with '</w>', 48894 merges, 2 special tokens.
CLIP_VOCAB_SIZE = 49408
CLIP_NUM_MERGES = 49152 - 256 - 2
CLIP_BPE_NAME = "bpe_simple_vocab_16e6.txt.gz"
CLIP_BOS = "<|startoftext|>"
CLIP_EOS = "<|endoftext|>"
CLIP_MAX_LENGTH = 77

# Files whose presence makes an existing folder "complete" (written last: the marker).
_REQUIRED_FILES = (
    "model_index.json",
    "README.md",
    MARKER_FILE,
    "unet/config.json",
    "unet/diffusion_pytorch_model.safetensors",
    "vae/config.json",
    "vae/diffusion_pytorch_model.safetensors",
    "text_encoder/config.json",
    "text_encoder/model.safetensors",
    "tokenizer/vocab.json",
    "tokenizer/merges.txt",
    "tokenizer/tokenizer_config.json",
    "scheduler/scheduler_config.json",
)

_README = """\
# diffserve tiny Stable Diffusion 1.x (random weights)

This folder is a complete diffusers-format Stable Diffusion 1.x pipeline built offline by
`diffserve.engine.tiny.sd.build_tiny_sd` (recipe version {version}).

* unet/, vae/, text_encoder/: tiny architectures with **seeded random weights**. They were never
  trained: every image this pipeline produces is noise. Use it to test loading and serving code,
  never to judge image quality.
* tokenizer/: the real CLIP BPE vocabulary (49408 tokens, converted from open_clip's
  `bpe_simple_vocab_16e6.txt.gz`), so prompts tokenize exactly as with SD 1.x.
* scheduler/: Stable Diffusion 1.5's PNDM scheduler configuration.
* No safety checker.
"""


# --------------------------------------------------------------------------------------------
# Tokenizer: OpenAI CLIP's vocabulary from open_clip's BPE file
# --------------------------------------------------------------------------------------------


def clip_bpe_file() -> Path:
    """Path of OpenAI CLIP's `bpe_simple_vocab_16e6.txt.gz`.

    `make install` extracts it from the open_clip_torch wheel (hash-checked) into
    `<venv>/share/diffserve/`, without installing that package; an installed `open_clip` package
    (not imported) is used when that file is absent.
    """
    installed = Path(sys.prefix) / "share" / "diffserve" / CLIP_BPE_NAME
    if installed.is_file():
        return installed
    spec = importlib.util.find_spec("open_clip")
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / CLIP_BPE_NAME
        if candidate.is_file():
            return candidate
    raise RuntimeError(
        f"The CLIP BPE vocabulary ({CLIP_BPE_NAME}) is missing: `make install` puts it in "
        f"{installed.parent} (or install the `open_clip_torch` package)."
    )


def _bytes_to_unicode() -> dict[int, str]:
    """OpenAI CLIP / GPT-2's reversible byte -> printable unicode character table."""
    byte_values = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    code_points = byte_values[:]
    extra = 0
    for b in range(256):
        if b not in byte_values:
            byte_values.append(b)
            code_points.append(256 + extra)
            extra += 1
    return dict(zip(byte_values, (chr(c) for c in code_points)))


def clip_vocab_and_merges(bpe_path: Path | None = None) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """CLIP's token -> id map and ordered merge list, built as in OpenAI's `simple_tokenizer.py`."""
    path = bpe_path or clip_bpe_file()
    lines = gzip.decompress(path.read_bytes()).decode("utf-8").split("\n")
    # Line 0 is the "#version" header; CLIP keeps the first 49152-256-2 merges after it.
    merges = [tuple(line.split()) for line in lines[1 : CLIP_NUM_MERGES + 1]]
    byte_symbols = list(_bytes_to_unicode().values())
    tokens = byte_symbols + [s + "</w>" for s in byte_symbols]
    tokens += ["".join(pair) for pair in merges]
    tokens += [CLIP_BOS, CLIP_EOS]
    vocab = {token: index for index, token in enumerate(tokens)}
    if len(vocab) != CLIP_VOCAB_SIZE or any(len(pair) != 2 for pair in merges):
        raise RuntimeError(f"Unexpected CLIP BPE file {path}: got {len(vocab)} tokens")
    return vocab, merges  # type: ignore[return-value]


def write_clip_tokenizer(folder: Path):
    """Write CLIP's vocab.json + merges.txt into `folder`; return the matching `CLIPTokenizer`.

    The tokenizer's own `save_pretrained` (run by the pipeline's) adds tokenizer.json and
    tokenizer_config.json beside them.
    """
    from transformers import CLIPTokenizer

    vocab, merges = clip_vocab_and_merges()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text(
        "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8"
    )
    # pad = <|endoftext|>, as in stable-diffusion-v1-5's tokenizer.
    return CLIPTokenizer(
        vocab=vocab,
        merges=merges,
        model_max_length=CLIP_MAX_LENGTH,
        bos_token=CLIP_BOS,
        eos_token=CLIP_EOS,
        unk_token=CLIP_EOS,
        pad_token=CLIP_EOS,
    )


# --------------------------------------------------------------------------------------------
# Tiny models
# --------------------------------------------------------------------------------------------


def _tiny_unet():
    from diffusers import UNet2DConditionModel

    # SD 1.x's layout (cross-attention in all but the lowest block, 2 layers per block), narrowed.
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=32,
    )


def _tiny_vae():
    from diffusers import AutoencoderKL

    # 4 blocks -> 3 downsamplings: a 64x64 image encodes to 8x8x4 latents, like the real SD VAE.
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(32, 32, 64, 64),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=64,
        scaling_factor=0.18215,
    )


def _tiny_text_encoder():
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        vocab_size=CLIP_VOCAB_SIZE,
        hidden_size=32,
        intermediate_size=37,
        projection_dim=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        max_position_embeddings=CLIP_MAX_LENGTH,
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=1,
    )
    return CLIPTextModel(config)


def _sd15_scheduler():
    from diffusers import PNDMScheduler

    # stable-diffusion-v1-5/scheduler/scheduler_config.json
    return PNDMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        trained_betas=None,
        skip_prk_steps=True,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="epsilon",
        timestep_spacing="leading",
    )


def _write_pipeline(folder: Path) -> None:
    from diffusers import StableDiffusionPipeline

    tokenizer = write_clip_tokenizer(folder / "tokenizer")
    pipe = StableDiffusionPipeline(
        vae=seeded(_tiny_vae),
        text_encoder=seeded(_tiny_text_encoder),
        tokenizer=tokenizer,
        unet=seeded(_tiny_unet),
        scheduler=_sd15_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        image_encoder=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(str(folder), safe_serialization=True)
    (folder / "README.md").write_text(_README.format(version=TINY_SD_RECIPE_VERSION), encoding="utf-8")
    (folder / MARKER_FILE).write_text(
        json.dumps({"recipe_version": TINY_SD_RECIPE_VERSION, "weights": "random"}, indent=2) + "\n",
        encoding="utf-8",
    )


# --------------------------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------------------------


def is_complete(folder: Path) -> bool:
    """True when `folder` holds every file a tiny SD build writes."""
    return folder_is_complete(folder, _REQUIRED_FILES)


def build_tiny_sd(dest: Path) -> Path:
    """Write the tiny random-weight SD 1.x pipeline folder at `dest` (if not already there); return `dest`.

    The folder is built in a temporary directory beside `dest` and renamed into place, so a
    half-written folder is never visible at `dest`. A complete existing folder is returned as is.
    A non-empty `dest` that is not a complete build is left alone and reported (FileExistsError).
    """
    return build_atomically(Path(dest), _write_pipeline, _REQUIRED_FILES, "tiny SD")
