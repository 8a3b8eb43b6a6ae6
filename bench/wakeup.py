"""How fast a synchronous request returns when its job ran on a worker the API did not spawn.

A server plus one `diffserve worker --label a100`; Qolaba requests with `inference_type: a100` (so only that
worker runs them), synchronous, one at a time. On SQLite the waiting request re-reads the job (every
250 ms at most); on PostgreSQL the job's NOTIFY wakes it. Prints the median and p90 of (answer time -
job run time) for each store. Prints figures; asserts nothing. Needs Debian's postgresql binaries.
    .venv/bin/python bench/wakeup.py [--quick]   # --quick: 3 runs per store (tests/test_benches.py runs it)
"""

from __future__ import annotations

import argparse
import base64
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.pgserver import PostgresServer  # noqa: E402
from tests.servers import DiffserveServer, png_bytes  # noqa: E402

RUNS = 15
QUICK_RUNS = 3
APP = "ap-fGhKl3mfkdlpqrshuwwabc"  # Flux Dev: tiny-flux


def measure(srv: DiffserveServer, runs: int) -> list[float]:
    key = srv.create_key()
    worker = subprocess.Popen([sys.executable, "-m", "diffserve.cli.main", "worker", "--label", "a100",
                               "--preload", "tiny-flux"], env=srv.env(), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    body = {"app_id": APP, "image": base64.b64encode(png_bytes(64, 64)).decode(), "prompt": "x", "batch": 1,
            "strength": 0.6, "inference_type": "a100"}
    extra = []
    try:
        with httpx.Client(timeout=120, headers={"Authorization": f"Bearer {key}"}) as client:
            deadline = time.monotonic() + 120
            while client.post(f"{srv.url}/getImagetoImage", json=body).json()["status"] != "SUCCESS":
                if time.monotonic() > deadline:
                    raise TimeoutError("the standalone worker never answered")
                time.sleep(0.5)  # the worker is still starting
            for _ in range(runs):
                t = time.perf_counter()
                out = client.post(f"{srv.url}/getImagetoImage", json=body).json()
                wall = time.perf_counter() - t
                extra.append(wall - out["time_required"]["runtime"])
    finally:
        worker.terminate()
        worker.wait(30)
    return extra


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help=f"{QUICK_RUNS} runs per store")
    runs = QUICK_RUNS if ap.parse_args().quick else RUNS
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        # the API alone (DIFFSERVE_WORKERS=0): its own workers would not run these jobs (no a100 label)
        sqlite = DiffserveServer(root / "sqlite", root / "models", {"DIFFSERVE_WORKERS": "0"}).start(until="/health")
        try:
            on_sqlite = measure(sqlite, runs)
        finally:
            sqlite.stop()
        pg = PostgresServer().start()
        try:
            subprocess.run([sys.executable, "-m", "diffserve.cli.main", "db", "upgrade"], check=True,
                           env={**DiffserveServer(root / "pg", root / "models").env(),
                                "DIFFSERVE_DATABASE_URL": pg.url}, capture_output=True)
            server = DiffserveServer(root / "pg", root / "models", env_overrides={"DIFFSERVE_DATABASE_URL": pg.url,
                                                                                  "DIFFSERVE_WORKERS": "0"})
            server.start(until="/health")
            try:
                on_pg = measure(server, runs)
            finally:
                server.stop()
        finally:
            pg.stop()
    print(f"synchronous Qolaba request run by a `diffserve worker`, answer time minus job run time, {runs} runs:")
    for name, values in (("SQLite (re-reads the job)", on_sqlite), ("PostgreSQL (LISTEN/NOTIFY)", on_pg)):
        q = statistics.quantiles(values, n=10)
        print(f"  {name:<28} median {statistics.median(values) * 1000:7.1f} ms   p90 {q[-1] * 1000:7.1f} ms")


if __name__ == "__main__":
    main()
