"""Flux PuLID (family flux-pulid, tiny-flux-pulid): identity from a face, injected only for the call.

Engine level at 32-64 px with 1 torch thread and 2 steps, plus one e2e request through the Qolaba
endpoint of a real server whose operator gives the PuLID app a size the tiny model can make.
"""

from __future__ import annotations

import io
import json
import sqlite3
from pathlib import Path

import httpx
import pytest
import torch
from PIL import Image, ImageDraw, ImageFilter

from diffserve.core.errors import InvalidInput
from diffserve.core.request import GenerationRequest
from diffserve.engine.families.base import RunInputs
from diffserve.engine.families.flux import FluxFamily
from diffserve.engine.families.flux_pulid import FluxPuLIDFamily, pulid_of
from diffserve.engine.generate import TINY_BUILDERS, Engine
from diffserve.engine.identity.errors import NoFaceFound
from diffserve.engine.identity.faces import crop_face, face_detector
from diffserve.engine.identity.pulid import PuLIDFlux, pulid_injection
from diffserve.engine.identity.config import PuLIDConfig, ca_count
from diffserve.engine.models.registry import ModelRegistry
from diffserve.engine.tiny.flux_pulid import tiny_pulid_config, write_pulid_folder

from . import web
from .dialects import PULID, download
from .servers import DiffserveServer

MODEL = "tiny-flux-pulid"


def draw_face(size: int = 128, skin=(224, 182, 150), eyes=(40, 30, 30), mouth=(150, 60, 60)) -> Image.Image:
    """A simple frontal face (head, brows, eyes, nose, mouth) that OpenCV's Haar cascade finds."""
    im = Image.new("RGB", (size, size), (235, 235, 240))
    d = ImageDraw.Draw(im)
    s = size / 256
    d.ellipse([60 * s, 30 * s, 196 * s, 220 * s], fill=skin)
    d.rectangle([70 * s, 90 * s, 118 * s, 100 * s], fill=(70, 50, 40))
    d.rectangle([138 * s, 90 * s, 186 * s, 100 * s], fill=(70, 50, 40))
    d.ellipse([80 * s, 108 * s, 112 * s, 126 * s], fill=eyes)
    d.ellipse([144 * s, 108 * s, 176 * s, 126 * s], fill=eyes)
    d.polygon([(128 * s, 120 * s), (116 * s, 160 * s), (140 * s, 160 * s)], fill=(190, 140, 115))
    d.ellipse([98 * s, 172 * s, 158 * s, 192 * s], fill=mouth)
    return im.filter(ImageFilter.GaussianBlur(2 * s))


FACE_A = draw_face()
FACE_B = draw_face(skin=(120, 84, 60), eyes=(20, 60, 120), mouth=(200, 90, 90))
NO_FACE = Image.new("RGB", (128, 128), (90, 160, 90))


def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def built(models_root: Path) -> Path:
    TINY_BUILDERS[MODEL](models_root / MODEL)
    return models_root


@pytest.fixture(scope="module")
def pipe(built: Path, one_torch_thread):
    engine = Engine(ModelRegistry.load(built / "no-models.json", built), max_models=1)
    return engine.pipelines.get(MODEL).pipe


def inputs(image: Image.Image, size: int = 32, **over) -> RunInputs:
    fields = dict(model_id=MODEL, prompt="a portrait photo", init_image_key="unused", width=size, height=size,
                  samples=1, steps=2, guidance_scale=3.5, strength=1.0, seed=7)
    fields.update(over)
    req = GenerationRequest(**fields)
    return RunInputs(request=req, init_image=image.resize((size, size), Image.Resampling.LANCZOS),
                     extra_images=[], generators=[torch.Generator().manual_seed(req.seed)],
                     prompt=req.prompt, negative_prompt=None)


def run(family, pipe, image: Image.Image, **over) -> bytes:
    with torch.inference_mode():
        images = family.run(pipe, inputs(image, **over))
    return png(images[0])


def hooks(pipe) -> int:
    t = pipe.transformer
    return len(t._forward_pre_hooks) + sum(len(b._forward_hooks)
                                           for b in [*t.transformer_blocks, *t.single_transformer_blocks])


