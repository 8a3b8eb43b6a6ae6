"""A tiny HiDream-I1 pipeline with random weights, built offline (tiny-hidream).

The same components as HiDream-ai/HiDream-I1-Full, narrowed (HiDreamImagePipeline's arguments):

* transformer: HiDreamImageTransformer2DModel (1 dual-stream + 1 single-stream block, MoE with 4
  routed experts, 2 active), 16 latent channels, 2x2 patches. `max_resolution` (8, 8) latent
  pixels = 16 patches: its working area is 64x64 px (HiDream-I1's (128, 128) is 1024x1024 px).
* vae: tiny-flux's 16-channel 8x AutoencoderKL (HiDream-I1 uses FLUX.1's VAE).
* text_encoder / text_encoder_2: two CLIPTextModelWithProjection (CLIP-L/G in the real model) with
  the real CLIP BPE tokenizer; 128 positions (the pipeline pads CLIP prompts to 128 tokens).
* text_encoder_3 / tokenizer_3: tiny-flux's T5 encoder and Unigram T5 tokenizer.
* text_encoder_4 / tokenizer_4: a 2-layer LlamaForCausalLM (Llama-3.1-8B-Instruct in the real
  model) and a Unigram tokenizer over tiny-flux's word list with Llama 3's special tokens
  (<|begin_of_text|> prepended, <|end_of_text|> as end and padding token).
* scheduler: FlowMatchEulerDiscreteScheduler (shift 3.0, no dynamic shifting), a flow-matching
  Euler scheduler like those of HiDream-I1-Dev/Fast. HiDream-I1-Full ships a flow-matching
  UniPCMultistepScheduler instead (`flow_unipc_scheduler` builds one; the tests run both).

Deterministic (seeded weights) and atomic (engine/tiny/build.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from diffserve.core.request import ModelLimits
from diffserve.engine.tiny.sd import write_clip_tokenizer
from diffserve.engine.tiny.build import build_atomically, seeded, write_marker
from diffserve.engine.tiny.flux import T5_HIDDEN, build_t5_tokenizer, t5_vocab, tiny_flux_vae, tiny_t5_encoder

TINY_HIDREAM_RECIPE_VERSION = 1

CLIP_POSITIONS = 128
CLIP_PROJECTIONS = (32, 16)  # text_encoder, text_encoder_2: pooled outputs concatenated -> text_emb_dim
LLAMA_HIDDEN = 32
LLAMA_LAYERS = 2  # one hidden state per transformer block (1 dual + 1 single stream)
LLAMA_BOS = "<|begin_of_text|>"
LLAMA_EOS = "<|end_of_text|>"

# HiDream on ModelsLab ("hidream-o1" page): sides 1024..2048 divisible by 8, 20..50 steps
# (default 30), guidance 1..20 (default 7.5), up to 4 samples.
HIDREAM_LIMITS = ModelLimits(
    min_size=1024, max_size=2048, size_multiple=8, min_steps=20, max_steps=50, default_steps=30,
    min_guidance=1.0, max_guidance=20.0, default_guidance=7.5, max_samples=4, default_strength=0.7,
)
# tiny-hidream: the same, at CPU-test sizes and step counts.
HIDREAM_TINY_LIMITS = HIDREAM_LIMITS.model_copy(update={"min_size": 32, "max_size": 256, "min_steps": 1})

_REQUIRED_FILES = (
    "model_index.json",
    "README.md",
    "diffserve_tiny.json",
    "transformer/config.json",
    "transformer/diffusion_pytorch_model.safetensors",
    "vae/diffusion_pytorch_model.safetensors",
    "text_encoder/model.safetensors",
    "text_encoder_2/model.safetensors",
    "text_encoder_3/model.safetensors",
    "text_encoder_4/model.safetensors",
    "tokenizer/vocab.json",
    "tokenizer_2/vocab.json",
    "tokenizer_3/tokenizer.json",
    "tokenizer_4/tokenizer.json",
    "scheduler/scheduler_config.json",
)

_README = """\
# diffserve tiny HiDream-I1 (random weights)

