"""Serving-layer cost: one 64x64 v6 request end to end vs. the bare pipeline call, time to /health and to
/ready, what per-step progress reporting (throttled store writes, previews, the cancel check) adds to a job, and
fetch latency under load: ModelsLab v6 fetches (`/api/v6/images/fetch/{id}`) sent open-loop at FETCH_RATE req/s
while the worker is busy (a backlog of tiny-sd jobs, the worker on the server's default torch threads), of a
finished job and of a queued one; p50/p99 and the API process's CPU per fetch.

Prints figures; asserts nothing. Run: `make bench` (or .venv/bin/python bench/latency.py [--quick]).
--quick: the same measurements with 2 runs of 4 steps each and 1 s of fetches per kind (seconds;
tests/test_benches.py runs it). --fetch-only: only the fetch measurement. --against DIR: also serve from another
checkout (e.g. `git worktree add /tmp/lat-old <commit>`), rounds interleaved (that tree, this one, twice).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import math
import os
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
from tests.waiting import wait_until  # noqa: E402

RUNS = 15
STEPS = 31
QUICK_RUNS, QUICK_STEPS = 2, 4
ROOT = Path(__file__).resolve().parents[1]
FETCH_RATE = 160  # fetches per second, sent open-loop (each at its time, whether or not earlier ones answered)
FETCH_SECONDS, QUICK_FETCH_SECONDS = 10.0, 1.0  # per kind (finished job, queued job) and round
BUSY_JOB = {"width": 64, "height": 64, "num_inference_steps": 30, "strength": 1.0}  # the worker's backlog
FIRST_STEPS = 4  # the finished job that is fetched (a short one)


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


class TreeServer(DiffserveServer):
    """`diffserve serve` from the checkout `tree`, its worker on the server's default torch threads (all cores)."""

    def __init__(self, data_dir: Path, models_root: Path, tree: Path) -> None:
        super().__init__(data_dir, models_root)
        self.tree = tree

    def env(self) -> dict[str, str]:
        env = super().env()
        env.pop("DIFFSERVE_TORCH_THREADS")
        env["PYTHONPATH"] = str(self.tree)
        return env

    def cli(self, *args: str) -> str:
        out = subprocess.run([sys.executable, "-m", "diffserve.cli.main", *args], env=self.env(), cwd=self.tree,
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        return out.stdout

    def start(self, timeout: float = 180.0, *, until: str = "/ready") -> "TreeServer":
        self.port = free_port()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.data_dir / f"server-{self.port}.log"
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "diffserve.cli.main", "serve", "--port", str(self.port)],
                env=self.env(), cwd=self.tree, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.wait_healthy(timeout, until)
        return self


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process (not its children: the API process, not its workers)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def fetch_window(url: str, key: str, job_id: int, expect: str, rate: float, seconds: float) -> list[float]:
    """Fetches of one job sent at `rate` per second for `seconds` (open-loop); each one's seconds to its answer."""
    body = {"key": key}
    latencies: list[float] = []
    resets: list[int] = []
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:
        async def one() -> None:
            t = time.perf_counter()
            try:
                r = await client.post(f"/api/v6/images/fetch/{job_id}", json=body)
            except (httpx.ReadError, httpx.RemoteProtocolError):  # a kept-alive connection the server closed
                resets.append(1)  # as it timed out (keep_alive_s): sent again, the time counts from the first try
                r = await client.post(f"/api/v6/images/fetch/{job_id}", json=body)
            latencies.append(time.perf_counter() - t)
            if r.status_code != 200 or r.json()["status"] != expect:
                raise RuntimeError(f"fetch of job {job_id}: {r.status_code} {r.text[:200]} (expected {expect})")

        for _ in range(8):  # open the connections before the clock starts
            await one()
        latencies.clear()
        tasks, start = [], time.perf_counter()
        for i in range(int(rate * seconds)):
            await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
            tasks.append(asyncio.create_task(one()))
        await asyncio.gather(*tasks)
    if resets:
        print(f"  ({len(resets)} of {len(latencies)} fetches were sent again on a connection the server had closed)")
    return latencies


