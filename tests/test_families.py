"""The SDXL, Flux, Flux Kontext and Flux Redux families on their tiny built-in models.

Engine level (Engine.generate, as the worker calls it) plus one request per family through the real
server's ModelsLab v6 endpoint. The tiny models are built once per session into the shared
`models_root`, so the server finds them already built.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from diffserve.core.errors import InvalidInput
from diffserve.core.request import GenerationRequest
from diffserve.engine.families import batch_loop, family
from diffserve.engine.families.flux_kontext import stitch_references
from diffserve.engine.generate import Engine
from diffserve.engine.models.loading import ModelSource
from diffserve.engine.models.registry import ModelRegistry
from diffserve.engine.models.specs import FAMILIES, family_spec
from diffserve.engine.tiny.flux import FLUX_REQUIRED_FILES, build_t5_tokenizer

from .family_models import build_tiny, tiny_ids, tiny_spec
from .servers import png_bytes
from .test_modelslab_v6 import IMG2IMG, download

FAMILY_MODELS = tiny_ids("sdxl", "flux", "flux-kontext", "flux-redux")
FLUX_MODELS = FAMILY_MODELS[1:]


@pytest.fixture(scope="session")
def family_models(models_root: Path) -> Path:
    return build_tiny(models_root, *FAMILY_MODELS)


@pytest.fixture(scope="module")
def engine(family_models: Path, one_torch_thread):
    registry = ModelRegistry.load(family_models / "no-models.json", family_models)
    return Engine(registry, max_models=len(FAMILY_MODELS))


@pytest.fixture(scope="module")
def baseline(engine):
    """The default request's output per model, generated once (the tests compare against it)."""
    outputs: dict[str, list[bytes]] = {}

    def get(model_id: str) -> list[bytes]:
        if model_id not in outputs:
            outputs[model_id] = generate(engine, model_id)
        return outputs[model_id]

    return get


def _image(seed: int, width: int, height: int) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels, mode="RGB")


INIT = _image(0, 48, 48)
REFERENCE = _image(1, 80, 48)


def generate(engine: Engine, model_id: str, *, init: Image.Image = INIT, extras=(), **over) -> list[bytes]:
    fields = dict(model_id=model_id, prompt="a red fox in the snow", init_image_key="unused", width=32, height=32,
                  samples=1, steps=3, guidance_scale=3.5, strength=0.8, seed=5)
    fields.update(over)
    result = engine.generate(GenerationRequest(**fields), init, list(extras))
    for img in result.images:
        assert img.size == (fields["width"], fields["height"])
    return result.png_bytes()


# --------------------------------------------------------------------------------------------
# Every family: reproducible, and each input acts
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model_id", FAMILY_MODELS)
def test_same_seed_same_bytes_other_seed_or_prompt_other_image(engine, baseline, model_id):
    a = baseline(model_id)
    assert generate(engine, model_id) == a
    assert generate(engine, model_id, seed=6) != a
    assert generate(engine, model_id, prompt="a blue whale") != a


@pytest.mark.parametrize("model_id", FAMILY_MODELS)
def test_guidance_and_steps_act(engine, baseline, model_id):
    a = baseline(model_id)
    assert generate(engine, model_id, guidance_scale=9.0) != a
    assert generate(engine, model_id, steps=4) != a


@pytest.mark.parametrize("model_id", ("tiny-sdxl", "tiny-flux", "tiny-flux-redux"))
def test_strength_acts(engine, model_id):
    assert generate(engine, model_id, strength=0.5, steps=4) != generate(engine, model_id, strength=1.0, steps=4)


def test_kontext_ignores_strength(engine):
    # Kontext generates from noise while attending to the reference: there is no noised init image.
    assert generate(engine, "tiny-flux-kontext", strength=0.5) == generate(engine, "tiny-flux-kontext", strength=1.0)


@pytest.mark.parametrize("model_id", ("tiny-sdxl", "tiny-flux", "tiny-flux-kontext"))
def test_negative_prompt_acts(engine, baseline, model_id):
    # SDXL: classifier-free guidance; Flux and Kontext: true CFG, switched on by the negative prompt
    assert generate(engine, model_id, negative_prompt="blurry") != baseline(model_id)


@pytest.mark.parametrize("model_id", FLUX_MODELS)
def test_flux_families_give_eight_distinct_samples_at_the_requested_size(engine, model_id):
    images = generate(engine, model_id, samples=8, steps=2, width=48, height=32)
    assert len(images) == 8 and len(set(images)) == 8


@pytest.mark.parametrize("model_id", FAMILY_MODELS)
def test_non_square_output_size_comes_from_the_request(engine, model_id):
    (png,) = generate(engine, model_id, init=_image(2, 64, 64), width=64, height=32)
    assert Image.open(io.BytesIO(png)).size == (64, 32)


