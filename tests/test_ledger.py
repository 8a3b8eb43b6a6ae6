"""The job ledger (store/ledger.py), with no server: every state change is one transaction; a worker's writes
are fenced by its attempt; a finish interrupted at any statement -- an exception, or the process killed --
leaves the job either not finished or finished with everything that goes with it. SQLite and a real
PostgreSQL (tests/pgserver.py) alike."""

from __future__ import annotations

import contextlib
import itertools
import subprocess
import sys
import textwrap
from datetime import datetime

import pytest
from sqlalchemy import event, select, text
from sqlalchemy.orm import Session

from diffserve.core.job import JobStatus
from diffserve.core.request import GenerationRequest
from diffserve.jobqueue.local import LocalQueue
from diffserve.store.db import JobRow, ProgressRow, QueueRow, WebhookDeliveryRow, WorkerRow, make_db_engine
from diffserve.store.jobs import JobStore, new_output_token
from diffserve.store.ledger import ClaimLost, Ledger, Outcome
from diffserve.store.progress import ProgressStore
from diffserve.store.workers import WorkerStore
from diffserve.workers.recovery import release

from .databases import db, postgres, url  # noqa: F401 - fixtures

HOOK = "http://hooks.example/x"


def request_(webhook: str | None = None) -> GenerationRequest:
    return GenerationRequest(model_id="tiny-sd", prompt="x", init_image_key="inputs/x.png", width=64, height=64,
                             steps=4, guidance_scale=7.5, strength=0.7, seed=1, samples=2, webhook=webhook)


@contextlib.contextmanager
def commits(db):
    """Counts the transactions committed on `db` inside the block."""
    seen: list[int] = []

    def on_commit(_conn):
        seen.append(1)

    event.listen(db, "commit", on_commit)
    try:
        yield seen
    finally:
        event.remove(db, "commit", on_commit)


def running_job(db, worker="w1", webhook=HOOK):
    """A job created and queued, claimed and started by `worker`, with a progress preview and a worker row."""
    ledger, queue = Ledger(db), LocalQueue(db)
    WorkerStore(db).register(worker, 1)
    job = ledger.create(key_id="k", dialect="native", request=request_(webhook), output_token=new_output_token())
    assert queue.claim(worker, 0) == job.id
    job = ledger.start(job.id, worker)
    ProgressStore(db).report(job.id, 1, 4, 0.1, b"jpeg", attempt=job.attempts)
    return job


def one_statement(db) -> bool:
    """PostgreSQL: a finish is one statement in autocommit -- it lands with that statement; an error after it
    (at SQLAlchemy's commit, a no-op there) is an answer lost, as when the network drops it (the runner then
    finds its end landed: runner._landed). SQLite: several statements, landed at the commit."""
    return db.dialect.name == "postgresql"


def state(db, job_id: int) -> dict:
    with Session(db) as s:
        job = s.get(JobRow, job_id)
        queue_row = s.get(QueueRow, job_id)
        progress = s.get(ProgressRow, job_id)
        return {"status": job.status, "outputs": list(job.outputs), "attempts": job.attempts,
                "queue": queue_row.claimed_by if queue_row else None, "queued": queue_row is not None,
                "preview": progress.preview if progress else None,
                "deliveries": s.scalars(select(WebhookDeliveryRow.payload)
                                        .where(WebhookDeliveryRow.job_id == job_id)).all()}


def assert_all_or_nothing(db, job, worker="w1"):
    """Either the job is as it was while running, or finished with all that goes with it."""
    now = state(db, job.id)
    if now["status"] == "running":
        assert now == {**now, "queue": worker, "queued": True, "preview": b"jpeg", "deliveries": []}, now
        return False
    assert now == {**now, "status": "succeeded", "outputs": job.attempt_keys(job.attempts), "queued": False,
                   "preview": None, "deliveries": [None]}, now
    return True


