"""Fleet mode figures (docs/performance.md, "Fleet"): the same parts as tests/fleet.py -- real PostgreSQL, Redis
and SeaweedFS, an API process with no workers, `diffserve worker` processes (on hosts of their own when run as root).

Prints:
1. images/s with 1 and 2 workers: tiny-sd, 64 px, 4 steps, 8 clients sending synchronous ModelsLab requests;
2. the queue's added latency per job: a synchronous request's answer time minus its job's run time, one client,
   on the embedded default (`local`: SQLite, local queue, 1 worker) and on the fleet (`celery`: PostgreSQL,
   Redis, 1 standalone worker);
3. the time to re-run a killed worker's job: kill -9 the worker mid-job, time until the other worker runs it
   and until it is done.
Asserts nothing. Usage: .venv/bin/python bench/fleet.py [--quick]
--quick (tests/test_benches.py runs it): 2 clients x 1 request, 3 latency runs, the killed job 128 px x 20 steps,
workers on loopback.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.fleet import Fleet, can_make_hosts  # noqa: E402
from tests.jobs_helpers import Jobs, data_uri  # noqa: E402
from tests.servers import DiffserveServer  # noqa: E402

V6 = "/api/v6/images/img2img"
CLIENTS, PER_CLIENT = 8, 4


def body(key: str, seed: int) -> dict:
    return {"key": key, "prompt": "a harbour at dusk", "init_image": data_uri(64, 64), "num_inference_steps": 4,
            "strength": 1.0, "seed": seed}


def throughput(url: str, key: str, clients: int = CLIENTS, per_client: int = PER_CLIENT) -> float:
    """Images per second: `clients` threads, each sending `per_client` synchronous requests back to back."""
    failures = []

    def client(c: int) -> None:
        with httpx.Client(timeout=300) as http:
            for i in range(per_client):
                out = http.post(f"{url}{V6}", json=body(key, c * 100 + i)).json()
                if out.get("status") != "success":
                    failures.append(out)

    t = time.perf_counter()
    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.perf_counter() - t
    if failures:
        raise RuntimeError(f"{len(failures)} requests failed: {failures[0]}")
    return clients * per_client / wall


def added_latency(url: str, key: str, runs: int = 20) -> list[float]:
    """Answer time minus the job's own run time (ms), one synchronous request at a time."""
    extra = []
    with httpx.Client(timeout=120) as http:
        http.post(f"{url}{V6}", json=body(key, 0))  # warm
        for i in range(runs):
            t = time.perf_counter()
            out = http.post(f"{url}{V6}", json=body(key, i)).json()
            wall = time.perf_counter() - t
            extra.append((wall - float(out["generationTime"])) * 1000)
    return extra


def ms(values: list[float]) -> str:
    values = sorted(values)
    return f"median {statistics.median(values):6.1f} ms, p90 {values[int(len(values) * 0.9) - 1]:6.1f} ms"


def rerun_after_kill(fleet: Fleet, key: str, side: int = 256, steps: int = 40) -> tuple[float, float]:
    jobs = Jobs(fleet.api, key)
    admin = fleet.api.create_key("--admin")
    job = jobs.submit(init_image=data_uri(side, side), steps=steps, strength=1.0)
    first = jobs.wait(job["id"], lambda j: j["status"] == "running" and j["worker"])
    victim = next(w for w in fleet.worker_rows(admin) if w["worker_id"] == first["worker"])
    fleet.kill_worker(int(victim["labels"][0].removeprefix("host")))
    killed = time.monotonic()
    jobs.wait(job["id"], lambda j: j["status"] == "running" and j["worker"] not in (None, first["worker"]))
    again = time.monotonic() - killed
    jobs.done(job["id"], timeout=600)
    return again, time.monotonic() - killed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2 clients x 1 request, 3 latency runs, a short killed job")
    quick = ap.parse_args().quick
    clients, per_client, runs = (2, 1, 3) if quick else (CLIENTS, PER_CLIENT, 20)
    hosts = 2 if can_make_hosts() and not quick else 0
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        models = root / "models"
        local = DiffserveServer(root / "local", models, {"DIFFSERVE_WORKERS": "1"}).start()
        try:
            local_key = local.create_key("--max-queued", "0")
            local_extra = added_latency(local.url, local_key, runs)
        finally:
            local.stop()

        fleet = Fleet(root / "fleet", models, hosts=hosts,
                      env_overrides={"DIFFSERVE_WORKER_STALE_S": "3"})
        try:
            fleet.start(apis=1, workers=1)
            key = fleet.api.create_key("--max-queued", "0")
            fleet_extra = added_latency(fleet.api.url, key, runs)
            one = throughput(fleet.api.url, key, clients, per_client)
            fleet.start_worker(1)
            fleet.wait_workers(2)
            two = throughput(fleet.api.url, key, clients, per_client)
            again, done = rerun_after_kill(fleet, key, *((128, 20) if quick else (256, 40)))
        finally:
            fleet.stop()

    where = "workers in network namespaces" if hosts else "workers on loopback"
    print(f"fleet bench ({where}; tiny-sd 64 px, 4 steps; {datetime.now():%Y-%m-%d %H:%M})")
    print(f"images/s, {clients} clients x {per_client}: 1 worker {one:5.2f}, 2 workers {two:5.2f} ({two / one:.2f}x)")
    print(f"queue's added latency per job: local  {ms(local_extra)}")
    print(f"                               celery {ms(fleet_extra)}")
    print(f"killed worker's job: running again elsewhere after {again:.1f} s, done after {done:.1f} s "
          f"(DIFFSERVE_WORKER_STALE_S=3)")


if __name__ == "__main__":
    main()
