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
* Face pre-processing: OpenCV's Haar frontal-face cascade finds the largest face; the square crop
  around it (enlarged by FACE_MARGIN) is resized to the embedder's input size.
* The identity embedder (ArcFace + EVA02-CLIP-L in the official release): see `TinyIdentityEmbedder`
  for the one this project builds offline. The real backbones (InsightFace antelopev2's
  glintr100 ArcFace ONNX model through onnxruntime, and EVA02-CLIP-L-14-336's visual tower) are
  not wired here: a config naming another embedder is refused with a clear error.

`pulid_injection(transformer, ...)` hooks the CA modules onto diffusers' FluxTransformer2DModel for
one call (forward hooks on `transformer_blocks` / `single_transformer_blocks`) and removes them
after it, so the same pipeline object runs plain Flux again afterwards.

A PuLID folder (`<model folder>/pulid/`) holds `config.json` (this module's `PuLIDConfig`), the
PuLID weights file and the embedder's weights.
"""

from __future__ import annotations

import json
import math
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from PIL import Image
from torch import nn

from .faces import crop_face, face_detector

CONFIG_FILE = "config.json"


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


@dataclass
class IDFormerConfig:
    dim: int = 1024
    depth: int = 10  # 5 stages (one per ViT feature map) of depth/5 layers
    dim_head: int = 64
    heads: int = 16
    num_id_token: int = 5
    num_queries: int = 32
    output_dim: int = 2048
    ff_mult: int = 4
    vit_dim: int = 1024  # width of the ViT hidden states (and of the mapping MLPs' hidden layers)
    id_cond_dim: int = 1280  # ArcFace (512) + EVA-CLIP embedding (768)
    id_hidden: int = 1024  # hidden width of id_embedding_mapping


@dataclass
class CAConfig:
    dim: int = 3072  # the Flux transformer's inner width (heads x head dim)
    dim_head: int = 128
    heads: int = 16
    kv_dim: int = 2048  # = IDFormer output_dim


@dataclass
class EmbedderConfig:
    kind: str = "tiny"  # only "tiny" runs here (see the module docstring)
    weights: str = "id_embedder.safetensors"
    image_size: int = 32
    patch_size: int = 8
    arcface_dim: int = 16
    clip_dim: int = 16
    vit_dim: int = 32
    vit_heads: int = 2
    feature_layers: int = 5


@dataclass
class PuLIDConfig:
    weights: str = "pulid_flux.safetensors"
    double_interval: int = 2
    single_interval: int = 4
    num_ca: int = 20
    id_former: IDFormerConfig = field(default_factory=IDFormerConfig)
    ca: CAConfig = field(default_factory=CAConfig)
    embedder: EmbedderConfig = field(default_factory=EmbedderConfig)

    @classmethod
    def from_dict(cls, raw: dict) -> "PuLIDConfig":
        raw = dict(raw)
        return cls(
            id_former=IDFormerConfig(**raw.pop("id_former", {})),
            ca=CAConfig(**raw.pop("ca", {})),
            embedder=EmbedderConfig(**raw.pop("embedder", {})),
            **raw,
        )

    def to_dict(self) -> dict:
        return asdict(self)


def ca_count(num_double: int, num_single: int, double_interval: int, single_interval: int) -> int:
    """How many CA modules a transformer with these block counts takes (blocks 0, N, 2N... of each kind)."""
    return math.ceil(num_double / double_interval) + math.ceil(num_single / single_interval)


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


class TinyIdentityEmbedder(nn.Module):
    """Stands in for ArcFace + EVA-CLIP with their interfaces, tiny and random (for offline builds).

    `forward(face)` (face: (b, 3, S, S) in [0, 1]) returns `(id_cond, vit_hidden)`: id_cond is
    [ArcFace-like embedding, L2-normalised CLIP-like image embedding] (b, arcface_dim + clip_dim);
    vit_hidden is `feature_layers` ViT hidden-state maps (b, 1 + patches, vit_dim), the way
    PuLID takes EVA-CLIP's hidden states at evenly spaced layers.
    """

    def __init__(self, cfg: EmbedderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        # "ArcFace": a small CNN on the colour crop
        self.arcface = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
            nn.Linear(8 * 16, cfg.arcface_dim))
        # "EVA-CLIP": a small ViT on the grey crop
        self.patch_embed = nn.Conv2d(3, cfg.vit_dim, cfg.patch_size, stride=cfg.patch_size)
        patches = (cfg.image_size // cfg.patch_size) ** 2
        self.cls_token = nn.Parameter(torch.randn(1, 1, cfg.vit_dim) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, 1 + patches, cfg.vit_dim) * 0.02)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(cfg.vit_dim, cfg.vit_heads, dim_feedforward=2 * cfg.vit_dim, dropout=0.0,
                                       batch_first=True, norm_first=True)
            for _ in range(cfg.feature_layers))
        self.head = nn.Sequential(nn.LayerNorm(cfg.vit_dim), nn.Linear(cfg.vit_dim, cfg.clip_dim))

    def forward(self, face: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        arc = self.arcface((face - 0.5) / 0.5)
        gray = (0.299 * face[:, 0:1] + 0.587 * face[:, 1:2] + 0.114 * face[:, 2:3]).repeat(1, 3, 1, 1)
        x = self.patch_embed((gray - 0.5) / 0.5).flatten(2).transpose(1, 2)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1) + self.pos_embed
        hidden = []
        for block in self.blocks:
            x = block(x)
            hidden.append(x)
        clip = self.head(x[:, 0])
        clip = clip / clip.norm(dim=-1, keepdim=True)
        return torch.cat((arc, clip), dim=-1), hidden


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
        self._detector = None

    @torch.no_grad()
    def id_tokens(self, image: Image.Image, *, field_name: str = "image") -> torch.Tensor:
        """(1, num_queries, output_dim) ID tokens for the largest face of `image`."""
        if self._detector is None:
            self._detector = face_detector()
        face = crop_face(image, self.cfg.embedder.image_size, self._detector, field_name=field_name)
        param = next(self.embedder.parameters())
        pixels = torch.from_numpy(np.asarray(face, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
        id_cond, vit_hidden = self.embedder(pixels.to(param.device, param.dtype))
        return self.pulid.pulid_encoder(id_cond, vit_hidden)


def read_config(folder: Path) -> PuLIDConfig:
    return PuLIDConfig.from_dict(json.loads((Path(folder) / CONFIG_FILE).read_text(encoding="utf-8")))


def load_pulid(folder: Path, *, device: str, dtype: torch.dtype) -> PuLIDModel:
    """Load a PuLID folder: config.json, the PuLID weights (strict: every key and shape must match
    the config) and the embedder's weights."""
    from safetensors.torch import load_file

    folder = Path(folder)
    cfg = read_config(folder)
    if cfg.embedder.kind != "tiny":
        raise ValueError(f"{folder / CONFIG_FILE}: identity embedder {cfg.embedder.kind!r} is not supported; "
                         "only the tiny built-in embedder runs in diffserve (ArcFace/EVA-CLIP are not wired)")
    with torch.device("meta"):
        pulid, embedder = PuLIDFlux(cfg), TinyIdentityEmbedder(cfg.embedder)
    pulid.load_state_dict(load_file(str(folder / cfg.weights)), strict=True, assign=True)
    embedder.load_state_dict(load_file(str(folder / cfg.embedder.weights)), strict=True, assign=True)
    return PuLIDModel(cfg, pulid, embedder).to(device=device, dtype=dtype).eval()


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
                    double_interval: int, single_interval: int) -> Iterator[None]:
    """Add `id_weight * ca[k](id_tokens, image_states)` after the chosen blocks, for this block only.

    diffusers' Flux blocks (double and single) return (encoder_hidden_states, hidden_states), the
    image stream second. CA indices run over the double blocks first, then the single ones."""
    chosen = [b for i, b in enumerate(transformer.transformer_blocks) if i % double_interval == 0]
    chosen += [b for i, b in enumerate(transformer.single_transformer_blocks) if i % single_interval == 0]
    if len(chosen) != len(ca):
        raise ValueError(f"PuLID has {len(ca)} CA modules; this transformer takes {len(chosen)}")

    def hook_for(module: nn.Module):
        def hook(_block, _args, output):
            text, image = output
            tokens = id_tokens.to(image.device, image.dtype)
            return text, image + id_weight * module(tokens, image)
        return hook

    handles = [block.register_forward_hook(hook_for(module)) for block, module in zip(chosen, ca)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
