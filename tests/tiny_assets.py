"""Tiny assets for the tiny SD model, built offline with seeded random weights: LoRAs (diffusers/PEFT
and kohya/A1111 formats), a textual-inversion embedding, an alternative VAE (diffusers folder and
single file), and an IP-Adapter folder laid out like h94/IP-Adapter (basic and plus-face adapters
+ a CLIP image encoder). Shapes come from the tiny model itself, so they fit it exactly.

The same for tiny-sdxl (build_tiny_sdxl_assets): a LoRA on the UNet and both text encoders (diffusers
and kohya formats), an SDXL embedding (clip_l + clip_g), and h94/IP-Adapter's sdxl_models/ adapters."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

PEFT_LORA_FILE = "pytorch_lora_weights.safetensors"


@dataclass(frozen=True)
class TinyAssets:
    lora_folder: Path  # diffusers/PEFT format: <folder>/pytorch_lora_weights.safetensors (UNet + text encoder)
    lora_kohya: Path  # the same weights renamed to kohya/A1111 keys (lora_unet_..., lora_te_...; .alpha)
    lora_unet_only: Path  # another LoRA (other seed), UNet only, kohya format
    embedding: Path  # A1111-style safetensors: {"emb_params": [2, hidden]} (a 2-vector embedding)
    vae_folder: Path  # diffusers AutoencoderKL folder (config.json + weights), another seed than tiny-sd's
    vae_file: Path  # the same VAE as one .safetensors file
    ip_adapter: Path  # root with models/image_encoder/, models/ip-adapter_sd15.safetensors, ...plus-face...


def build_tiny_assets(tiny_sd: Path, dest: Path) -> TinyAssets:
    """Build every tiny asset under `dest` (once: a finished build is reused)."""
    from diffserve.engine.models.loading import ModelSource, load_img2img_pipeline

    assets = TinyAssets(dest / "lora-peft", dest / "lora-kohya.safetensors", dest / "lora-unet-only-kohya.safetensors",
                        dest / "my-style.safetensors", dest / "vae-alt", dest / "vae-alt.safetensors",
                        dest / "IP-Adapter")
    done = dest / "complete"
    if done.exists():
        return assets
    dest.mkdir(parents=True, exist_ok=True)
    pipe = load_img2img_pipeline(ModelSource("folder", str(tiny_sd)))
    _write_peft_lora(pipe, assets.lora_folder, seed=11)
    _write_kohya(assets.lora_folder / PEFT_LORA_FILE, assets.lora_kohya)
    other = dest / "lora-other"
    _write_peft_lora(pipe, other, seed=12, text_encoder=False)
    _write_kohya(other / PEFT_LORA_FILE, assets.lora_unet_only)
    _write_embedding(assets.embedding, pipe.text_encoder.config.hidden_size)
    _write_vae(assets.vae_folder, assets.vae_file)
    _write_ip_adapter(pipe.unet, assets.ip_adapter)
    done.write_text("ok")
    return assets


def _write_peft_lora(pipe, folder: Path, *, seed: int, text_encoder: bool = True) -> None:
    """Rank-4 LoRA on the attention projections, random non-zero A and B, saved by diffusers."""
    import copy

    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = copy.deepcopy(pipe.unet)
        unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False,
                                    target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
        layers = {"unet_lora_layers": convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))}
        for name in ("text_encoder", "text_encoder_2") if text_encoder else ():
            if getattr(pipe, name, None) is None:
                continue
            encoder = copy.deepcopy(getattr(pipe, name))
            encoder.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False,
                                           target_modules=["q_proj", "k_proj", "v_proj", "out_proj"]))
            layers[f"{name}_lora_layers"] = convert_state_dict_to_diffusers(get_peft_model_state_dict(encoder))
    type(pipe).save_lora_weights(str(folder), safe_serialization=True, **layers)


def _write_kohya(peft_file: Path, dest: Path, te_prefixes: dict[str, str] | None = None) -> None:
    """Rename diffusers LoRA keys to kohya/A1111's: unet.down_blocks.0...attn1.to_q.lora.down.weight ->
    lora_unet_down_blocks_0_..._attn1_to_q.lora_down.weight (+ .alpha = rank: scale 1, like the original);
    text_encoder.encoder.layers.0.self_attn.q_proj... -> lora_te_text_model_encoder_layers_0_self_attn_q_proj...
    (SDXL: te_prefixes {"text_encoder": "lora_te1_", "text_encoder_2": "lora_te2_"})."""
    from safetensors.torch import load_file, save_file

    prefixes = {"unet": "lora_unet_", **(te_prefixes or {"text_encoder": "lora_te_"})}
    out = {}
    for key, value in load_file(str(peft_file)).items():
        component, rest = key.split(".", 1)
        module, _, suffix = re.match(r"(.*?)\.(lora(?:_linear_layer)?)\.(up|down)\.weight$", rest).group(1, 2, 3)
        if component != "unet":  # kohya names text encoder modules from text_model (whichever class holds it)
            module = "text_model." + module.removeprefix("text_model.")
        name = (prefixes[component] + module).replace(".", "_")
        out[f"{name}.lora_{suffix}.weight"] = value
        if suffix == "down":
            out[f"{name}.alpha"] = torch.tensor(float(value.shape[0]))
    save_file(out, str(dest))


def _write_embedding(dest: Path, hidden_size: int) -> None:
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(21)
    save_file({"emb_params": torch.randn(2, hidden_size, generator=g)}, str(dest))


def _write_vae(folder: Path, single_file: Path) -> None:
    from safetensors.torch import save_file

    from diffserve.engine.tiny.sd import _tiny_vae

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(31)
        vae = _tiny_vae().eval()
    vae.save_pretrained(str(folder))
    save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, str(single_file))


def _write_ip_adapter(unet, root: Path) -> None:
    """h94/IP-Adapter's layout: models/image_encoder/ (CLIP vision + projection), models/<adapter>.safetensors
    with `image_proj.*` and `ip_adapter.<n>.to_k_ip/to_v_ip.weight` keys, n = 1, 3, 5... over the UNet's
    cross-attention layers in attn_processors order (what diffusers' loader expects)."""
    from safetensors.torch import save_file
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    models = root / "models"
    cross = unet.config.cross_attention_dim
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(41)
        encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
            hidden_size=32, intermediate_size=37, projection_dim=32, num_hidden_layers=2, num_attention_heads=4,
            image_size=32, patch_size=4)).eval()
    encoder.save_pretrained(str(models / "image_encoder"))
    g = torch.Generator().manual_seed(42)
    basic = {
        "image_proj.proj.weight": torch.randn(4 * cross, encoder.config.projection_dim, generator=g) * 0.2,
        "image_proj.proj.bias": torch.zeros(4 * cross),
        "image_proj.norm.weight": torch.ones(cross),
        "image_proj.norm.bias": torch.zeros(cross),
        **_ip_attention_layers(unet, g),
    }
    save_file(basic, str(models / "ip-adapter_sd15.safetensors"))
    plus = {f"image_proj.{k}": v for k, v in _plus_resampler(encoder.config.hidden_size, cross).items()}
    plus.update(_ip_attention_layers(unet, g))
    save_file(plus, str(models / "ip-adapter-plus-face_sd15.safetensors"))


