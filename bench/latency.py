"""Serving-layer cost: one 64x64 v6 request end to end vs. the bare pipeline call, time to /health and to
/ready, what per-step progress reporting (throttled store writes, previews, the cancel check) adds to a job, and
fetch latency under load: ModelsLab v6 fetches (`/api/v6/images/fetch/{id}`) sent open-loop at FETCH_RATE req/s
while the worker is busy (a backlog of tiny-sd jobs, the worker on the server's default torch threads), of a
finished job and of a queued one; p50/p99, the API process's CPU per fetch, the bench client's own CPU per fetch,
and the worker's throughput (jobs/s) alone and during the fetches.

Prints figures; asserts nothing. Run: `make bench` (or .venv/bin/python bench/latency.py [--quick]).
--quick: the same measurements with 2 runs of 4 steps each and 1 s of fetches per kind (seconds;
tests/test_benches.py runs it). --fetch-only: only the fetch measurement. --against DIR: also serve from another
checkout (e.g. `git worktree add /tmp/lat-old <commit>`), rounds interleaved (that tree, this one, twice).
--variant 'LABEL:VAR=VALUE,...': also serve this tree with these environment variables (repeatable; e.g.
'idle:DIFFSERVE_WORKER__CPU_PRIORITY=idle'), rounds interleaved with the server's defaults; --rounds N: rounds of each.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import builtins
import functools
import io
import json
import math
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httptools
import httpx
import torch
import uvloop
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
    """`diffserve serve` from the checkout `tree`, its worker on the server's default torch threads (all cores),
    with `extra` environment variables."""

    def __init__(self, data_dir: Path, models_root: Path, tree: Path, extra: dict[str, str] | None = None) -> None:
        super().__init__(data_dir, models_root, env_overrides=dict(extra or {}))
        self.tree = tree

    def env(self) -> dict[str, str]:
        env = super().env()
        if "DIFFSERVE_TORCH_THREADS" not in self.env_overrides:
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


class Connection(asyncio.Protocol):
    """One kept-alive HTTP/1.1 connection, one request at a time (as a client pool's connection is), its answer
    parsed by httptools (uvicorn's parser): a client that costs little CPU, so the bench measures the server
    rather than its own client on the same cores (httpx took 3-7 ms of CPU per fetch, as much as the API)."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.answer: asyncio.Future | None = None
        self.body: list[bytes] = []
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        if self.answer is not None and not self.answer.done():
            self.answer.set_result((self.parser.get_status_code(), b"".join(self.body)))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.answer is not None and not self.answer.done():
            self.answer.set_exception(ConnectionResetError("the server closed the connection"))

    async def send(self, request: bytes) -> tuple[int, bytes]:
        if self.closed or self.transport is None:
            raise ConnectionResetError("the server closed the connection")
        self.answer, self.body = asyncio.get_running_loop().create_future(), []
        self.transport.write(request)
        return await self.answer


async def fetch_window(url: str, key: str, job_id: int, expect: str, rate: float, seconds: float) -> list[float]:
    """Fetches of one job sent at `rate` per second for `seconds` (open-loop: each at its time, on an idle kept-alive
    connection or a new one); each one's seconds from its first byte sent to its whole answer read."""
    host, port = url.removeprefix("http://").split(":")
    body = json.dumps({"key": key}).encode()
    request = (f"POST /api/v6/images/fetch/{job_id} HTTP/1.1\r\nHost: {host}:{port}\r\n"
               f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
    loop = asyncio.get_running_loop()
    idle: list[Connection] = []
    opened: list[Connection] = []
    latencies: list[float] = []
    resets: list[int] = []

    async def connect() -> Connection:
        _, conn = await loop.create_connection(Connection, host, int(port))
        opened.append(conn)
        return conn

    async def one() -> None:
        t = time.perf_counter()
        conn = idle.pop() if idle else await connect()
        try:
            status, answer = await conn.send(request)
        except ConnectionResetError:  # a kept-alive connection the server closed as it timed out (keep_alive_s):
            resets.append(1)  # sent again on a new one, the time counts from the first try
            conn = await connect()
            status, answer = await conn.send(request)
        latencies.append(time.perf_counter() - t)
        if not conn.closed:
            idle.append(conn)
        if status != 200 or json.loads(answer)["status"] != expect:
            raise RuntimeError(f"fetch of job {job_id}: {status} {answer[:200]!r} (expected {expect})")

    await asyncio.gather(*(one() for _ in range(8)))  # open connections before the clock starts
    latencies.clear()
    tasks, start = [], time.perf_counter()
    for i in range(int(rate * seconds)):
        await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
        tasks.append(asyncio.create_task(one()))
    await asyncio.gather(*tasks)
    for conn in opened:
        if conn.transport is not None:
            conn.transport.close()
    if resets:
        print(f"  ({len(resets)} of {len(latencies)} fetches were sent again on a connection the server had closed)")
    return latencies


@dataclass
class Window:
    """One stretch of the busy worker: the fetches sent meanwhile (none: the worker alone) and what it cost."""

    latencies: list[float]
    api_cpu_s: float  # the API process's CPU time over the window
    client_cpu_s: float  # this (bench) process's CPU time over the window: the fetching client's own
    jobs: float  # the worker's jobs done over the window (running ones by their progress)
    wall_s: float

    @property
    def fetches(self) -> int:
        return max(1, len(self.latencies))

    @property
    def jobs_per_s(self) -> float:
        return self.jobs / self.wall_s


def jobs_done(db: Path) -> float:
    """Succeeded jobs, plus each running job's done fraction (its progress row: written every 0.25 s)."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10) as conn:
        done = conn.execute("SELECT count(*) FROM jobs WHERE status = 'succeeded'").fetchone()[0]
        running = conn.execute("SELECT coalesce(sum(1.0 * p.step / p.total), 0) FROM job_progress p JOIN jobs j "
                               "ON j.id = p.job_id WHERE j.status = 'running' AND p.total > 0").fetchone()[0]
    conn.close()
    return done + running


def window(srv: TreeServer, fetch: tuple[str, int, str] | None, rate: float, seconds: float) -> Window:
    """`seconds` of `fetch` ((key, job id, the status it must answer) at `rate`), or of the worker alone."""
    assert srv.proc is not None
    db = srv.data_dir / "diffserve.db"
    api, client, jobs, t = cpu_seconds(srv.proc.pid), time.process_time(), jobs_done(db), time.perf_counter()
    if fetch is None:
        latencies: list[float] = []
        time.sleep(seconds)
    else:
        latencies = uvloop.run(fetch_window(srv.url, *fetch[:2], fetch[2], rate, seconds))
    return Window(latencies, cpu_seconds(srv.proc.pid) - api, time.process_time() - client, jobs_done(db) - jobs,
                  time.perf_counter() - t)


def fetch_round(models_root: Path, data_dir: Path, tree: Path, rate: float, seconds: float,
                extra: dict[str, str] | None = None) -> dict[str, Window]:
    """One server from `tree` (with `extra` environment variables): a finished job, then a backlog that keeps the
    worker busy; the worker alone, then fetches of the finished job and of the last queued one."""
    srv = TreeServer(data_dir, models_root, tree, extra)
    srv.start()
    key = srv.create_key("--max-queued", "0")
    out: dict[str, Window] = {}
    try:
        job = {"key": key, "model_id": "tiny-sd", "prompt": "women playing tennis",
               "init_image": base64.b64encode(init_png()).decode(), "seed": 1, **BUSY_JOB}
        queue = {**job, "instant_response": True}
        first = srv.post("/api/v6/images/img2img", {**queue, "num_inference_steps": FIRST_STEPS}).json()
        done = wait_until(lambda: srv.post(f"/api/v6/images/fetch/{first['id']}", {"key": key}).json(), 600,
                          accept=lambda answer: answer["status"] != "processing", what="the first job")
        assert done["status"] == "success", done
        # busy through every window, whatever the machine's speed: one backlog job's time, measured warm (the
        # first job also loaded the model and the safety checker: its time says nothing of the next ones')
        warm = srv.post("/api/v6/images/img2img", job).json()
        assert warm["status"] == "success", warm
        job_s = warm["generationTime"]
        # x8: the backlog's jobs are alike, so the worker batches them (up to batching.max_batch, 8, per call)
        backlog = 8 * math.ceil(6 * seconds / job_s) + 12
        queued = [srv.post("/api/v6/images/img2img", queue).json() for _ in range(backlog)]
        last = queued[-1]
        assert last["status"] == "processing", last
        time.sleep(1.0)  # the posts' own work is over: the worker is on the backlog
        out["alone"] = window(srv, None, rate, seconds)
        for kind, job_id, expect in (("finished", done["id"], "success"), ("queued", last["id"], "processing")):
            out[kind] = window(srv, (key, job_id, expect), rate, seconds)
        still = srv.post(f"/api/v6/images/fetch/{last['id']}", {"key": key}).json()["status"]
        assert still == "processing", "the worker ran out of work before the fetches ended"
    finally:
        srv.stop()
    return out


def pct(values: list[float], q: float) -> float:
    """The q-th percentile (nearest rank), in ms."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1)] * 1000


def print_fetches(rounds: list[tuple[str, dict[str, Window]]], rate: float, seconds: float, threads: str,
                  file=None) -> None:
    print = functools.partial(builtins.print, file=file or sys.stdout, flush=True)  # noqa: A001
    print(f"fetch under load: ModelsLab v6 fetch at {rate:g} req/s for {seconds:g} s per kind and round, "
          f"worker busy (tiny-sd {BUSY_JOB['width']} px, {BUSY_JOB['num_inference_steps']} steps, {threads}):")
    print(f"  {'tree':<24} {'job':<9} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'max ms':>8} {'API CPU ms/fetch':>17}")
    for tree, result in rounds:
        for kind, w in result.items():
            if w.latencies:
                lat = w.latencies
                print(f"  {tree:<24} {kind:<9} {pct(lat, 50):8.1f} {pct(lat, 90):8.1f} {pct(lat, 99):8.1f} "
                      f"{max(lat) * 1000:8.1f} {w.api_cpu_s / w.fetches * 1000:17.2f}")
    print(f"the worker's jobs/s alone and during the fetches ({seconds:g} s each), the fetching client's CPU:")
    print(f"  {'tree':<24} {'alone':>6} {'finished':>9} {'queued':>7} {'ratio':>6}  client CPU ms/fetch  (% of a core)")
    for tree, result in rounds:
        alone, fetched = result["alone"], [w for w in result.values() if w.latencies]
        during = statistics.mean(w.jobs_per_s for w in fetched)
        client = sum(w.client_cpu_s for w in fetched)
        print(f"  {tree:<24} {alone.jobs_per_s:6.2f} {fetched[0].jobs_per_s:9.2f} {fetched[-1].jobs_per_s:7.2f} "
              f"{during / alone.jobs_per_s if alone.jobs else float('nan'):5.2f}x  "
              f"{client / sum(w.fetches for w in fetched) * 1000:19.2f}  "
              f"({100 * client / sum(w.wall_s for w in fetched):.0f}%)")


def variant(text: str) -> tuple[str, dict[str, str]]:
    """'LABEL:VAR=VALUE,VAR=VALUE' -> (label, environment)."""
    label, _, pairs = text.partition(":")
    env = dict(pair.split("=", 1) for pair in pairs.split(",") if pair)
    if not label or not all(env):
        raise argparse.ArgumentTypeError(f"expected LABEL:VAR=VALUE[,VAR=VALUE...], got {text!r}")
    return label, env


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help=f"{QUICK_RUNS} runs of {QUICK_STEPS} steps (seconds)")
    ap.add_argument("--fetch-only", action="store_true", help="only the fetch latency under load")
    ap.add_argument("--against", type=Path, help="another checkout to serve from too (rounds interleaved)")
    ap.add_argument("--variant", type=variant, action="append", default=[], metavar="LABEL:VAR=VALUE,...",
                    help="this tree with these environment variables too (repeatable; rounds interleaved)")
    ap.add_argument("--rounds", type=int, help="rounds of each tree/variant (default 1; 2 with --against)")
    ap.add_argument("--fetch-seconds", type=float, help="seconds of fetches per kind and round")
    args = ap.parse_args()
    runs, steps = (QUICK_RUNS, QUICK_STEPS) if args.quick else (RUNS, STEPS)
    seconds = args.fetch_seconds or (QUICK_FETCH_SECONDS if args.quick else FETCH_SECONDS)
    # --quick (the test suite, on cores its other tests share): the worker on one torch thread
    base = {"DIFFSERVE_TORCH_THREADS": "1"} if args.quick else {}
    threads = "1 torch thread" if args.quick else "the server's default torch threads"
    trees = [(f"{args.against.name} (against)", args.against.resolve(), base)] if args.against else []
    trees += [("this tree", ROOT, base)] + [(label, ROOT, {**base, **env}) for label, env in args.variant]
    rounds_each = args.rounds or (2 if args.against else 1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        build_tiny_sd(root / "models" / "tiny-sd")  # built once, outside every timing
        rounds = []
        for i, (name, tree, env) in enumerate(trees * rounds_each):
            rounds.append((name, fetch_round(root / "models", root / f"fetch-{i}", tree, FETCH_RATE, seconds, env)))
            print_fetches(rounds[-1:], FETCH_RATE, seconds, threads, file=sys.stderr)  # each round as it ends
        if args.fetch_only:
            print_fetches(rounds, FETCH_RATE, seconds, threads)
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
    print_fetches(rounds, FETCH_RATE, seconds, threads)


if __name__ == "__main__":
    main()
