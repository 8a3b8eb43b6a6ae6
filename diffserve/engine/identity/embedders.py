"""PuLID's identity embedders: a face image → (identity condition, ViT hidden states) for the IDFormer.

`identity(image)` → `(id_cond, vit_hidden)`: id_cond (1, id_cond_dim) is [ArcFace embedding,
L2-normalised CLIP image embedding]; vit_hidden the five ViT hidden-state maps IDFormer reads.

* `OfficialIdentityEmbedder` ("official", PuLID-FLUX v0.9's get_id_embedding): antelopev2 finds
  the largest face and gives its ArcFace embedding (engine/identity/antelope.py); the face, aligned to
  facexlib's 512 px FFHQ template, goes through BiSeNet face parsing (engine/identity/face_parsing.py):
  background, neck, cloth, ears, earring and hat pixels turn white, the rest grey; that image,
  resized (bicubic) to 336 px and normalised, goes through EVA02-CLIP-L's visual tower
  (engine/identity/eva_clip.py) for the CLIP embedding and the hidden states.
* `TinyIdentityEmbedder` ("tiny"): a tiny random stand-in with the same interface, on OpenCV's
  Haar cascade, for the offline built-in model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from diffserve.engine.identity.antelope import Antelope, align_face, onnx_providers
from diffserve.engine.identity.eva_clip import EvaVisionConfig, eva_pixels, load_eva_vision
from diffserve.engine.identity.face_parsing import face_features_image, load_face_parser, to_gray
from diffserve.engine.identity.faces import crop_face, face_detector
from diffserve.engine.identity.config import OfficialEmbedderConfig, TinyEmbedderConfig


def rgb_tensor(rgb: np.ndarray | Image.Image) -> torch.Tensor:
    """An RGB uint8 image as a (1, 3, H, W) float32 tensor in [0, 1]."""
    return torch.from_numpy(np.asarray(rgb, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]


class OfficialIdentityEmbedder(nn.Module):
    """antelopev2 + BiSeNet + EVA02-CLIP-L, as PuLID-FLUX computes the identity condition."""

    def __init__(self, cfg: OfficialEmbedderConfig, antelope: Antelope, parser: nn.Module, eva: nn.Module) -> None:
        super().__init__()
        self.cfg = cfg
        self.antelope = antelope  # onnxruntime sessions, not torch modules
        self.parser = parser
        self.eva = eva

    def identity(self, image: Image.Image, *, field_name: str = "image") -> tuple[torch.Tensor, list[torch.Tensor]]:
        rgb = np.asarray(image.convert("RGB"))
        face = self.antelope.finder.largest(rgb, field_name=field_name)
        arcface = self.antelope.embedding(rgb, face)
        aligned = align_face(rgb, face.kps, self.cfg.align_size)
        param = next(self.eva.parameters())
        features = face_features_image(self.parser, rgb_tensor(aligned).to(param.device))  # parser in float32
        embedding, hidden = self.eva(eva_pixels(features, self.eva.cfg).to(param.dtype))
        embedding = embedding / embedding.norm(dim=-1, keepdim=True)
        arc = torch.from_numpy(arcface)[None].to(param.device, param.dtype)
        return torch.cat((arc, embedding), dim=-1), hidden


def load_embedder(folder: Path, cfg: TinyEmbedderConfig | OfficialEmbedderConfig, *, device: str,
                  dtype: torch.dtype) -> nn.Module:
    """The folder's identity embedder on `device`; ValueError for a missing or mismatched file."""
    folder = Path(folder)
    if isinstance(cfg, TinyEmbedderConfig):
        from safetensors.torch import load_file

        with torch.device("meta"):
            tiny = TinyIdentityEmbedder(cfg)
        tiny.load_state_dict(load_file(str(folder / cfg.weights)), strict=True, assign=True)
        return tiny.to(device=device, dtype=dtype).eval()
    antelope = Antelope(folder / cfg.detector, folder / cfg.recognizer, det_size=cfg.det_size,
                        det_thresh=cfg.det_thresh, providers=onnx_providers(device),
                        threads=torch.get_num_threads())
    parser = load_face_parser(folder / cfg.parser, device=device, dtype=torch.float32)  # widths from the file
    eva = load_eva_vision(folder / cfg.eva_clip, EvaVisionConfig.from_dict(cfg.eva), device=device, dtype=dtype)
    return OfficialIdentityEmbedder(cfg, antelope, parser.eval(), eva.eval())


class TinyIdentityEmbedder(nn.Module):
    """Stands in for ArcFace + EVA-CLIP with their interfaces, tiny and random (for offline builds).

    `identity(image)` finds the face with OpenCV's Haar cascade (the largest, cropped square with a
    margin). `forward(face)` (face: (b, 3, S, S) in [0, 1]) returns `(id_cond, vit_hidden)`: id_cond is
    [ArcFace-like embedding, L2-normalised CLIP-like image embedding] (b, arcface_dim + clip_dim);
    vit_hidden is `feature_layers` ViT hidden-state maps (b, 1 + patches, vit_dim), the way
    PuLID takes EVA-CLIP's hidden states at evenly spaced layers.
    """

    def __init__(self, cfg: TinyEmbedderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self._detector = None
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

    def identity(self, image: Image.Image, *, field_name: str = "image") -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The Haar cascade's largest face, cropped square and embedded."""
        if self._detector is None:
            self._detector = face_detector()
        face = crop_face(image, self.cfg.image_size, self._detector, field_name=field_name)
        param = next(self.parameters())
        return self(rgb_tensor(face).to(param.device, param.dtype))

    def forward(self, face: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        arc = self.arcface((face - 0.5) / 0.5)
        x = self.patch_embed((to_gray(face) - 0.5) / 0.5).flatten(2).transpose(1, 2)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1) + self.pos_embed
        hidden = []
        for block in self.blocks:
            x = block(x)
            hidden.append(x)
        clip = self.head(x[:, 0])
        clip = clip / clip.norm(dim=-1, keepdim=True)
        return torch.cat((arc, clip), dim=-1), hidden
