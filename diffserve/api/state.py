"""What the HTTP process holds: built once at start-up from Settings and kept on app.state."""

from __future__ import annotations

from dataclasses import dataclass, field

import httpx
from fastapi import Request

from diffserve.config import Settings
from diffserve.core.offload import Offload
from diffserve.engine.models.registry import ModelRegistry
from diffserve.management.registrations import RegistrationFollower
from diffserve.metrics import Metrics
from diffserve.jobqueue.configured import build_queue
from diffserve.jobqueue.base import JobQueue
from diffserve.jobqueue.signals import CompletionBroadcaster, LocalSignals
from diffserve.service.admission import QueueCaps
from diffserve.service.submit import GenerationService
from diffserve.storage.configured import build_storage
from diffserve.store.control import ControlLog
from diffserve.store.db import make_db_engine
from diffserve.store.schema import ensure_schema
from diffserve.store.jobs import JobStore
from diffserve.store.key_options import KeyOptions
from diffserve.store.keys import KeyStore, KnownKeys
from diffserve.store.notify import StoreListener, listens
from diffserve.store.progress import ProgressStore
from diffserve.store.workers import WorkerStore
from diffserve.workers.supervisor import Supervisor
from diffserve.api.background import DeliveryServices, build_delivery
from diffserve.api.base_url import BaseUrls


@dataclass
class AppState:
    settings: Settings
    registry: ModelRegistry
    keys: KeyStore
    workers: WorkerStore
    service: GenerationService  # submission, validation, waits, the per-key cap (service.caps)
    http: httpx.Client
    delivery: DeliveryServices  # webhooks, temp cleanup, storage and its saved settings
    control: ControlLog  # orders to every worker (clear_cache, restart...): api/management
    queue: JobQueue  # read for the queue-depth gauges and by management
    key_options: KeyOptions  # per-key client settings (the A1111 API's /options)
    registrations: RegistrationFollower  # models other API processes add or delete
    # what only some deployments have:
    supervisor: Supervisor | None = None  # local worker processes (`serve --workers N`, N > 0)
    metrics: Metrics | None = None  # this process's Prometheus samples (diffserve/metrics.py)
    listener: StoreListener | None = None  # PostgreSQL: jobs finished anywhere wake waiters, revoked keys drop
    base_urls: BaseUrls = field(init=False)  # the base-URL rule (api/base_url.py), from settings

    def __post_init__(self) -> None:
        self.base_urls = BaseUrls(self.settings.server, self.settings.base_url)

    @property
    def offload(self) -> Offload:
        """`await ds.offload(fn, *args)`: every blocking call of a handler (store, storage, image work)."""
        return self.service.offload

    def base_url(self, request: Request) -> str:
        """The base of every URL an answer to `request` holds (api/base_url.py)."""
        return self.base_urls(request)

    def close(self) -> None:
        self.delivery.stop()
        if self.supervisor:
            self.supervisor.stop()
        if self.listener:
            self.listener.stop()
        self.registrations.stop()
        if self.service.completions:
            self.service.completions.stop()
        self.http.close()


def build_state(settings: Settings, *, run_workers: bool, metrics: Metrics | None = None,
                offload: Offload | None = None) -> AppState:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    db = make_db_engine(settings.db_url, pool_size=settings.server.blocking_threads)  # one per offload thread
    ensure_schema(db)
    signals = LocalSignals() if run_workers else None
    jobs, workers = JobStore(db), WorkerStore(db)
    queue = build_queue(settings, db, notify=signals.job_ready if signals else None)
    registry = ModelRegistry.load(settings.models_path, settings.models_dir)
    http = httpx.Client(timeout=settings.images.fetch_timeout_s, follow_redirects=False)
    completions = CompletionBroadcaster(signals) if signals or listens(settings.db_url) else None
    known_keys = listener = None
    if completions and listens(settings.db_url):  # revocations are heard: verified keys are kept (store/keys.py)
        known_keys = KnownKeys()
        listener = StoreListener(settings.db_url, completions.job_done_elsewhere, on_revoked=known_keys.revoked,
                                 on_listening=known_keys.listening)
    storage = build_storage(settings, db)
    offload = offload or Offload(settings.server.blocking_threads)
    delivery = build_delivery(settings, db, jobs, storage, metrics=metrics)
    caps = QueueCaps(jobs, settings.limits.max_queued_per_key, offload)
    progress = ProgressStore(db)
    service = GenerationService(settings, jobs, queue, storage, registry, http, completions, caps=caps,
                                progress=progress, workers=workers, offload=offload)
    supervisor = Supervisor(settings, jobs, queue, workers, signals) if signals else None
    control = ControlLog(db)
    return AppState(settings, registry, KeyStore(db, known_keys), workers, service, http, delivery=delivery,
                    control=control, queue=queue, key_options=KeyOptions(db),
                    registrations=RegistrationFollower(control, registry), supervisor=supervisor, metrics=metrics,
                    listener=listener)


def app_state(request: Request) -> AppState:
    return request.app.state.ds
