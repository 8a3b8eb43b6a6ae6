"""The control plane's floor: what the bare libraries a job passes through cost on this machine, with none of
diffserve's own code around them. bench/control_plane.py measures diffserve; this bench says how low that could go.

A job on PostgreSQL + Celery is, at the least:
  http:    one POST of the same JSON body (a 64x64 PNG data URI, a prompt, 4 steps) answered 202 by a bare FastAPI
           app on uvicorn (httptools, no middleware, no access log), from 8 httpx clients as bench/control_plane.py;
  broker:  one Celery task message published with `send_task` (JSON, Redis), consumed by kombu with prefetch 1 and
           acknowledged (what the workers do: jobqueue/celery.py), the consumer in a process of its own;
  store:   three PostgreSQL transactions from psycopg (the ledger's minimum: create with RETURNING, claim + start,
           finish), 8 connections, autocommit.
Each piece runs alone, one after the other, and the bench prints the CPU ms per job of each process involved
(/proc, as bench/control_plane.py counts them) and the sum: the control plane cannot cost less than that per job,
so 2 cores cannot carry more than 2000 / sum jobs/s, whatever diffserve does around these calls.

Asserts nothing. Usage:
    .venv/bin/python bench/control_floor.py [--jobs 2000] [--quick]
--quick (tests/test_benches.py runs it): 100 jobs.
"""

from __future__ import annotations

import argparse
import itertools
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CLIENTS = 8  # as bench/control_plane.py
QUEUE = "floor"


def own_cpu_s() -> float:
    t = os.times()
    return t.user + t.system


# ---------------------------------------------------------------- the processes this bench starts


def serve_http(port: int) -> None:
    """`--role http`: a bare FastAPI app answering POST /v1/jobs with 202 and an id (the JSON body parsed)."""
    from typing import Any

    import uvicorn
    from fastapi import Body, FastAPI

    app = FastAPI()
    ids = itertools.count(1)

    @app.post("/v1/jobs", status_code=202)
    async def create(body: dict[str, Any] = Body(...)) -> dict[str, Any]:
        return {"id": next(ids), "status": "queued", "prompt": body.get("prompt")}

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False, http="httptools")


def consume(broker: str, count: int) -> None:
    """`--role consume`: take `count` task messages off QUEUE, prefetch 1, acknowledging each."""
    from kombu import Connection, Consumer, Queue

    taken = 0

    def on_message(_body, message) -> None:  # noqa: ANN001
        nonlocal taken
        message.ack()
        taken += 1

    with Connection(broker) as conn:
        with Consumer(conn.default_channel, [Queue(QUEUE, routing_key=QUEUE)], accept=["json"],
                      callbacks=[on_message], prefetch_count=1):
            print("ready", flush=True)
            while taken < count:
                conn.drain_events(timeout=60)


# ---------------------------------------------------------------- the pieces


def http_piece(n_jobs: int) -> dict[str, float]:
    import httpx

    from bench.control_plane import cpu_s
    from tests.jobs_helpers import data_uri
    from tests.servers import free_port
    from tests.waiting import wait_until

    port = free_port()
    proc = subprocess.Popen([sys.executable, __file__, "--role", "http", "--port", str(port)])
    try:
        http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60,
                            limits=httpx.Limits(max_connections=CLIENTS))
        wait_until(lambda: http.get("/health").status_code == 200, 60, 0.1, "the bare FastAPI app",
                   ignore=(httpx.HTTPError,))
        image = data_uri(64, 64)

        def submit(i: int) -> int:
            r = http.post("/v1/jobs", json={"model_id": "tiny-sd", "prompt": f"job {i}", "init_image": image,
                                            "steps": 4, "strength": 1.0, "seed": 1000 + i})
            if r.status_code != 202:
                raise RuntimeError(f"the bare app answered {r.status_code}")
            return r.json()["id"]

        with ThreadPoolExecutor(CLIENTS) as pool:
            list(pool.map(submit, range(50)))  # warm
            server0, clients0, t0 = cpu_s(proc.pid), own_cpu_s(), time.monotonic()
            list(pool.map(submit, range(n_jobs)))
            elapsed = time.monotonic() - t0
            server, clients = cpu_s(proc.pid) - server0, own_cpu_s() - clients0
        http.close()
    finally:
        proc.terminate()
        proc.wait(30)
    return {"http server": server, "http clients": clients, "_http_s": elapsed}