# --------------------------------------------------------------------------------------------
# Several input images (Qolaba file_urls)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model_id", ("tiny-flux-kontext", "tiny-flux-redux"))
def test_an_extra_reference_image_changes_the_output(engine, baseline, model_id):
    a = baseline(model_id)
    b = generate(engine, model_id, extras=[REFERENCE])
    assert b != a
    assert generate(engine, model_id, extras=[REFERENCE]) == b
    assert generate(engine, model_id, extras=[REFERENCE.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]) != b


def test_kontext_stitches_references_side_by_side_within_the_output_area():
    init, wide = _image(3, 64, 64), _image(4, 128, 32)
    assert stitch_references([init], height=64, max_area=64 * 64) is init
    strip = stitch_references([init, wide], height=64, max_area=64 * 64)
    # 64x64 + 256x64 (wide at height 64) = 320x64, scaled to fit 4096 px: 143x28 -> multiples of 16
    assert strip.size == (128, 16)
    small = stitch_references([_image(5, 16, 16), _image(6, 16, 16)], height=16, max_area=64 * 64)
    assert small.size == (32, 16)  # never scaled up
    left = np.asarray(stitch_references([init, wide], height=64, max_area=10**6))[:, :64]
    assert np.array_equal(left, np.asarray(init))  # init image first, unchanged at its height


@pytest.mark.parametrize("shape", [(2048, 1), (16384, 1), (1, 4096), (1_000_000, 1)])
def test_kontext_stitching_keeps_extreme_references_within_the_output_area(shape):
    """At the output height a 2048x1 reference alone would be 2048x1024 times wider than tall (2 G pixels): every
    strip, whatever its references, stays within the output's area, sides multiples of 16."""
    init = _image(7, 1024, 1024)
    for refs in ([_image(8, *shape)], [_image(8, *shape)] * 16):
        strip = stitch_references([init, *refs], height=1024, max_area=1024 * 1024)
        assert strip.width * strip.height <= 1024 * 1024 and strip.width % 16 == 0 and strip.height % 16 == 0
        assert strip.height >= 16


# --------------------------------------------------------------------------------------------
# Builds, registry entries and family checks
# --------------------------------------------------------------------------------------------


