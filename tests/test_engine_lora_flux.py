"""LoRAs on the Flux families (FLUX.1 LoRAs patch the transformer), through the engine.

The same LoRA control as on SD/SDXL (engine/controls/lora.py, diffusers' load_lora_weights + set_adapters):
a tiny PEFT LoRA on the tiny Flux transformer, saved by diffusers' FluxPipeline.save_lora_weights,
changes the image, its strength acts, and the next plain request is byte-identical (no bleed, no reload).
"""

from __future__ import annotations

import copy
import hashlib

import numpy as np
import pytest
import torch
from PIL import Image

from diffserve.core.request import GenerationRequest
from diffserve.engine.generate import Engine
from diffserve.engine.models.registry import ModelRegistry
from diffserve.engine.tiny.flux import build_tiny_flux, build_tiny_flux_kontext

LORA_FILE = "pytorch_lora_weights.safetensors"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def write_flux_lora(flux_folder, dest) -> None:
    """Rank-4 LoRA on the transformer's attention projections, random non-zero weights, saved by diffusers."""
    from diffusers import FluxPipeline, FluxTransformer2DModel
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    transformer = FluxTransformer2DModel.from_pretrained(flux_folder, subfolder="transformer")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        transformer = copy.deepcopy(transformer)
        transformer.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False,
                                           target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(transformer))
    FluxPipeline.save_lora_weights(str(dest), transformer_lora_layers=layers, safe_serialization=True)


@pytest.fixture(scope="module")
def engine(models_root, tmp_path_factory) -> Engine:
    flux = build_tiny_flux(models_root / "tiny-flux")
    build_tiny_flux_kontext(models_root / "tiny-flux-kontext")
    lora_dir = tmp_path_factory.mktemp("flux-lora")
    write_flux_lora(flux, lora_dir)
    registry = ModelRegistry.load(tmp_path_factory.mktemp("registry-flux") / "models.json", models_root)
    registry.add_asset("loras", "flux-style", {"kind": "folder", "location": str(lora_dir),
                                               "weight_name": LORA_FILE})
    return Engine(registry)


INIT = Image.fromarray(np.random.default_rng(0).integers(0, 256, size=(32, 32, 3), dtype=np.uint8))


def digest(engine: Engine, model_id: str, **over) -> str:
    fields = dict(model_id=model_id, prompt="a lighthouse", init_image_key="unused", width=32, height=32,
                  steps=3, guidance_scale=3.5, strength=0.8, seed=7, safety_checker=False)
    fields.update(over)
    return hashlib.sha256(b"".join(engine.generate(GenerationRequest(**fields), INIT).png_bytes())).hexdigest()


@pytest.mark.parametrize("model_id", ["tiny-flux", "tiny-flux-kontext"])
def test_flux_lora_acts_and_leaves_no_trace(engine, model_id):
    base = digest(engine, model_id)
    loads = engine.pipelines.loads
    full = digest(engine, model_id, lora_models=["flux-style"])
    weak = digest(engine, model_id, lora_models=["flux-style"], lora_strengths=[0.3])
    assert len({base, full, weak}) == 3
    assert digest(engine, model_id) == base  # the next plain request: byte-identical
    assert engine.pipelines.loads == loads  # the base model was not reloaded
