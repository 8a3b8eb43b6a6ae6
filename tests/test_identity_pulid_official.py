"""Flux PuLID with the official identity embedders (antelopev2 + BiSeNet + EVA02-CLIP-L), tiny.

A PuLID folder laid out like the official release (file names, formats, key layouts): the two
antelopev2 ONNX models are stand-ins with the real interfaces (tests/onnx_faces.py: the detector
reports the drawn face's box and landmarks), BiSeNet and EVA-CLIP are their real architectures at
tiny widths in the real file formats, and the PuLID weights are sized for the tiny Flux transformer.
Engine-level checks, then requests through the ModelsLab v6 and Qolaba endpoints of a real server.
"""

from __future__ import annotations

import io
import json
import shutil
import sqlite3
from pathlib import Path

import pytest
import torch
from PIL import Image

from diffserve.core.errors import InvalidInput
from diffserve.engine.identity.eva_clip import EvaVisionConfig, EvaVisionTransformer, write_eva_checkpoint
from diffserve.engine.identity.face_parsing import BiSeNet, BiSeNetConfig, write_face_parser
from diffserve.engine.families.flux import FluxFamily
from diffserve.engine.families.flux_pulid import FluxPuLIDFamily, pulid_of
from diffserve.engine.generate import Engine
from diffserve.engine.identity.pulid import PuLIDFlux
from diffserve.engine.identity.config import (CAConfig, IDFormerConfig, OfficialEmbedderConfig, PuLIDConfig,
                                           ca_count)
from diffserve.engine.identity.embedders import OfficialIdentityEmbedder
from diffserve.engine.models.registry import ModelRegistry
from diffserve.engine.tiny.build import seeded
from diffserve.engine.tiny.flux import write_flux_folder
from diffserve.engine.tiny.flux_pulid import FLUX_PULID_TINY_LIMITS, TINY_FLUX_INNER

from . import web
from .dialects import PULID, download
from .onnx_faces import FakeFace, write_arcface, write_scrfd
from .servers import DiffserveServer
from .test_identity_pulid import FACE_A, FACE_B, hooks, inputs, png

MODEL, BLIND = "pulid-official", "pulid-official-blind"  # BLIND's detector finds no face
S = 128 / 256  # draw_face's scale at 128 px
DRAWN_FACE = FakeFace(bbox=(60 * S, 30 * S, 196 * S, 220 * S),
                      kps=((96 * S, 117 * S), (160 * S, 117 * S), (128 * S, 155 * S), (104 * S, 182 * S),
                           (152 * S, 182 * S)))


def official_config() -> PuLIDConfig:
    eva = EvaVisionConfig.tiny()
    return PuLIDConfig(
        num_ca=ca_count(1, 1, 2, 4),
        id_former=IDFormerConfig(dim=32, depth=5, dim_head=8, heads=4, num_id_token=2, num_queries=4, output_dim=32,
                                 ff_mult=2, vit_dim=eva.width, id_cond_dim=512 + eva.embed_dim, id_hidden=32),
        ca=CAConfig(dim=TINY_FLUX_INNER, dim_head=16, heads=2, kv_dim=32),
        embedder=OfficialEmbedderConfig(eva=eva.to_dict()))


def write_official_pulid(folder: Path, faces: list[FakeFace]) -> PuLIDConfig:
    """The official file layout (engine/identity/config.py), with tiny seeded weights and the faces' detector."""
    from safetensors.torch import save_file

    cfg = official_config()
    emb = cfg.embedder
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    save_file({k: v.contiguous() for k, v in seeded(lambda: PuLIDFlux(cfg)).state_dict().items()},
              str(folder / cfg.weights))
    write_scrfd(folder / emb.detector, faces, image_size=(128, 128), det_size=emb.det_size)
    write_arcface(folder / emb.recognizer)
    write_face_parser(folder / emb.parser, seeded(lambda: BiSeNet(BiSeNetConfig.tiny())))
    write_eva_checkpoint(folder / emb.eva_clip, seeded(lambda: EvaVisionTransformer(EvaVisionConfig.tiny())))
    return cfg


def linked_copy(model: Path, dest: Path) -> Path:
    """`dest` shares `model`'s Flux weights (symlinks) and has its own copy of pulid/ to change."""
    dest.mkdir()
    for part in model.iterdir():
        if part.name != "pulid":
            (dest / part.name).symlink_to(part)
    shutil.copytree(model / "pulid", dest / "pulid")
    return dest


def model_entry(folder: Path) -> dict:
    return {"kind": "folder", "location": str(folder), "family": "flux-pulid",
            "limits": FLUX_PULID_TINY_LIMITS.model_dump()}


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pulid-official")
    seeing, blind = root / MODEL, root / BLIND
    write_flux_folder(seeing, model=MODEL)
    write_official_pulid(seeing / "pulid", [DRAWN_FACE])
    linked_copy(seeing, blind)  # the same Flux weights; its own pulid/ with a detector that sees nothing
    write_scrfd(blind / "pulid" / official_config().embedder.detector, [], image_size=(128, 128))
    return {MODEL: seeing, BLIND: blind}


