"""No job is lost: queued and running jobs survive a crash of the whole server, and waiting past the
sync limit answers `processing`."""

from __future__ import annotations

import signal
import sqlite3
import time

import pytest

from . import web
from .servers import DiffserveServer, png_bytes
from .waiting import wait_until

IMG2IMG = "/api/v6/images/img2img"


def start_slow_server(data_dir, models_root, image_host) -> DiffserveServer:
    # answers `processing` at once (sync wait 0), and its jobs are big enough to still be queued when we kill it
    srv = DiffserveServer(data_dir, models_root, {"DIFFSERVE_SYNC_WAIT_S": "0"}).start()
    image_host.add("/big.png", png_bytes(128, 128))
    return srv


@pytest.fixture(scope="module")
def crash_server(tmp_path_factory, models_root, image_host):
    """Shared by the sync-wait test and the whole-server crash (which kills and restarts it): one start fewer."""
    srv = start_slow_server(tmp_path_factory.mktemp("restart") / "data", models_root, image_host)
    yield srv
    srv.stop(signal.SIGKILL)


@pytest.fixture
def slow_server(tmp_path, models_root, image_host):
    """A server of its own: the killed-worker test starts with its worker idle."""
    srv = start_slow_server(tmp_path / "data", models_root, image_host)
    yield srv
    srv.stop(signal.SIGKILL)


def slow_body(key, image_host, seed):
    return {"key": key, "model_id": "tiny-sd", "prompt": "a lighthouse", "init_image": image_host.url("/big.png"),
            "samples": 2, "num_inference_steps": 20, "strength": 1, "seed": seed}


def statuses(srv) -> dict[int, str]:
    with sqlite3.connect(srv.data_dir / "diffserve.db") as db:
        return dict(db.execute("select id, status from jobs"))


def finished(srv, key, ids, timeout: float, every: float, http_timeout: float = 120) -> dict[int, dict]:
    """Each job's fetch answer once it is no longer `processing`, polling them all until all are."""
    results: dict[int, dict] = {}

    def poll() -> dict[int, dict]:
        for i in ids:
            r = srv.post(f"/api/v6/images/fetch/{i}", {"key": key}, timeout=http_timeout).json()
            if r["status"] != "processing":
                results[i] = r
        return results

    return wait_until(poll, timeout, every, accept=lambda got: len(got) == len(ids), what=f"jobs {ids} to finish")


def running(srv, job_id: int, timeout: float = 60) -> None:
    wait_until(lambda: statuses(srv)[job_id], timeout, every=0.05, accept=lambda s: s == "running",
               what=f"job {job_id} running")


def test_sync_wait_past_the_limit_answers_processing(crash_server, image_host):
    key = crash_server.create_key()
    out = crash_server.post(IMG2IMG, slow_body(key, image_host, 1)).json()
    assert out["status"] == "processing" and out["fetch_result"].endswith(f"/fetch/{out['id']}")
    assert out["eta"] > 0 and len(out["future_links"]) == 2


def test_queued_and_running_jobs_finish_after_a_crash_and_restart(crash_server, image_host):
    srv = crash_server
    key = srv.create_key()
    first = srv.post(IMG2IMG, {**slow_body(key, image_host, 1), "num_inference_steps": 4, "samples": 1}).json()
    done = wait_until(lambda: srv.post(f"/api/v6/images/fetch/{first['id']}", {"key": key}).json(), 60,
                      accept=lambda out: out["status"] == "success", what=f"job {first['id']} to succeed")
    assert done and done["status"] == "success"
    ids = [srv.post(IMG2IMG, slow_body(key, image_host, s)).json()["id"] for s in (10, 11, 12)]
    # wait until the first slow job is running, then kill everything at once
    running(srv, ids[0])
    assert statuses(srv)[ids[0]] == "running"
    srv.stop(signal.SIGKILL)
    before = statuses(srv)
    assert all(before[i] in ("queued", "running") for i in ids[1:]), before

    srv.start()
    results = finished(srv, key, ids, 240, every=0.5)
    assert [results[i]["status"] for i in ids] == ["success"] * 3, results
    assert [results[i]["meta"]["seed"] for i in ids] == [10, 11, 12]
    for r in results.values():
        assert all(web.get(u).status_code == 200 for u in r["output"])
    # what was done before the crash is still served
    again = srv.post(f"/api/v6/images/fetch/{first['id']}", {"key": key}).json()
    assert again["output"] == done["output"] and web.get(again["output"][0]).status_code == 200


def worker_pids(srv) -> dict[str, int]:
    with sqlite3.connect(srv.data_dir / "diffserve.db") as db:
        return dict(db.execute("select worker_id, pid from workers where state in ('idle', 'busy')"))


def wait_for_new_worker(srv, old_pid: int, timeout: float = 120) -> None:
    wait_until(lambda: worker_pids(srv), timeout, every=0.2, accept=lambda pids: pids and old_pid not in pids.values(),
               what=f"a worker other than pid {old_pid}", context=srv.log_tail)


def test_a_killed_worker_is_replaced_and_its_job_still_finishes(slow_server, image_host):
    import os

    srv = slow_server
    key = srv.create_key()
    # 1. kill the worker while it idles (blocked waiting for work): the API must not hang on the next enqueue
    (pid,) = worker_pids(srv).values()
    os.kill(pid, signal.SIGKILL)
    t0 = time.monotonic()
    job = srv.post(IMG2IMG, {**slow_body(key, image_host, 5), "num_inference_steps": 4, "samples": 1}, timeout=10).json()
    assert job["status"] == "processing" and time.monotonic() - t0 < 5
    wait_for_new_worker(srv, pid)
    # 2. kill the replacement in the middle of a job: the job is run again by the next worker
    slow = srv.post(IMG2IMG, slow_body(key, image_host, 6)).json()
    running(srv, slow["id"])
    (pid,) = worker_pids(srv).values()
    os.kill(pid, signal.SIGKILL)
    results = finished(srv, key, [job["id"], slow["id"]], 180, every=0.3, http_timeout=10)
    assert [results[j["id"]]["status"] for j in (job, slow)] == ["success", "success"], results
    with sqlite3.connect(srv.data_dir / "diffserve.db") as db:
        (attempts,) = db.execute("select attempts from jobs where id = ?", (slow["id"],)).fetchone()
    assert attempts == 2
    # the links handed out while attempt 1 was queued answer the winning attempt's images (api/outputs.py)
    final = results[slow["id"]]["output"]
    assert len(slow["future_links"]) == len(final) == 2 and all("-a2-" in u for u in final)
    for link, url in zip(slow["future_links"], final):
        early = web.get(link, timeout=10)
        assert early.status_code == 200 and early.content == web.get(url, timeout=10).content
