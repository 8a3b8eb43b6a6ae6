"""The job runner (workers/runner.py) on a real SQLite store, with no server and no model: how a job's end is
written when its attempt was handed on, when its claim is lost mid-run, and when the storage is out of reach.
The engine is not needed for these ends: `NoModels` answers the two questions the runner asks of it."""

from __future__ import annotations

import pytest
from sqlalchemy.orm import Session

from diffserve.core.job import JobStatus
from diffserve.core.request import GenerationRequest
from diffserve.jobqueue.local import LocalQueue
from diffserve.storage.local import LocalStorage
from diffserve.storage.s3 import S3Config, S3Storage
from diffserve.store.db import QueueRow, WorkerRow, make_db_engine
from diffserve.store.jobs import JobStore, new_output_token
from diffserve.store.ledger import ClaimLost, Outcome
from diffserve.store.progress import ProgressStore
from diffserve.store.schema import ensure_schema
from diffserve.store.workers import WorkerStore
from diffserve.workers.recovery import release
from diffserve.workers.runner import JobRunner, is_transient

from .servers import free_port


class NoModels:
    """The runner asks the engine which models it holds (the worker row) and a model's preview colours."""

    def loaded_models(self) -> list[str]:
        return []

    def preview_rgb(self, _model_id: str) -> None:
        return None


@pytest.fixture
def db(tmp_path):
    engine = make_db_engine(f"sqlite:///{tmp_path / 'runner.db'}")
    ensure_schema(engine)
    return engine


def runner(db, worker_id: str, storage) -> JobRunner:
    queue = LocalQueue(db)
    WorkerStore(db).register(worker_id, 1)
    return JobRunner(worker_id, JobStore(db).ledger.using(queue), queue, storage, NoModels(), WorkerStore(db),
                     progress=ProgressStore(db), max_attempts=3)


def queued_job(db):
    request = GenerationRequest(model_id="tiny-sd", prompt="x", init_image_key="inputs/x.png", width=64, height=64,
                                steps=4, guidance_scale=7.5, strength=0.7, seed=1, samples=2)
    return JobStore(db).ledger.using(LocalQueue(db)).create(key_id="k", dialect="native", request=request,
                                                            output_token=new_output_token())


def claimed(db, r: JobRunner):
    assert r.queue.claim(r.worker_id, 0) is not None
    return r


def worker_state(db, worker_id: str) -> tuple:
    with Session(db) as s:
        row = s.get(WorkerRow, worker_id)
        return row.state, row.current_job


def test_a_late_finisher_writes_nothing_and_its_files_go(db, tmp_path):
    storage = LocalStorage(tmp_path / "files")
    jobs = JobStore(db)
    job = queued_job(db)
    first = claimed(db, runner(db, "w1", storage))
    started = first.start(job.id)
    assert started.attempts == 1 and worker_state(db, "w1") == ("busy", job.id)
    late_keys = first.write_outputs(started, [b"one", b"two"])  # w1 is cut off while it writes them
    assert release(jobs, first.queue, job.id, 3, holder="w1")  # ...and the server gives its job to w2
    second = claimed(db, runner(db, "w2", storage))
    again = second.start(job.id)
    keys = second.write_outputs(again, [b"ONE", b"TWO"])
    assert keys != late_keys and again.attempts == 2

    assert first.end(started, Outcome.succeeded(late_keys, [False, False]), 0.0) is None  # refused
    assert not any((tmp_path / "files" / k).exists() for k in late_keys)  # never pointed at: deleted
    assert worker_state(db, "w1") == ("idle", None)
    assert second.end(again, Outcome.succeeded(keys, [False, False]), 0.0) is JobStatus.SUCCEEDED
    done = jobs.get(job.id)
    assert done.outputs == keys and [storage.get(k) for k in done.outputs] == [b"ONE", b"TWO"]
    with Session(db) as s:
        assert s.get(QueueRow, job.id) is None


