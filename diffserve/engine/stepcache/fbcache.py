"""First-Block Cache (ParaAttention's FBCache; diffusers' FirstBlockCacheConfig) per batch row, for diffusers'
FluxTransformer2DModel.

Each step runs the embeddings and the first transformer block for every row. A row whose first-block residual
(its output minus its input) changed, relative to the one it had on its last fully computed step, by less than
its `threshold` (mean absolute difference over mean absolute value) reuses the residual the remaining blocks
added then; the other rows -- and every row's first step -- run the remaining blocks, batched, and keep their
new residuals. So one transformer forward per tick, split after the first block by each row's own decision;
a row's result does not depend on its batch-mates.
"""

from __future__ import annotations

from typing import Any

import torch


class FBCacheRow:
    """One row's cache: the first block's residual and the remaining blocks' residual of its last computed step."""

    method = "fbcache"

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold
        self.first: torch.Tensor | None = None
        self.remaining: torch.Tensor | None = None
        self.full_steps = 0
        self.cached_steps = 0

    def reuses(self, first: torch.Tensor) -> bool:
        """Whether this step may reuse the cached remaining residual (`first`: this step's first-block residual)."""
        if self.first is None or self.remaining is None:
            return False
        change = (first - self.first).abs().mean() / self.first.abs().mean().clamp_min(1e-12)
        return bool(change < self.threshold)

    def describe(self) -> dict[str, Any]:
        return {"method": self.method, "threshold": self.threshold, "full_steps": self.full_steps,
                "cached_steps": self.cached_steps}


def forward(transformer: Any, caches: list[tuple[int, FBCacheRow | None]], *, hidden_states: torch.Tensor,
            timestep: torch.Tensor, encoder_hidden_states: torch.Tensor, pooled_projections: torch.Tensor,
            txt_ids: torch.Tensor, img_ids: torch.Tensor, guidance: torch.Tensor | None = None,
            joint_attention_kwargs: dict[str, Any] | None = None) -> torch.Tensor:
    """FluxTransformer2DModel.forward (no ControlNet, no IP-Adapter) with each row's cache: `caches` gives, in
    batch order, each row's count of batch rows (its samples, doubled for true CFG) and its cache (None: off)."""
    t = transformer
    hidden = t.x_embedder(hidden_states)
    timestep = timestep.to(hidden.dtype) * 1000
    temb = (t.time_text_embed(timestep, pooled_projections) if guidance is None
            else t.time_text_embed(timestep, guidance.to(hidden.dtype) * 1000, pooled_projections))
    context = t.context_embedder(encoder_hidden_states)
    rotary = t.pos_embed(torch.cat((txt_ids, img_ids), dim=0))
    blocks = [*t.transformer_blocks, *t.single_transformer_blocks]

    def run(block: Any, h: torch.Tensor, c: torch.Tensor, emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c, h = block(hidden_states=h, encoder_hidden_states=c, temb=emb, image_rotary_emb=rotary,
                     joint_attention_kwargs=joint_attention_kwargs)
        return h, c

    start = hidden
    hidden, context = run(blocks[0], hidden, context, temb)
    first = hidden - start
    compute, reuse, at = [], [], 0
    for n, cache in caches:
        part = slice(at, at + n)
        (reuse if cache is not None and cache.reuses(first[part]) else compute).append((part, cache))
        at += n
    out = torch.empty_like(hidden)
    if compute:
        index = torch.cat([torch.arange(p.start, p.stop) for p, _ in compute]).to(hidden.device)
        h, c, emb = hidden[index], context[index], temb[index]
        after_first = h
        for block in blocks[1:]:
            h, c = run(block, h, c, emb)
        out[index] = h
        at = 0
        for part, cache in compute:
            n = part.stop - part.start
            if cache is not None:
                cache.first, cache.remaining = first[part].clone(), (h[at:at + n] - after_first[at:at + n]).clone()
                cache.full_steps += 1
            at += n
    for part, cache in reuse:
        out[part] = hidden[part] + cache.remaining
        cache.cached_steps += 1
    return t.proj_out(t.norm_out(out, temb))