def broker_piece(n_jobs: int, redis) -> dict[str, float]:  # noqa: ANN001
    from celery import Celery

    from bench.control_plane import cpu_s

    app = Celery("floor", broker=redis.url, set_as_current=False)
    app.conf.update(task_serializer="json", accept_content=["json"], task_acks_late=True)
    app.send_task("floor.job", args=[0], queue=QUEUE, retry=False)  # warm: connection, queue declared
    consumer = subprocess.Popen([sys.executable, __file__, "--role", "consume", "--broker", redis.url,
                                 "--count", str(n_jobs + 1)], stdout=subprocess.PIPE, text=True)
    if consumer.stdout.readline().strip() != "ready":  # imported and consuming: its start is not counted
        raise RuntimeError("the consumer did not start")
    redis0, producer0, t0 = cpu_s(redis.proc.pid), own_cpu_s(), time.monotonic()
    consumer0 = cpu_s(consumer.pid)
    with ThreadPoolExecutor(CLIENTS) as pool:
        list(pool.map(lambda i: app.send_task("floor.job", args=[i], kwargs={"label": None}, queue=QUEUE,
                                              retry=False), range(n_jobs)))
    producer = own_cpu_s() - producer0
    consumed = 0.0
    while consumer.poll() is None:  # its CPU while it runs: a process that ended is gone from /proc
        consumed = cpu_s(consumer.pid) - consumer0
        time.sleep(0.02)
    if consumer.returncode != 0:
        raise RuntimeError(f"the consumer exited {consumer.returncode}")
    return {"publish (celery)": producer, "consume + ack (kombu)": consumed,
            "redis": cpu_s(redis.proc.pid) - redis0, "_broker_s": time.monotonic() - t0}


def store_piece(n_jobs: int, pg) -> dict[str, float]:  # noqa: ANN001
    import threading

    import psycopg

    from bench.control_plane import cpu_s

    url = pg.url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(url, autocommit=True) as c:
        c.execute("DROP TABLE IF EXISTS floor_jobs")
        c.execute("CREATE TABLE floor_jobs (id bigserial PRIMARY KEY, status text NOT NULL, worker text, "
                  "attempt int NOT NULL DEFAULT 0, request jsonb NOT NULL, created_at timestamptz NOT NULL "
                  "DEFAULT now(), started_at timestamptz, finished_at timestamptz, outputs jsonb)")
    local = threading.local()
    conns: list = []

    def job(i: int) -> None:
        if not hasattr(local, "c"):
            local.c = psycopg.connect(url, autocommit=True)
            conns.append(local.c)
        c = local.c
        job_id = c.execute("INSERT INTO floor_jobs (status, request) VALUES ('queued', %s) RETURNING id",
                           (f'{{"prompt": "job {i}", "steps": 4}}',)).fetchone()[0]
        c.execute("UPDATE floor_jobs SET status = 'running', worker = %s, attempt = attempt + 1, "
                  "started_at = now() WHERE id = %s AND status = 'queued'", (f"w{i % 16}", job_id))
        c.execute("UPDATE floor_jobs SET status = 'succeeded', finished_at = now(), outputs = %s "
                  "WHERE id = %s AND status = 'running'", ('["outputs/x.png"]', job_id))

    postmaster = int((pg.root / "data" / "postmaster.pid").read_text().split()[0])
    with ThreadPoolExecutor(CLIENTS) as pool:
        list(pool.map(job, range(50)))  # warm: connections, plans
        pg0, client0, t0 = cpu_s(postmaster), own_cpu_s(), time.monotonic()
        list(pool.map(job, range(n_jobs)))
        elapsed = time.monotonic() - t0
        pg_cpu, client = cpu_s(postmaster) - pg0, own_cpu_s() - client0
    for c in conns:
        c.close()
    return {"postgres": pg_cpu, "psycopg client": client, "_store_s": elapsed}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=2000)
    ap.add_argument("--quick", action="store_true", help="100 jobs (the test's size)")
    ap.add_argument("--role", choices=("http", "consume"), help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--broker", help=argparse.SUPPRESS)
    ap.add_argument("--count", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.role == "http":
        return serve_http(args.port)
    if args.role == "consume":
        return consume(args.broker, args.count)

    from tests.pgserver import PostgresServer
    from tests.redisserver import RedisServer

    n_jobs = 100 if args.quick else args.jobs
    print(f"control plane floor ({datetime.now():%Y-%m-%d %H:%M}; {n_jobs} jobs per piece, {CLIENTS} clients; "
          f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.1f})", flush=True)
    redis, pg = RedisServer().start(), PostgresServer().start()
    try:
        cpu: dict[str, float] = {}
        cpu.update(http_piece(n_jobs))
        cpu.update(broker_piece(n_jobs, redis))
        cpu.update(store_piece(n_jobs, pg))
    finally:
        redis.stop()
        pg.stop()
    print("piece    process                  CPU ms per job")
    rows = [("http", "http server"), ("http", "http clients"), ("broker", "publish (celery)"),
            ("broker", "consume + ack (kombu)"), ("broker", "redis"), ("store", "postgres"),
            ("store", "psycopg client")]
    for piece, name in rows:
        print(f"{piece:<8} {name:<24} {1000 * cpu[name] / n_jobs:6.2f}")
    server_side = sum(cpu[name] for _, name in rows if name != "http clients") * 1000 / n_jobs
    everything = sum(cpu[name] for _, name in rows) * 1000 / n_jobs
    cores = os.cpu_count() or 1
    print(f"floor per job: {server_side:.2f} ms without the HTTP clients ({1000 * cores / server_side:.0f} jobs/s "
          f"on {cores} cores), {everything:.2f} ms with them ({1000 * cores / everything:.0f} jobs/s)")


if __name__ == "__main__":
    main()
