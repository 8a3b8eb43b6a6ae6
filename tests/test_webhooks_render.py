"""The webhook dispatcher renders a delivery's payload from its job at every attempt (webhooks/dispatcher.py), on a
real SQLite store and a real receiver on loopback, with no server: a render that fails is a failed attempt that is
retried (not a lost webhook), a job that is gone fails its delivery, and the body of the latest attempt is kept."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from diffserve.config import WebhookSettings
from diffserve.core.request import GenerationRequest
from diffserve.media.fetch import UrlPolicy
from diffserve.store.db import JobRow, WebhookDeliveryRow, make_db_engine
from diffserve.store.deliveries import DeliveryStore
from diffserve.store.jobs import JobStore, new_output_token
from diffserve.store.ledger import Outcome
from diffserve.store.schema import ensure_schema
from diffserve.webhooks.dispatcher import WebhookDispatcher

from .waiting import wait_until
from .webhook_receiver import Receiver

FAST = WebhookSettings(max_attempts=3, backoff_initial_s=0.2, backoff_factor=1, timeout_s=2, poll_interval_s=0.05,
                       concurrency=2)


@pytest.fixture
def db(tmp_path):
    engine = make_db_engine(f"sqlite:///{tmp_path / 'hooks.db'}")
    ensure_schema(engine)
    return engine


@pytest.fixture
def receiver():
    r = Receiver().start()
    yield r
    r.stop()


def finished_job(db, webhook: str) -> int:
    request = GenerationRequest(model_id="tiny-sd", prompt="x", init_image_key="inputs/x.png", width=64, height=64,
                                steps=4, guidance_scale=7.5, strength=0.7, seed=1, webhook=webhook)
    jobs = JobStore(db)
    job = jobs.ledger.create(key_id="k", dialect="native", request=request, output_token=new_output_token())
    assert jobs.ledger.finish(job.id, None, Outcome.succeeded(["generations/a-0.png"], [False]))
    return job.id


def delivery_row(db, job_id: int) -> tuple:
    with Session(db) as s:
        row = s.execute(select(WebhookDeliveryRow.state, WebhookDeliveryRow.attempts, WebhookDeliveryRow.payload,
                               WebhookDeliveryRow.last_error).where(WebhookDeliveryRow.job_id == job_id)).one()
        return tuple(row)


def dispatcher(db, render) -> WebhookDispatcher:
    return WebhookDispatcher(FAST, DeliveryStore(db), JobStore(db), render, UrlPolicy(allow_private=True))


def test_a_render_that_fails_is_retried_and_each_attempt_is_rendered_anew(db, receiver):
    job_id = finished_job(db, receiver.url)
    renders: list[int] = []

    def render(job):
        renders.append(job.id)
        if len(renders) == 1:
            raise ConnectionError("storage out of reach")  # e.g. the bucket of a base64 answer
        return {"id": job.id, "attempt": len(renders)}

    hooks = dispatcher(db, render)
    hooks.start()
    try:
        got = receiver.wait_for(1, timeout=15)
        wait_until(lambda: delivery_row(db, job_id)[0], 10, accept=lambda state: state == "delivered",
                   what="the delivery written as delivered")
    finally:
        hooks.stop()
    assert [r.payload for r in got] == [{"id": job_id, "attempt": 2}]  # rendered at the attempt that was made
    state, attempts, payload, error = delivery_row(db, job_id)
    assert (state, attempts, error) == ("delivered", 2, None) and json.loads(payload) == got[0].payload
    with Session(db) as s:
        assert s.scalar(select(JobRow.webhook_status).where(JobRow.id == job_id)) == "success"


def test_the_delivery_of_a_job_that_is_gone_fails(db, receiver):
    job_id = finished_job(db, receiver.url)
    with Session(db) as s, s.begin():
        s.execute(JobRow.__table__.delete().where(JobRow.id == job_id))
    hooks = dispatcher(db, lambda job: {"id": job.id})
    hooks.start()
    try:
        wait_until(lambda: delivery_row(db, job_id)[0], 10, accept=lambda state: state == "failed",
                   what="the delivery failed")
    finally:
        hooks.stop()
    assert delivery_row(db, job_id) == ("failed", 1, None, "the job is gone") and receiver.received == []
