"""Delivery and storage as the API process runs them: built once with the app state.

- storage: the configured backend (local or S3; update_s3 switches it at run time)
- dispatcher: the webhook delivery thread (webhooks/dispatcher.py says why it lives here)
- cleaner: the thread deleting expired `temp` objects
- payloads: which dialect renders which webhook body (dialects register here)
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine

from diffserve.service.submit import job_base_url
from diffserve.config import Settings
from diffserve.core.job import Job
from diffserve.media.fetch import UrlPolicy
from diffserve.metrics import Metrics
from diffserve.storage.cleanup import TempCleaner
from diffserve.storage.configured import ConfiguredStorage
from diffserve.store.deliveries import DeliveryStore
from diffserve.store.jobs import JobStore
from diffserve.store.storage_config import StorageConfigStore
from diffserve.webhooks.dispatcher import WebhookDispatcher
from diffserve.webhooks.payloads import PayloadRenderers
from diffserve.api.modelslab.webhook import webhook_payload as modelslab_payload
from diffserve.api.qolaba.render import render_job as qolaba_payload


def build_payload_renderers() -> PayloadRenderers:
    """One line per dialect. ModelsLab's shape is the default for dialects that register none."""
    renderers = PayloadRenderers(default=modelslab_payload)
    for dialect in ("modelslab", "realtime", "pony"):
        renderers.register(dialect, modelslab_payload)
    renderers.register("qolaba", qolaba_payload)  # the envelope, as /getImage answers it
    return renderers


@dataclass
class DeliveryServices:
    storage: ConfiguredStorage
    storage_config: StorageConfigStore
    deliveries: DeliveryStore
    dispatcher: WebhookDispatcher
    cleaner: TempCleaner

    def start(self) -> None:
        self.dispatcher.start()
        self.cleaner.start()

    def stop(self) -> None:
        self.dispatcher.stop()
        self.cleaner.stop()


def build_delivery(settings: Settings, db: Engine, jobs: JobStore, storage: ConfiguredStorage,
                   renderers: PayloadRenderers | None = None, metrics: Metrics | None = None) -> DeliveryServices:
    renderers = renderers or build_payload_renderers()

    def render(job: Job) -> dict:  # the links of the job's own answers (one base-URL rule: job_base_url)
        return renderers.render(job, storage, job_base_url(job, settings.base_url))

    deliveries = DeliveryStore(db)
    dispatcher = WebhookDispatcher(settings.webhooks, deliveries, jobs, render,
                                   UrlPolicy(allow_private=settings.allow_private_urls),
                                   on_outcome=(lambda outcome: metrics.webhooks.labels(outcome).inc()) if metrics
                                   else None)
    cleaner = TempCleaner(storage, settings.storage.temp_ttl_s, settings.storage.cleanup_interval_s)
    return DeliveryServices(storage, StorageConfigStore(db), deliveries, dispatcher, cleaner)