def fetch_round(models_root: Path, data_dir: Path, tree: Path, rate: float, seconds: float) -> dict[str, tuple]:
    """One server from `tree`: a finished job, then a backlog that keeps the worker busy; fetches of the finished
    job and of the last queued one. {kind: (latencies, API CPU seconds per fetch)}."""
    srv = TreeServer(data_dir, models_root, tree)
    srv.start()
    key = srv.create_key("--max-queued", "0")
    out: dict[str, tuple] = {}
    try:
        job = {"key": key, "model_id": "tiny-sd", "prompt": "women playing tennis",
               "init_image": base64.b64encode(init_png()).decode(), "seed": 1, **BUSY_JOB}
        queue = {**job, "instant_response": True}
        first = srv.post("/api/v6/images/img2img", {**queue, "num_inference_steps": FIRST_STEPS}).json()
        done = wait_until(lambda: srv.post(f"/api/v6/images/fetch/{first['id']}", {"key": key}).json(), 600,
                          accept=lambda answer: answer["status"] != "processing", what="the first job")
        assert done["status"] == "success", done
        # busy through both windows, whatever the machine's speed: one backlog job's time, measured warm (the
        # first job also loaded the model and the safety checker: its time says nothing of the next ones')
        warm = srv.post("/api/v6/images/img2img", job).json()
        assert warm["status"] == "success", warm
        job_s = warm["generationTime"]
        # x8: the backlog's jobs are alike, so the worker batches them (up to batching.max_batch, 8, per call)
        backlog = 8 * math.ceil(4 * seconds / job_s) + 12
        queued = [srv.post("/api/v6/images/img2img", queue).json() for _ in range(backlog)]
        last = queued[-1]
        assert last["status"] == "processing", last
        assert srv.proc is not None
        for kind, job_id, expect in (("finished", done["id"], "success"), ("queued", last["id"], "processing")):
            cpu = cpu_seconds(srv.proc.pid)
            latencies = asyncio.run(fetch_window(srv.url, key, job_id, expect, rate, seconds))
            out[kind] = (latencies, (cpu_seconds(srv.proc.pid) - cpu) / len(latencies))
        still = srv.post(f"/api/v6/images/fetch/{last['id']}", {"key": key}).json()["status"]
        assert still == "processing", "the worker ran out of work before the fetches ended"
    finally:
        srv.stop()
    return out


def pct(values: list[float], q: float) -> float:
    """The q-th percentile (nearest rank), in ms."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1)] * 1000


def print_fetches(rounds: list[tuple[str, dict[str, tuple]]], rate: float, seconds: float) -> None:
    print(f"fetch under load: ModelsLab v6 fetch at {rate:g} req/s for {seconds:g} s per kind and round, "
          f"worker busy (tiny-sd {BUSY_JOB['width']} px, {BUSY_JOB['num_inference_steps']} steps, default threads):")
    print(f"  {'tree':<24} {'job':<9} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'max ms':>8} {'API CPU ms/fetch':>17}")
    for tree, result in rounds:
        for kind, (lat, cpu) in result.items():
            print(f"  {tree:<24} {kind:<9} {pct(lat, 50):8.1f} {pct(lat, 90):8.1f} {pct(lat, 99):8.1f} "
                  f"{max(lat) * 1000:8.1f} {cpu * 1000:17.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help=f"{QUICK_RUNS} runs of {QUICK_STEPS} steps (seconds)")
    ap.add_argument("--fetch-only", action="store_true", help="only the fetch latency under load")
    ap.add_argument("--against", type=Path, help="another checkout to serve from too (rounds interleaved)")
    ap.add_argument("--fetch-seconds", type=float, help="seconds of fetches per kind and round")
    args = ap.parse_args()
    runs, steps = (QUICK_RUNS, QUICK_STEPS) if args.quick else (RUNS, STEPS)
    seconds = args.fetch_seconds or (QUICK_FETCH_SECONDS if args.quick else FETCH_SECONDS)
    trees = [(f"{args.against.name} (against)", args.against.resolve()), ("this tree", ROOT)] if args.against \
        else [("this tree", ROOT)]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        build_tiny_sd(root / "models" / "tiny-sd")  # built once, outside every timing
        rounds = [(name, fetch_round(root / "models", root / f"fetch-{i}", tree, FETCH_RATE, seconds))
                  for i, (name, tree) in enumerate(trees * (2 if args.against else 1))]
        if args.fetch_only:
            print_fetches(rounds, FETCH_RATE, seconds)
            return
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
    print_fetches(rounds, FETCH_RATE, seconds)


if __name__ == "__main__":
    main()
