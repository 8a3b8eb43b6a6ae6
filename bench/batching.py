"""Step-level batching through the HTTP API: images/s and p50/p95 latency for 1, 2, 4, 8 concurrent clients,
batching off vs on, for (a) identical parameters and (b) mixed ones (strength 0.3-0.9, steps 10-30, different
prompts and seeds), at 64, 128 and 256 px, tiny-sd, one worker.

Two servers run side by side (DIFFSERVE_BATCHING__MODE=off and on, one worker each, the same torch threads);
each cell runs on the off server then on the on server, so both see the same machine load. Every client
sends its requests one after another (ModelsLab v6 img2img, answered synchronously), round and round; a cell
counts the answers of its steady-state window only (run_cell). Prints figures; asserts nothing.
Run: .venv/bin/python bench/batching.py [--sizes 64,128,256] [--clients 1,2,4,8] [--window-s 15]
[--threads 1] [--model tiny-sd] [--models-file models.json --device cuda] [--quick].
--quick (tests/test_benches.py runs it): 64 px, 2 clients, identical parameters of 4 steps, a 1 s window (0.5 s
at 64 px).
"""

from __future__ import annotations

import argparse
import base64
import io
import random
import signal
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffserve.engine.generate import TINY_BUILDERS  # noqa: E402
from tests.servers import DiffserveServer  # noqa: E402

PROMPTS = ["a cat on a sofa", "a lighthouse at dusk", "women playing tennis", "a bowl of fruit", "a red car",
           "mountains in fog", "a city street at night", "an old oak tree"]


def init_image(side: int) -> str:
    buf = io.BytesIO()
    Image.effect_noise((side, side), 64).convert("RGB").save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def bodies(kind: str, n: int, side: int, key: str, model: str, rng: random.Random, steps: int = 20) -> list[dict]:
    image = init_image(side)
    out = []
    for i in range(n):
        body = {"key": key, "model_id": model, "init_image": image, "width": side, "height": side, "samples": 1,
                "guidance_scale": 7.5, "seed": 1000 + i, "safety_checker": "no", "tomesd": "no"}
        if kind == "v6-default":  # the identical request as the v6 page's clients send it: tomesd absent ("yes")
            del body["tomesd"]
        if kind in ("identical", "v6-default"):
            body.update(prompt=PROMPTS[0], strength=0.7, num_inference_steps=steps)
        else:
            body.update(prompt=rng.choice(PROMPTS), strength=round(rng.uniform(0.3, 0.9), 2),
                        num_inference_steps=rng.randint(10, 30), seed=rng.randrange(2**31))
        out.append(body)
    return out


def rows_per_tick(url: str) -> tuple[float, float]:
    """(sum, count) of the worker's diffserve_batch_rows histogram: image rows per denoising call."""
    totals = {"diffserve_batch_rows_sum": 0.0, "diffserve_batch_rows_count": 0.0}
    for line in httpx.get(f"{url}/metrics", timeout=30).text.splitlines():
        name, value = line.partition("{")[0].partition(" ")[0], line.rsplit(" ", 1)[-1]
        if name in totals:  # one line per model label
            totals[name] += float(value)
    return totals["diffserve_batch_rows_sum"], totals["diffserve_batch_rows_count"]