def test_the_haar_cascade_finds_the_drawn_faces_and_not_a_plain_image():
    detector = face_detector()
    for face in (FACE_A, FACE_B, FACE_A.resize((32, 32)), FACE_B.resize((32, 32))):
        assert crop_face(face, 32, detector).size == (32, 32)
    with pytest.raises(NoFaceFound, match="init_image: no face found in image"):
        crop_face(NO_FACE, 32, detector, field_name="init_image")


def test_identity_changes_the_output_and_the_hooks_go_away(pipe):
    plain = run(FluxFamily(), pipe, FACE_A)
    with_a = run(FluxPuLIDFamily(), pipe, FACE_A)
    with_b = run(FluxPuLIDFamily(), pipe, FACE_B)
    assert with_a != plain and with_b != with_a
    assert run(FluxPuLIDFamily(), pipe, FACE_A) == with_a  # reproducible
    assert hooks(pipe) == 0
    assert run(FluxFamily(), pipe, FACE_A) == plain  # no bleed into plain Flux on the same pipeline object


def test_id_weight_zero_is_plain_flux_byte_for_byte(pipe):
    assert run(FluxPuLIDFamily(id_weight=0.0), pipe, FACE_B) == run(FluxFamily(), pipe, FACE_B)


def test_id_weight_scales_the_identity(pipe):
    assert run(FluxPuLIDFamily(id_weight=0.5), pipe, FACE_A) != run(FluxPuLIDFamily(id_weight=1.0), pipe, FACE_A)


def test_several_samples_and_true_cfg_carry_the_identity(pipe):
    def both(family):
        run_inputs = inputs(FACE_A, samples=2)
        run_inputs.negative_prompt = "blurry"  # true CFG: two transformer passes per step, both hooked
        run_inputs.generators = [torch.Generator().manual_seed(7 + i) for i in range(2)]
        with torch.inference_mode():
            return [png(im) for im in family.run(pipe, run_inputs)]

    with_id, plain = both(FluxPuLIDFamily()), both(FluxFamily())
    assert len(with_id) == 2 and with_id[0] != plain[0] and with_id[1] != plain[1]


def test_the_negative_pass_of_true_cfg_gets_the_tokens_of_no_identity(pipe):
    """PuLID-FLUX's cal_uncond: with a negative prompt the negative pass sees IDFormer(zeros), not the face."""
    model = pulid_of(pipe)
    tokens, uncond = model.id_tokens(inputs(FACE_A).init_image, uncond=True)  # the face as the family sees it

    def call(negative_tokens):
        run_inputs = inputs(FACE_A)
        run_inputs.negative_prompt = "blurry"
        cfg = model.cfg
        with torch.inference_mode(), pulid_injection(pipe.transformer, model.pulid.pulid_ca, tokens, 1.0,
                                                     cfg.double_interval, cfg.single_interval, negative_tokens):
            return png(FluxFamily().run(pipe, run_inputs)[0])

    both_with_face = call(None)
    assert call(tokens) == both_with_face  # the passes alternate: same tokens in both, same image
    family = FluxPuLIDFamily()
    run_inputs = inputs(FACE_A)
    run_inputs.negative_prompt = "blurry"
    with torch.inference_mode():
        official = png(family.run(pipe, run_inputs)[0])
    assert official == call(uncond) != both_with_face
    assert hooks(pipe) == 0


def test_an_image_without_a_face_is_refused_naming_the_field(pipe):
    with pytest.raises(InvalidInput) as err:
        run(FluxPuLIDFamily(), pipe, NO_FACE)
    assert err.value.field == "image" and "image: no face found in image" in err.value.message
    assert hooks(pipe) == 0


def test_the_pulid_weights_match_the_tiny_transformer(pipe):
    model = pulid_of(pipe)
    assert len(model.pulid.pulid_ca) == ca_count(1, 1, 2, 4) == 2
    tokens, uncond = model.id_tokens(FACE_A)
    assert tokens.shape == (1, 4, 32) and uncond is None
    tokens_again, uncond = model.id_tokens(FACE_A, uncond=True)
    assert torch.equal(tokens, tokens_again) and uncond.shape == tokens.shape and not torch.equal(uncond, tokens)


