"""LoRAs, textual-inversion embeddings, custom VAEs and IP-Adapters on the tiny SD model, through the
engine itself (engine.generate.Engine), with a registry pointing at tiny assets built offline.

The no-bleed rule is checked byte for byte: after a request with an asset, the next plain request
on the same cached pipeline gives the same PNG bytes as before any asset was used, and the base
model was never reloaded.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from diffserve.core.errors import InvalidInput
from diffserve.core.request import GenerationRequest
from diffserve.engine.models.asset_entries import LoraEntry
from diffserve.engine.models.asset_files import asset_root
from diffserve.engine.generate import Engine
from diffserve.engine.models.registry import ModelRegistry
from diffserve.engine.tiny.sd import build_tiny_sd

from .tiny_assets import PEFT_LORA_FILE, TinyAssets, build_tiny_assets

PROMPT = "a lighthouse on a cliff"
TOKEN = "mystyle"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="session")
def tiny_sd(models_root) -> Path:
    return build_tiny_sd(models_root / "tiny-sd")


@pytest.fixture(scope="session")
def assets(tiny_sd, models_root) -> TinyAssets:
    return build_tiny_assets(tiny_sd, models_root / "tiny-assets")  # shared with test_assets_api


@pytest.fixture(scope="module")
def registry(assets, models_root, tmp_path_factory) -> ModelRegistry:
    """A models file holding every tiny asset, written through the registry's write API."""
    reg = ModelRegistry.load(tmp_path_factory.mktemp("registry") / "models.json", models_root)
    reg.add_asset("loras", "peft", {"kind": "folder", "location": str(assets.lora_folder),
                                    "weight_name": PEFT_LORA_FILE, "family": "sd"})
    reg.add_asset("loras", "kohya", {"kind": "file", "location": str(assets.lora_kohya), "family": "sd"})
    reg.add_asset("loras", "unet-only", {"kind": "file", "location": str(assets.lora_unet_only)})
    reg.add_asset("embeddings", "my-style", {"kind": "file", "location": str(assets.embedding), "token": TOKEN})
    reg.add_asset("vaes", "alt", {"kind": "folder", "location": str(assets.vae_folder), "family": "sd"})
    reg.add_asset("vaes", "alt-file", {"kind": "file", "location": str(assets.vae_file),
                                       "config": str(assets.vae_folder)})
    for ip_id, weights in (("ip-adapter_sd15", "ip-adapter_sd15.safetensors"),
                           ("ip-adapter-plus-face_sd15", "ip-adapter-plus-face_sd15.safetensors")):
        reg.add_asset("ip_adapters", ip_id, {
            "kind": "folder", "location": str(assets.ip_adapter), "subfolder": "models", "weight_name": weights,
            "image_encoder": "models/image_encoder", "family": "sd"}, replace=True)
    return reg


@pytest.fixture(scope="module")
def engine(registry) -> Engine:
    return Engine(registry)


