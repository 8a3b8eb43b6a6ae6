"""The GPU serving path, on this CPU: dtype plumbing, per-worker devices, the out-of-memory path, VAE
tiling, and the optional speed-ups (torch.compile, channels_last). CUDA itself is exercised by bench/gpu.py.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from diffserve.config import Settings
from diffserve.core.request import GenerationRequest
from diffserve.engine.controls import chain
from diffserve.engine.generate import Engine, OutOfDeviceMemory
from diffserve.engine.models.precision import resolve_dtype
from diffserve.engine.models.registry import ModelRegistry
from diffserve.workers.placement import gpu_indices, worker_count, worker_device

from .family_models import build_tiny

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def request(**over) -> GenerationRequest:
    fields = dict(model_id="tiny-sd", prompt="a red bicycle", init_image_key="unused", width=64, height=64,
                  steps=4, guidance_scale=7.5, strength=0.7, seed=7)
    fields.update(over)
    return GenerationRequest(**fields)


def init_image(side: int = 64) -> Image.Image:
    ramp = np.linspace(0, 255, side * side * 3).reshape(side, side, 3).astype(np.uint8)
    return Image.fromarray(ramp)


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


@pytest.fixture(scope="module")
def registry(models_root, tmp_path_factory):
    """Built-in models plus tiny-sd again as `tiny-sd-bf16` (dtype bf16) and `tiny-sd-fast` (compile +
    channels_last), all from the same built folder."""
    base = ModelRegistry.load(tmp_path_factory.mktemp("reg") / "none.json", models_root)
    base.get("tiny-sd")

    folder = build_tiny(models_root, "tiny-sd") / "tiny-sd"
    models = tmp_path_factory.mktemp("gpu") / "models.json"
    models.write_text(json.dumps({"models": {
        "tiny-sd-bf16": {"kind": "folder", "location": str(folder), "dtype": "bf16"},
        "tiny-sd-fast": {"kind": "folder", "location": str(folder), "compile": True, "channels_last": True},
    }}))
    return ModelRegistry.load(models, models_root)


@pytest.fixture(scope="module")
def fp32(registry, models_root):
    # pinned: `auto` is bf16 on a CPU with native bf16 (tests/test_precision.py)
    return Engine(registry, dtype="fp32", max_models=4, safety_checker="tiny", models_dir=models_root)


def test_auto_is_fp32_on_a_cpu_without_bf16_and_bf16_for_flux_on_cuda():
    assert resolve_dtype("auto", "sd", "cpu", cpu_bf16=False) == "fp32"
    assert resolve_dtype("auto", "flux", "cpu", cpu_bf16=False) == "fp32"
    assert resolve_dtype("auto", "flux", "cuda:0") == "bf16"
    assert resolve_dtype("auto", "hidream", "cuda") == "bf16"
    assert resolve_dtype("fp16", "sdxl", "cpu") == "fp16"
    with pytest.raises(ValueError, match="dtype must be one of"):
        resolve_dtype("fp8", "sd", "cpu")
    with pytest.raises(ValueError):
        Settings(dtype="fp8")


def test_a_tiny_model_runs_in_bf16_on_the_cpu_and_the_cache_counts_half_the_bytes(registry, fp32, models_root):
    bf16 = Engine(registry, dtype="bf16", safety_checker="tiny", models_dir=models_root)
    result = bf16.generate(request(), init_image())
    assert (result.device, result.dtype) == ("cpu", "bf16")
    unet = bf16.pipelines.get("tiny-sd").pipe.unet
    assert {p.dtype for p in unet.parameters()} == {torch.bfloat16}
    image = pixels(result.images[0])
    assert image.shape == (64, 64, 3) and image.std() > 1  # a real image, not a blank or NaN-black one
    full = fp32.generate(request(), init_image())
    assert full.dtype == "fp32"
    fp32_bytes, bf16_bytes = fp32.pipelines.size("tiny-sd"), bf16.pipelines.size("tiny-sd")
    assert bf16_bytes / fp32_bytes == pytest.approx(0.5, abs=0.01)
    # the estimate before loading follows the dtype too
    assert bf16._expected_bytes("tiny-sd") / fp32._expected_bytes("tiny-sd") == pytest.approx(0.5, abs=0.01)


def test_a_models_own_dtype_wins_over_the_servers(fp32):
    assert fp32.dtype_for("tiny-sd") == "fp32" and fp32.dtype_for("tiny-sd-bf16") == "bf16"
    result = fp32.generate(request(model_id="tiny-sd-bf16"), init_image())
    assert result.dtype == "bf16"
    assert fp32.pipelines.get("tiny-sd-bf16").pipe.unet.dtype == torch.bfloat16


def test_a_request_over_the_activation_budget_fails_alone_naming_its_size(registry, models_root):
    # 1536 bytes per output pixel in fp32: 64x64 needs ~6 MB, 256x256 ~100 MB
    engine = Engine(registry, dtype="fp32", safety_checker="tiny", models_dir=models_root,
                    activation_budget_bytes=50 * 2**20)
    with pytest.raises(OutOfDeviceMemory, match=r"Out of memory on cpu generating 1 x 256x256 with tiny-sd \(fp32\)"):
        engine.generate(request(width=256, height=256), init_image(256))
    assert engine.generate(request(), init_image()).images  # the next request runs


def test_a_real_out_of_memory_error_fails_the_request_and_frees_the_engine(fp32, monkeypatch):
    """CUDA's allocator raises torch.OutOfMemoryError; a control that raises it stands in for the GPU here."""
    from contextlib import contextmanager

    @contextmanager
    def exhausted(pipe, inputs, ctx):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        yield

    monkeypatch.setattr(chain, "CONTROLS", [exhausted, *chain.CONTROLS])
    monkeypatch.setattr("diffserve.engine.generate.CONTROLS", [exhausted, *chain.CONTROLS])
    with pytest.raises(OutOfDeviceMemory, match="1 x 64x64"):
        fp32.generate(request(), init_image())
    monkeypatch.undo()
    assert fp32.generate(request(), init_image()).images


