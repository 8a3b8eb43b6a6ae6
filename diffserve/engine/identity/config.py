"""What a PuLID folder (`<Flux model folder>/pulid/`) holds, read without torch.

`config.json` is optional: without it (or for any field it leaves out) the defaults describe the
official PuLID-FLUX v0.9.x release laid out as docs/models.md ("Flux PuLID with real weights") shows:

    pulid/
      pulid_flux_v0.9.1.safetensors       PuLID-FLUX weights (IDFormer + 20 CA modules)
      antelopev2/scrfd_10g_bnkps.onnx     InsightFace antelopev2 face detector (SCRFD-10G, 5 landmarks)
      antelopev2/glintr100.onnx           InsightFace antelopev2 ArcFace (ResNet-100, Glint360K), 512-d
      parsing_bisenet.pth                 facexlib's BiSeNet face parser (19 CelebAMask-HQ classes)
      EVA02_CLIP_L_336_psz14_s6B.pt       EVA02-CLIP-L-14-336 (only its visual tower is used)

The embedder `kind` picks how a face becomes PuLID's identity condition:

* "official": the official pipeline's embedders (OfficialEmbedderConfig): ArcFace embedding of the
  largest face + EVA02-CLIP-L features of the aligned face with its background whitened.
* "tiny": a tiny random stand-in with the same interface (TinyEmbedderConfig), for offline builds.

The API process reads this too (to run the same face detector at submit as the worker will), so
nothing here imports torch.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

PULID_FOLDER = "pulid"  # inside the Flux model folder
CONFIG_FILE = "config.json"


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
class TinyEmbedderConfig:
    kind: str = "tiny"
    weights: str = "id_embedder.safetensors"
    image_size: int = 32
    patch_size: int = 8
    arcface_dim: int = 16
    clip_dim: int = 16
    vit_dim: int = 32
    vit_heads: int = 2
    feature_layers: int = 5


@dataclass
class OfficialEmbedderConfig:
    """PuLID-FLUX's own embedders; file names are relative to the PuLID folder."""

    kind: str = "official"
    detector: str = "antelopev2/scrfd_10g_bnkps.onnx"
    recognizer: str = "antelopev2/glintr100.onnx"
    parser: str = "parsing_bisenet.pth"
    eva_clip: str = "EVA02_CLIP_L_336_psz14_s6B.pt"
    det_size: int = 640  # the detector's input side (antelopev2 as PuLID prepares it)
    det_thresh: float = 0.5
    align_size: int = 512  # the aligned face the parser and EVA-CLIP see (facexlib's FFHQ template)
    eva: dict[str, Any] = field(default_factory=dict)  # EvaVisionConfig overrides (tiny test builds only)

    def files(self) -> tuple[str, ...]:
        return self.detector, self.recognizer, self.parser, self.eva_clip


EmbedderConfig = TinyEmbedderConfig | OfficialEmbedderConfig
EMBEDDERS: dict[str, type] = {"tiny": TinyEmbedderConfig, "official": OfficialEmbedderConfig}


@dataclass
class PuLIDConfig:
    weights: str = "pulid_flux_v0.9.1.safetensors"
    double_interval: int = 2
    single_interval: int = 4
    num_ca: int = 20  # FLUX.1's 19 double + 38 single blocks: 10 + 10
    id_former: IDFormerConfig = field(default_factory=IDFormerConfig)
    ca: CAConfig = field(default_factory=CAConfig)
    embedder: EmbedderConfig = field(default_factory=OfficialEmbedderConfig)

    @classmethod
    def from_dict(cls, raw: dict) -> PuLIDConfig:
        """Raises ValueError naming an unknown field or embedder kind."""
        raw = dict(raw)
        embedder = dict(raw.pop("embedder", {}))
        kind = embedder.get("kind", "official")
        if kind not in EMBEDDERS:
            raise ValueError(f"embedder kind {kind!r} is unknown; one of: {', '.join(EMBEDDERS)}")
        try:
            return cls(id_former=IDFormerConfig(**raw.pop("id_former", {})), ca=CAConfig(**raw.pop("ca", {})),
                       embedder=EMBEDDERS[kind](**embedder), **raw)
        except TypeError as exc:  # an unexpected keyword: a misspelt field
            raise ValueError(f"{exc}; known fields: {', '.join(f.name for f in fields(cls))}") from None

    def to_dict(self) -> dict:
        return asdict(self)


def read_config(folder: Path) -> PuLIDConfig:
    """The folder's config.json over the official defaults (all defaults when there is none)."""
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        return PuLIDConfig()
    raw = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(raw, dict):
        raise ValueError(f"{path} must hold a JSON object")
    return PuLIDConfig.from_dict(raw)


def required_files(cfg: PuLIDConfig) -> tuple[str, ...]:
    if isinstance(cfg.embedder, OfficialEmbedderConfig):
        return (cfg.weights, *cfg.embedder.files())
    return cfg.weights, cfg.embedder.weights


def missing_files(folder: Path, cfg: PuLIDConfig) -> list[str]:
    return [name for name in required_files(cfg) if not (Path(folder) / name).is_file()]


def ca_count(num_double: int, num_single: int, double_interval: int, single_interval: int) -> int:
    """How many CA modules a transformer with these block counts takes (blocks 0, N, 2N... of each kind)."""
    return -(-num_double // double_interval) + -(-num_single // single_interval)
