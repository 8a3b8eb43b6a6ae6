"""The control plane at fleet scale: the real API, store and queue, with a model-free stand-in engine in the workers.

What runs: `diffserve serve --workers 0` (the real API process) on each backend --
  local:  SQLite (WAL) store, the local queue table;
  celery: PostgreSQL store, Celery 5 + Redis wake-ups (tests/pgserver.py, tests/redisserver.py start them)
-- and 1 to 64 simulated workers: real `diffserve.workers.worker.Worker` objects (claim, start, progress, storage,
finish through the ledger, heartbeats, orders: the product's code), each built by `stand_in_worker` below
(diffserve's build_worker given `StandInEngine`, a test double that sleeps `--step-ms` per denoising step and returns
a tiny PNG; it lives here, never in diffserve/).
The workers run as threads, up to 16 per process, in up to 4 processes this bench starts (`--role workers`), each
simulated worker with its own database pool and broker connection, as separate machines would have.

The bench submits up to `--jobs` native jobs (POST /v1/jobs, 64x64 init image, 4 steps) from 8 HTTP clients, waits until
all are done, and prints per backend and worker count:
  jobs/s submitted (API accepted) -> finished (last finish - first submit);
  queue wait p50/p99 (started_at - created_at, from the job rows);
  claim latency p50/p99: from the moment a job is in the store or the worker asks (whichever is later) to the
    worker's queue.claim returning it: wake-up/poll delay plus the claim transaction;
  database transactions per job: commits counted by a SQLAlchemy event listener in the API and worker processes
    (`api`/`workers`, and by diffserve call site; reads that end in a rollback are not counted), pool checkouts by
    call site, and on PostgreSQL pg_stat_database's xact_commit delta (every process; each checkout's pre-ping
    is a transaction of its own), minus the idle rate measured before;
  CPU ms per job of each process (/proc), and the ceiling that gives on this machine's cores.
The idle rate (heartbeats, orders checks, empty claims of idle workers) is printed beside: it is part of what a
job costs at low load.

Before it measures, a warm-up burst (8 jobs per simulated worker): each simulated worker's engine compiles each
statement once and PostgreSQL plans each on a new connection until prepared, as a fleet does once, not per job.
The load: one keep-alive http.client connection per client thread (httpx cost ~1.4 ms of CPU per job here).

Where it saturates on this machine (docs/performance.md, "Control plane"): CPU, the two cores full. Measured
2026-12-07 13:40-14:40 (PostgreSQL + Celery, up to 4000 jobs per case): 221-277 jobs/s finished with 32
simulated workers, ~200-222 with 64, 194-231 with 16 (there each worker's own cycle bounds it: 40 ms of steps, the
claim, the finish), a job costing 6.8-9.5 ms of CPU for all processes together (API ~2.2-3, workers ~2.7-4.4,
PostgreSQL ~1.4-1.8, Redis 0.1-0.2, the clients 0.3); SQLite 132-160 jobs/s. The target of 200 jobs/s on
PostgreSQL is met. A job's own statements in the worker are two on PostgreSQL: claim + start (one statement,
jobqueue/local.py with ledger.pg_start_claimed) and finish (one statement: finishing a job is one transaction);
SQLite: claim, start, finish. `--pg-statements` prints PostgreSQL's busiest statements per job
(pg_stat_statements). A case of a few seconds counts its start and tail against few jobs: the default of up to
4000 jobs (125 per simulated worker at most) measures a running fleet for 15-25 s.
Mind the workers' sleep: n workers x 4 steps of --step-ms cap the rate at n / (4 x step) jobs/s (8 workers of
10 ms steps: 200 jobs/s), so a saturation figure wants 16 or more.

Figures from this machine come from a shared 2-core VM (other sessions' jobs beside), one run each:
read them as shapes, not absolutes.
Asserts nothing. Usage:
    .venv/bin/python bench/control_plane.py [--workers 1,16,32,64] [--jobs 4000] [--backends local,celery] [--quick]
        [--pg-statements] [--profile DIR]
--quick (tests/test_benches.py runs it): 2 workers, 16 jobs, both backends.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

STEPS = 4  # per job (strength 1.0)
CLIENTS = 8
THREADS_PER_PROCESS = 16
MAX_PROCESSES = 4
MODEL = "tiny-sd"
COUNTS_EVERY_S = 0.25  # each process writes its commit counts this often
JOBS_PER_WORKER = 125  # a case's jobs at most: ~5 s of one worker's own rate (4 steps of 10 ms)


# ---------------------------------------------------------------- in the processes this bench starts


def _call_site(names: dict) -> str:
    """The diffserve function that asked for this commit (module.function), e.g. ledger.finish. `names` caches
    each code object's answer ("" for code outside diffserve): the walk costs a dict lookup per frame, so the
    counting barely shows in the CPU figures."""
    frame = sys._getframe(2)
    while frame is not None:
        code = frame.f_code
        site = names.get(code)
        if site is None:
            path = code.co_filename
            keep = "/diffserve/" in path and not path.endswith("/store/db.py")
            site = names[code] = f"{Path(path).stem}.{code.co_name}" if keep else ""
        if site:
            return site
        frame = frame.f_back
    return "other"


def count_transactions(out: Path) -> None:
    """Count the commits (by diffserve call site) and pool checkouts of every SQLAlchemy engine of this process;
    write them to `out` as JSON every COUNTS_EVERY_S (each write makes a file: ~0.2-0.4 ms of CPU on this VM's
    disk, counted in the process's figure -- every 50 ms it was ~0.1 ms per job)."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine
    from sqlalchemy.pool import Pool

    sites: dict[str, int] = {}
    checkouts: dict[str, int] = {}
    names: dict = {}

    def on_commit(_conn) -> None:  # noqa: ANN001
        site = _call_site(names)
        sites[site] = sites.get(site, 0) + 1

    def on_checkout(*_args) -> None:  # noqa: ANN002
        site = _call_site(names)
        checkouts[site] = checkouts.get(site, 0) + 1

    def on_statement(conn, _cursor, statement, *_args) -> None:  # noqa: ANN001, ANN002 - a write outside a
        # transaction commits alone (a read there is not counted, as a read that ends in a rollback is not)
        if conn.get_execution_options().get("isolation_level") == "AUTOCOMMIT" and not conn.in_transaction() \
                and not statement.lstrip()[:6].upper().startswith("SELECT"):  # (inside begin(): its commit counts)
            site = _call_site(names) + "*"
            sites[site] = sites.get(site, 0) + 1

    event.listen(Engine, "commit", on_commit)
    event.listen(Engine, "before_cursor_execute", on_statement)
    event.listen(Pool, "checkout", on_checkout)

    def write() -> None:
        tmp = out.with_suffix(".tmp")
        while True:
            tmp.write_text(json.dumps({"checkouts": dict(checkouts), "sites": dict(sites)}))
            tmp.replace(out)
            time.sleep(COUNTS_EVERY_S)

    threading.Thread(target=write, daemon=True).start()


class _Pipelines:
    budget_bytes = 0
    get = clear = evict = staticmethod(lambda *_: None)  # no models to load or drop


class _Result:
    def __init__(self, png: bytes, samples: int) -> None:
        self._png, self.nsfw, self.device, self.dtype = png, [False] * samples, "cpu", "fp32"
        self.step_cache = "off"  # what ran: no step cache in a stand-in

    def png_bytes(self) -> list[bytes]:
        return [self._png] * len(self.nsfw)


class StandInEngine:
    """A test double for the diffusion Engine: `step_s` of sleep per step (reported to `progress` like the real
    one), a tiny PNG per sample. No model, no torch."""

    device = "cpu"

    def __init__(self, step_s: float, model_id: str = MODEL) -> None:
        from PIL import Image

        buf = io.BytesIO()
        Image.new("RGB", (8, 8), (30, 120, 200)).save(buf, format="PNG")
        self.step_s, self.model_id, self.png, self.pipelines = step_s, model_id, buf.getvalue(), _Pipelines()

    def default_dtype(self) -> str:
        return "fp32"

    def loaded_models(self) -> list[str]:
        return [self.model_id]

    def preview_rgb(self, model_id: str) -> None:
        return None

    def generate(self, req, init_image=None, extra_images=(), ip_adapter_image=None, *, progress=None,  # noqa: ANN001
                 mask_image=None) -> _Result:
        total = max(1, int(req.steps * req.strength))
        for step in range(1, total + 1):
            time.sleep(self.step_s)
            if progress is not None:
                progress(step, total, None)
        return _Result(self.png, req.samples)


def stand_in_worker(settings, worker_id: str, step_s: float):  # noqa: ANN001
    """The one place this bench knows how a worker is put together: diffserve's own build_worker, with
    StandInEngine for the diffusion engine (the bench's env turns batching off: the stand-in has no batched loop)."""
    from diffserve.workers.worker import build_worker

    return build_worker(settings, worker_id, labels=(), device="cpu", engine=StandInEngine(step_s))


def timed_claims(worker, records: list) -> None:  # noqa: ANN001
    """Record (job id, call time, return time) of each of the worker's claims that returned a job."""
    claim = worker.queue.claim

    def timed(*args, **kwargs):  # noqa: ANN002, ANN003
        t = time.time()
        job_id = claim(*args, **kwargs)
        if job_id is not None:
            records.append((job_id, t, time.time()))
        return job_id

    worker.queue.claim = timed


def run_workers(ids: list[str], step_s: float, counts: Path, claims_out: Path) -> None:
    """`--role workers`: these simulated workers as threads until SIGTERM, then their claim records to a file."""
    from diffserve.config import Settings

    import diffserve.engine.progress  # noqa: F401 - torch, as a real worker has it before its first job

    count_transactions(counts)
    settings = Settings()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    records: list = []
    threads = []
    for worker_id in ids:
        worker = stand_in_worker(settings, worker_id, step_s)
        timed_claims(worker, records)
        threads.append(threading.Thread(target=worker.run, args=(stop,), daemon=True))
        threads[-1].start()
    stop.wait()
    for t in threads:
        t.join(30)
    claims_out.write_text(json.dumps(records))


def serve_api(port: int, counts: Path) -> None:
    """`--role api`: `diffserve serve --workers 0` with the commit counter installed."""
    from diffserve.cli.main import main as cli

    count_transactions(counts)
    sys.exit(cli(["serve", "--port", str(port), "--workers", "0"]))


# ---------------------------------------------------------------- the bench itself


def counted(counts: Path, prefix: str = "") -> dict:
    """Commits and pool checkouts by call site so far, summed over the processes whose file names start so."""
    total: dict = {"checkouts": {}, "sites": {}}
    for p in counts.glob(f"{prefix}*.n"):
        one = json.loads(p.read_text())
        for kind in total:
            for site, n in one[kind].items():
                total[kind][site] = total[kind].get(site, 0) + n
    return total


def commits(counts: Path, prefix: str = "") -> int:
    return sum(counted(counts, prefix)["sites"].values())


class PgStats:
    def __init__(self, url: str) -> None:
        from sqlalchemy import create_engine
        from sqlalchemy.pool import NullPool

        self.db = create_engine(url, poolclass=NullPool)

    def reset_statements(self) -> None:
        from sqlalchemy import text

        with self.db.connect() as c:
            c.execute(text("SELECT pg_stat_statements_reset()"))
            c.commit()

    def statements(self, n_jobs: int, top: int = 12) -> list[tuple[float, float, str]]:
        """(calls per job, executor ms per job, the statement's start) of the busiest statements in this
        database since reset_statements (pg_stat_statements: `--pg-statements`)."""
        from sqlalchemy import text

        with self.db.connect() as c:
            rows = c.execute(text(
                "SELECT calls, total_exec_time + total_plan_time, query FROM pg_stat_statements "
                "WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) "
                "ORDER BY total_exec_time + total_plan_time DESC LIMIT :top"), {"top": top}).all()
        return [(calls / n_jobs, ms / n_jobs, " ".join(query.split())[:110]) for calls, ms, query in rows]

    def xact_commit(self) -> int:
        from sqlalchemy import text

        time.sleep(1.1)  # backends flush their counters at most once a second
        with self.db.connect() as c:
            c.execute(text("SELECT pg_stat_clear_snapshot()"))
            return int(c.execute(text("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"))
                       .scalar_one())


def _stat(pid: int) -> list[str]:
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2:].split()  # from field 3 (state) on