def test_large_outputs_decode_in_tiles_and_the_vae_is_left_as_it_was(registry, models_root):
    tiled = Engine(registry, dtype="fp32", safety_checker="tiny", models_dir=models_root, vae_tiling_pixels=64 * 64)
    plain = Engine(registry, dtype="fp32", safety_checker="tiny", models_dir=models_root)
    vae = tiled.pipelines.get("tiny-sd").pipe.vae
    seen = []
    decode = vae.decode
    vae.decode = lambda *a, **k: (seen.append(vae.use_tiling), decode(*a, **k))[1]
    try:
        small = tiled.generate(request(width=32, height=32), init_image(32))
        large = tiled.generate(request(width=128, height=128), init_image(128))
    finally:
        del vae.decode
    assert seen == [False, True] and vae.use_tiling is False
    reference = plain.generate(request(width=128, height=128), init_image(128))
    assert pixels(large.images[0]).shape == (128, 128, 3)
    assert pixels(small.images[0]).shape == (32, 32, 3)
    assert np.abs(pixels(large.images[0]) - pixels(reference.images[0])).mean() < 64  # the same picture, tiled


def test_compile_and_channels_last_warm_up_at_load_and_keep_the_image(fp32, registry, models_root):
    engine = Engine(registry, dtype="fp32", safety_checker="tiny", models_dir=models_root, compile_backend="eager")
    loaded = engine.pipelines.get("tiny-sd-fast")
    assert loaded.speedups == ["channels_last", "compile:eager"]
    assert loaded.pipe.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    fast = engine.generate(request(model_id="tiny-sd-fast"), init_image())
    plain = fp32.generate(request(), init_image())
    assert np.abs(pixels(fast.images[0]) - pixels(plain.images[0])).max() <= 1


def test_one_worker_per_gpu(monkeypatch):
    assert worker_count(Settings(gpus="0,2")) == 2
    assert [worker_device(Settings(gpus="0,2"), f"worker-{i}") for i in range(2)] == ["cuda:0", "cuda:2"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5,6")
    assert gpu_indices(Settings(gpus="all")) == [0, 1, 2]  # CUDA renumbers the visible devices from 0
    assert worker_count(Settings(gpus="all", workers=1)) == 3
    assert worker_device(Settings(gpus="all"), "worker-2") == "cuda:2"
    assert worker_device(Settings(device="cuda", workers=3), "worker-1") == "cuda:1"
    assert worker_device(Settings(device="cuda:1", workers=3), "worker-2") == "cuda:1"  # a named device is kept
    assert worker_device(Settings(), "worker-0") == "cpu"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(ValueError, match="no CUDA device is visible"):
        gpu_indices(Settings(gpus="all"))
    with pytest.raises(ValueError, match="GPU indices"):
        gpu_indices(Settings(gpus="first"))


def test_serve_refuses_gpus_that_are_not_there(tmp_path):
    import subprocess
    import sys

    env = {"CUDA_VISIBLE_DEVICES": "", "DIFFSERVE_DATA_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-m", "diffserve.cli.main", "serve", "--gpus", "all"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "--gpus all: no CUDA device is visible" in out.stderr
