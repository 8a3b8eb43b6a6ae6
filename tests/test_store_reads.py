"""The API's hot reads, each polled by every client: a queued job's place in the queue, the SQLite pool and
its autocommit connections, the base URL of the links an answer holds."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import event, text
from starlette.requests import Request

from diffserve.api.base_url import KEPT, BaseUrls
from diffserve.config import ServerSettings
from diffserve.core.job import JobStatus
from diffserve.store import jobs as jobs_module
from diffserve.store.db import autocommit, make_db_engine
from diffserve.store.jobs import JobStore, new_output_token
from diffserve.store.schema import ensure_schema

from .test_core import make_request


@pytest.fixture
def db(tmp_path):
    engine = make_db_engine(f"sqlite:///{tmp_path / 'db.sqlite'}", pool_size=8)
    ensure_schema(engine)
    return engine


def _queue(jobs: JobStore, n: int) -> list[int]:
    return [jobs.create(key_id="k", dialect="m", request=make_request(), output_token=new_output_token()).id
            for _ in range(n)]


def test_a_jobs_position_counts_the_unfinished_jobs_ahead_and_follows_the_queue(db, monkeypatch):
    jobs = JobStore(db)
    ids = _queue(jobs, 6)
    assert [jobs.position(i) for i in ids] == [0, 1, 2, 3, 4, 5]
    jobs.start(ids[0], "w1")  # running: still ahead of the others
    jobs.succeed(ids[1], [], [])  # finished (never ran here): no longer ahead
    jobs.fail(ids[2], "boom")
    assert jobs.position(ids[5]) == 5  # read within POSITIONS_FRESH_S: the snapshot of a moment ago
    monkeypatch.setattr(jobs_module, "POSITIONS_FRESH_S", 0.0)
    assert [jobs.position(i) for i in (ids[0], ids[3], ids[4], ids[5])] == [0, 1, 2, 3]
    later = _queue(jobs, 1)[0]  # a job created after the last read is behind every unfinished one
    assert jobs.position(later) == 4 and jobs.get(later).status is JobStatus.QUEUED


def test_positions_read_once_per_interval_whatever_the_number_of_fetches(db):
    jobs = JobStore(db)
    ids = _queue(jobs, 20)
    reads = []
    event.listen(db, "before_cursor_execute", lambda *a: reads.append(a[2]))
    for _ in range(5):
        assert [jobs.position(i) for i in ids] == list(range(20))
    assert len(reads) <= 1, reads  # at most the one refresh, not a COUNT per fetch


def test_recent_durations_are_read_once_per_interval_per_limit_and_follow_new_jobs(db, monkeypatch):
    jobs = JobStore(db)
    ids = _queue(jobs, 3)
    for job_id in ids[:2]:
        jobs.start(job_id, "w1")
        jobs.succeed(job_id, [], [])
    reads = []
    event.listen(db, "before_cursor_execute", lambda *a: reads.append(a[2]))
    assert len(jobs.recent_durations()) == 2 and len(jobs.recent_durations(limit=1)) == 1
    jobs.recent_durations().clear()  # a caller's copy: the kept list is not changed
    assert [len(jobs.recent_durations()) for _ in range(5)] == [2] * 5 and len(reads) == 2  # one per limit
    jobs.start(ids[2], "w1")
    jobs.succeed(ids[2], [], [])
    assert len(jobs.recent_durations()) == 2  # within DURATIONS_FRESH_S: as read a moment ago
    monkeypatch.setattr(jobs_module, "DURATIONS_FRESH_S", 0.0)
    assert len(jobs.recent_durations()) == 3


def test_autocommit_use_of_a_pooled_sqlite_connection_leaves_transactions_atomic(db):
    """A connection handed back from autocommit use (writes commit at once) takes part in a transaction as
    before when it is taken again: a transaction that fails changes nothing."""
    with autocommit(db).connect() as c:
        c.execute(text("CREATE TABLE t (x INTEGER)"))
        c.execute(text("INSERT INTO t VALUES (1)"))  # committed without a commit
    with pytest.raises(RuntimeError):
        with db.begin() as c:
            c.execute(text("INSERT INTO t VALUES (2)"))
            raise RuntimeError("the transaction fails")
    with db.connect() as c:
        assert c.execute(text("SELECT x FROM t")).scalars().all() == [1]


def test_the_pool_keeps_a_connection_per_thread_instead_of_opening_one_per_call(db):
    opened = []
    event.listen(db, "connect", lambda *a: opened.append(1))
    jobs = JobStore(db)
    job_id = _queue(jobs, 1)[0]
    barrier = threading.Barrier(8)

    def reader() -> None:
        barrier.wait()
        for _ in range(50):
            assert jobs.get(job_id) is not None

    threads = [threading.Thread(target=reader) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(opened) <= 8, len(opened)  # 8 threads x 50 reads: at most one connection each


def _request(host: str | None, server=("127.0.0.1", 8000), scheme: str = "http", root_path: str = "") -> Request:
    headers = [(b"host", host.encode())] if host is not None else []
    return Request({"type": "http", "method": "GET", "path": "/", "headers": headers, "scheme": scheme,
                    "server": server, "root_path": root_path, "query_string": b""})


def test_base_urls_follow_a_trusted_host_and_never_a_forged_one():
    urls = BaseUrls(ServerSettings(), "http://127.0.0.1:8000")
    assert urls(_request("localhost:8000")) == "http://localhost:8000"
    assert urls(_request("evil.example:8000")) == "http://127.0.0.1:8000"  # the socket, not the forged Host
    assert urls(_request("localhost:8000")) == "http://localhost:8000"  # asked again: still its own answer
    assert urls(_request("localhost:9000", root_path="/ds")) == "http://localhost:9000/ds"
    assert urls(_request("evil.example", server=("::1", 8000))) == "http://[::1]:8000"
    assert urls(_request(None, server=None)) == "http://127.0.0.1:8000"  # a Unix socket: the bind address
    public = BaseUrls(ServerSettings(public_url="https://img.example.com/"), "http://127.0.0.1:8000")
    assert public(_request("localhost:8000")) == "https://img.example.com"


def test_base_urls_remember_a_bounded_number_of_hosts():
    urls = BaseUrls(ServerSettings(), "http://127.0.0.1:8000")
    for i in range(3 * KEPT):
        assert urls(_request(f"forged-{i}.example")) == "http://127.0.0.1:8000"
    assert len(urls._known) <= KEPT