def test_official_layout_keys_and_shapes():
    """PuLID-FLUX v0.9.x on FLUX.1-dev (19 double + 38 single blocks, width 3072): 20 CA modules."""
    cfg = PuLIDConfig()
    assert cfg.num_ca == ca_count(19, 38, 2, 4) == 20
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in PuLIDFlux(cfg).state_dict().items()}
    assert shapes["pulid_encoder.latents"] == (1, 32, 1024)
    assert shapes["pulid_encoder.proj_out"] == (1024, 2048)
    assert shapes["pulid_encoder.id_embedding_mapping.0.weight"] == (1024, 1280)
    assert shapes["pulid_encoder.id_embedding_mapping.6.weight"] == (5 * 1024, 1024)
    assert shapes["pulid_encoder.mapping_4.6.weight"] == (1024, 1024)
    assert shapes["pulid_encoder.layers.9.0.to_kv.weight"] == (2048, 1024)
    assert shapes["pulid_encoder.layers.9.1.3.weight"] == (1024, 4096)
    assert shapes["pulid_ca.19.to_q.weight"] == (2048, 3072)
    assert shapes["pulid_ca.19.to_kv.weight"] == (4096, 2048)
    assert shapes["pulid_ca.0.norm1.weight"] == (2048,) and shapes["pulid_ca.0.norm2.weight"] == (3072,)
    assert "pulid_ca.20.to_q.weight" not in shapes
    assert all(k.startswith(("pulid_encoder.", "pulid_ca.")) for k in shapes)


def test_weights_round_trip_through_safetensors_and_the_build_is_deterministic(tmp_path):
    from safetensors.torch import load_file

    cfg = tiny_pulid_config()
    write_pulid_folder(tmp_path / "a", cfg)
    write_pulid_folder(tmp_path / "b", cfg)
    for name in ("config.json", cfg.weights, cfg.embedder.weights):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    saved = load_file(str(tmp_path / "a" / cfg.weights))
    fresh = PuLIDFlux(PuLIDConfig.from_dict(json.loads((tmp_path / "a" / "config.json").read_text())))
    fresh.load_state_dict(saved, strict=True)
    assert all(torch.equal(saved[k], v) for k, v in fresh.state_dict().items())
    wrong = PuLIDFlux(PuLIDConfig.from_dict({**cfg.to_dict(), "num_ca": 3}))
    with pytest.raises(RuntimeError, match="pulid_ca.2"):
        wrong.load_state_dict(saved, strict=True)


# --------------------------------------------------------------------------------------------
# e2e: Qolaba getImagetoImage with app "Flux PuLID"
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pulid_server(tmp_path_factory, built):
    apps = {PULID: {"model": MODEL, "sizes": ["64x64"]}}  # the page's sizes are too big for the tiny model
    srv = DiffserveServer(tmp_path_factory.mktemp("pulid"), built, {"DIFFSERVE_QOLABA_APPS": json.dumps(apps)})
    srv.start()
    yield srv
    srv.stop()


def test_qolaba_flux_pulid_end_to_end(pulid_server, image_host):
    image_host.add("/face.png", png(FACE_A))
    image_host.add("/no-face.png", png(NO_FACE))
    key = pulid_server.create_key("--name", "pulid")

    def post(image_path: str) -> httpx.Response:
        body = {"app_id": PULID, "image": image_host.url(image_path), "prompt": "a portrait photo",
                "guidance_scale": 3.5, "batch": 1, "strength": 1, "celery": False}
        return web.post(f"{pulid_server.url}/getImagetoImage", json=body,
                        headers={"Authorization": f"Bearer {key}"}, timeout=120)

    out = post("/face.png").json()
    assert out["status"] == "SUCCESS" and out["app_id"] == PULID, out
    assert Image.open(io.BytesIO(download(out["output"]["result"][0]))).size == (64, 64)
    # no face: refused at submit, before anything is queued
    with sqlite3.connect(pulid_server.data_dir / "diffserve.db") as db:
        jobs_before = db.execute("select count(*) from jobs").fetchone()[0]
    r = post("/no-face.png")
    failed = r.json()
    assert r.status_code == 400 and failed["status"] == "FAILED", failed
    assert failed["error"] == "Input Validation Error" and "no face found" in failed["error_data"], failed
    with sqlite3.connect(pulid_server.data_dir / "diffserve.db") as db:
        assert db.execute("select count(*) from jobs").fetchone()[0] == jobs_before
