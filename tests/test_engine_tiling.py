"""The `tiling` control (A1111's "Tiling"): circular padding in every Conv2d of the UNet and the VAE for the call
(the VAE's decode included), put back after it; refused for a family without a UNet."""

from __future__ import annotations

import pytest
from PIL import Image

from diffserve.core.errors import InvalidInput
from diffserve.core.request import GenerationRequest, RequestDraft
from diffserve.engine.controls.tiling import convolutions
from diffserve.engine.generate import Engine
from diffserve.engine.models.registry import ModelEntry, ModelRegistry
from diffserve.engine.request_rules import resolve_controls

INIT = Image.new("RGB", (32, 32), (200, 80, 40))


@pytest.fixture(scope="module")
def engine(models_root, one_torch_thread):
    return Engine(ModelRegistry.load(models_root / "no-models.json", models_root), models_dir=models_root)


def run(engine: Engine, **over) -> bytes:
    fields = dict(model_id="tiny-sd", prompt="a tiled floor", init_image_key="unused", width=32, height=32,
                  steps=3, guidance_scale=7.5, strength=0.7, seed=99)
    return engine.generate(GenerationRequest(**{**fields, **over}), INIT).png_bytes()[0]


def test_tiling_pads_circularly_for_the_call_only(engine):
    plain = run(engine)
    pipe = engine.pipelines.get("tiny-sd").pipe
    convs = convolutions(pipe)
    unet_conv, vae_conv = pipe.unet.conv_in, pipe.vae.decoder.conv_out
    assert unet_conv in convs and vae_conv in convs
    seen: dict[str, set[str]] = {"unet": set(), "vae": set()}
    hooks = [unet_conv.register_forward_pre_hook(lambda m, _a: seen["unet"].add(m.padding_mode)),
             vae_conv.register_forward_pre_hook(lambda m, _a: seen["vae"].add(m.padding_mode))]
    try:
        tiled = run(engine, tiling=True)
    finally:
        for hook in hooks:
            hook.remove()
    assert seen == {"unet": {"circular"}, "vae": {"circular"}}  # the decode too
    assert {conv.padding_mode for conv in convs} == {"zeros"}  # put back
    assert tiled != plain and run(engine, tiling=True) == tiled and run(engine) == plain


def test_tiling_is_refused_for_a_family_without_a_unet():
    flux = ModelEntry(kind="hub", location="org/flux", family="flux")
    with pytest.raises(InvalidInput) as refused:
        resolve_controls(RequestDraft(model_id="f", prompt="p", init_image="x", tiling=True), flux)
    assert refused.value.field == "tiling"
