"""DeepCache (Ma, Fang & Wang, CVPR 2024) per batch row, for diffusers' UNet2DConditionModel.

Adjacent denoising steps change a UNet's deep features little. On a full step the whole UNet runs and the
hidden state entering the last up block's recomputed layers (the skip branch: the input of its
`shallow_layers` last resnets, which take the first down block's outputs) is kept, per row. On the steps
between (a full step every `interval` steps, the row's first step always full) only the shallow branch runs:
time embedding, conv_in, the first down block's first `shallow_layers - 1` layers, the cached deep state
joined with the fresh skip tensors, the last up block's last `shallow_layers` layers and the output conv.

Per row: each row keeps its own features and decides by its own step index, so a row's result does not depend
on its batch-mates; a tick runs its full rows in one UNet forward and its cached rows in one shallow forward.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch


class DeepCacheRow:
    """One row's cache: the deep features of its last full step, and its counts (the job's meta)."""

    method = "deepcache"

    def __init__(self, interval: int) -> None:
        self.interval = interval
        self.features: torch.Tensor | None = None
        self.full_steps = 0
        self.cached_steps = 0

    def wants_full(self, index: int) -> bool:
        return self.features is None or index % self.interval == 0

    def describe(self) -> dict[str, Any]:
        return {"method": self.method, "interval": self.interval, "full_steps": self.full_steps,
                "cached_steps": self.cached_steps}


def shallow_layers(unet: Any) -> int:
    """How many of the last up block's layers a cached step recomputes: all but its first (SD 1.5: 2 of 3)."""
    return max(1, len(unet.up_blocks[-1].resnets) - 1)


@contextmanager
def capture(unet: Any) -> Iterator[list[torch.Tensor]]:
    """During a full forward, the input of the first recomputed resnet of the last up block (deep state and
    skip tensor, concatenated on channels) is appended to the yielded list."""
    up = unet.up_blocks[-1]
    seen: list[torch.Tensor] = []
    handle = up.resnets[len(up.resnets) - shallow_layers(unet)].register_forward_pre_hook(
        lambda _module, args: seen.append(args[0]))
    try:
        yield seen
    finally:
        handle.remove()


def _embedding(unet: Any, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
               timestep_cond: torch.Tensor | None, added_cond_kwargs: dict[str, Any] | None) -> torch.Tensor:
    """UNet2DConditionModel.forward's time (+ class, + added) embedding."""
    emb = unet.time_embedding(unet.get_time_embed(sample=sample, timestep=timestep), timestep_cond)
    class_emb = unet.get_class_embed(sample=sample, class_labels=None)
    if class_emb is not None:
        emb = torch.cat([emb, class_emb], dim=-1) if unet.config.class_embeddings_concat else emb + class_emb
    aug = unet.get_aug_embed(emb=emb, encoder_hidden_states=encoder_hidden_states,
                             added_cond_kwargs=added_cond_kwargs or {})
    emb = emb + aug if aug is not None else emb
    return unet.time_embed_act(emb) if unet.time_embed_act is not None else emb


def _layer(block: Any, i: int, hidden: torch.Tensor, emb: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    hidden = block.resnets[i](hidden, emb)
    if getattr(block, "attentions", None):
        hidden = block.attentions[i](hidden, encoder_hidden_states=context, return_dict=False)[0]
    return hidden


def shallow_forward(unet: Any, sample: torch.Tensor, timestep: torch.Tensor, features: torch.Tensor, *,
                    encoder_hidden_states: torch.Tensor, timestep_cond: torch.Tensor | None = None,
                    added_cond_kwargs: dict[str, Any] | None = None) -> torch.Tensor:
    """The UNet's output for a cached step: `features` is what `capture` kept for these batch rows."""
    if unet.config.center_input_sample:
        sample = 2 * sample - 1.0
    emb = _embedding(unet, sample, timestep, encoder_hidden_states, timestep_cond, added_cond_kwargs)
    context = unet.process_encoder_hidden_states(encoder_hidden_states=encoder_hidden_states,
                                                 added_cond_kwargs=added_cond_kwargs or {})
    k = shallow_layers(unet)
    hidden = unet.conv_in(sample)
    skips = [hidden]  # the first down block's outputs that the last up block's recomputed layers take
    for i in range(k - 1):
        hidden = _layer(unet.down_blocks[0], i, hidden, emb, context)
        skips.append(hidden)
    up = unet.up_blocks[-1]
    n = len(up.resnets)
    hidden = features[:, :features.shape[1] - skips[k - 1].shape[1]]  # the deep state, without the old skip
    for j in range(n - k, n):
        hidden = _layer(up, j, torch.cat([hidden, skips[n - 1 - j]], dim=1), emb, context)
    for upsampler in up.upsamplers or ():
        hidden = upsampler(hidden)
    if unet.conv_norm_out is not None:
        hidden = unet.conv_act(unet.conv_norm_out(hidden))
    return unet.conv_out(hidden)
