"""tiny-flux-pulid: the tiny FLUX.1-dev folder plus a `pulid/` subfolder with tiny random PuLID weights.

pulid/ holds config.json (engine/identity/pulid.py's PuLIDConfig), `pulid_flux.safetensors` laid out like
the official `pulid_flux_v0.9.x.safetensors` (keys `pulid_encoder.*`, `pulid_ca.<i>.*`), narrowed to
the tiny transformer (inner width 32; 1 double + 1 single block, so 2 CA modules), and
`id_embedder.safetensors`, the tiny stand-in for ArcFace + EVA-CLIP. Deterministic (seeded) and
atomic, like every tiny build.
"""

from __future__ import annotations

import json
from pathlib import Path

from typing import TYPE_CHECKING

from diffserve.engine.identity.config import PULID_FOLDER
from diffserve.engine.tiny.build import build_atomically, seeded, write_marker
from diffserve.engine.tiny.flux import FLUX_REQUIRED_FILES, FLUX_TINY_LIMITS, TINY_FLUX_RECIPE_VERSION, write_flux_folder

if TYPE_CHECKING:
    from diffserve.engine.identity.config import PuLIDConfig

MODEL = "tiny-flux-pulid"

# tiny-flux's transformer: 2 heads x 16 = 32 wide, 1 double-stream and 1 single-stream block.
TINY_FLUX_INNER = 32


def tiny_pulid_config() -> PuLIDConfig:
    from diffserve.engine.identity.config import CAConfig, IDFormerConfig, PuLIDConfig, TinyEmbedderConfig, ca_count

    embedder = TinyEmbedderConfig(image_size=32, patch_size=8, arcface_dim=16, clip_dim=16, vit_dim=32, vit_heads=2)
    return PuLIDConfig(
        weights="pulid_flux.safetensors",
        double_interval=2,
        single_interval=4,
        num_ca=ca_count(1, 1, 2, 4),
        id_former=IDFormerConfig(dim=32, depth=5, dim_head=8, heads=4, num_id_token=2, num_queries=4, output_dim=32,
                                 ff_mult=2, vit_dim=embedder.vit_dim,
                                 id_cond_dim=embedder.arcface_dim + embedder.clip_dim, id_hidden=32),
        ca=CAConfig(dim=TINY_FLUX_INNER, dim_head=16, heads=2, kv_dim=32),
        embedder=embedder,
    )


PULID_REQUIRED_FILES = (
    *FLUX_REQUIRED_FILES,
    f"{PULID_FOLDER}/config.json",
    f"{PULID_FOLDER}/pulid_flux.safetensors",
    f"{PULID_FOLDER}/id_embedder.safetensors",
)

# PuLID makes a new image of the face's identity: by default the init image reaches the output only
# through the ID tokens (strength 1), as in PuLID-FLUX's text-to-image use.
FLUX_PULID_TINY_LIMITS = FLUX_TINY_LIMITS.model_copy(update={"default_strength": 1.0})

_README = """\
# diffserve tiny FLUX.1 PuLID (random weights)

Built offline by diffserve (`diffserve.engine.tiny.flux_pulid`, recipe version {version}).

* The folder itself: a tiny FLUX.1-dev-like FluxPipeline (see diffserve.engine.tiny.flux).
* pulid/: config.json, pulid_flux.safetensors (PuLID-FLUX layout: `pulid_encoder.*` IDFormer,
  `pulid_ca.<i>.*` cross-attention modules) and id_embedder.safetensors (a tiny stand-in for
  ArcFace + EVA-CLIP), all with **seeded random weights**.

Every image is noise: for testing loading and serving code only.
"""


def write_pulid_folder(folder: Path, cfg: PuLIDConfig) -> None:
    from safetensors.torch import save_file

    from diffserve.engine.identity.pulid import PuLIDFlux
    from diffserve.engine.identity.embedders import TinyIdentityEmbedder

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n", encoding="utf-8")
    for name, factory in ((cfg.weights, lambda: PuLIDFlux(cfg)),
                          (cfg.embedder.weights, lambda: TinyIdentityEmbedder(cfg.embedder))):
        state = {k: v.contiguous() for k, v in seeded(factory).state_dict().items()}
        save_file(state, str(folder / name))


def write_tiny_flux_pulid(folder: Path) -> None:
    folder = Path(folder)
    write_flux_folder(folder, model=MODEL)
    write_pulid_folder(folder / PULID_FOLDER, tiny_pulid_config())
    write_marker(folder, model=MODEL, recipe_version=TINY_FLUX_RECIPE_VERSION,
                 readme=_README.format(version=TINY_FLUX_RECIPE_VERSION))


def build_tiny_flux_pulid(dest: Path) -> Path:
    """tiny-flux-pulid (see engine/families/flux_pulid.py for the layout)."""
    return build_atomically(Path(dest), write_tiny_flux_pulid, PULID_REQUIRED_FILES, MODEL)