def _ip_attention_layers(unet, g: torch.Generator) -> dict[str, torch.Tensor]:
    out, key_id = {}, 1
    for name in unet.attn_processors:
        if name.endswith("attn1.processor"):
            continue
        hidden = unet.get_submodule(name.rsplit(".processor", 1)[0]).to_k.out_features
        for proj in ("to_k_ip", "to_v_ip"):
            out[f"ip_adapter.{key_id}.{proj}.weight"] = torch.randn(hidden, unet.config.cross_attention_dim,
                                                                    generator=g) * 0.3
        key_id += 2
    return out


def _plus_resampler(embed_dims: int, output_dims: int, *, num_queries: int = 4,
                    seed: int = 43) -> dict[str, torch.Tensor]:
    """An IP-Adapter Plus resampler in the original repo's key names (diffusers converts them on load):
    built as diffusers' IPAdapterPlusImageProjection, then renamed back."""
    from diffusers.models.embeddings import IPAdapterPlusImageProjection

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        resampler = IPAdapterPlusImageProjection(embed_dims=embed_dims, output_dims=output_dims, hidden_dims=32,
                                                 depth=4, dim_head=64, heads=1, num_queries=num_queries)
    state = resampler.state_dict()
    renames = {"ln0.": "0.norm1.", "ln1.": "0.norm2.", "attn.to_q.": "0.to_q.", "attn.to_out.0.": "0.to_out.",
               "ff.0.": "1.0.", "ff.1.net.0.proj.": "1.1.", "ff.1.net.2.": "1.3."}
    out = {}
    for key, value in state.items():
        layer = re.match(r"layers\.(\d+)\.(.*)", key)
        if layer is None:
            out[key] = value.contiguous()
            continue
        i, rest = layer.groups()
        if rest.startswith(("attn.to_k.", "attn.to_v.")):
            continue  # stored together as to_kv
        prefix = next(p for p in renames if rest.startswith(p))
        out[f"layers.{i}.{renames[prefix]}{rest[len(prefix):]}"] = value.contiguous()
        if rest == "attn.to_q.weight":
            out[f"layers.{i}.0.to_kv.weight"] = torch.cat([state[f"layers.{i}.attn.to_k.weight"],
                                                           state[f"layers.{i}.attn.to_v.weight"]])
    return out


# --------------------------------------------------------------------------------------------
# tiny-sdxl
# --------------------------------------------------------------------------------------------