def run_cell(url: str, work: list[dict], clients: int, window_s: float
             ) -> tuple[float, list[float], list[int], float]:
    """(images/s, latencies, batch sizes from meta, mean rows per denoising call) with `clients` concurrent
    clients, in steady state.

    Each client sends its share of `work` one request after another, round and round. The window opens when
    every client has had its first answer (the ramp, all first requests arriving at once, is over) and closes
    once it has lasted `window_s` and held at least two answers per client; only the requests that end inside
    it count. So neither the ramp nor a tail (the last clients alone once others have stopped) weighs in:
    every client keeps sending until the window has closed. A request in flight then is finished, not counted.
    Each request asks for one image."""
    per_client = [work[i::clients] for i in range(clients)]
    lock = threading.Lock()
    first: set[int] = set()
    window: dict[str, float] = {}  # "open", "close"
    ticks: dict[str, tuple[float, float]] = {}  # rows_per_tick at the window's open and close
    counted: list[tuple[float, int]] = []

    def client(me: int) -> None:
        items, i = per_client[me], 0
        with httpx.Client(timeout=600) as http:
            while "close" not in window:
                body = items[i % len(items)]
                i += 1
                t = time.perf_counter()
                out = http.post(f"{url}/api/v6/images/img2img", json=body).json()
                if out.get("status") != "success":
                    raise RuntimeError(f"request failed: {str(out)[:300]}")
                now = time.perf_counter()
                with lock:
                    if "close" in window:
                        break
                    edge = None
                    if "open" in window:
                        counted.append((now - t, int((out.get("meta") or {}).get("batch_size") or 1)))
                        if now - window["open"] >= window_s and len(counted) >= 2 * clients:
                            window["close"] = now
                            edge = "close"
                    first.add(me)
                    if len(first) == clients and "open" not in window:
                        window["open"] = now
                        edge = "open"
                if edge:
                    ticks[edge] = rows_per_tick(url)

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    (s0, n0), (s1, n1) = ticks["open"], ticks["close"]
    latencies = [c[0] for c in counted]
    # images/s by Little's law: `clients` requests always in flight (each client sends its next at once), so
    # throughput = clients / mean latency. Counting the answers inside the window instead is biased when they
    # come in bursts (a batch of identical requests answers all its rows at once, and the window then opens
    # at a burst's end and closes at another's start: up to a burst's worth of answers off).
    return (clients / statistics.mean(latencies), latencies, [c[1] for c in counted], (s1 - s0) / max(n1 - n0, 1))


