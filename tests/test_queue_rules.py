"""The local queue's claim rules (jobqueue/local.py) on SQLite and on a real PostgreSQL (tests/pgserver.py), where
the rules are other statements (one claim statement answering "anything waiting?" and a message's gone holder,
array parameters): affinity first, labels respected, the rule-3 scan, overdue jobs oldest first, a Celery
message's class, and the holder-gone answer."""

from __future__ import annotations

import itertools
from datetime import timedelta

import pytest
from sqlalchemy import update

from diffserve.config import QueueSettings
from diffserve.core.request import GenerationRequest
from diffserve.jobqueue.celery import CeleryQueue
from diffserve.jobqueue.local import LocalQueue
from diffserve.store.db import WorkerRow, utcnow
from diffserve.store.jobs import JobStore
from diffserve.store.workers import WorkerStore

from .databases import db, postgres, url  # noqa: F401 - fixtures

_names = itertools.count()


def _job(jobs: JobStore, model: str, label: str | None = None) -> int:
    """A job and its queue row (the ledger's create), as the API writes them."""
    request = GenerationRequest(model_id=model, prompt="p", init_image_key="k", width=64, height=64, steps=1,
                                guidance_scale=7.5, strength=0.5, seed=1, worker_label=label)
    return jobs.ledger.create(key_id="k", dialect="t", request=request, output_token=f"t{next(_names)}").id


def test_claim_rules_with_labels_and_loaded_models(db):
    jobs, workers = JobStore(db), WorkerStore(db)
    queue = LocalQueue(db, affinity_wait_s=60)
    for worker_id, models, labels in (("w0", ["A"], ()), ("w1", ["B"], ("h100",)), ("w2", [], ("h100",))):
        workers.register(worker_id, 1, labels)
        workers.update(worker_id, state="idle", models=models)
    j1, j2, j3, j4, j5 = (_job(jobs, "B"), _job(jobs, "A"), _job(jobs, "B", "h100"), _job(jobs, "C"),
                          _job(jobs, "A", "h100"))
    assert queue.claim("w0", 0, loaded=["A", "Z"]) == j2  # its own model first, though j1 is older
    assert queue.claim("w0", 0, loaded=["A"]) == j4  # rule 3: j1: w1 holds B; j3, j5: labelled h100
    assert queue.claim("w0", 0, loaded=["A"]) is None  # only B jobs left for it, and w1 holds B
    assert queue.claim("w2", 0, labels=["a100", "h100"]) == j5  # w0 holds A but may not take an h100 job
    assert queue.claim("w1", 0, loaded=["B"], labels=["h100"]) == j1
    assert LocalQueue(db, affinity_wait_s=0).claim("w0", 0, loaded=["A"]) is None  # j3 needs h100
    assert LocalQueue(db, affinity_wait_s=0).claim("w2", 0, labels=["h100"]) == j3  # overdue: oldest first
    assert queue.pending() == [j1, j2, j3, j4, j5] and queue.claimed_by("w0") == [j2, j4]


def test_a_message_class_claims_only_its_class_and_answers_a_gone_holder(db):
    """What a Celery message's claim uses (jobqueue/celery.py): the jobs of its class only (its label, or the
    unlabelled ones), whether others of that class wait, and who holds the message's job if that worker is gone."""
    jobs, workers = JobStore(db), WorkerStore(db)
    queue = LocalQueue(db, affinity_wait_s=60, live_worker_s=15)
    for worker_id in ("w1", "w2"):
        workers.register(worker_id, 1, ("h100",))
    plain, labelled, other = _job(jobs, "A"), _job(jobs, "A", "h100"), _job(jobs, "B", "h100")
    got = queue._claim_retried("w1", ["A"], ["h100"], "h100", message_job=labelled)
    assert got.job_id == labelled and got.orphan_of is None
    got = queue._claim_retried("w1", ["A"], ["h100"], "h100")  # B: no rule-3 bar (no other worker holds B)
    assert got.job_id == other
    got = queue._claim_retried("w2", ["A"], ["h100"], None, message_job=labelled)
    assert got.job_id == plain and got.orphan_of is None  # w1 holds `labelled` and beats
    celery = CeleryQueue(db, QueueSettings(backend="celery", broker_url="redis://127.0.0.1:9/0"), live_worker_s=15)
    assert celery._holder_gone(labelled, "w2") is None  # the same rule alone (no broker involved)
    with db.begin() as c:  # w1 falls silent
        c.execute(update(WorkerRow).where(WorkerRow.worker_id == "w1")
                  .values(heartbeat_at=utcnow() - timedelta(seconds=60)))
    got = queue._claim_retried("w2", ["A"], ["h100"], None, message_job=labelled)
    assert got.job_id is None and not got.waiting
    if db.dialect.name == "postgresql":  # the claim statement answers the gone holder
        assert got.orphan_of == "w1"
    assert celery._holder_gone(labelled, "w2") == "w1" and celery._holder_gone(labelled, "w1") is None
    assert celery._holder_gone(plain, "w1") is None  # w2 is alive
    workers.remove("w2")
    assert celery._holder_gone(plain, "w1") == "w2" and celery._holder_gone(9999, "w1") is None  # row gone; no job
    assert sorted(queue.claims()) == [(plain, "w2"), (labelled, "w1"), (other, "w1")]