# The SDXL ids of the ModelsLab v6 page -> (weights in sdxl_models/, image encoder folder), as in h94/IP-Adapter.
SDXL_IP_ADAPTERS = {
    "ip-adapter_sdxl": ("ip-adapter_sdxl.safetensors", "sdxl_models/image_encoder"),
    "ip-adapter-plus_sdxl_vit-h": ("ip-adapter-plus_sdxl_vit-h.safetensors", "models/image_encoder"),
    "ip-adapter-plus-face_sdxl_vit-h": ("ip-adapter-plus-face_sdxl_vit-h.safetensors", "models/image_encoder"),
}


@dataclass(frozen=True)
class TinySdxlAssets:
    lora_folder: Path  # diffusers/PEFT format: UNet + text_encoder + text_encoder_2
    lora_kohya: Path  # the same weights in kohya keys (lora_unet_..., lora_te1_..., lora_te2_...; .alpha)
    embedding: Path  # SDXL textual inversion: {"clip_l": [2, te1 hidden], "clip_g": [2, te2 hidden]}
    embedding_sd: Path  # a one-encoder (SD 1.x style) embedding, which SDXL cannot take
    ip_adapter: Path  # root with sdxl_models/{image_encoder/, ip-adapter_sdxl..., plus vit-h...}, models/image_encoder/


def build_tiny_sdxl_assets(tiny_sdxl: Path, dest: Path) -> TinySdxlAssets:
    """Build every tiny SDXL asset under `dest` (once: a finished build is reused)."""
    from diffserve.engine.models.loading import ModelSource, load_img2img_pipeline

    assets = TinySdxlAssets(dest / "lora-peft", dest / "lora-kohya.safetensors", dest / "xl-style.safetensors",
                            dest / "sd-style.safetensors", dest / "IP-Adapter")
    done = dest / "complete"
    if done.exists():
        return assets
    dest.mkdir(parents=True, exist_ok=True)
    pipe = load_img2img_pipeline(ModelSource("folder", str(tiny_sdxl)))
    _write_peft_lora(pipe, assets.lora_folder, seed=13)
    _write_kohya(assets.lora_folder / PEFT_LORA_FILE, assets.lora_kohya,
                 {"text_encoder": "lora_te1_", "text_encoder_2": "lora_te2_"})
    _write_sdxl_embedding(assets.embedding, pipe.text_encoder.config.hidden_size,
                          pipe.text_encoder_2.config.hidden_size)
    _write_embedding(assets.embedding_sd, pipe.text_encoder.config.hidden_size)
    _write_sdxl_ip_adapter(pipe.unet, assets.ip_adapter)
    done.write_text("ok")
    return assets


def _write_sdxl_embedding(dest: Path, clip_l: int, clip_g: int) -> None:
    """The SDXL textual-inversion layout (e.g. civitai's SDXL embeddings): one tensor per text encoder."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(22)
    save_file({"clip_l": torch.randn(2, clip_l, generator=g), "clip_g": torch.randn(2, clip_g, generator=g)},
              str(dest))


def _clip_vision(folder: Path, *, hidden: int, projection: int, seed: int):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
            hidden_size=hidden, intermediate_size=37, projection_dim=projection, num_hidden_layers=2,
            num_attention_heads=4, image_size=32, patch_size=4)).eval()
    encoder.save_pretrained(str(folder))
    return encoder


def _write_sdxl_ip_adapter(unet, root: Path) -> None:
    """h94/IP-Adapter's SDXL half: sdxl_models/image_encoder (OpenCLIP ViT-bigG there; here a tiny CLIP vision
    model with its own widths), sdxl_models/ip-adapter_sdxl.safetensors (basic: an ImageProjection from that
    encoder's projected embedding to 4 tokens of the UNet's cross-attention width), and the "vit-h" Plus / Plus
    Face adapters: Resamplers over the penultimate hidden states of models/image_encoder (ViT-H there)."""
    from safetensors.torch import save_file

    cross = unet.config.cross_attention_dim
    big_g = _clip_vision(root / "sdxl_models" / "image_encoder", hidden=40, projection=48, seed=51)
    vit_h = _clip_vision(root / "models" / "image_encoder", hidden=32, projection=24, seed=52)
    g = torch.Generator().manual_seed(53)
    basic = {
        "image_proj.proj.weight": torch.randn(4 * cross, big_g.config.projection_dim, generator=g) * 0.2,
        "image_proj.proj.bias": torch.zeros(4 * cross),
        "image_proj.norm.weight": torch.ones(cross),
        "image_proj.norm.bias": torch.zeros(cross),
        **_ip_attention_layers(unet, g),
    }
    save_file(basic, str(root / "sdxl_models" / SDXL_IP_ADAPTERS["ip-adapter_sdxl"][0]))
    for ip_id, queries, seed in (("ip-adapter-plus_sdxl_vit-h", 8, 54), ("ip-adapter-plus-face_sdxl_vit-h", 4, 55)):
        plus = {f"image_proj.{k}": v for k, v in
                _plus_resampler(vit_h.config.hidden_size, cross, num_queries=queries, seed=seed).items()}
        plus.update(_ip_attention_layers(unet, g))
        save_file(plus, str(root / "sdxl_models" / SDXL_IP_ADAPTERS[ip_id][0]))