def bare_ceiling(models_root: Path, model: str, sizes: list[int], threads: int, steps: int = 20) -> None:
    """The bare diffusers pipeline on this machine now: 8 images in one batched call vs 8 single calls (identical
    parameters, `steps` steps x strength 0.7): what batching can gain at best, before any serving."""
    import torch

    from diffserve.engine.models.loading import ModelSource, load_img2img_pipeline

    torch.set_num_threads(threads)
    pipe = load_img2img_pipeline(ModelSource("folder", str(TINY_BUILDERS[model](models_root / model))))
    pipe.set_progress_bar_config(disable=True)
    print(f"bare {model} pipeline, {threads} torch thread(s), {steps} steps: 8 single calls vs one call of 8")
    for side in sizes:
        image = Image.open(io.BytesIO(base64.b64decode(init_image(side)))).convert("RGB")

        def call(n: int) -> float:
            t = time.perf_counter()
            with torch.inference_mode():
                pipe(prompt=PROMPTS[0], image=[image] * n, strength=0.7, num_inference_steps=steps, guidance_scale=7.5,
                     generator=[torch.Generator().manual_seed(i) for i in range(n)], num_images_per_prompt=n)
            return time.perf_counter() - t

        call(1)
        singles = sum(call(1) for _ in range(8))
        batched = call(8)
        print(f"  {side:>4} px: 8 single {singles:6.2f} s, batched {batched:6.2f} s: {singles / batched:.2f}x", flush=True)


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="64,128,256")
    ap.add_argument("--clients", default="1,2,4,8")
    ap.add_argument("--window-s", type=float, default=15, help="steady-state window of a cell at 128 px, in "
                    "seconds (scaled with the side: 64 px half, 256 px twice); at least two answers per client")
    ap.add_argument("--threads", default="1", help="DIFFSERVE_TORCH_THREADS of each worker (1: on a shared "
                    "2-core machine, 2 OpenMP threads under other load run 20-30x slower)")
    ap.add_argument("--model", default="tiny-sd")
    ap.add_argument("--models-file", default=None, help="a models.json naming --model (real weights, GPU)")
    ap.add_argument("--device", default="cpu", help="DIFFSERVE_DEVICE of the workers (cuda on a GPU)")
    ap.add_argument("--kinds", default="identical,v6-default,mixed",
                    help="identical (tomesd off), v6-default (the same with tomesd absent: the page's yes), mixed")
    ap.add_argument("--steps", type=int, default=20, help="steps of the identical requests and the bare calls")
    ap.add_argument("--quick", action="store_true", help="--sizes 64 --clients 2 --kinds identical --window-s 1 "
                    "--steps 4")
    args = ap.parse_args()
    # `timeout` (the machine's rule for timing runs) sends SIGTERM: exit through the finally below, which stops
    # both servers (they run in their own sessions and would outlive the bench otherwise)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.quick:
        args.sizes, args.clients, args.kinds, args.window_s, args.steps = "64", "2", "identical", 1.0, 4
    sizes = [int(s) for s in args.sizes.split(",")]
    counts = [int(c) for c in args.clients.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if args.model in TINY_BUILDERS:  # the bare pipeline's ceiling, for the built-in models
            bare_ceiling(root / "models", args.model, sizes, int(args.threads), args.steps)
        servers = {mode: DiffserveServer(root / mode, root / "models", env_overrides={
            "DIFFSERVE_BATCHING__MODE": mode, "DIFFSERVE_TORCH_THREADS": args.threads,
            "DIFFSERVE_PRELOAD_MODELS": f'["{args.model}"]', "DIFFSERVE_SYNC_WAIT_S": "600",
            "DIFFSERVE_LIMITS__MAX_QUEUED_PER_KEY": "0", "DIFFSERVE_DEVICE": args.device,
            **({"DIFFSERVE_MODELS_FILE": args.models_file} if args.models_file else {})}) for mode in ("off", "on")}
        try:
            with ThreadPoolExecutor(2) as pool:  # both start at once: their start-ups overlap (--quick's time)
                list(pool.map(lambda srv: srv.start(timeout=600), servers.values()))
            keys = {mode: srv.create_key() for mode, srv in servers.items()}
            for mode, srv in servers.items():  # warm-up: first call costs
                run_cell(srv.url, bodies("identical", 2, 64, keys[mode], args.model, random.Random(0),
                                             args.steps), 2, 0)
            print(f"{args.model}, 1 worker, {args.threads} torch threads; images/s and latency (s) over HTTP; "
                  f"identical: {args.steps} steps")
            print(f"{'kind':9} {'px':>4} {'clients':>7} | {'off img/s':>9} {'p50':>6} {'p95':>6} | "
                  f"{'on img/s':>8} {'p50':>6} {'p95':>6} {'batch':>5} {'rows':>5} | {'speed-up':>8} {'p50 on/off':>10}")
            print("  (batch: the mean of meta.batch_size, the most images a job shared a step with; rows: the mean "
                  "images per denoising call in the window)")
            for kind in args.kinds.split(","):
                for side in sizes:
                    for clients in counts:
                        cell = {}
                        for mode, srv in servers.items():
                            work = bodies(kind, 8 * clients, side, keys[mode], args.model,
                                          random.Random(side * 100 + clients), args.steps)
                            cell[mode] = run_cell(srv.url, work, clients, args.window_s * side / 128)
                        (off_rate, off_lat, _, _), (on_rate, on_lat, batch, rows) = cell["off"], cell["on"]
                        print(f"{kind:9} {side:>4} {clients:>7} | {off_rate:9.2f} {pct(off_lat, .5):6.2f} "
                              f"{pct(off_lat, .95):6.2f} | {on_rate:8.2f} {pct(on_lat, .5):6.2f} {pct(on_lat, .95):6.2f} "
                              f"{statistics.mean(batch):5.1f} {rows:5.1f} | {on_rate / off_rate:7.2f}x "
                              f"{pct(on_lat, .5) / pct(off_lat, .5):9.2f}x", flush=True)
        finally:
            for srv in servers.values():
                srv.stop()


if __name__ == "__main__":
    main()
