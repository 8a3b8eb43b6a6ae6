"""An LDM (original Stable Diffusion) single-file checkpoint from diffusers weights: test-only key
renaming, the inverse of diffusers' single_file_utils conversions for SD 1.x. Used to make the tiny model's
single-file form (tests/test_engine_loading.py, test_management.py, test_fleet.py)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

_UNET_RESNET_TO_LDM = {
    "norm1.": "in_layers.0.",
    "conv1.": "in_layers.2.",
    "norm2.": "out_layers.0.",
    "conv2.": "out_layers.3.",
    "time_emb_proj.": "emb_layers.1.",
    "conv_shortcut.": "skip_connection.",
}
_VAE_ATTENTION_TO_LDM = {"group_norm.": "norm.", "to_q.": "q.", "to_k.": "k.", "to_v.": "v.", "to_out.0.": "proj_out."}


def _unet_prefixes(config: dict) -> list[tuple[str, str]]:
    per_block = config["layers_per_block"]
    stride = per_block + 1  # LDM numbers resnets, attentions and resamplers in one sequence
    prefixes = [
        ("time_embedding.linear_1.", "time_embed.0."),
        ("time_embedding.linear_2.", "time_embed.2."),
        ("conv_in.", "input_blocks.0.0."),
        ("conv_norm_out.", "out.0."),
        ("conv_out.", "out.2."),
        ("mid_block.resnets.0.", "middle_block.0."),
        ("mid_block.attentions.0.", "middle_block.1."),
        ("mid_block.resnets.1.", "middle_block.2."),
    ]
    for i, up_type in enumerate(config["up_block_types"]):
        for j in range(per_block):
            prefixes.append((f"down_blocks.{i}.resnets.{j}.", f"input_blocks.{stride * i + j + 1}.0."))
            prefixes.append((f"down_blocks.{i}.attentions.{j}.", f"input_blocks.{stride * i + j + 1}.1."))
        prefixes.append((f"down_blocks.{i}.downsamplers.0.conv.", f"input_blocks.{stride * (i + 1)}.0.op."))
        for j in range(per_block + 1):
            prefixes.append((f"up_blocks.{i}.resnets.{j}.", f"output_blocks.{stride * i + j}.0."))
            prefixes.append((f"up_blocks.{i}.attentions.{j}.", f"output_blocks.{stride * i + j}.1."))
        upsampler_slot = 2 if up_type.startswith("CrossAttn") else 1
        prefixes.append((f"up_blocks.{i}.upsamplers.0.", f"output_blocks.{stride * i + per_block}.{upsampler_slot}."))
    return prefixes


def _vae_prefixes(config: dict) -> list[tuple[str, str]]:
    blocks = len(config["block_out_channels"])
    prefixes = [("encoder.conv_norm_out.", "encoder.norm_out."), ("decoder.conv_norm_out.", "decoder.norm_out.")]
    for part in ("encoder", "decoder"):
        prefixes.append((f"{part}.mid_block.attentions.0.", f"{part}.mid.attn_1."))
        prefixes += [(f"{part}.mid_block.resnets.{j}.", f"{part}.mid.block_{j + 1}.") for j in range(2)]
    for i in range(blocks):
        prefixes += [
            (f"encoder.down_blocks.{i}.resnets.{j}.", f"encoder.down.{i}.block.{j}.")
            for j in range(config["layers_per_block"])
        ]
        prefixes.append((f"encoder.down_blocks.{i}.downsamplers.0.", f"encoder.down.{i}.downsample."))
        # LDM numbers decoder levels from the bottom: diffusers' up_blocks.0 is LDM's up.<last>.
        prefixes += [
            (f"decoder.up_blocks.{i}.resnets.{j}.", f"decoder.up.{blocks - 1 - i}.block.{j}.")
            for j in range(config["layers_per_block"] + 1)
        ]
        prefixes.append((f"decoder.up_blocks.{i}.upsamplers.0.", f"decoder.up.{blocks - 1 - i}.upsample."))
    return prefixes


def _rename(key: str, prefixes: list[tuple[str, str]]) -> tuple[str, str, str] | None:
    for diffusers_prefix, ldm_prefix in prefixes:
        if key.startswith(diffusers_prefix):
            return diffusers_prefix, ldm_prefix, key[len(diffusers_prefix) :]
    return None


def _replace_head(rest: str, table: dict[str, str]) -> str:
    for old, new in table.items():
        if rest.startswith(old):
            return new + rest[len(old) :]
    return rest


def diffusers_to_ldm_checkpoint(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    unet_config = json.loads((folder / "unet" / "config.json").read_text())
    vae_config = json.loads((folder / "vae" / "config.json").read_text())
    checkpoint: dict[str, torch.Tensor] = {}

    unet_prefixes = _unet_prefixes(unet_config)
    for key, tensor in load_file(folder / "unet" / "diffusion_pytorch_model.safetensors").items():
        match = _rename(key, unet_prefixes)
        assert match is not None, f"no LDM name for unet key {key}"
        diffusers_prefix, ldm_prefix, rest = match
        if ".resnets." in diffusers_prefix:
            rest = _replace_head(rest, _UNET_RESNET_TO_LDM)
        checkpoint["model.diffusion_model." + ldm_prefix + rest] = tensor

    vae_prefixes = _vae_prefixes(vae_config)
    for key, tensor in load_file(folder / "vae" / "diffusion_pytorch_model.safetensors").items():
        match = _rename(key, vae_prefixes)
        if match is None:  # conv_in, conv_out, quant_conv, post_quant_conv keep their names
            checkpoint["first_stage_model." + key] = tensor
            continue
        _, ldm_prefix, rest = match
        if ".attn_1." in ldm_prefix:
            rest = _replace_head(rest, _VAE_ATTENTION_TO_LDM)
            if rest.endswith(".weight") and not rest.startswith("norm."):
                tensor = tensor[:, :, None, None]  # LDM's VAE attention projections are 1x1 convs
        else:
            rest = _replace_head(rest, {"conv_shortcut.": "nin_shortcut."})
        checkpoint["first_stage_model." + ldm_prefix + rest] = tensor

    for key, tensor in load_file(folder / "text_encoder" / "model.safetensors").items():
        # transformers >= 5.6 saves CLIPTextModel without the `text_model.` level the LDM file has.
        key = key if key.startswith("text_model.") else "text_model." + key
        checkpoint["cond_stage_model.transformer." + key] = tensor

    return {key: tensor.contiguous() for key, tensor in checkpoint.items()}