def test_a_run_learns_at_its_next_step_that_its_claim_was_taken_and_leaves_silently(db, tmp_path):
    jobs = JobStore(db)
    job = queued_job(db)
    r = claimed(db, runner(db, "w1", LocalStorage(tmp_path)))
    started = r.start(job.id)
    reporter = r.reporter(started)
    reporter.check_cancelled()  # still its own
    assert release(jobs, r.queue, job.id, 3, holder="w1")
    r.check_claims()  # the heartbeat's look
    with pytest.raises(ClaimLost) as lost:
        reporter.check_cancelled()
    assert r.end(started, lost.value, 0.0) is None
    after = jobs.get(job.id)
    assert after.status is JobStatus.QUEUED and after.error is None and r.queue.pending() == [job.id]
    assert worker_state(db, "w1") == ("idle", None) and r.held == {} and r.lost == set()


def test_storage_out_of_reach_gives_the_job_back_instead_of_failing_it(db):
    """S3 refusing connections (nothing listens on its port): a transient error, so the job goes back to the
    queue for another attempt -- it does not end `failed: EndpointConnectionError`."""
    s3 = S3Storage(S3Config(bucket="b", endpoint_url=f"http://127.0.0.1:{free_port()}", access_key_id="a",
                            secret_access_key="s"))
    jobs = JobStore(db)
    job = queued_job(db)
    r = claimed(db, runner(db, "w1", s3))
    r.run(r.start(job.id))
    after = jobs.get(job.id)
    assert after.status is JobStatus.QUEUED and after.error is None and after.attempts == 1
    assert r.queue.pending() == [job.id] and r.queue.claims() == []
    assert worker_state(db, "w1") == ("idle", None)


def test_what_counts_as_transient():
    from botocore.exceptions import EndpointConnectionError
    from sqlalchemy.exc import OperationalError

    assert is_transient(OperationalError("SELECT 1", {}, ConnectionResetError()))
    assert is_transient(EndpointConnectionError(endpoint_url="http://s3"))
    assert is_transient(ConnectionRefusedError()) and is_transient(TimeoutError())
    assert not is_transient(ValueError("bad image")) and not is_transient(FileNotFoundError("x"))


def test_a_job_fails_for_its_own_error(db, tmp_path):
    jobs = JobStore(db)
    job = queued_job(db)
    r = claimed(db, runner(db, "w1", LocalStorage(tmp_path)))
    r.run(r.start(job.id))  # its init image does not exist: the job's own error, not the road's
    failed = jobs.get(job.id)
    assert failed.status is JobStatus.FAILED and failed.error == "No such object: inputs/x.png"
    assert r.queue.pending() == []


def test_a_job_costs_four_transactions_from_submit_to_end(db, tmp_path):
    """create+enqueue 1, claim 1, start 1 (worker row busy inside), end 1 (queue ack, progress, delivery,
    worker row idle inside). Before the ledger: 2 + 1 + 2 + 4 (+1 for the webhook delivery row) = 10."""
    from sqlalchemy import event

    seen: list[int] = []
    event.listen(db, "commit", lambda _conn: seen.append(1))
    r = runner(db, "w1", LocalStorage(tmp_path))
    seen.clear()
    job = queued_job(db)
    claimed(db, r)
    started = r.start(job.id)
    keys = r.write_outputs(started, [b"a", b"b"])
    assert r.end(started, Outcome.succeeded(keys, [False, False]), 0.0) is JobStatus.SUCCEEDED
    assert len(seen) == 4


def test_a_cancel_asked_between_claim_and_start_ends_the_job_before_its_inputs_are_read(db, tmp_path):
    """The start answers the cancel flag (Ledger.begin); the run stops before reading its init image (which does
    not exist here: reading it would fail the job instead)."""
    jobs = JobStore(db)
    job = queued_job(db)
    r = claimed(db, runner(db, "w1", LocalStorage(tmp_path)))
    ProgressStore(db).request_cancel(job.id)
    r.run(r.start(job.id))
    assert jobs.get(job.id).status is JobStatus.CANCELLED and r.cancel_known == {}
    assert worker_state(db, "w1") == ("idle", None)