def cpu_s(pid: int) -> float:
    """CPU seconds of a process, its threads, its children that ended (waited for) and those still running."""
    tick = os.sysconf("SC_CLK_TCK")
    try:
        own = _stat(pid)
    except FileNotFoundError:
        return 0.0
    total = sum(int(v) for v in own[11:15])  # utime stime cutime cstime
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                st = _stat(int(entry.name))
            except (FileNotFoundError, ProcessLookupError, ValueError):
                continue
            if int(st[1]) == pid:
                total += int(st[11]) + int(st[12])
    return total / tick


def cpu_by_part(parts: dict[str, list[int]]) -> dict[str, float]:
    out = {name: sum(cpu_s(pid) for pid in pids) for name, pids in parts.items()}
    times = os.times()
    out["bench clients"] = times.user + times.system
    return out


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))] if values else float("nan")


def epoch(dt: datetime) -> float:
    return dt.replace(tzinfo=timezone.utc).timestamp()


def profile_on_signal(out: Path) -> None:
    """`--profile DIR`: yappi (CPU clock, every thread) runs in this process between SIGUSR1 and SIGUSR2, which
    writes DIR/<role>-<pid>.pstats (pstats format: `python -m pstats`). yappi is not a dependency of diffserve:
    `pip install yappi` to use this."""
    import yappi

    def begin(*_) -> None:  # noqa: ANN002
        yappi.set_clock_type("cpu")
        yappi.start(builtins=True, profile_threads=True)

    def end(*_) -> None:  # noqa: ANN002
        yappi.stop()
        yappi.get_func_stats().save(str(out / f"{os.environ.get('BENCH_ROLE', 'x')}-{os.getpid()}.pstats"), "pstat")

    signal.signal(signal.SIGUSR1, begin)
    signal.signal(signal.SIGUSR2, end)