def test_create_and_enqueue_is_one_transaction(db):
    with commits(db) as seen:
        job = Ledger(db).create(key_id="k", dialect="native", request=request_(), output_token=new_output_token())
    assert len(seen) == 1
    assert LocalQueue(db).pending() == [job.id] and job.status is JobStatus.QUEUED and job.webhook_status == ""


def test_finish_is_one_transaction_with_everything_that_goes_with_it(db, url):
    job = running_job(db)
    assert job.attempts == 1 and job.output_keys() == job.attempt_keys(1)
    listener = None
    if url.startswith("postgresql"):
        import psycopg

        listener = psycopg.connect(url.replace("+psycopg", ""), autocommit=True)
        listener.execute("LISTEN diffserve_job_done")
    outcome = Outcome.succeeded(job.attempt_keys(1), [False, False], {"device": "cpu", "dtype": "fp32"})
    with commits(db) as seen:
        assert Ledger(db).finish(job.id, 1, outcome, worker_id="w1",
                                 worker_row={"state": "idle", "current_job": None, "models": ["tiny-sd"]})
    assert len(seen) == 1  # job, queue ack, progress, webhook delivery, worker row, NOTIFY: one commit
    assert assert_all_or_nothing(db, job)
    done = JobStore(db).get(job.id)
    assert done.dialect_params["run"] == {"device": "cpu", "dtype": "fp32"} and done.webhook_status == "pending"
    with Session(db) as s:
        assert (s.get(WorkerRow, "w1").state, s.get(WorkerRow, "w1").models) == ("idle", ["tiny-sd"])
    if listener is not None:
        heard = [n.payload for n in listener.notifies(timeout=5, stop_after=1)]
        listener.close()
        assert heard == [str(job.id)]


def test_a_handed_on_attempt_changes_nothing(db):
    """w1 is cut off; its job goes back to the queue and w2 runs it as attempt 2. Whatever w1 writes later --
    progress, its finish, a queue ack or release, a give-back -- is refused; the job points at w2's files."""
    ledger, queue, progress, jobs = Ledger(db), LocalQueue(db), ProgressStore(db), JobStore(db)
    job = running_job(db, "w1")
    assert release(jobs, queue, job.id, max_attempts=3, holder="w1")  # w1 stopped beating
    assert queue.claim("w2", 0) == job.id
    second = ledger.start(job.id, "w2")
    assert second.attempts == 2 and not ledger.holds(job.id, 1) and ledger.holds(job.id, 2)
    assert ledger.start(job.id, "w1") is None  # w1 cannot start it again either

    with pytest.raises(ClaimLost):
        progress.report(job.id, 3, 4, 0.1, b"late", attempt=1)
    late = Outcome.succeeded(job.attempt_keys(1), [False, False])
    assert not ledger.finish(job.id, 1, late)
    assert not queue.ack(job.id, attempt=1) and not queue.release(job.id, attempt=1)
    assert not ledger.requeue(job.id, 3, "gone", holder="w1", attempt=1)
    assert not release(jobs, queue, job.id, max_attempts=3, holder="w1")  # a second recovery round
    assert state(db, job.id) == {**state(db, job.id), "status": "running", "attempts": 2, "queue": "w2"}

    progress.report(job.id, 3, 4, 0.1, b"ok", attempt=2)
    assert ledger.finish(job.id, 2, Outcome.succeeded(second.attempt_keys(2), [False, False]))
    assert not ledger.finish(job.id, 1, late)  # and after it, too
    done = jobs.get(job.id)
    assert done.outputs == second.attempt_keys(2) == done.output_keys()
    assert set(done.outputs).isdisjoint(job.attempt_keys(1)) and "-a2-" in done.outputs[0]


def test_requeue_fails_the_job_once_it_used_its_attempts(db):
    ledger, queue, jobs = Ledger(db), LocalQueue(db), JobStore(db)
    job = running_job(db, "w1")
    with commits(db) as seen:
        assert not release(jobs, queue, job.id, max_attempts=1, holder="w1")
    assert len(seen) == 1
    failed = jobs.get(job.id)
    assert failed.status is JobStatus.FAILED and "(1 attempts)" in failed.error
    assert state(db, job.id)["deliveries"] == [None] and not state(db, job.id)["queued"]
    assert not ledger.requeue(job.id, 3, "again")  # a finished job stays finished


