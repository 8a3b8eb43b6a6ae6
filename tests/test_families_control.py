"""Flux structural control (tiny-flux-canny, tiny-flux-depth) and HiDream img2img (tiny-hidream).

Engine level (Engine.generate, as the worker calls it) on the tiny built-in models, the control
images on their own, and one request per family through the real server's ModelsLab v6 endpoint.
The tiny models are built once per session into the shared `models_root`.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffserve.core.errors import InvalidInput
from diffserve.core.request import GenerationRequest
from diffserve.engine.families.control_images import DepthEstimator, canny_edges
from diffserve.engine.controls.base import ControlContext
from diffserve.engine.families import family
from diffserve.engine.families.base import RunInputs
from diffserve.engine.families.flux_control import CONTROL_IMAGE, control_image_control
from diffserve.engine.families.hidream import scheduler_starting_at, steps_skipped
from diffserve.engine.generate import Engine
from diffserve.engine.models.registry import ModelEntry, ModelRegistry
from diffserve.engine.tiny.flux_control import DEPTH_TINY_LIMITS
from diffserve.engine.tiny.hidream import flow_unipc_scheduler

from .family_models import build_tiny, tiny_ids
from .servers import png_bytes
from .test_modelslab_v6 import IMG2IMG, download

CONTROL_MODELS = tiny_ids("flux-canny", "flux-depth", "hidream")


@pytest.fixture(scope="session")
def control_models(models_root: Path) -> Path:
    return build_tiny(models_root, *CONTROL_MODELS)


@pytest.fixture(scope="module")
def registry(control_models: Path) -> ModelRegistry:
    return ModelRegistry.load(control_models / "no-models.json", control_models)


@pytest.fixture(scope="module")
def engine(registry: ModelRegistry) -> Engine:
    return Engine(registry, max_models=len(CONTROL_MODELS), safety_checker="tiny")


def noise_image(seed: int, width: int = 64, height: int = 64) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels, mode="RGB")


def square_image(width: int = 64, height: int = 48, box=(16, 12, 48, 36), inside=255, outside=0) -> Image.Image:
    img = Image.new("RGB", (width, height), (outside,) * 3)
    img.paste((inside,) * 3, box)
    return img


INIT = noise_image(0)


def request(model_id: str, **over) -> GenerationRequest:
    fields = dict(model_id=model_id, prompt="a red fox in the snow", init_image_key="unused", width=64, height=64,
                  samples=1, steps=4, guidance_scale=5.0, strength=0.7, seed=5, safety_checker=False)
    fields.update(over)
    return GenerationRequest(**fields)


def generate(engine: Engine, model_id: str, init: Image.Image = INIT, **over) -> list[Image.Image]:
    req = request(model_id, **over)
    images = engine.generate(req, init).images
    assert [img.size for img in images] == [(req.width, req.height)] * req.samples
    return images


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def mse(a: Image.Image, b: Image.Image) -> float:
    return float(((np.asarray(a, dtype=float) - np.asarray(b, dtype=float)) ** 2).mean())


# --------------------------------------------------------------------------------------------
# Control images
# --------------------------------------------------------------------------------------------


def test_canny_of_a_white_square_is_its_border_only():
    img = square_image()
    edges = np.asarray(canny_edges(img))
    assert edges.shape == (48, 64, 3) and set(np.unique(edges)) == {0, 255}
    on = edges[:, :, 0] > 0
    ys, xs = np.nonzero(on)
    # every edge pixel lies within one pixel of the square's outline...
    near_x = (np.abs(xs - 16) <= 1) | (np.abs(xs - 47) <= 1)
    near_y = (np.abs(ys - 12) <= 1) | (np.abs(ys - 35) <= 1)
    assert np.all(near_x | near_y)
    assert np.all((xs >= 15) & (xs <= 48) & (ys >= 11) & (ys <= 36))
    # ...and all four sides are found; the flat inside and outside have none
    for side in (np.abs(xs - 16) <= 1, np.abs(xs - 47) <= 1, np.abs(ys - 12) <= 1, np.abs(ys - 35) <= 1):
        assert side.sum() >= 20
    assert not on[18:30, 22:42].any() and not on[:8].any() and not on[:, :10].any()


def test_canny_thresholds_decide_which_edges_count():
    faint = square_image(inside=30)  # a weak step: below the default thresholds
    assert not np.asarray(canny_edges(faint)).any()
    assert np.asarray(canny_edges(faint, low=10, high=20)).any()
    with pytest.raises(ValueError):
        canny_edges(faint, low=200, high=100)


def test_depth_map_has_the_init_size_and_is_deterministic(control_models):
    estimator = DepthEstimator.load(control_models / "tiny-flux-depth" / "depth_estimator")
    img = noise_image(3, 80, 48)
    depth = estimator.depth_map(img)
    assert depth.size == (80, 48) and depth.mode == "RGB"
    assert depth.getextrema()[0] == (0, 255)  # normalised to the full range
    assert png(estimator.depth_map(img)) == png(depth)
    assert png(estimator.depth_map(noise_image(4, 80, 48))) != png(depth)


def test_depth_model_that_cannot_load_is_an_invalid_model(tmp_path):
    with pytest.raises(InvalidInput) as err:
        DepthEstimator.load(tmp_path)
    assert err.value.field == "model_id" and str(tmp_path) in err.value.message


# --------------------------------------------------------------------------------------------
# Flux Canny / Depth
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model_id", CONTROL_MODELS)
def test_same_seed_same_bytes_other_seed_other_image(engine, model_id):
    a = [png(i) for i in generate(engine, model_id)]
    assert [png(i) for i in generate(engine, model_id)] == a
    assert [png(i) for i in generate(engine, model_id, seed=6)] != a


@pytest.mark.parametrize("model_id", ["tiny-flux-canny", "tiny-flux-depth"])
def test_control_image_is_computed_from_the_init_image_and_reaches_the_model(engine, registry, model_id):
    loaded = engine.pipelines.get(model_id)
    inputs = RunInputs(request=request(model_id), init_image=square_image(64, 64), extra_images=[],
                       generators=[torch.Generator().manual_seed(1)], prompt="a fox", negative_prompt=None)
    ctx = ControlContext(model_id, registry.get(model_id), registry, "cpu", loaded.state)
    with control_image_control(loaded.pipe, inputs, ctx):
        control = inputs.call_kwargs[CONTROL_IMAGE]
    if model_id == "tiny-flux-canny":
        assert png(control) == png(canny_edges(square_image(64, 64)))
    else:
        assert png(control) == png(loaded.state["depth_estimator"].depth_map(square_image(64, 64)))
    assert control.size == (64, 64)

    def run(control_image):
        run_inputs = RunInputs(request=request(model_id), init_image=INIT, extra_images=[],
                               generators=[torch.Generator().manual_seed(1)], prompt="a fox", negative_prompt=None,
                               call_kwargs={CONTROL_IMAGE: control_image})
        with torch.inference_mode():
            return png(family(registry.get(model_id).family).run(loaded.pipe, run_inputs)[0])

    assert run(control) == run(control)
    assert run(control) != run(Image.new("RGB", (64, 64)))  # the control image changes the result


def test_flux_control_sizes_samples_and_strength(engine):
    images = generate(engine, "tiny-flux-canny", width=96, height=48, samples=2)  # not the init's size
    assert png(images[0]) != png(images[1])
    assert png(generate(engine, "tiny-flux-depth", strength=0.5)[0]) != png(generate(engine, "tiny-flux-depth")[0])


def test_depth_model_is_configurable_per_entry(control_models):
    canny_folder = control_models / "tiny-flux-canny"  # same transformer layout, no depth_estimator/
    depth_folder = str(control_models / "tiny-flux-depth" / "depth_estimator")
    registry = ModelRegistry({
        "own-depth": ModelEntry(kind="folder", location=str(canny_folder), family="flux-depth",
                                limits=DEPTH_TINY_LIMITS, depth_model=depth_folder),
        "no-depth": ModelEntry(kind="folder", location=str(canny_folder), family="flux-depth",
                               limits=DEPTH_TINY_LIMITS),
    })
    engine = Engine(registry, max_models=1, safety_checker="tiny")
    assert generate(engine, "own-depth")[0].size == (64, 64)
    with pytest.raises(InvalidInput) as err:
        generate(engine, "no-depth")
    assert err.value.field == "model_id" and "depth_model" in err.value.message
    with pytest.raises(ValueError, match="depth_model applies to flux-depth"):
        ModelEntry(kind="folder", location=str(canny_folder), family="flux-canny", depth_model=depth_folder)


# --------------------------------------------------------------------------------------------
# HiDream img2img
# --------------------------------------------------------------------------------------------


def test_schedule_starts_at_the_strengths_point():
    base = flow_unipc_scheduler()
    base.set_timesteps(10)
    assert steps_skipped(10, 1.0) == 0 and steps_skipped(10, 0.7) == 3 and steps_skipped(10, 0.25) == 7
    started = scheduler_starting_at(base, 3)
    started.set_timesteps(10)
    assert type(started).__name__ == type(base).__name__ and isinstance(started, type(base))
    assert torch.equal(started.timesteps, base.timesteps[3:]) and torch.equal(started.sigmas, base.sigmas[3:])
    assert base.timesteps.shape == (10,)  # the original is untouched


def test_hidream_strength_one_is_the_pipelines_text_to_image(engine):
    got = generate(engine, "tiny-hidream", strength=1.0)[0]
    assert png(generate(engine, "tiny-hidream", init=noise_image(9), strength=1.0)[0]) == png(got)  # init unused
    pipe = engine.pipelines.get("tiny-hidream").pipe
    stock = type(pipe)(**pipe.components)  # the unmodified text-to-image pipeline
    stock.set_progress_bar_config(disable=True)
    stock.default_sample_size = 8  # tiny-hidream's working area: 64 x 64
    with torch.inference_mode():
        t2i = stock(prompt="a red fox in the snow", height=64, width=64, num_inference_steps=4, guidance_scale=5.0,
                    generator=[torch.Generator().manual_seed(5)]).images[0]
    assert png(t2i) == png(got)


def _roundtrip(pipe, image: Image.Image) -> Image.Image:
    """The init image through the VAE and back: what img2img converges to as strength falls."""
    with torch.inference_mode():
        pixels = pipe.image_processor.preprocess(image, height=64, width=64).to(pipe.vae.dtype)  # auto: bf16 on AMX CPUs
        decoded = pipe.vae.decode(pipe.vae.encode(pixels).latent_dist.mode()).sample
    return pipe.image_processor.postprocess(decoded)[0]


@pytest.mark.parametrize("scheduler", ["flow-euler", "flow-unipc"])
def test_hidream_lower_strength_keeps_more_of_the_init_image(engine, scheduler):
    loaded = engine.pipelines.get("tiny-hidream")
    original = loaded.pipe.scheduler
    if scheduler == "flow-unipc":  # HiDream-I1-Full's kind of scheduler
        loaded.pipe.scheduler = flow_unipc_scheduler()
    try:
        target = _roundtrip(loaded.pipe, INIT)
        errors = [mse(generate(engine, "tiny-hidream", strength=s, steps=10)[0], target) for s in (1.0, 0.6, 0.2)]
        assert errors[0] > errors[1] > errors[2], errors
    finally:
        loaded.pipe.scheduler = original


def test_hidream_output_size_is_the_request_size(engine):
    wide = generate(engine, "tiny-hidream", width=96, height=64, samples=2)  # above the 64x64 working area
    assert png(wide[0]) != png(wide[1])
    assert generate(engine, "tiny-hidream", width=32, height=48)[0].size == (32, 48)


# --------------------------------------------------------------------------------------------
# Through the server (ModelsLab v6)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model_id", CONTROL_MODELS)
def test_v6_img2img_on_each_family(control_models, server, key, image_host, model_id):
    init_url = image_host.add("/control-64.png", png_bytes(64, 64))
    body = {"key": key, "model_id": model_id, "prompt": "a red fox", "negative_prompt": "blurry",
            "init_image": init_url, "samples": "1", "num_inference_steps": "3", "guidance_scale": 7.5,
            "strength": 0.8, "seed": 42}
    out = server.post(IMG2IMG, body).json()
    assert out["status"] == "success", out
    img = Image.open(io.BytesIO(download(out["output"][0])))
    assert img.format == "PNG" and img.size == (64, 64)
    assert out["meta"]["model_id"] == model_id and out["meta"]["seed"] == 42