class Clients:
    """The load: one keep-alive HTTP/1.1 connection per client thread (the standard library's http.client, so
    the load generator's own CPU per request stays well under a millisecond and the figures are the server's)."""

    def __init__(self, base_url: str, key: str) -> None:
        self._host, self._port = base_url.split("://", 1)[1].rsplit(":", 1)
        self._headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        self._local = threading.local()
        self._all: list = []

    def post_job(self, body: dict) -> int:
        """POST /v1/jobs; the new job's id (202), else RuntimeError with the answer."""
        import http.client

        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = http.client.HTTPConnection(self._host, int(self._port), timeout=60)
            self._all.append(conn)
        conn.request("POST", "/v1/jobs", json.dumps(body), self._headers)
        r = conn.getresponse()
        text = r.read()
        if r.status != 202:
            raise RuntimeError(f"POST /v1/jobs answered {r.status}: {text[:500]!r}")
        return json.loads(text)["id"]

    def close(self) -> None:
        for conn in self._all:
            conn.close()


def run_case(backend: str, n_workers: int, n_jobs: int, step_s: float, root: Path, servers: dict,
             profile: Path | None = None, pg_statements: bool = False) -> dict:
    from sqlalchemy import func, select

    from diffserve.store.db import JobRow, QueueRow, WorkerRow, make_db_engine
    from tests.jobs_helpers import data_uri
    from tests.servers import DiffserveServer, free_port
    from tests.waiting import wait_until

    data = root / f"{backend}-{n_workers}"
    counts = data / "counts"
    counts.mkdir(parents=True)
    overrides = {"DIFFSERVE_WORKERS": "0", "DIFFSERVE_PRELOAD_MODELS": "[]", "DIFFSERVE_BATCHING__MODE": "off"}
    if backend == "celery":
        pg, redis = servers["pg"], servers["redis"]
        db_name = f"bench_{n_workers}_{int(time.time() * 1000) % 10**8}"
        with make_db_engine(pg.url).connect().execution_options(isolation_level="AUTOCOMMIT") as c:
            c.exec_driver_sql(f"CREATE DATABASE {db_name}")
        if pg_statements:
            with make_db_engine(pg.url.rsplit("/", 1)[0] + "/" + db_name).connect().execution_options(
                    isolation_level="AUTOCOMMIT") as c:
                c.exec_driver_sql("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        overrides.update({"DIFFSERVE_DATABASE_URL": pg.url.rsplit("/", 1)[0] + "/" + db_name,
                          "DIFFSERVE_QUEUE__BACKEND": "celery", "DIFFSERVE_QUEUE__BROKER_URL": redis.url})
    srv = DiffserveServer(data, root / "models", overrides)
    env = srv.env()
    subprocess.run([sys.executable, "-m", "diffserve.cli.main", "db", "upgrade"], env=env, check=True,
                   capture_output=True)
    srv.port = free_port()
    srv.log_path = data / "api.log"
    log = open(srv.log_path, "ab")
    prof = ["--profile", str(profile)] if profile else []
    if profile:
        profile.mkdir(parents=True, exist_ok=True)
    srv.proc = subprocess.Popen([sys.executable, __file__, "--role", "api", "--port", str(srv.port),
                                 "--counts", str(counts / "api-0.n"), *prof],
                                env={**env, "BENCH_ROLE": f"{backend}-{n_workers}-api"}, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    procs: list[subprocess.Popen] = []
    try:
        srv.wait_healthy(180, "/health")
        key = srv.create_key("--max-queued", "0")
        db = make_db_engine(env.get("DIFFSERVE_DATABASE_URL") or f"sqlite:///{data / 'diffserve.db'}")
        ids = [f"sim-{i:02d}" for i in range(n_workers)]
        n_procs = min(MAX_PROCESSES, -(-n_workers // THREADS_PER_PROCESS))
        for p in range(n_procs):
            procs.append(subprocess.Popen(
                [sys.executable, __file__, "--role", "workers", "--ids", ",".join(ids[p::n_procs]),
                 "--step-ms", str(step_s * 1000), "--counts", str(counts / f"workers-{p}.n"),
                 "--claims", str(data / f"claims-{p}.json"), *prof],
                env={**env, "BENCH_ROLE": f"{backend}-{n_workers}-workers"}, stdout=log, stderr=subprocess.STDOUT))

        def registered() -> bool:
            with db.connect() as c:
                return c.execute(select(func.count()).select_from(WorkerRow)).scalar_one() >= n_workers

        wait_until(registered, 120, 0.2, "the simulated workers to register")
        pg_stats = PgStats(env["DIFFSERVE_DATABASE_URL"]) if backend == "celery" else None
        http = Clients(srv.url, key)
        image = data_uri(64, 64)

        def submit(i: int) -> int:
            return http.post_job({"model_id": MODEL, "prompt": f"job {i}", "init_image": image,
                                  "steps": STEPS, "strength": 1.0, "seed": 1000 + i})

        warm = submit(-1)  # warm: the API's first request (imports, pools), a worker's first job

        def warm_done() -> bool:
            with db.connect() as c:
                status, error = c.execute(select(JobRow.status, JobRow.error).where(JobRow.id == warm)).one()
            if status in ("failed", "cancelled"):
                raise RuntimeError(f"the warm-up job {status}: {error} (log: {srv.log_path.read_text()[-2000:]})")
            return status == "succeeded"

        wait_until(warm_done, 60, 0.05, "the warm-up job to finish")
        # then a warm-up burst, so the figures are a running fleet's: each simulated worker has its own engine,
        # which compiles each statement once (~3-5 ms each), and each new pooled connection has PostgreSQL
        # plan a statement until it is prepared -- in a 600-job run that was ~0.5 ms of the workers' CPU per job
        n_warm = max(16, min(8 * n_workers, 256))
        with ThreadPoolExecutor(CLIENTS) as pool:
            warm_last = max(pool.map(submit, range(-1 - n_warm, -1)))

        def burst_done() -> bool:
            with db.connect() as c:
                return c.execute(select(func.count()).select_from(JobRow).where(
                    JobRow.id <= warm_last, JobRow.status.in_(("succeeded", "failed", "cancelled")))).scalar_one() \
                    >= n_warm + 1

        wait_until(burst_done, 120 + n_warm, 0.05, "the warm-up burst to finish")
        time.sleep(0.5)
        # the idle rate: what the control plane commits per second with nothing to do
        idle_t, idle_c, idle_pg = time.monotonic(), commits(counts, ""), pg_stats.xact_commit() if pg_stats else 0
        time.sleep(2.0)
        idle_s = time.monotonic() - idle_t
        idle = {"commits_s": (commits(counts, "") - idle_c) / idle_s}
        if pg_stats:
            idle["pg_s"] = (pg_stats.xact_commit() - idle_pg) / (time.monotonic() - idle_t)

        pg0 = pg_stats.xact_commit() if pg_stats else 0
        t_pg0 = time.monotonic()
        api0, workers0, all0 = commits(counts, "api"), commits(counts, "workers"), counted(counts)
        parts = {"api": [srv.proc.pid], "workers": [p.pid for p in procs]}
        if backend == "celery":
            parts["postgres"] = [int((pg.root / "data" / "postmaster.pid").read_text().split()[0])]
            parts["redis"] = [redis.proc.pid]
        if pg_stats and pg_statements:
            pg_stats.reset_statements()
        cpu0 = cpu_by_part(parts)
        profiled = [srv.proc.pid, *(p.pid for p in procs)] if profile else []
        for pid in profiled:
            os.kill(pid, signal.SIGUSR1)
        t0 = time.time()
        with ThreadPoolExecutor(CLIENTS) as pool:
            job_ids = list(pool.map(submit, range(n_jobs)))
        t_submitted = time.time()
        first = min(job_ids)

        def all_done() -> bool:  # polled: while the queue table has rows, jobs are left (a count of the jobs
            with db.connect() as c:  # every 50 ms was PostgreSQL CPU counted in the figures, ~0.1 ms per job)
                if c.execute(select(QueueRow.job_id).limit(1)).first() is not None:
                    return False
                return c.execute(select(func.count()).select_from(JobRow).where(
                    JobRow.id >= first, JobRow.status.in_(("succeeded", "failed", "cancelled")))).scalar_one() \
                    >= n_jobs

        wait_until(all_done, 120 + n_jobs * (1 + STEPS * step_s), 0.05, f"{n_jobs} jobs to finish")
        t_done = time.time()
        cpu1 = cpu_by_part(parts)
        for pid in profiled:
            os.kill(pid, signal.SIGUSR2)
        time.sleep(3 if profiled else 0)
        time.sleep(COUNTS_EVERY_S + 0.1)  # the counters' files are written every COUNTS_EVERY_S
        api1, workers1, all1 = commits(counts, "api"), commits(counts, "workers"), counted(counts)
        pg_extra = 0.0
        if pg_stats:
            pg1 = pg_stats.xact_commit()
            settle = (time.monotonic() - t_pg0) - (t_done - t0)  # idle time inside the xact_commit window
            pg_extra = (pg1 - pg0 - idle["pg_s"] * settle) / n_jobs
        statements = pg_stats.statements(n_jobs) if pg_stats and pg_statements else []
        http.close()
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait(60)
        claims = [c for p in range(n_procs) for c in json.loads((data / f"claims-{p}.json").read_text())]
        with db.connect() as c:
            rows = c.execute(select(JobRow.id, JobRow.status, JobRow.attempts, JobRow.created_at, JobRow.started_at,
                                    JobRow.finished_at).where(JobRow.id >= first)).all()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)
        srv.stop()
    created = {r.id: epoch(r.created_at) for r in rows}
    failed = [r for r in rows if r.status != "succeeded"]
    if failed:
        raise RuntimeError(f"{len(failed)} jobs did not succeed: {failed[:3]}")
    return {
        "jobs": n_jobs, "submitted": n_jobs / (t_submitted - t0),
        "finished": n_jobs / (max(epoch(r.finished_at) for r in rows) - t0),
        "wait": [epoch(r.started_at) - epoch(r.created_at) for r in rows if r.started_at],
        # a job given to another worker (its first worker's heartbeat looked stale): attempts > 1, and when the
        # first worker finished it after the hand-over, no start time (the unfenced finish)
        "rerun": sum(r.attempts > 1 for r in rows), "unstarted": sum(r.started_at is None for r in rows),
        "claim": [end - max(start, created[job]) for job, start, end in claims if job in created],
        "api": (api1 - api0) / n_jobs, "workers": (workers1 - workers0) / n_jobs, "pg": pg_extra,
        **{kind: {k: (v - all0[kind].get(k, 0)) / n_jobs for k, v in all1[kind].items()}
           for kind in ("sites", "checkouts")},
        "idle": idle, "wall": t_done - t0, "cpu": {k: (cpu1[k] - cpu0[k]) / n_jobs * 1000 for k in cpu0},
        "sleep_cap": n_workers / (STEPS * step_s),  # jobs/s the workers' sleep alone allows (no control plane)
        "statements": statements,
    }


def report(backend: str, n_workers: int, r: dict) -> str:
    ms = lambda v, q: pct(v, q) * 1000  # noqa: E731
    pg = f"  pg xact_commit {r['pg']:5.1f}" if backend == "celery" else ""
    idle = f"  (idle: {r['idle']['commits_s']:.0f} commits/s" + (
        f", pg {r['idle']['pg_s']:.0f} xact/s)" if "pg_s" in r["idle"] else ")")
    return (f"{backend:<7}{n_workers:>4} | {r['submitted']:7.1f} -> {r['finished']:7.1f} | "
            f"{ms(r['wait'], .5):7.1f} {ms(r['wait'], .99):7.1f} | {ms(r['claim'], .5):7.1f} "
            f"{ms(r['claim'], .99):7.1f} | api {r['api']:4.1f}  workers {r['workers']:4.1f}{pg}  "
            f"(pool checkouts {sum(r['checkouts'].values()):.1f}){idle}"
            + (f"  [{r['rerun']} jobs handed on, {r['unstarted']} finished with no start]" if r["rerun"] else "")
            + f"\n    {r['jobs']} jobs in {r['wall']:.1f} s; commits per job by call site: " + ", ".join(
                f"{k} {v:.2f}" for k, v in sorted(r["sites"].items(), key=lambda kv: -kv[1]) if v >= 0.005)
            + "\n    pool checkouts per job by call site: " + ", ".join(
                f"{k} {v:.2f}" for k, v in sorted(r["checkouts"].items(), key=lambda kv: -kv[1]) if v >= 0.05)
            + "\n    CPU ms per job: " + ", ".join(f"{k} {v:.1f}" for k, v in r["cpu"].items())
            + f"; all {sum(r['cpu'].values()):.1f} ({os.cpu_count()} cores: a ceiling of "
            f"{os.cpu_count() * 1000 / sum(r['cpu'].values()):.0f} jobs/s; the workers' sleep alone caps it at "
            f"{r['sleep_cap']:.0f})"
            + "".join(f"\n    pg statement: {calls:5.2f} per job, {ms:5.2f} ms per job: {query}"
                      for calls, ms, query in r["statements"]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2 workers, 16 jobs, both backends")
    ap.add_argument("--workers", default="1,16,32,64", help="simulated worker counts, comma-separated (1..64); "
                    "n workers x 4 steps of --step-ms cap the rate at n / (4 x step) by sleep alone (8: 200 jobs/s)")
    ap.add_argument("--jobs", type=int, default=4000, help="jobs per case (after the warm-up burst), at most "
                    f"{JOBS_PER_WORKER} per simulated worker (one worker alone: {JOBS_PER_WORKER} jobs)")
    ap.add_argument("--backends", default="local,celery")
    ap.add_argument("--step-ms", type=float, default=10.0, help="the stand-in engine's time per step")
    ap.add_argument("--profile", type=Path, help="profile the API and workers with yappi into this folder")
    ap.add_argument("--pg-statements", action="store_true", help="print PostgreSQL's busiest statements per job "
                    "(pg_stat_statements, loaded for the run; it costs the server some CPU of its own)")
    ap.add_argument("--role", choices=("api", "workers"), help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--ids", help=argparse.SUPPRESS)
    ap.add_argument("--counts", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--claims", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.profile and args.role:
        profile_on_signal(args.profile)
    if args.role == "api":
        return serve_api(args.port, args.counts)
    if args.role == "workers":
        return run_workers(args.ids.split(","), args.step_ms / 1000, args.counts, args.claims)

    from tests.pgserver import PostgresServer
    from tests.redisserver import RedisServer

    counts = [2] if args.quick else [int(w) for w in args.workers.split(",")]
    n_jobs = 16 if args.quick else args.jobs
    backends = args.backends.split(",")
    servers: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        try:
            if "celery" in backends:
                servers["redis"] = RedisServer().start()
                servers["pg"] = pg = PostgresServer().start()
                with open(pg.root / "data" / "postgresql.conf", "a") as conf:
                    conf.write("\nmax_connections = 400\n")  # 64 workers x (claims + heartbeats) + the API
                    if args.pg_statements:
                        conf.write("shared_preload_libraries = 'pg_stat_statements'\n"
                                   "pg_stat_statements.track_planning = on\n")
                pg.pause()
                pg.resume()
            print(f"control plane bench ({datetime.now():%Y-%m-%d %H:%M}; up to {n_jobs} jobs x {STEPS} steps of "
                  f"{args.step_ms:g} ms, stand-in engine; {CLIENTS} HTTP clients; {os.cpu_count()} cores, "
                  f"load {os.getloadavg()[0]:.1f})")
            print("backend workers | jobs/s submitted -> finished | queue wait ms p50 p99 | claim ms p50 p99 | "
                  "commits per job", flush=True)
            for backend in backends:
                for n in counts:
                    r = run_case(backend, n, min(n_jobs, JOBS_PER_WORKER * n), args.step_ms / 1000, Path(tmp),
                                 servers, args.profile, args.pg_statements)
                    print(report(backend, n, r), flush=True)
        finally:
            for s in servers.values():
                s.stop()


if __name__ == "__main__":
    main()
