"""The worker process: claims job ids from the queue and runs them through the engine.

One process per worker; the HTTP process never runs a model. The worker heartbeats into the
shared database so the API can tell it is alive and what it holds.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal
import sys
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sqlalchemy.exc import SQLAlchemyError

from diffserve.config import BatchingSettings, Settings
from diffserve.engine.models.registry import ModelRegistry
from diffserve.jobqueue.configured import build_queue
from diffserve.jobqueue.base import JobQueue
from diffserve.jobqueue.signals import WorkerPipes
from diffserve.storage.configured import build_storage
from diffserve.store.control import ControlLog
from diffserve.store.db import make_db_engine
from diffserve.store.jobs import JobStore
from diffserve.store.progress import ProgressStore
from diffserve.store.workers import WorkerStore
from diffserve.workers.batcher import Batcher
from diffserve.workers.placement import worker_device, worker_labels
from diffserve.workers.orders import WorkerOrders
from diffserve.workers.recovery import release
from diffserve.workers.runner import STORE_RETRY_S, JobRunner

if TYPE_CHECKING:  # the model stack is imported by the worker process only (build_worker), never by the API
    from diffserve.engine.generate import Engine

log = logging.getLogger(__name__)

HEARTBEAT_S = 2.0
WATCHDOG_S = 0.5


@dataclass
class Worker:
    """The worker's loop: registers, heartbeats, applies orders between jobs, claims jobs and hands each to
    its runner (workers/runner.py) -- alone, or to the batcher, which runs it with what may share its ticks.
    Orders (store/control.py) are read only when there is a new one: the heartbeat and each job's start answer
    the control log's latest id (`runner.orders_head`); an idle worker applies them within HEARTBEAT_S, a
    claimed job after its start, before it runs."""

    worker_id: str
    runner: JobRunner
    preload: tuple[str, ...] = ()
    orders: WorkerOrders | None = None  # the API's control events (clear_cache, restart...)
    batching: BatchingSettings | None = None  # step-level batching (workers/batcher.py); None or mode off: none
    _batcher: Batcher | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.batching is not None and self.batching.mode == "on":
            self._batcher = Batcher(self.runner, self.batching, orders=self.orders)

    @property
    def engine(self) -> Engine:
        return self.runner.engine

    @property
    def workers(self) -> WorkerStore:
        return self.runner.workers

    @property
    def queue(self) -> JobQueue:
        return self.runner.queue

    def run(self, stop: threading.Event | None = None) -> bool:
        """Take jobs until `stop`; True when it ended for a restart order (the process should start afresh)."""
        stop = stop or threading.Event()
        restart = False
        if self._batcher is not None:
            self._batcher.stop = stop  # a stopping worker lets its batch drain, taking no new jobs
        self.workers.register(self.worker_id, os.getpid(), self.runner.labels)
        self.workers.set_device(self.worker_id, self.engine.device, self.engine.default_dtype(),
                                self.engine.pipelines.budget_bytes)
        if self.orders:
            self.orders.start(self.engine)
        beat = threading.Thread(target=self._heartbeat, args=(stop,), daemon=True)
        beat.start()
        self._preload()
        self.workers.update(self.worker_id, state="idle", models=self.engine.loaded_models())
        try:
            while not stop.is_set():
                try:
                    if self.orders and self.runner.orders_head > self.orders.seen \
                            and not self.orders.apply(self.engine, self.workers, self.worker_id):
                        restart = True  # exit cleanly between jobs; a fresh process takes over
                        break
                    job_id = self.queue.claim(self.worker_id, timeout=0.5, loaded=self.engine.loaded_models(),
                                              labels=self.runner.labels, start=True)
                except SQLAlchemyError as e:  # the store is away (a database restart): wait for it
                    log.warning("job store unreachable (%s); retrying", type(e).__name__)
                    stop.wait(STORE_RETRY_S)
                    continue
                if job_id is not None:
                    if not self.run_job(job_id):
                        restart = True
                        break
        finally:
            self.runner.stored(self.workers.remove, self.worker_id)
        return restart

    def _orders_before(self, job_id: int) -> bool:
        """Orders posted while this worker waited for the job (its model registered a moment ago...) apply
        before it runs: read only when the job's start answered a newer order id than this worker applied (an
        order posted before the job was submitted is in that answer). False: a restart order came; the job
        goes back to the queue for the next worker."""
        if self.orders is None or self.runner.orders_head <= self.orders.seen:
            return True
        if self.runner.stored(self.orders.apply, self.engine, self.workers, self.worker_id):
            return True
        self.runner.give_back(job_id)
        return False

    def run_job(self, job_id: int) -> bool:
        """Start the claimed job and run it: in a batch when batching is on and it can batch, else alone.
        False when a restart order came before it ran (the job went back to the queue)."""
        job = self.runner.start(job_id)
        if job is None:  # cancelled, finished or handed on meanwhile
            return True
        if not self._orders_before(job.id):
            return False
        if self._batcher is not None and self._batcher.run(job):
            return True  # it ran in a batch, with what joined it
        self.runner.run(job)
        return True

    def _preload(self) -> None:
        """Load the configured models before reporting ready, so the first request does not pay for it."""
        for model_id in self.preload:
            try:
                self.engine.pipelines.get(model_id)
            except Exception:
                log.exception("could not preload model %s; it will be loaded on first use", model_id)

    def _heartbeat(self, stop: threading.Event) -> None:
        """Beat every HEARTBEAT_S; exit at once if the serving process died (kill -9), so no orphan
        keeps running jobs that the next server start gives back to the queue."""
        parent = mp.parent_process()
        ticks = 0
        while not stop.wait(WATCHDOG_S):
            if parent is not None and not parent.is_alive():
                log.error("serving process is gone; exiting")
                os._exit(1)
            ticks += 1
            if ticks * WATCHDOG_S >= HEARTBEAT_S:
                ticks = 0
                try:
                    # one statement: the beat, the latest order's id (an idle worker applies new orders within a
                    # beat; a job's start answers it too, so orders posted before a job apply before it runs), and
                    # whether the held jobs are still this worker's (one handed on stops at its next step)
                    self.runner.check_claims()
                except Exception:  # a missed beat is not fatal; the next one retries
                    log.warning("heartbeat failed", exc_info=True)


def model_cache_budget(settings: Settings, device: str) -> int:
    """The model cache's budget in bytes: DIFFSERVE_MODEL_CACHE_GB, else a default from the device's memory."""
    from diffserve.engine.models.cache import GIB, default_budget_bytes

    if settings.engine.model_cache_gb is not None:
        return int(settings.engine.model_cache_gb * GIB)
    return default_budget_bytes(device)


def build_worker(settings: Settings, worker_id: str, pipes: WorkerPipes | None = None, *,
                 labels: tuple[str, ...] | None = None, device: str | None = None,
                 engine: Engine | None = None) -> Worker:
    """labels / device: a standalone worker's own (`diffserve worker --label --gpu`); else from its index.
    engine: one built elsewhere (bench/control_plane.py's stand-in); else the diffusion Engine on `device`."""
    from diffserve.engine.generate import Engine
    from diffserve.metrics import Metrics

    metrics = Metrics()  # PROMETHEUS_MULTIPROC_DIR comes from the API process that spawned this one

    db = make_db_engine(settings.db_url)
    registry = ModelRegistry.load(settings.models_path, settings.models_dir)
    device = device or worker_device(settings, worker_id)
    budget = model_cache_budget(settings, device)
    activations = int(settings.engine.activation_budget_gb * 1024**3) if settings.engine.activation_budget_gb else None
    engine = engine or Engine(
        registry, device=device, dtype=settings.engine.dtype, safety_checker=settings.engine.safety_checker,
        models_dir=settings.models_dir, max_models=settings.engine.max_loaded_models, cache_budget_bytes=budget,
        activation_budget_bytes=activations, vae_tiling_pixels=settings.engine.vae_tiling_pixels,
        compile_backend=settings.engine.compile_backend, compile_mode=settings.engine.compile_mode,
        cache_observer=metrics)
    jobs = JobStore(db)
    storage = build_storage(settings, db)  # local or S3, following update_s3 without a restart
    queue = build_queue(settings, db, wake=pipes,
                        on_orphan=lambda queue, job_id: release(jobs, queue, job_id, settings.worker.max_attempts))
    runner = JobRunner(
        worker_id=worker_id,
        ledger=jobs.ledger.using(queue),
        queue=queue,
        storage=storage,
        engine=engine,
        workers=WorkerStore(db),
        labels=labels if labels is not None else worker_labels(settings, worker_id),
        progress=ProgressStore(db),
        metrics=metrics,
        pipes=pipes,
        max_attempts=settings.worker.max_attempts,
    )
    return Worker(
        worker_id=worker_id,
        runner=runner,
        preload=tuple(settings.engine.preload_models),
        orders=WorkerOrders(ControlLog(db), registry=registry, storage=storage,
                            downloads=settings.models_dir / "downloads"),
        batching=settings.batching,
    )


def worker_main(settings: Settings, worker_id: str, pipes: WorkerPipes | None = None) -> None:
    """Entry point of a worker process (spawned by the supervisor)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides when we stop
    stop = threading.Event()  # this process's own: SIGTERM asks it to stop after the current job
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {worker_id} %(levelname)s %(name)s: %(message)s")
    import torch

    torch.set_num_threads(settings.engine.torch_threads or os.cpu_count() or 1)
    build_worker(settings, worker_id, pipes).run(stop)


def standalone_main(settings: Settings, *, labels: tuple[str, ...], gpu: int | None) -> int:
    """`diffserve worker`: one worker process of its own, beside a server on the same store (not spawned by it).
    It claims jobs like the server's workers; if it dies, the server gives its job to another worker once its
    heartbeat is older than DIFFSERVE_WORKER_STALE_S. SIGTERM or Ctrl-C: it finishes the current job first."""
    import socket

    import torch

    from diffserve.metrics import use_multiprocess_dir

    worker_id = f"{socket.gethostname()}-{os.getpid()}"
    use_multiprocess_dir(settings.data_dir / "metrics", wipe=False)  # the server's /metrics includes it
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {worker_id} %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(settings.engine.torch_threads or os.cpu_count() or 1)
    device = f"cuda:{gpu}" if gpu is not None else settings.engine.device
    if build_worker(settings, worker_id, labels=labels, device=device).run(stop):
        # restart_server: this machine's worker starts afresh in the same process slot (same arguments, new
        # pid), so a fleet restarts without a process manager on each machine
        log.info("restarting")
        logging.shutdown()
        os.execv(sys.executable, [sys.executable, "-m", "diffserve.cli.main", *sys.argv[1:]])
    return 0
