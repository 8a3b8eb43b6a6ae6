"""Core pieces on their own: loose coercion, output sizing, the job store, the local queue, recovery, keys."""

from __future__ import annotations

import sqlite3
import threading

import pytest
from pydantic import BaseModel

from diffserve.api.body import parse_model
from diffserve.api.loose import LooseBool, LooseFloat, LooseInt
from diffserve.core.errors import InvalidInput
from diffserve.core.job import JobStatus
from diffserve.core.request import GenerationRequest, ModelLimits, RequestDraft, output_size
from diffserve.jobqueue.local import LocalQueue
from diffserve.store.db import make_db_engine
from diffserve.store.schema import ensure_schema
from diffserve.store.jobs import JobStore, new_output_token
from diffserve.store.keys import KeyStore
from diffserve.workers.recovery import recover_jobs


class Loose(BaseModel):
    i: LooseInt = None
    f: LooseFloat = None
    b: LooseBool = None


@pytest.mark.parametrize("raw,expected", [("31", 31), (31, 31), (31.0, 31), (" 7 ", 7), ("4e1", 40),
                                          (None, None), ("", None)])
def test_loose_int(raw, expected):
    assert Loose(i=raw).i == expected


@pytest.mark.parametrize("raw", ["31.5", 31.5, True, "abc", [1], float("nan"), "inf"])
def test_loose_int_refuses(raw):
    with pytest.raises(InvalidInput, match="i must be an integer"):
        parse_model(Loose, {"i": raw})


@pytest.mark.parametrize("raw,expected", [("7.5", 7.5), (7, 7.0), (None, None)])
def test_loose_float(raw, expected):
    assert Loose(f=raw).f == expected


@pytest.mark.parametrize("raw", ["nan", "Infinity", float("inf"), False, "x"])
def test_loose_float_refuses(raw):
    with pytest.raises(InvalidInput, match="f must be a"):
        parse_model(Loose, {"f": raw})


@pytest.mark.parametrize("raw,expected", [("yes", True), ("no", False), (True, True), ("false", False),
                                          (1, True), ("0", False), ("YES", True), (None, None)])
def test_loose_bool(raw, expected):
    assert Loose(b=raw).b == expected


@pytest.mark.parametrize("raw", ["maybe", 2, 0.5, [True]])
def test_loose_bool_refuses(raw):
    with pytest.raises(InvalidInput, match="b must be"):
        parse_model(Loose, {"b": raw})


LIMITS = ModelLimits(min_size=64, max_size=1024)


@pytest.mark.parametrize("init,wh,expected", [
    ((736, 736), (None, None), (736, 736)),
    ((737, 739), (None, None), (736, 736)),
    ((100, 70), (None, None), (96, 64)),
    ((4000, 3000), (None, None), (1024, 768)),  # too large: scaled to fit, aspect kept
    ((500, 500), (512, 256), (512, 256)),
    ((400, 200), (256, None), (256, 128)),
])
def test_output_size(init, wh, expected):
    got = output_size(*init, *wh, LIMITS)
    assert got == expected
    assert got[0] % 8 == 0 and got[1] % 8 == 0


def test_output_size_too_small():
    with pytest.raises(InvalidInput, match="init_image is too small: 40x40"):
        output_size(40, 40, None, None, LIMITS)


@pytest.fixture
def db(tmp_path):
    engine = make_db_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    ensure_schema(engine)
    return engine


def make_request(**over) -> GenerationRequest:
    draft = RequestDraft(model_id="tiny-sd", prompt="p", init_image="x", **over)
    return draft.resolve(LIMITS, init_image_key="inputs/x.png", width=64, height=64, seed=1)


def test_draft_resolve_takes_model_defaults():
    r = make_request()
    assert (r.steps, r.guidance_scale, r.strength, r.samples) == (31, 7.5, 0.7, 1)


def test_job_lifecycle(db):
    jobs = JobStore(db)
    job = jobs.create(key_id="k", dialect="modelslab", request=make_request(samples=2),
                      output_token=new_output_token())
    assert job.status is JobStatus.QUEUED and not job.status.is_terminal()
    assert len(job.output_keys()) == 2
    running = jobs.start(job.id, "w1")
    assert running.status is JobStatus.RUNNING and running.attempts == 1
    assert jobs.start(job.id, "w2") is None  # already running: a second worker cannot take it
    jobs.succeed(job.id, job.output_keys(), [False, False])
    done = jobs.get(job.id)
    assert done.status is JobStatus.SUCCEEDED and done.status.is_terminal()
    assert done.outputs == job.output_keys() and done.generation_time is not None
    jobs.fail(job.id, "late failure")  # a terminal job stays as it ended
    assert jobs.get(job.id).status is JobStatus.SUCCEEDED


