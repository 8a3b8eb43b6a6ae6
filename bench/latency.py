"""Serving-layer cost: one 64x64 v6 request end to end vs. the bare pipeline call, and time to /health.

Prints figures; asserts nothing. Run: `make bench` (or .venv/bin/python bench/latency.py).
"""

from __future__ import annotations

import base64
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffserve.engine.models.loading import ModelSource, load_img2img_pipeline  # noqa: E402
from diffserve.engine.tiny.sd import build_tiny_sd  # noqa: E402
from tests.servers import DiffserveServer  # noqa: E402

RUNS = 15
STEPS = 31


def init_png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 100, 50)).save(buf, format="PNG")
    return buf.getvalue()


def bare(models_root: Path) -> list[float]:
    torch.set_num_threads(1)
    pipe = load_img2img_pipeline(ModelSource("folder", str(build_tiny_sd(models_root / "tiny-sd"))))
    img = Image.open(io.BytesIO(init_png())).convert("RGB")
    times = []
    for i in range(RUNS + 1):
        t = time.perf_counter()
        pipe(prompt="women playing tennis", image=[img], strength=0.7, num_inference_steps=STEPS,
             guidance_scale=7.5, generator=[torch.Generator().manual_seed(i)])
        times.append(time.perf_counter() - t)
    return times[1:]


def served(models_root: Path, data_dir: Path) -> tuple[float, list[float], list[float]]:
    srv = DiffserveServer(data_dir, models_root)
    srv.port = 0
    t0 = time.monotonic()
    srv.start()
    to_health = time.monotonic() - t0
    key = srv.create_key()
    body = {"key": key, "model_id": "tiny-sd", "prompt": "women playing tennis",
            "init_image": base64.b64encode(init_png()).decode(), "num_inference_steps": STEPS, "seed": None}
    wall, gen = [], []
    try:
        with httpx.Client(timeout=60) as client:
            for _ in range(RUNS + 1):
                t = time.perf_counter()
                out = client.post(f"{srv.url}/api/v6/images/img2img", json=body).json()
                wall.append(time.perf_counter() - t)
                gen.append(out["generationTime"])
    finally:
        srv.stop()
    return to_health, wall[1:], gen[1:]


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        build_tiny_sd(root / "models" / "tiny-sd")  # built once, outside every timing
        to_health, wall, gen = served(root / "models", root / "data")
        pipe = bare(root / "models")
    med = statistics.median
    print(f"time to /health 200 (server start, worker start, model preload): {to_health:.2f} s")
    print(f"64x64, {STEPS} steps x strength 0.7, 1 torch thread, median of {RUNS}:")
    print(f"  bare pipeline call          {med(pipe) * 1000:8.1f} ms")
    print(f"  job run time in the worker  {med(gen) * 1000:8.1f} ms   (generationTime: load init, generate, PNG, store)")
    print(f"  end to end over HTTP        {med(wall) * 1000:8.1f} ms")
    print(f"  serving overhead            {(med(wall) - med(pipe)) * 1000:8.1f} ms   (end to end - bare)")


if __name__ == "__main__":
    main()