@pytest.fixture(scope="module")
def registry_file(folders, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("registry-pulid") / "models.json"
    path.write_text(json.dumps({"models": {name: model_entry(folder) for name, folder in folders.items()}}))
    return path


@pytest.fixture(scope="module")
def pipe(registry_file, models_root, one_torch_thread):
    engine = Engine(ModelRegistry.load(registry_file, models_root), max_models=1)
    return engine.pipelines.get(MODEL).pipe


def run(family, pipe, image: Image.Image, **over) -> bytes:
    with torch.inference_mode():
        return png(family.run(pipe, inputs(image, model_id=MODEL, **over))[0])


def test_the_official_embedders_are_loaded_from_the_release_layout(pipe):
    model = pulid_of(pipe)
    assert isinstance(model.embedder, OfficialIdentityEmbedder)
    id_cond, hidden = model.embedder.identity(FACE_A)
    eva = EvaVisionConfig.tiny()
    assert id_cond.shape == (1, 512 + eva.embed_dim)
    assert torch.linalg.vector_norm(id_cond[0, 512:]).item() == pytest.approx(1.0, abs=1e-4)  # EVA part normalised
    assert abs(torch.linalg.vector_norm(id_cond[0, :512]).item() - 1.0) > 0.01  # ArcFace part as ArcFace gives it
    assert len(hidden) == 5 and all(h.shape == (1, 1 + eva.num_patches, eva.width) for h in hidden)


def test_the_identity_comes_from_the_face_and_changes_the_image(pipe):
    model = pulid_of(pipe)
    tokens_a, _ = model.id_tokens(FACE_A)
    tokens_b, _ = model.id_tokens(FACE_B)
    assert tokens_a.shape == (1, 4, 32) and not torch.allclose(tokens_a, tokens_b)
    plain = run(FluxFamily(), pipe, FACE_A)
    with_a, with_b = run(FluxPuLIDFamily(), pipe, FACE_A), run(FluxPuLIDFamily(), pipe, FACE_B)
    assert with_a != plain and with_b != with_a and run(FluxPuLIDFamily(), pipe, FACE_A) == with_a
    assert run(FluxPuLIDFamily(id_weight=0.0), pipe, FACE_A) == plain
    assert hooks(pipe) == 0


def test_a_release_folder_missing_a_file_is_refused_at_load_naming_it(folders, tmp_path, models_root):
    broken = linked_copy(folders[MODEL], tmp_path / "broken")
    (broken / "pulid" / "EVA02_CLIP_L_336_psz14_s6B.pt").unlink()
    registry = tmp_path / "models.json"
    registry.write_text(json.dumps({"models": {"broken": model_entry(broken)}}))
    engine = Engine(ModelRegistry.load(registry, models_root), max_models=1)
    with pytest.raises(InvalidInput) as err:
        engine.pipelines.get("broken")
    assert err.value.field == "model_id" and "missing EVA02_CLIP_L_336_psz14_s6B.pt" in err.value.message


# --------------------------------------------------------------------------------------------
# e2e: ModelsLab v6 and Qolaba against a server whose registry maps the release-layout models
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory, registry_file, models_root):
    data = tmp_path_factory.mktemp("pulid-official-server")
    shutil.copy(registry_file, data / "models.json")
    apps = {PULID: {"model": MODEL, "sizes": ["64x64"]}}
    srv = DiffserveServer(data, models_root, {"DIFFSERVE_QOLABA_APPS": json.dumps(apps),
                                              "DIFFSERVE_SAFETY_CHECKER": "tiny"})  # no hub for the real one
    srv.start()
    yield srv
    srv.stop()


def jobs_count(srv: DiffserveServer) -> int:
    with sqlite3.connect(srv.data_dir / "diffserve.db") as db:
        return db.execute("select count(*) from jobs").fetchone()[0]


def test_modelslab_and_qolaba_requests_run_the_official_embedders(server, image_host):
    image_host.add("/face.png", png(FACE_A))
    key = server.create_key("--name", "pulid-official")
    v6 = {"key": key, "model_id": MODEL, "prompt": "a portrait photo", "negative_prompt": "blurry",
          "init_image": image_host.url("/face.png"), "width": "64", "height": "64", "samples": "1",
          "num_inference_steps": "2", "strength": 1}
    out = web.post(f"{server.url}/api/v6/images/img2img", json=v6, timeout=120).json()
    assert out["status"] == "success", out
    assert Image.open(io.BytesIO(download(out["output"][0]))).size == (64, 64)

    qolaba = {"app_id": PULID, "image": image_host.url("/face.png"), "prompt": "a portrait photo",
              "batch": 1, "strength": 1, "celery": False}
    out = web.post(f"{server.url}/getImagetoImage", json=qolaba, headers={"Authorization": f"Bearer {key}"},
                   timeout=120).json()
    assert out["status"] == "SUCCESS", out

    # the model's own detector decides at submit: this one sees no face in any image → 400, nothing queued
    before = jobs_count(server)
    r = web.post(f"{server.url}/api/v6/images/img2img", json={**v6, "model_id": BLIND}, timeout=60)
    assert r.status_code == 400 and r.json()["status"] == "error", r.text
    assert "init_image: no face found" in json.dumps(r.json())
    assert jobs_count(server) == before