def test_cancel_drops_a_queued_job_in_one_transaction_but_not_a_claimed_one(db):
    ledger, queue = Ledger(db), LocalQueue(db)
    a, b = (ledger.create(key_id="k", dialect="native", request=request_(HOOK), output_token=new_output_token())
            for _ in range(2))
    assert queue.claim("w", 0) == a.id
    with commits(db) as seen:
        assert ledger.cancel(b.id, "by test")
    assert len(seen) == 1 and state(db, b.id)["status"] == "cancelled" and not state(db, b.id)["queued"]
    assert state(db, b.id)["deliveries"] == [None]  # its webhook says so
    assert not ledger.cancel(a.id, "by test") and state(db, a.id)["status"] == "queued"


def test_a_finish_raising_at_any_statement_is_all_or_nothing(db):
    """An error at each statement of a finish (and at its commit): the job is left as it ran, every time."""
    for n in itertools.count(1):
        job = running_job(db, f"w{n}")
        seen = [0]

        def fail_at(*_args, **_kw):
            seen[0] += 1
            if seen[0] == n:
                raise RuntimeError(f"crash at statement {n}")

        event.listen(db, "before_cursor_execute", fail_at)
        event.listen(db, "commit", fail_at)
        try:
            Ledger(db).finish(job.id, job.attempts, Outcome.succeeded(job.attempt_keys(1), [False, False]))
            finished = True
        except RuntimeError:
            finished = False
        finally:
            event.remove(db, "before_cursor_execute", fail_at)
            event.remove(db, "commit", fail_at)
        landed = assert_all_or_nothing(db, job, f"w{n}")
        assert landed is (n > 1 if one_statement(db) else finished)
        if finished:
            assert n > (1 if one_statement(db) else 5)  # SQLite: update, queue, progress, delivery, worker, commit
            break


CHILD = textwrap.dedent("""
    import os, sys
    from sqlalchemy import event
    from diffserve.store.db import make_db_engine
    from diffserve.store.ledger import Ledger, Outcome
    url, job_id, keys, n = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(","), int(sys.argv[4])
    db = make_db_engine(url)
    seen = [0]
    def die_at(*_a, **_k):
        seen[0] += 1
        if seen[0] == n:
            os._exit(9)
    event.listen(db, "before_cursor_execute", die_at)
    event.listen(db, "commit", die_at)
    Ledger(db).finish(job_id, 1, Outcome.succeeded(keys, [False, False]))
    os._exit(0)
""")


def test_a_worker_killed_at_any_statement_of_a_finish_leaves_all_or_nothing(db, url):
    """The same with the process killed (os._exit) before each statement and before the commit."""
    for n in itertools.count(1):
        job = running_job(db, f"w{n}")
        child = subprocess.run([sys.executable, "-c", CHILD, url, str(job.id), ",".join(job.attempt_keys(1)), str(n)],
                               capture_output=True, text=True, timeout=120)
        assert child.returncode in (0, 9), child.stderr
        landed = assert_all_or_nothing(db, job, f"w{n}")
        assert landed is (n > 1 if one_statement(db) else child.returncode == 0)
        if child.returncode == 0:
            break


