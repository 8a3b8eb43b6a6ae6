"""Serving-layer cost: one 64x64 v6 request end to end vs. the bare pipeline call, time to /health and to
/ready, and what per-step progress reporting (throttled store writes, previews, the cancel check) adds to a job.

Prints figures; asserts nothing. Run: `make bench` (or .venv/bin/python bench/latency.py [--quick]).
--quick: the same measurements with 2 runs of 4 steps each (seconds; tests/test_benches.py runs it).
"""

from __future__ import annotations

import argparse
import base64
import io
import statistics
import subprocess
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
from tests.servers import DiffserveServer, free_port  # noqa: E402

RUNS = 15
STEPS = 31
QUICK_RUNS, QUICK_STEPS = 2, 4


def init_png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 100, 50)).save(buf, format="PNG")
    return buf.getvalue()


def bare(models_root: Path, runs: int, steps: int) -> list[float]:
    torch.set_num_threads(1)
    pipe = load_img2img_pipeline(ModelSource("folder", str(build_tiny_sd(models_root / "tiny-sd"))))
    img = Image.open(io.BytesIO(init_png())).convert("RGB")
    times = []
    for i in range(runs + 1):
        t = time.perf_counter()
        pipe(prompt="women playing tennis", image=[img], strength=0.7, num_inference_steps=steps,
             guidance_scale=7.5, generator=[torch.Generator().manual_seed(i)])
        times.append(time.perf_counter() - t)
    return times[1:]


def start_timed(srv: DiffserveServer) -> tuple[float, float]:
    """Start the server; seconds until /health answers 200 and until /ready does."""
    srv.port = free_port()
    srv.data_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    srv.proc = subprocess.Popen([sys.executable, "-m", "diffserve.cli.main", "serve", "--port", str(srv.port)],
                                env=srv.env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
    to_health = None
    while True:
        try:
            if to_health is None and httpx.get(f"{srv.url}/health", timeout=1).status_code == 200:
                to_health = time.monotonic() - t0
            if to_health is not None and httpx.get(f"{srv.url}/ready", timeout=1).status_code == 200:
                return to_health, time.monotonic() - t0
        except httpx.HTTPError:
            pass
        time.sleep(0.02)


def progress_cost(models_root: Path, data_dir: Path, runs: int, steps: int) -> tuple[list[float], list[float]]:
    """The same tiny-sd job through the engine without and with the worker's progress reporter, interleaved."""
    from diffserve.core.request import GenerationRequest
    from diffserve.engine.generate import Engine
    from diffserve.engine.models.registry import ModelRegistry
    from diffserve.store.db import make_db_engine
    from diffserve.store.progress import ProgressStore
    from diffserve.store.schema import ensure_schema
    from diffserve.workers.progress import ProgressReporter

    torch.set_num_threads(1)
    data_dir.mkdir(parents=True, exist_ok=True)
    db = make_db_engine(f"sqlite:///{data_dir / 'progress.db'}")
    ensure_schema(db)
    store = ProgressStore(db)
    engine = Engine(ModelRegistry.load(data_dir / "none.json", models_root), safety_checker="tiny",
                    models_dir=models_root)
    img = Image.open(io.BytesIO(init_png())).convert("RGB")
    plain, reported = [], []
    for i in range(2 * runs + 2):
        req = GenerationRequest(model_id="tiny-sd", prompt="women playing tennis", init_image_key="", width=64,
                                height=64, steps=steps, guidance_scale=7.5, strength=0.7, seed=i)
        reporter = ProgressReporter(i + 1, store) if i % 2 else None
        t = time.perf_counter()
        engine.generate(req, img, progress=reporter)
        (reported if reporter else plain).append(time.perf_counter() - t)
    return plain[1:], reported[1:]


def served(models_root: Path, data_dir: Path, runs: int, steps: int) -> tuple[float, float, list[float], list[float]]:
    srv = DiffserveServer(data_dir, models_root)
    to_health, to_ready = start_timed(srv)
    key = srv.create_key()
    body = {"key": key, "model_id": "tiny-sd", "prompt": "women playing tennis",
            "init_image": base64.b64encode(init_png()).decode(), "num_inference_steps": steps, "seed": None}
    wall, gen = [], []
    try:
        with httpx.Client(timeout=60) as client:
            for _ in range(runs + 1):
                t = time.perf_counter()
                out = client.post(f"{srv.url}/api/v6/images/img2img", json=body).json()
                wall.append(time.perf_counter() - t)
                gen.append(out["generationTime"])
    finally:
        srv.stop()
    return to_health, to_ready, wall[1:], gen[1:]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help=f"{QUICK_RUNS} runs of {QUICK_STEPS} steps (seconds)")
    args = ap.parse_args()
    runs, steps = (QUICK_RUNS, QUICK_STEPS) if args.quick else (RUNS, STEPS)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        build_tiny_sd(root / "models" / "tiny-sd")  # built once, outside every timing
        to_health, to_ready, wall, gen = served(root / "models", root / "data", runs, steps)
        pipe = bare(root / "models", runs, steps)
        plain, reported = progress_cost(root / "models", root / "progress", runs, steps)
    med = statistics.median
    print(f"time to /health 200 (the API answers): {to_health:.2f} s")
    print(f"time to /ready 200 (worker started, torch imported, tiny-sd loaded): {to_ready:.2f} s")
    print(f"64x64, {steps} steps x strength 0.7, 1 torch thread, median of {runs}:")
    print(f"  bare pipeline call          {med(pipe) * 1000:8.1f} ms")
    print(f"  job run time in the worker  {med(gen) * 1000:8.1f} ms   (generationTime: load init, generate, PNG, store)")
    print(f"  end to end over HTTP        {med(wall) * 1000:8.1f} ms")
    print(f"  serving overhead            {(med(wall) - med(pipe)) * 1000:8.1f} ms   (end to end - bare)")
    extra = med(reported) - med(plain)
    print(f"progress reporting, same job through the engine, median of {runs} each (interleaved):")
    print(f"  without {med(plain) * 1000:8.1f} ms   with {med(reported) * 1000:8.1f} ms   "
          f"extra {extra * 1000:+.1f} ms ({100 * extra / med(plain):+.2f}% of the job)")


if __name__ == "__main__":
    main()