def test_builds_are_deterministic_and_complete(family_models):
    # tiny-flux-redux/flux/ was built separately by the same recipe as tiny-flux/: same bytes.
    for name in FLUX_REQUIRED_FILES:
        if name not in ("README.md", "diffserve_tiny.json"):
            assert (family_models / "tiny-flux" / name).read_bytes() == \
                   (family_models / "tiny-flux-redux" / "flux" / name).read_bytes(), name
    same = ("transformer/diffusion_pytorch_model.safetensors", "text_encoder_2/model.safetensors",
            "tokenizer_2/tokenizer.json")
    for name in same:
        assert (family_models / "tiny-flux" / name).read_bytes() == \
               (family_models / "tiny-flux-kontext" / name).read_bytes(), name
    index = json.loads((family_models / "tiny-sdxl" / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionXLPipeline"
    assert json.loads((family_models / "tiny-flux-kontext" / "model_index.json").read_text())["_class_name"] \
        == "FluxKontextPipeline"
    for model_id in FAMILY_MODELS:
        size = sum(p.stat().st_size for p in (family_models / model_id).rglob("*") if p.is_file())
        assert size < 40 * 2**20, (model_id, size)
        assert tiny_spec(model_id).tiny.build(family_models / model_id) == family_models / model_id  # already built


def test_a_half_built_folder_is_reported_not_overwritten(tmp_path):
    (tmp_path / "tiny-flux").mkdir()
    (tmp_path / "tiny-flux" / "model_index.json").write_text("{}")
    with pytest.raises(FileExistsError, match="not a complete tiny-flux folder"):
        family_spec("flux").tiny.build(tmp_path / "tiny-flux")


def test_t5_tokenizer_covers_ordinary_prompts():
    tokenizer = build_t5_tokenizer()
    ids = tokenizer("A photo of a cat, 4k HDR; sunglasses & (blue) sky!")["input_ids"]
    assert tokenizer.unk_token_id not in ids and ids[-1] == tokenizer.eos_token_id
    assert tokenizer("a cat")["input_ids"] != tokenizer("a dog")["input_ids"]


def test_registry_entries_and_limits(family_models):
    registry = ModelRegistry.load(family_models / "no-models.json", family_models)
    expected = {"tiny-sdxl": "sdxl", "tiny-flux": "flux", "tiny-flux-kontext": "flux-kontext",
                "tiny-flux-redux": "flux-redux"}
    for model_id, fam in expected.items():
        entry = registry.get(model_id)
        assert entry.family == fam and entry.builtin == model_id and entry.limits.max_samples == 8
        assert entry.limits.max_guidance == 30
        assert entry.limits.size_multiple == (8 if fam == "sdxl" else 16)
    assert registry.get("tiny-flux-redux").limits.default_strength == 1.0


@pytest.mark.parametrize("spec", FAMILIES, ids=lambda spec: spec.name)
def test_each_family_spec_names_its_parts_and_the_registry_offers_its_tiny_model(spec, tmp_path):
    """A family is its spec: the pipeline class (load, run), the batched loop and the tiny builder it names
    resolve, and its tiny model (and vendor ids on it) are built-in entries of that family with its limits."""
    pipeline = family(spec.name)
    assert callable(pipeline.load) and callable(pipeline.run) and pipeline.name == spec.name
    loop = batch_loop(spec.name)
    assert (loop is None) == (spec.batch_loop is None)
    if loop is not None:
        assert all(callable(getattr(loop, part)) for part in ("start", "forward", "finish"))
    registry = ModelRegistry.load(tmp_path / "no-models.json", tmp_path)
    for model_id, limits in ((spec.tiny.model_id, spec.tiny.limits),
                             *((vendor.model_id, vendor.limits) for vendor in spec.vendor_models)):
        entry = registry.get(model_id)
        assert (entry.family, entry.builtin, entry.limits) == (spec.name, spec.tiny.model_id, limits)
        assert entry.location == str(tmp_path / spec.tiny.model_id)


# Where the engine may still spell a family's name outside the family's spec and the modules the spec names:
# the default family of a models file entry, the vendor IP-Adapters' families, Redux's base model folder.
NAMED_ELSEWHERE = {("sd", "generate.py"), ("sd", "models/registry.py"), ("sd", "models/asset_entries.py"),
                   ("sdxl", "models/asset_entries.py"), ("flux", "families/flux_redux.py")}


def test_no_engine_module_special_cases_a_family_outside_its_spec():
    """Adding a family is its spec and one line in the list: no other engine module has a table or an `if`
    naming one (every string constant of diffserve/engine/ equal to a family's name is looked at)."""
    import ast

    engine_dir = Path(__file__).resolve().parent.parent / "diffserve" / "engine"
    found = set()
    for spec in FAMILIES:
        own = {part.split(":")[0] for part in (spec.pipeline, spec.batch_loop, spec.tiny.builder) if part}
        for path in engine_dir.rglob("*.py"):
            relative = path.relative_to(engine_dir)
            module = ".".join(("diffserve", "engine", *relative.with_suffix("").parts))
            if module in own or module.startswith("diffserve.engine.models.specs"):
                continue
            if any(isinstance(node, ast.Constant) and node.value == spec.name
                   for node in ast.walk(ast.parse(path.read_text()))):
                found.add((spec.name, str(relative)))
    assert found == NAMED_ELSEWHERE


def test_a_family_no_spec_names_is_refused_naming_the_known_ones():
    known = ", ".join(spec.name for spec in FAMILIES)
    for lookup in (family, batch_loop, family_spec):
        with pytest.raises(ValueError, match=f"unknown family 'sd3'; known: {known}$"):
            lookup("sd3")


def test_a_model_of_another_family_is_refused_naming_model_id(family_models):
    import torch

    with pytest.raises(InvalidInput, match="not a flux model") as e:
        family("flux").load(ModelSource("folder", str(family_models / "tiny-sdxl")), device="cpu",
                            dtype=torch.float32)
    assert e.value.field == "model_id"
    with pytest.raises(InvalidInput, match="prior_redux/model_index.json") as e:
        family("flux-redux").load(ModelSource("folder", str(family_models / "tiny-flux")), device="cpu",
                                  dtype=torch.float32)
    assert e.value.field == "model_id"


# --------------------------------------------------------------------------------------------
# Through the server (ModelsLab v6)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model_id", FAMILY_MODELS)
def test_v6_img2img_on_each_family(server, key, image_host, family_models, model_id):
    init_url = image_host.add("/families-90x70.png", png_bytes(90, 70))
    body = {"key": key, "model_id": model_id, "prompt": "a red fox", "init_image": init_url,
            "samples": "2", "num_inference_steps": "3", "guidance_scale": 3.5, "seed": 42}
    out = server.post(IMG2IMG, body).json()
    assert out["status"] == "success", out
    # The init image's size, rounded down to the model's multiple: 8 for SDXL, 16 for Flux.
    size = (88, 64) if model_id == "tiny-sdxl" else (80, 64)
    images = [Image.open(io.BytesIO(download(url))) for url in out["output"]]
    assert [img.size for img in images] == [size, size]
    assert images[0].tobytes() != images[1].tobytes()
    assert out["meta"]["model_id"] == model_id
