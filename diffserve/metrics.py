"""Prometheus metrics, correct across the API process and every worker process (prometheus-client's
multiprocess mode: each process writes its samples to files in one folder; `/metrics` merges them).

Every process builds one `Metrics` (its own CollectorRegistry, so tests may build several) after
`use_multiprocess_dir` has set PROMETHEUS_MULTIPROC_DIR: prometheus-client reads that variable when it is
first imported, which is why nothing imports it at module level and the API sets the folder before its
worker processes are spawned (they inherit it).

| metric | type | labels |
|---|---|---|
| diffserve_jobs_total | counter | dialect, model, status (succeeded, failed, cancelled) |
| diffserve_queue_wait_seconds | histogram | model (created -> a worker started it) |
| diffserve_job_run_seconds | histogram | model (started -> finished) |
| diffserve_denoise_steps_total | counter | model (rate() = steps/s) |
| diffserve_batch_rows | histogram | model (image rows per denoising call: samples today) |
| diffserve_model_loads_total, diffserve_model_evictions_total | counter | model |
| diffserve_model_load_seconds | histogram | model |
| diffserve_webhook_deliveries_total | counter | outcome (delivered, retry, failed) |
| diffserve_http_requests_total | counter | route (the path template), method, status |
| diffserve_http_request_seconds | histogram | route, method |
| diffserve_queue_depth | gauge, read from the store at scrape | model, label, state (waiting, running) |
| diffserve_workers | gauge, read from the store at scrape | state |
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Callable, Iterable

SECONDS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900)


def use_multiprocess_dir(folder: Path, *, wipe: bool) -> None:
    """Point this process (and the processes it spawns) at `folder`; `wipe`: a fresh start (the API)."""
    if wipe and folder.exists():
        shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder)


WEBHOOK_OUTCOMES = ("delivered", "retry", "failed")  # webhooks/dispatcher.py on_outcome


class Metrics:
    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry = CollectorRegistry()
        r = self.registry
        self.jobs = Counter("diffserve_jobs_total", "Jobs finished", ["dialect", "model", "status"], registry=r)
        self.queue_wait = Histogram("diffserve_queue_wait_seconds", "Time from submit to a worker starting the job",
                                    ["model"], buckets=SECONDS, registry=r)
        self.run_time = Histogram("diffserve_job_run_seconds", "Time a worker spent on a job", ["model"],
                                  buckets=SECONDS, registry=r)
        self.steps = Counter("diffserve_denoise_steps_total", "Denoising steps run", ["model"], registry=r)
        self.batch_rows = Histogram("diffserve_batch_rows", "Image rows per denoising call", ["model"],
                                    buckets=(1, 2, 4, 8, 16, 32, 64), registry=r)
        self.model_loads = Counter("diffserve_model_loads_total", "Models loaded", ["model"], registry=r)
        self.model_evictions = Counter("diffserve_model_evictions_total", "Models evicted", ["model"], registry=r)
        self.model_load_time = Histogram("diffserve_model_load_seconds", "Time to load a model", ["model"],
                                         buckets=SECONDS, registry=r)
        self.webhooks = Counter("diffserve_webhook_deliveries_total", "Webhook attempts by outcome", ["outcome"],
                                registry=r)
        for outcome in WEBHOOK_OUTCOMES:  # every outcome's series exists (at 0) before the first delivery
            self.webhooks.labels(outcome)
        self.http = Counter("diffserve_http_requests_total", "HTTP requests", ["route", "method", "status"],
                            registry=r)
        self.http_time = Histogram("diffserve_http_request_seconds", "HTTP request time", ["route", "method"],
                                   buckets=SECONDS, registry=r)

    # the model cache's observer (engine/models/cache.py): the worker hands this to its engine
    def model_loaded(self, model_id: str, seconds: float) -> None:
        self.model_loads.labels(model_id).inc()
        self.model_load_time.labels(model_id).observe(seconds)

    def model_evicted(self, model_id: str) -> None:
        self.model_evictions.labels(model_id).inc()


def exposition(gauges: Callable[[], Iterable[tuple[str, str, dict[str, str], float]]]) -> tuple[bytes, str]:
    """The text format for /metrics: every process's samples, plus gauges read now from the store
    (`gauges()` yields (name, help, labels, value))."""
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
    from prometheus_client.core import GaugeMetricFamily
    from prometheus_client.multiprocess import MultiProcessCollector

    class StoreGauges:
        def collect(self) -> Iterable[Any]:
            families: dict[str, GaugeMetricFamily] = {}
            for name, help_text, labels, value in gauges():
                family = families.get(name)
                if family is None:
                    family = families[name] = GaugeMetricFamily(name, help_text, labels=list(labels))
                family.add_metric(list(labels.values()), value)
            return list(families.values())

    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    registry.register(StoreGauges())
    return generate_latest(registry), CONTENT_TYPE_LATEST