@pytest.fixture(scope="module")
def init_image() -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, size=(64, 64, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def ip_images() -> tuple[Image.Image, Image.Image]:
    rng = np.random.default_rng(1)
    return (Image.fromarray(rng.integers(0, 256, size=(48, 48, 3), dtype=np.uint8)),
            Image.new("RGB", (48, 48), (20, 200, 40)))


def request(**over) -> GenerationRequest:
    fields = dict(model_id="tiny-sd", prompt=PROMPT, init_image_key="unused", width=64, height=64, steps=4,
                  guidance_scale=7.5, strength=0.7, seed=7, safety_checker=False)
    fields.update(over)
    return GenerationRequest(**fields)


def digest(engine: Engine, init_image: Image.Image, ip_image: Image.Image | None = None, **over) -> str:
    result = engine.generate(request(**over), init_image, ip_adapter_image=ip_image)
    return hashlib.sha256(b"".join(result.png_bytes())).hexdigest()


@pytest.fixture(scope="module")
def base(engine, init_image) -> str:
    """The plain request's output before any asset touched the pipeline."""
    return digest(engine, init_image)


# --------------------------------------------------------------------------------------------
# LoRA
# --------------------------------------------------------------------------------------------


def test_lora_changes_the_image_and_leaves_no_trace(engine, init_image, base):
    loads = engine.pipelines.loads
    with_lora = digest(engine, init_image, lora_models=["peft"])
    assert with_lora != base
    assert digest(engine, init_image) == base  # the next plain request: as if the LoRA never was
    assert digest(engine, init_image, lora_models=["peft"]) == with_lora  # cached adapter, same result
    assert engine.pipelines.loads == loads


def test_kohya_file_gives_the_same_image_as_its_diffusers_original(engine, init_image, base):
    # same weights, kohya/A1111 key names (UNet + text encoder, with .alpha): diffusers converts them
    assert digest(engine, init_image, lora_models=["kohya"]) == digest(engine, init_image, lora_models=["peft"])
    assert digest(engine, init_image) == base


def test_lora_strengths_and_exactly_the_requested_adapters(engine, registry, init_image, base):
    both = digest(engine, init_image, lora_models=["peft", "unet-only"])
    half = digest(engine, init_image, lora_models=["peft", "unet-only"], lora_strengths=[0.5])
    per_lora = digest(engine, init_image, lora_models=["peft", "unet-only"], lora_strengths=[1.0, 0.3])
    assert len({both, half, per_lora}) == 3
    # after others were active on this pipeline, one LoRA alone equals a fresh pipeline that only ever had it
    alone = digest(engine, init_image, lora_models=["unet-only"])
    fresh = Engine(registry)
    assert digest(fresh, init_image, lora_models=["unet-only"]) == alone
    assert digest(engine, init_image) == base


def test_a_lora_that_does_not_load_fails_cleanly(engine, registry, init_image, base, tmp_path):
    from safetensors.torch import save_file
    import torch

    bad = tmp_path / "not-a-lora.safetensors"
    save_file({"lora_unet_nowhere.lora_down.weight": torch.ones(4, 7),
               "lora_unet_nowhere.lora_up.weight": torch.ones(7, 4)}, str(bad))
    registry.add_asset("loras", "broken", {"kind": "file", "location": str(bad)})
    registry.add_asset("loras", "missing", {"kind": "file", "location": str(tmp_path / "gone.safetensors")})
    for lora_id in ("broken", "missing", "never-registered"):
        with pytest.raises(InvalidInput) as err:
            engine.generate(request(lora_models=[lora_id]), init_image)
        assert err.value.field == "lora_model" and lora_id in err.value.message
    assert digest(engine, init_image) == base


# --------------------------------------------------------------------------------------------
# Textual inversion
# --------------------------------------------------------------------------------------------


def test_embedding_token_changes_the_prompt_and_nothing_else(engine, init_image, base):
    prompt = f"{PROMPT}, {TOKEN}"
    without = digest(engine, init_image, prompt=prompt)  # the word as plain text: BPE pieces
    with_embedding = digest(engine, init_image, prompt=prompt, embeddings_model="my-style")
    assert with_embedding != without
    # with the embedding loaded, a prompt that does not use its token is unchanged
    assert digest(engine, init_image, embeddings_model="my-style") == base
    # and once the request is over the token is plain text again, exactly as before
    assert digest(engine, init_image, prompt=prompt) == without
    assert digest(engine, init_image, prompt=prompt, embeddings_model="my-style") == with_embedding


# --------------------------------------------------------------------------------------------
# VAE
# --------------------------------------------------------------------------------------------


def test_custom_vae_swaps_in_and_out_without_reloading(engine, init_image, base):
    loads = engine.pipelines.loads
    folder = digest(engine, init_image, vae="alt")
    assert folder != base
    assert digest(engine, init_image, vae="alt-file") == folder  # the same weights as one file
    assert digest(engine, init_image) == base
    assert engine.pipelines.loads == loads


def test_a_vae_that_does_not_fit_is_refused(engine, registry, init_image, base, tmp_path):
    from diffusers import AutoencoderKL

    AutoencoderKL(block_out_channels=(32,), down_block_types=("DownEncoderBlock2D",),
                  up_block_types=("UpDecoderBlock2D",), latent_channels=4, norm_num_groups=32).save_pretrained(
        str(tmp_path / "small-vae"))
    registry.add_asset("vaes", "wrong-scale", {"kind": "folder", "location": str(tmp_path / "small-vae")})
    with pytest.raises(InvalidInput) as err:
        engine.generate(request(vae="wrong-scale"), init_image)
    assert err.value.field == "vae" and "does not fit" in err.value.message
    assert digest(engine, init_image) == base


# --------------------------------------------------------------------------------------------
# IP-Adapter
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ip_id", ["ip-adapter_sd15", "ip-adapter-plus-face_sd15"])
def test_ip_adapter_follows_the_image_and_unloads(engine, init_image, base, ip_images, ip_id):
    loads = engine.pipelines.loads
    first = digest(engine, init_image, ip_images[0], ip_adapter_id=ip_id, ip_adapter_image_key="k")
    assert first != base
    assert digest(engine, init_image, ip_images[1], ip_adapter_id=ip_id, ip_adapter_image_key="k") != first
    stronger = digest(engine, init_image, ip_images[0], ip_adapter_id=ip_id, ip_adapter_image_key="k",
                      ip_adapter_scale=1.0)
    assert stronger != first  # default scale 0.6
    assert digest(engine, init_image) == base
    assert engine.pipelines.loads == loads


def test_ip_adapter_with_two_samples(engine, init_image, ip_images):
    result = engine.generate(request(ip_adapter_id="ip-adapter_sd15", samples=2), init_image,
                             ip_adapter_image=ip_images[0])
    assert len(result.images) == 2 and result.images[0].tobytes() != result.images[1].tobytes()


def test_ip_adapter_needs_its_image_and_its_family(engine, init_image):
    with pytest.raises(InvalidInput) as err:
        engine.generate(request(ip_adapter_id="ip-adapter_sd15"), init_image)
    assert err.value.field == "ip_adapter_image"
    with pytest.raises(InvalidInput) as err:
        engine.generate(request(ip_adapter_id="ip-adapter_sdxl"), init_image, ip_adapter_image=init_image)
    assert err.value.field == "ip_adapter_id" and "sdxl" in err.value.message


# --------------------------------------------------------------------------------------------
# All at once
# --------------------------------------------------------------------------------------------


def test_every_asset_in_one_request_then_a_plain_one(engine, init_image, base, ip_images):
    loads = engine.pipelines.loads
    everything = digest(engine, init_image, ip_images[0], prompt=f"{PROMPT} {TOKEN}", lora_models=["kohya"],
                        lora_strengths=[0.8], embeddings_model="my-style", vae="alt",
                        ip_adapter_id="ip-adapter_sd15", scheduler="EulerDiscreteScheduler")
    assert everything != base
    assert digest(engine, init_image) == base
    assert engine.pipelines.loads == loads


def test_a_failing_asset_undoes_the_ones_before_it(engine, init_image, base):
    # VAE and LoRA are applied, then the embedding fails: both are undone
    with pytest.raises(InvalidInput) as err:
        engine.generate(request(vae="alt", lora_models=["peft"], embeddings_model="nope"), init_image)
    assert err.value.field == "embeddings_model"
    assert digest(engine, init_image) == base


# --------------------------------------------------------------------------------------------
# Hub sources (from a Hugging Face cache built here; the hub itself is never contacted)
# --------------------------------------------------------------------------------------------


def test_hub_lora_is_read_from_the_hf_cache(assets, tmp_path):
    repo, commit = "someone/tiny-lora", "0" * 40
    repo_dir = tmp_path / "hub" / "models--someone--tiny-lora"
    snapshot = repo_dir / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (snapshot / PEFT_LORA_FILE).write_bytes((assets.lora_folder / PEFT_LORA_FILE).read_bytes())
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(commit)
    entry = LoraEntry(kind="hub", location=repo, weight_name=PEFT_LORA_FILE)
    root = asset_root(entry, field="lora_model", name="LoRA x", needs=[PEFT_LORA_FILE], patterns=[PEFT_LORA_FILE],
                      offline=True, cache_dir=str(tmp_path / "hub"))
    assert root == snapshot and (root / PEFT_LORA_FILE).is_file()

    other = LoraEntry(kind="hub", location="someone/not-cached", weight_name=PEFT_LORA_FILE)
    with pytest.raises(InvalidInput) as err:
        asset_root(other, field="lora_model", name="LoRA y", needs=[PEFT_LORA_FILE], patterns=[PEFT_LORA_FILE],
                   offline=True, cache_dir=str(tmp_path / "hub"))
    assert err.value.field == "lora_model" and f"hf download someone/not-cached --include \"{PEFT_LORA_FILE}\"" in err.value.message
    assert os.listdir(tmp_path / "hub") == ["models--someone--tiny-lora"]  # nothing fetched or created