def test_the_upgrade_gives_finished_jobs_of_the_release_before_their_webhook_delivery(url):
    """Revision 0003: the dispatcher no longer looks for finished jobs with `webhook_status = 'pending'`, so the
    upgrade writes their deliveries (payload rendered at the first attempt); other jobs get none."""
    from alembic import command

    from diffserve.store.schema import _config, head, upgrade

    engine = make_db_engine(url)
    with engine.begin() as conn:
        command.upgrade(_config(conn), "0002")
    jobs = {"done": ("succeeded", "pending", HOOK), "sent": ("succeeded", "success", HOOK),
            "running": ("running", "pending", HOOK), "plain": ("failed", "", None)}
    with engine.begin() as conn:
        for i, (name, (status, hook_status, hook)) in enumerate(jobs.items(), 1):
            conn.execute(JobRow.__table__.insert().values(
                id=i, key_id="k", dialect="native", status=status, request=request_(hook).model_dump(mode="json"),
                dialect_params={}, output_token=name, outputs=[], nsfw=[], attempts=1, webhook_status=hook_status,
                created_at=datetime(2026, 1, 1)))
        conn.execute(text("INSERT INTO webhook_deliveries (job_id, delivery_id, url, payload, state, attempts, "
                          "next_attempt_at, created_at) VALUES (2, 'msg_sent', :u, '{}', 'delivered', 1, "
                          "'2026-01-01 00:00:00', '2026-01-01 00:00:00')"), {"u": HOOK})
    assert upgrade(engine) == ("0002", head())
    with Session(engine) as s:
        rows = s.execute(select(WebhookDeliveryRow.job_id, WebhookDeliveryRow.url, WebhookDeliveryRow.payload,
                                WebhookDeliveryRow.state).order_by(WebhookDeliveryRow.job_id)).all()
    assert [tuple(r) for r in rows] == [(1, HOOK, None, "pending"), (2, HOOK, "{}", "delivered")]
    engine.dispose()


def test_start_answers_a_cancel_asked_meanwhile_and_the_latest_order_in_its_one_transaction(db):
    """What the worker would read before the run comes back with the start: no reads of its own."""
    from diffserve.store.control import CLEAR_CACHE, ControlLog

    ledger, queue = Ledger(db), LocalQueue(db)
    WorkerStore(db).register("w1", 1)
    job = ledger.create(key_id="k", dialect="native", request=request_(), output_token=new_output_token())
    assert queue.claim("w1", 0) == job.id
    ProgressStore(db).request_cancel(job.id)  # a client cancels the claimed job before it starts
    order = ControlLog(db).post(CLEAR_CACHE)
    with commits(db) as seen:
        started = ledger.begin(job.id, "w1", worker_row={"state": "busy", "current_job": job.id})
    assert len(seen) == 1
    assert started.job.attempts == 1 and started.cancel_requested and started.orders_head == order
    assert state(db, job.id)["status"] == "running"
    with Session(db) as s:
        assert (s.get(WorkerRow, "w1").state, s.get(WorkerRow, "w1").current_job) == ("busy", job.id)
    other = ledger.create(key_id="k", dialect="native", request=request_(), output_token=new_output_token())
    assert queue.claim("w2", 0) == other.id
    assert ledger.begin(other.id, "w1") is None  # w2's claim: not w1's to start
    fresh = ledger.begin(other.id, "w2")
    assert not fresh.cancel_requested and fresh.orders_head == order


def test_start_drops_the_leftover_claim_of_a_finished_job(db):
    ledger, queue = Ledger(db), LocalQueue(db)
    job = ledger.create(key_id="k", dialect="native", request=request_(), output_token=new_output_token())
    assert queue.claim("w1", 0) == job.id
    with Session(db) as s, s.begin():  # finished elsewhere (management), its claim left behind
        s.get(JobRow, job.id).status = "cancelled"
    assert ledger.begin(job.id, "w1") is None
    assert state(db, job.id) == {**state(db, job.id), "status": "cancelled", "queued": False}


