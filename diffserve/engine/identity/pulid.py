"""PuLID for FLUX.1 (Pure and Lightning ID customization, PuLID-FLUX v0.9.x): identity from a face image.

Pieces, named and shaped like the official weights file (`pulid_flux_v0.9.x.safetensors`: keys
`pulid_encoder.*` and `pulid_ca.<i>.*`) so that such a checkpoint loads with `load_state_dict`:

* `IDFormer` (`pulid_encoder`): a perceiver resampler. Input: the identity condition (ArcFace
  embedding + normalised EVA-CLIP image embedding, 512 + 768 = 1280 wide) and five EVA-CLIP
  hidden-state maps (1024 wide); output: `num_queries` (32) ID tokens of width `output_dim` (2048).
* `PerceiverAttentionCA` (`pulid_ca.<i>`): cross-attention from the image hidden states (queries,
  the transformer's inner width, 3072 for FLUX.1) to the ID tokens. One after every
  `double_interval`-th (2) double-stream block and every `single_interval`-th (4) single-stream
  block, counted from block 0; FLUX.1-dev's 19 + 38 blocks take 10 + 10 = 20 of them.
  Each adds `id_weight * ca(id_tokens, image_hidden_states)` to the image stream.
* The identity embedder (engine/identity/embedders.py): the official one (antelopev2 ArcFace, BiSeNet
  face parsing, EVA02-CLIP-L) or the tiny offline stand-in. With true CFG the negative pass gets
  the ID tokens of an all-zero condition, as PuLID-FLUX's `cal_uncond` does.

`pulid_injection(transformer, ...)` hooks the CA modules onto diffusers' FluxTransformer2DModel for
one call (forward hooks on `transformer_blocks` / `single_transformer_blocks`) and removes them
after it, so the same pipeline object runs plain Flux again afterwards.

A PuLID folder (`<model folder>/pulid/`) holds the PuLID weights file, the embedder's files and
optionally `config.json` (engine/identity/config.py).
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch
from PIL import Image
from torch import nn

from diffserve.engine.identity.config import IDFormerConfig, PuLIDConfig, ca_count, missing_files, read_config
from diffserve.engine.identity.embedders import load_embedder


# --------------------------------------------------------------------------------------------
# Modules (parameter names follow the official checkpoint)
# --------------------------------------------------------------------------------------------


def feed_forward(dim: int, mult: int) -> nn.Sequential:
    return nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim * mult, bias=False), nn.GELU(),
                         nn.Linear(dim * mult, dim, bias=False))


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    b, n, _ = x.shape
    return x.view(b, n, heads, -1).transpose(1, 2)  # (b, heads, n, d)


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dim_head: int) -> torch.Tensor:
    scale = dim_head ** -0.25  # on both q and k: steadier in half precision than one 1/sqrt(d) afterwards
    weight = torch.softmax(((q * scale) @ (k * scale).transpose(-2, -1)).float(), dim=-1).to(q.dtype)
    out = weight @ v
    b, _, n, _ = out.shape
    return out.transpose(1, 2).reshape(b, n, -1)


class PerceiverAttention(nn.Module):
    """Latents attend to [context, latents] (IDFormer's layers)."""

    def __init__(self, *, dim: int, dim_head: int, heads: int) -> None:
        super().__init__()
        self.dim_head, self.heads = dim_head, heads
        inner = dim_head * heads
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, context: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        context, latents = self.norm1(context), self.norm2(latents)
        k, v = self.to_kv(torch.cat((context, latents), dim=-2)).chunk(2, dim=-1)
        q = self.to_q(latents)
        out = _attend(_heads(q, self.heads), _heads(k, self.heads), _heads(v, self.heads), self.dim_head)
        return self.to_out(out)


class PerceiverAttentionCA(nn.Module):
    """Image hidden states (queries) attend to the ID tokens (keys/values)."""

    def __init__(self, *, dim: int, dim_head: int, heads: int, kv_dim: int) -> None:
        super().__init__()
        self.dim_head, self.heads = dim_head, heads
        inner = dim_head * heads
        self.norm1 = nn.LayerNorm(kv_dim)
        self.norm2 = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(kv_dim, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, id_tokens: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        id_tokens, hidden = self.norm1(id_tokens), self.norm2(hidden)
        if id_tokens.shape[0] != hidden.shape[0]:
            id_tokens = id_tokens.expand(hidden.shape[0], -1, -1)
        k, v = self.to_kv(id_tokens).chunk(2, dim=-1)
        q = self.to_q(hidden)
        out = _attend(_heads(q, self.heads), _heads(k, self.heads), _heads(v, self.heads), self.dim_head)
        return self.to_out(out)


def _mlp(dim_in: int, hidden: int, dim_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim_in, hidden), nn.LayerNorm(hidden), nn.LeakyReLU(),
                         nn.Linear(hidden, hidden), nn.LayerNorm(hidden), nn.LeakyReLU(),
                         nn.Linear(hidden, dim_out))


class IDFormer(nn.Module):
    STAGES = 5  # one per ViT feature map

    def __init__(self, cfg: IDFormerConfig) -> None:
        super().__init__()
        if cfg.depth % self.STAGES:
            raise ValueError(f"IDFormer depth must be a multiple of {self.STAGES}, got {cfg.depth}")
        self.cfg = cfg
        scale = cfg.dim ** -0.5
        self.latents = nn.Parameter(torch.randn(1, cfg.num_queries, cfg.dim) * scale)
        self.proj_out = nn.Parameter(torch.randn(cfg.dim, cfg.output_dim) * scale)
        self.layers = nn.ModuleList(
            nn.ModuleList([PerceiverAttention(dim=cfg.dim, dim_head=cfg.dim_head, heads=cfg.heads),
                           feed_forward(cfg.dim, cfg.ff_mult)])
            for _ in range(cfg.depth))
        for i in range(self.STAGES):
            setattr(self, f"mapping_{i}", _mlp(cfg.vit_dim, cfg.vit_dim, cfg.dim))
        self.id_embedding_mapping = _mlp(cfg.id_cond_dim, cfg.id_hidden, cfg.dim * cfg.num_id_token)

    def forward(self, id_cond: torch.Tensor, vit_hidden: list[torch.Tensor]) -> torch.Tensor:
        cfg = self.cfg
        latents = self.latents.repeat(id_cond.shape[0], 1, 1)
        ids = self.id_embedding_mapping(id_cond).reshape(-1, cfg.num_id_token, cfg.dim)
        latents = torch.cat((latents, ids), dim=1)
        per_stage = cfg.depth // self.STAGES
        for i in range(self.STAGES):
            context = torch.cat((ids, getattr(self, f"mapping_{i}")(vit_hidden[i])), dim=1)
            for attn, ff in self.layers[i * per_stage:(i + 1) * per_stage]:
                latents = attn(context, latents) + latents
                latents = ff(latents) + latents
        return latents[:, :cfg.num_queries] @ self.proj_out


class PuLIDFlux(nn.Module):
    """The weights file's two parts: `pulid_encoder` (IDFormer) and `pulid_ca` (the CA modules)."""

    def __init__(self, cfg: PuLIDConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.pulid_encoder = IDFormer(cfg.id_former)
        c = cfg.ca
        self.pulid_ca = nn.ModuleList(
            PerceiverAttentionCA(dim=c.dim, dim_head=c.dim_head, heads=c.heads, kv_dim=c.kv_dim)
            for _ in range(cfg.num_ca))


# --------------------------------------------------------------------------------------------
# Loading and use
# --------------------------------------------------------------------------------------------


class PuLIDModel(nn.Module):
    """PuLID weights + identity embedder, loaded from a PuLID folder; a Module so caches count it."""

    def __init__(self, cfg: PuLIDConfig, pulid: PuLIDFlux, embedder: nn.Module) -> None:
        super().__init__()
        self.cfg = cfg
        self.pulid = pulid
        self.embedder = embedder

    @torch.no_grad()
    def id_tokens(self, image: Image.Image, *, uncond: bool = False,
                  field_name: str = "image") -> tuple[torch.Tensor, torch.Tensor | None]:
        """(1, num_queries, output_dim) ID tokens for the largest face of `image`, and with `uncond`
        the tokens of no identity (the IDFormer on an all-zero condition and zero hidden states),
        which PuLID-FLUX puts in the negative pass of true CFG."""
        id_cond, vit_hidden = self.embedder.identity(image, field_name=field_name)
        encoder = self.pulid.pulid_encoder
        tokens = encoder(id_cond, vit_hidden)
        if not uncond:
            return tokens, None
        return tokens, encoder(torch.zeros_like(id_cond), [torch.zeros_like(h) for h in vit_hidden])


def load_pulid(folder: Path, *, device: str, dtype: torch.dtype) -> PuLIDModel:
    """Load a PuLID folder: config.json (optional), the PuLID weights (strict: every key and shape
    must match the config) and the identity embedder. ValueError names what is missing or wrong."""
    from safetensors.torch import load_file

    folder = Path(folder)
    cfg = read_config(folder)
    if missing := missing_files(folder, cfg):
        raise ValueError(f"{folder}: missing {', '.join(missing)} (docs/models.md: Flux PuLID with real weights)")
    with torch.device("meta"):
        pulid = PuLIDFlux(cfg)
    pulid.load_state_dict(load_file(str(folder / cfg.weights)), strict=True, assign=True)
    embedder = load_embedder(folder, cfg.embedder, device=device, dtype=dtype)
    return PuLIDModel(cfg, pulid.to(device=device, dtype=dtype).eval(), embedder)


def check_fits(cfg: PuLIDConfig, transformer) -> None:
    """The CA modules must match the transformer's width and block counts."""
    tc = transformer.config
    inner = tc.num_attention_heads * tc.attention_head_dim
    expected = ca_count(len(transformer.transformer_blocks), len(transformer.single_transformer_blocks),
                        cfg.double_interval, cfg.single_interval)
    if cfg.ca.dim != inner or cfg.num_ca != expected:
        raise ValueError(f"PuLID weights ({cfg.num_ca} CA modules of width {cfg.ca.dim}) do not fit this Flux "
                         f"transformer (needs {expected} of width {inner})")


@contextmanager
def pulid_injection(transformer, ca: nn.ModuleList, id_tokens: torch.Tensor, id_weight: float,
                    double_interval: int, single_interval: int,
                    uncond_tokens: torch.Tensor | None = None) -> Iterator[None]:
    """Add `id_weight * ca[k](tokens, image_states)` after the chosen blocks, for this call only.

    diffusers' Flux blocks (double and single) return (encoder_hidden_states, hidden_states), the
    image stream second. CA indices run over the double blocks first, then the single ones.
    With `uncond_tokens` (true CFG), the negative pass gets them: diffusers' Flux img2img loop runs
    the positive pass first, so the text states of the call's first transformer pass mark the
    positive pass; a pass with other text states (the negative prompt's) is the negative one."""
    chosen = [b for i, b in enumerate(transformer.transformer_blocks) if i % double_interval == 0]
    chosen += [b for i, b in enumerate(transformer.single_transformer_blocks) if i % single_interval == 0]
    if len(chosen) != len(ca):
        raise ValueError(f"PuLID has {len(ca)} CA modules; this transformer takes {len(chosen)}")
    state = {"positive": None, "tokens": id_tokens}

    def next_pass(_transformer, args, kwargs):
        text = kwargs.get("encoder_hidden_states", args[1] if len(args) > 1 else None)
        marker = None if text is None else text.data_ptr()
        if state["positive"] is None:
            state["positive"] = marker
        negative = uncond_tokens is not None and marker != state["positive"]
        state["tokens"] = uncond_tokens if negative else id_tokens

    def hook_for(module: nn.Module):
        def hook(_block, _args, output):
            text, image = output
            tokens = state["tokens"].to(image.device, image.dtype)
            return text, image + id_weight * module(tokens, image)
        return hook

    handles = [transformer.register_forward_pre_hook(next_pass, with_kwargs=True)]
    handles += [block.register_forward_hook(hook_for(module)) for block, module in zip(chosen, ca)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