def test_local_queue_gives_each_job_to_exactly_one_worker(db):
    jobs, queue = JobStore(db), LocalQueue(db)
    ids = [jobs.create(key_id="k", dialect="m", request=make_request(), output_token=new_output_token()).id
           for _ in range(40)]
    for i in ids:
        queue.enqueue(i)
    claimed: dict[str, list[int]] = {"a": [], "b": [], "c": []}

    def drain(worker):
        while (job_id := queue.claim(worker, timeout=0.05)) is not None:
            claimed[worker].append(job_id)

    threads = [threading.Thread(target=drain, args=(w,)) for w in claimed]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    got = sorted(j for js in claimed.values() for j in js)
    assert got == ids
    assert queue.claimed_by("a") == sorted(claimed["a"])
    for i in ids:
        queue.ack(i)
    assert queue.pending() == []


def test_cancel_only_unclaimed(db):
    jobs, queue = JobStore(db), LocalQueue(db)
    a, b = (jobs.create(key_id="k", dialect="m", request=make_request(), output_token=new_output_token()).id
            for _ in range(2))
    queue.enqueue(a)
    queue.enqueue(b)
    assert queue.claim("w", 0) == a
    assert not queue.cancel(a) and queue.cancel(b)
    assert jobs.cancel(b, "cancelled by test") and jobs.get(b).status is JobStatus.CANCELLED


def test_recovery_requeues_then_fails_after_max_attempts(db):
    jobs, queue = JobStore(db), LocalQueue(db)
    job = jobs.create(key_id="k", dialect="m", request=make_request(), output_token=new_output_token())
    lost = jobs.create(key_id="k", dialect="m", request=make_request(), output_token=new_output_token())
    queue.enqueue(job.id)  # `lost` never reached the queue (crash between create and enqueue)
    for attempt in range(1, 4):
        assert queue.claim("w", 0) == job.id
        assert jobs.start(job.id, "w").attempts == attempt
        recover_jobs(jobs, queue, max_attempts=3)  # the worker "crashed"
    final = jobs.get(job.id)
    assert final.status is JobStatus.FAILED and "3 attempts" in final.error
    assert queue.pending() == [lost.id] and jobs.get(lost.id).status is JobStatus.QUEUED


def test_keys_are_stored_hashed_and_checked(db, tmp_path):
    keys = KeyStore(db)
    k, full = keys.create("alice")
    admin, admin_full = keys.create("root", role="admin")
    assert keys.verify(full).key_id == k.key_id and not keys.verify(full).is_admin
    assert keys.verify(admin_full).is_admin
    assert keys.verify(full[:-1] + ("x" if full[-1] != "x" else "y")) is None
    assert keys.verify("") is None and keys.verify(None) is None
    with sqlite3.connect(tmp_path / "db.sqlite") as raw:
        dump = "\n".join(raw.iterdump())
    assert full not in dump and full[12:] not in dump
    assert [r.name for r in keys.revoke("alice")] == ["alice"]
    assert keys.verify(full) is None and keys.verify(admin_full) is not None
    assert keys.revoke(full[:5]) == []  # a bare prefix revokes nothing


def test_a_periodic_round_that_fails_is_logged_and_the_next_round_runs(caplog):
    import logging
    import threading

    from diffserve.core.threads import periodic

    rounds, third = [], threading.Event()

    def round_():
        rounds.append(len(rounds))
        if len(rounds) == 1:
            raise ConnectionError("the store is away")
        if len(rounds) == 3:
            third.set()

    background = periodic("probe", round_, 0.01, failure="probe round failed; retrying")
    with caplog.at_level(logging.WARNING, logger="diffserve.core.threads"):
        background.start()
        assert third.wait(5)
        background.stop()
    count = len(rounds)
    assert "probe round failed; retrying" in caplog.text and "the store is away" in caplog.text
    threading.Event().wait(0.05)
    assert len(rounds) == count  # stopped: no round after stop()


def test_a_periodic_round_can_wait_its_first_interval():
    from diffserve.core.threads import periodic

    rounds = []
    background = periodic("probe", lambda: rounds.append(1), 30.0, first_now=False)
    background.start()
    background.stop()  # halted inside its first wait: no round ran, and stop did not wait 30 s
    assert rounds == []