def test_a_claim_starts_its_job_in_its_own_statement_on_postgresql(db):
    """claim(start=True): on PostgreSQL one statement claims (rules 1-2: here its model is loaded) and starts
    the job (one round trip) and answers what `begin` would (attempt, cancel flag, latest order) through
    `started`, once; a cancel holding the job row meanwhile does not make it wait (no deadlock): it starts
    nothing, and the worker's own start finds the job cancelled. SQLite: the claim only claims; the worker
    starts the job (`started` answers None)."""
    from diffserve.store.control import CLEAR_CACHE, ControlLog

    ledger, queue = Ledger(db), LocalQueue(db)
    WorkerStore(db).register("w1", 1)
    job, other = (ledger.create(key_id="k", dialect="native", request=request_(), output_token=new_output_token())
                  for _ in range(2))
    ProgressStore(db).request_cancel(job.id)
    order = ControlLog(db).post(CLEAR_CACHE)
    with commits(db) as seen:
        assert queue.claim("w1", 0, loaded=["tiny-sd"], start=True) == job.id
    started = queue.started(job.id)
    assert queue.started(job.id) is None  # answered once
    if not one_statement(db):
        assert started is None and state(db, job.id)["status"] == "queued"
        return
    assert len(seen) == 1 and state(db, job.id)["status"] == "running"
    assert started.job.attempts == 1 and started.cancel_requested and started.orders_head == order
    with Session(db) as s:
        assert (s.get(WorkerRow, "w1").state, s.get(WorkerRow, "w1").current_job) == ("busy", job.id)
    with db.connect() as cancel:  # a cancel between its two statements: the job row changed and held
        cancel.execute(text("UPDATE jobs SET status = 'cancelled' WHERE id = :id"), {"id": other.id})
        assert queue.claim("w1", 0, loaded=["tiny-sd"], start=True) == other.id
        assert queue.started(other.id) is None
        cancel.execute(text("DELETE FROM local_queue WHERE job_id = :id"), {"id": other.id})
        cancel.commit()
    assert ledger.start(other.id, "w1") is None and state(db, other.id)["status"] == "cancelled"


def test_a_heartbeat_answers_the_latest_order_and_which_held_jobs_are_still_owned(db):
    """WorkerStore.beat: one statement beats and answers the control log's head and the fence of every held job
    (Ledger.holds's: running, same attempt), with or without the worker's row."""
    from diffserve.store.control import ControlLog

    ledger, queue, jobs, workers = Ledger(db), LocalQueue(db), JobStore(db), WorkerStore(db)
    job = running_job(db, "w1")
    other = running_job(db, "w1")
    order = ControlLog(db).post("clear_cache")
    assert workers.beat("w1") == (order, frozenset())
    assert workers.beat("w1", {job.id: 1, other.id: 1}) == (order, {job.id, other.id})
    assert workers.beat("w1", {job.id: 2}).owned == frozenset()  # not that attempt's
    assert release(jobs, queue, job.id, max_attempts=3, holder="w1")  # handed on
    assert queue.claim("w2", 0) == job.id and ledger.start(job.id, "w2").attempts == 2
    assert workers.beat("w1", {job.id: 1, other.id: 1}).owned == {other.id}
    workers.remove("w1")  # the row is gone: the answers still come
    assert workers.beat("w1", {other.id: 1}) == (order, {other.id}) and workers.live() == []
    assert ledger.finish(other.id, 1, Outcome.failed("x"))
    assert workers.beat("w2", {job.id: 2, other.id: 1}).owned == {job.id}  # w2 has no row here either


def test_a_start_answers_the_saved_storage_settings_version_on_postgresql(db):
    """The worker's storage polls the saved settings' version (storage/configured.py); on PostgreSQL a start --
    `begin`, or a claim that starts its job -- answers it in the same statement (0 before any save), so a busy
    worker needs no poll of its own. SQLite: not read (None)."""
    from diffserve.store.storage_config import StorageConfigStore

    ledger, queue = Ledger(db), LocalQueue(db)
    WorkerStore(db).register("w1", 1)
    first, second = (ledger.create(key_id="k", dialect="native", request=request_(), output_token=new_output_token())
                     for _ in range(2))
    assert queue.claim("w1", 0) == first.id
    started = ledger.begin(first.id, "w1")
    assert started.storage_version == (0 if one_statement(db) else None)
    saved = StorageConfigStore(db).save({"backend": "local"})
    assert queue.claim("w1", 0, loaded=["tiny-sd"], start=True) == second.id
    claimed = queue.started(second.id) or ledger.begin(second.id, "w1")
    assert claimed.job.attempts == 1
    assert claimed.storage_version == (saved if one_statement(db) else None)