A complete diffusers-format `HiDreamImagePipeline` folder built offline by diffserve
(`diffserve.engine.tiny.hidream`, recipe version {version}), laid out like HiDream-ai/HiDream-I1-Full.
Every model in it has **seeded random weights** and was never trained: its images are noise. For
testing loading and serving code only. Its transformer's working area is 64x64 px.
"""


def llama_tokenizer():
    """A PreTrainedTokenizerFast (tokenizers Unigram) with Llama 3's special tokens, BOS prepended."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    pieces = [(piece, score) for piece, score in t5_vocab() if not piece.startswith("<")]
    vocab = [(LLAMA_BOS, 0.0), (LLAMA_EOS, 0.0), ("<unk>", 0.0)] + pieces
    tokenizer = Tokenizer(models.Unigram(vocab, unk_id=2, byte_fallback=False))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{LLAMA_BOS} $A", pair=f"{LLAMA_BOS} $A {LLAMA_BOS} $B", special_tokens=[(LLAMA_BOS, 0)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token=LLAMA_BOS, eos_token=LLAMA_EOS, unk_token="<unk>",
        pad_token=LLAMA_EOS, model_max_length=131072,
    )


def tiny_clip_with_projection(projection_dim: int):
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    from diffserve.engine.tiny.sd import CLIP_VOCAB_SIZE

    return CLIPTextModelWithProjection(CLIPTextConfig(
        vocab_size=CLIP_VOCAB_SIZE, hidden_size=32, intermediate_size=37, projection_dim=projection_dim,
        num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=CLIP_POSITIONS,
        hidden_act="quick_gelu", layer_norm_eps=1e-5, bos_token_id=49406, eos_token_id=49407, pad_token_id=1,
    ))


def tiny_llama(vocab_size: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(
        vocab_size=vocab_size, hidden_size=LLAMA_HIDDEN, intermediate_size=37, num_hidden_layers=LLAMA_LAYERS,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, bos_token_id=0,
        eos_token_id=1, pad_token_id=1, attn_implementation="eager",
    ))


def tiny_hidream_transformer():
    from diffusers import HiDreamImageTransformer2DModel

    return HiDreamImageTransformer2DModel(
        patch_size=2, in_channels=16, out_channels=16, num_layers=1, num_single_layers=1,
        attention_head_dim=8, num_attention_heads=4, caption_channels=[T5_HIDDEN, LLAMA_HIDDEN],
        text_emb_dim=sum(CLIP_PROJECTIONS), num_routed_experts=4, num_activated_experts=2,
        axes_dims_rope=(4, 2, 2), max_resolution=(8, 8), llama_layers=list(range(LLAMA_LAYERS)),
    )


def flow_euler_scheduler():
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=False)


def flow_unipc_scheduler():
    """A flow-matching UniPC scheduler (flow_shift 3.0), the kind HiDream-I1-Full ships."""
    from diffusers import UniPCMultistepScheduler

    return UniPCMultistepScheduler(
        num_train_timesteps=1000, prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0,
    )


def tiny_hidream_components(folder: Path) -> dict[str, Any]:
    """Seeded components keyed by HiDreamImagePipeline's arguments (CLIP vocab files go in `folder`)."""
    tokenizer_3 = build_t5_tokenizer()
    tokenizer_4 = llama_tokenizer()
    clip_1, clip_2 = (write_clip_tokenizer(folder / name) for name in ("tokenizer", "tokenizer_2"))
    return {
        "scheduler": flow_euler_scheduler(),
        "vae": seeded(tiny_flux_vae),
        "text_encoder": seeded(lambda: tiny_clip_with_projection(CLIP_PROJECTIONS[0])),
        "tokenizer": clip_1,
        "text_encoder_2": seeded(lambda: tiny_clip_with_projection(CLIP_PROJECTIONS[1])),
        "tokenizer_2": clip_2,
        "text_encoder_3": seeded(lambda: tiny_t5_encoder(len(tokenizer_3))),
        "tokenizer_3": tokenizer_3,
        "text_encoder_4": seeded(lambda: tiny_llama(len(tokenizer_4))),
        "tokenizer_4": tokenizer_4,
        "transformer": seeded(tiny_hidream_transformer),
    }


def _write(folder: Path) -> None:
    from diffusers import HiDreamImagePipeline

    pipe = HiDreamImagePipeline(**tiny_hidream_components(folder))
    pipe.save_pretrained(str(folder), safe_serialization=True)
    write_marker(folder, model="tiny-hidream", recipe_version=TINY_HIDREAM_RECIPE_VERSION,
                 readme=_README.format(version=TINY_HIDREAM_RECIPE_VERSION))


def build_tiny_hidream(dest: Path) -> Path:
    """Build (deterministically, atomically) the tiny HiDream-I1 folder at `dest` unless it is complete."""
    return build_atomically(Path(dest), _write, _REQUIRED_FILES, "tiny-hidream")
