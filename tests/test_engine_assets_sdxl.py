"""IP-Adapters, LoRAs and textual-inversion embeddings on the tiny SDXL model, through the engine
(engine.generate.Engine), with a registry pointing at tiny SDXL assets built offline
(tests/tiny_assets.py: build_tiny_sdxl_assets).

The three SDXL IP-Adapter ids of the ModelsLab v6 page are registered as an operator would: the same
ids, pointing at a local folder laid out like h94/IP-Adapter, replacing the built-in hub entries.
No bleed is checked byte for byte, as in test_engine_assets: after a request with an asset, the next
plain request gives the same PNG bytes as before any asset was used, without reloading the model.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from PIL import Image

from diffserve.core.errors import InvalidInput
from diffserve.core.request import GenerationRequest
from diffserve.engine.generate import Engine
from diffserve.engine.models.registry import ModelRegistry
from diffserve.engine.tiny.sd import build_tiny_sd
from diffserve.engine.tiny.sdxl import build_tiny_sdxl

from .tiny_assets import PEFT_LORA_FILE, SDXL_IP_ADAPTERS, TinySdxlAssets, build_tiny_sdxl_assets

MODEL = "tiny-sdxl"
PROMPT = "a lighthouse on a cliff"
TOKEN = "xlstyle"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def assets(models_root) -> TinySdxlAssets:
    return build_tiny_sdxl_assets(build_tiny_sdxl(models_root / MODEL), models_root / "tiny-sdxl-assets")


@pytest.fixture(scope="module")
def registry(assets, models_root, tmp_path_factory) -> ModelRegistry:
    reg = ModelRegistry.load(tmp_path_factory.mktemp("registry-sdxl") / "models.json", models_root)
    reg.add_asset("loras", "xl-peft", {"kind": "folder", "location": str(assets.lora_folder),
                                       "weight_name": PEFT_LORA_FILE, "family": "sdxl"})
    reg.add_asset("loras", "xl-kohya", {"kind": "file", "location": str(assets.lora_kohya), "family": "sdxl"})
    reg.add_asset("embeddings", "xl-style", {"kind": "file", "location": str(assets.embedding), "token": TOKEN})
    reg.add_asset("embeddings", "sd-style", {"kind": "file", "location": str(assets.embedding_sd), "token": TOKEN})
    for ip_id, (weights, encoder) in SDXL_IP_ADAPTERS.items():
        assert reg.is_builtin("ip_adapters", ip_id)  # the operator's entry replaces the hub one
        reg.add_asset("ip_adapters", ip_id, {
            "kind": "folder", "location": str(assets.ip_adapter), "subfolder": "sdxl_models", "weight_name": weights,
            "image_encoder": encoder, "family": "sdxl"}, replace=True)
    return reg


@pytest.fixture(scope="module")
def engine(registry) -> Engine:
    return Engine(registry)


@pytest.fixture(scope="module")
def init_image() -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, size=(32, 32, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def ip_images() -> tuple[Image.Image, Image.Image]:
    rng = np.random.default_rng(1)
    return (Image.fromarray(rng.integers(0, 256, size=(48, 48, 3), dtype=np.uint8)),
            Image.new("RGB", (48, 48), (20, 200, 40)))


def request(**over) -> GenerationRequest:
    fields = dict(model_id=MODEL, prompt=PROMPT, init_image_key="unused", width=32, height=32, steps=3,
                  guidance_scale=5.0, strength=0.8, seed=7, safety_checker=False)
    fields.update(over)
    return GenerationRequest(**fields)


def digest(engine: Engine, init_image: Image.Image, ip_image: Image.Image | None = None, **over) -> str:
    result = engine.generate(request(**over), init_image, ip_adapter_image=ip_image)
    return hashlib.sha256(b"".join(result.png_bytes())).hexdigest()


@pytest.fixture(scope="module")
def base(engine, init_image) -> str:
    return digest(engine, init_image)


# --------------------------------------------------------------------------------------------
# IP-Adapter: the three SDXL ids (basic with its own bigG-style encoder; Plus / Plus Face on ViT-H)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ip_id", list(SDXL_IP_ADAPTERS))
def test_sdxl_ip_adapter_follows_the_image_and_unloads(engine, init_image, base, ip_images, ip_id):
    loads = engine.pipelines.loads
    first = digest(engine, init_image, ip_images[0], ip_adapter_id=ip_id, ip_adapter_image_key="k")
    assert first != base
    assert digest(engine, init_image, ip_images[1], ip_adapter_id=ip_id, ip_adapter_image_key="k") != first
    assert digest(engine, init_image, ip_images[0], ip_adapter_id=ip_id, ip_adapter_image_key="k",
                  ip_adapter_scale=1.0) != first  # default scale 0.6
    assert digest(engine, init_image, ip_images[0], ip_adapter_id=ip_id, ip_adapter_image_key="k",
                  ip_adapter_scale=0.0) == base  # scale 0: the adapter's attention adds nothing
    assert digest(engine, init_image) == base
    assert engine.pipelines.loads == loads
    pipe = engine.pipelines.get(MODEL).pipe
    assert pipe.image_encoder is None and pipe.unet.encoder_hid_proj is None


def test_sdxl_refuses_an_sd15_ip_adapter(engine, init_image, ip_images):
    with pytest.raises(InvalidInput) as err:
        engine.generate(request(ip_adapter_id="ip-adapter_sd15"), init_image, ip_adapter_image=ip_images[0])
    assert err.value.field == "ip_adapter_id" and "sd models" in err.value.message


# --------------------------------------------------------------------------------------------
# LoRA on the UNet and both text encoders
# --------------------------------------------------------------------------------------------


def test_sdxl_lora_acts_with_its_strength_and_leaves_no_trace(engine, init_image, base):
    loads = engine.pipelines.loads
    full = digest(engine, init_image, lora_models=["xl-peft"])
    assert full != base
    assert digest(engine, init_image, lora_models=["xl-peft"], lora_strengths=[0.4]) not in (full, base)
    assert digest(engine, init_image) == base
    assert engine.pipelines.loads == loads
    adapters = engine.pipelines.get(MODEL).pipe.get_list_adapters()
    assert set(adapters) == {"unet", "text_encoder", "text_encoder_2"}  # all three parts were patched


def test_sdxl_kohya_lora_equals_its_diffusers_original(engine, init_image, base):
    # lora_unet_ / lora_te1_ / lora_te2_ keys with .alpha: diffusers converts them to the same weights
    assert digest(engine, init_image, lora_models=["xl-kohya"]) == digest(engine, init_image, lora_models=["xl-peft"])
    assert digest(engine, init_image) == base


# --------------------------------------------------------------------------------------------
# Textual inversion: clip_l into text_encoder, clip_g into text_encoder_2
# --------------------------------------------------------------------------------------------


def test_sdxl_embedding_token_changes_the_prompt_and_nothing_else(engine, init_image, base):
    pipe = engine.pipelines.get(MODEL).pipe
    sizes = (len(pipe.tokenizer), len(pipe.tokenizer_2), pipe.text_encoder.get_input_embeddings().num_embeddings,
             pipe.text_encoder_2.get_input_embeddings().num_embeddings)
    prompt = f"{PROMPT}, {TOKEN}"
    without = digest(engine, init_image, prompt=prompt)
    with_embedding = digest(engine, init_image, prompt=prompt, embeddings_model="xl-style")
    assert with_embedding != without
    assert digest(engine, init_image, embeddings_model="xl-style") == base  # loaded, but its token unused
    assert digest(engine, init_image, prompt=prompt) == without
    assert digest(engine, init_image, prompt=prompt, embeddings_model="xl-style") == with_embedding
    pipe = engine.pipelines.get(MODEL).pipe
    assert (len(pipe.tokenizer), len(pipe.tokenizer_2), pipe.text_encoder.get_input_embeddings().num_embeddings,
            pipe.text_encoder_2.get_input_embeddings().num_embeddings) == sizes
    assert TOKEN not in pipe.tokenizer.get_vocab() and TOKEN not in pipe.tokenizer_2.get_vocab()


def test_sdxl_embedding_reaches_both_text_encoders(engine, init_image):
    # each half of the embedding acts: swapping in only one encoder's vectors gives another image
    from diffserve.engine.controls import embeddings

    prompt = f"{PROMPT}, {TOKEN}"
    both = digest(engine, init_image, prompt=prompt, embeddings_model="xl-style")
    loaded = engine.pipelines.get(MODEL).state[embeddings._STATE]["xl-style"]
    assert set(loaded.parts) == {("tokenizer", "text_encoder"), ("tokenizer_2", "text_encoder_2")}
    for part in list(loaded.parts):
        kept = loaded.parts[part]
        loaded.parts[part] = embeddings._Vectors(kept.tokenizer, kept.rows * 0)
        try:
            assert digest(engine, init_image, prompt=prompt, embeddings_model="xl-style") != both
        finally:
            loaded.parts[part] = kept
    assert digest(engine, init_image, prompt=prompt, embeddings_model="xl-style") == both


def test_embedding_kinds_are_refused_by_the_other_model_kind(engine, registry, models_root, init_image, base):
    with pytest.raises(InvalidInput) as err:
        engine.generate(request(embeddings_model="sd-style"), init_image)
    assert err.value.field == "embeddings_model" and "clip_l and clip_g" in err.value.message
    build_tiny_sd(models_root / "tiny-sd")
    with pytest.raises(InvalidInput) as err:
        engine.generate(request(model_id="tiny-sd", width=64, height=64, embeddings_model="xl-style"),
                        init_image.resize((64, 64)))
    assert err.value.field == "embeddings_model" and "SDXL embedding" in err.value.message
    assert digest(engine, init_image) == base


# --------------------------------------------------------------------------------------------
# All at once
# --------------------------------------------------------------------------------------------


def test_sdxl_every_asset_in_one_request_then_a_plain_one(engine, init_image, base, ip_images):
    loads = engine.pipelines.loads
    everything = digest(engine, init_image, ip_images[0], prompt=f"{PROMPT} {TOKEN}", lora_models=["xl-kohya"],
                        lora_strengths=[0.8], embeddings_model="xl-style", ip_adapter_id="ip-adapter-plus_sdxl_vit-h",
                        ip_adapter_image_key="k")
    assert everything != base
    assert digest(engine, init_image) == base
    assert engine.pipelines.loads == loads


def test_an_a1111_pt_embedding_is_read_safely_on_an_sd_model(engine, registry, models_root, init_image, tmp_path):
    # a torch pickle in A1111's layout (string_to_param + metadata), read with weights_only
    import torch

    pt = tmp_path / "a1111.pt"
    torch.save({"string_to_param": {"*": torch.randn(2, 32, generator=torch.Generator().manual_seed(3))},
                "name": "a1111", "step": 500}, str(pt))
    registry.add_asset("embeddings", "a1111-pt", {"kind": "file", "location": str(pt), "token": "aonestyle"})
    build_tiny_sd(models_root / "tiny-sd")
    sd = dict(model_id="tiny-sd", width=64, height=64, prompt=f"{PROMPT} aonestyle")
    image = init_image.resize((64, 64))
    assert digest(engine, image, **sd, embeddings_model="a1111-pt") != digest(engine, image, **sd)
    with pytest.raises(InvalidInput) as err:
        engine.generate(request(embeddings_model="a1111-pt"), init_image)  # one encoder: not for tiny-sdxl
    assert err.value.field == "embeddings_model"
