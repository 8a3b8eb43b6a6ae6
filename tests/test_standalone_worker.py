"""`diffserve worker`: a worker process of its own beside a running server (same store), with its own label
and device; if it is killed mid-job, the job runs again on another worker once its heartbeat is stale."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from . import web
from .jobs_helpers import MEDIUM, Jobs
from .servers import DiffserveServer
from .waiting import wait_until


@pytest.fixture(scope="module")
def server(tmp_path_factory, models_root):
    srv = DiffserveServer(tmp_path_factory.mktemp("standalone"), models_root,
                          env_overrides={"DIFFSERVE_WORKER_STALE_S": "3"}).start()
    yield srv
    srv.stop()


def start_worker(server, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "diffserve.cli.main", "worker", *args], env=server.env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def workers(server, admin) -> list[dict]:
    return web.post(f"{server.url}/api/v1/enterprise/system_details", json={"key": admin}).json()["workers"]


def test_a_standalone_worker_joins_takes_its_label_and_its_jobs_survive_a_kill(server):
    admin = server.create_key("--admin")
    jobs = Jobs(server, server.create_key())
    first = start_worker(server, "--label", "ext", "--preload", "tiny-sd")
    second = None
    try:
        ext = wait_until(lambda: next((w for w in workers(server, admin) if w["labels"] == ["ext"]
                                       and w["state"] == "idle"), None), 90, what="an idle worker labelled ext")
        assert ext["worker_id"] != "worker-0" and ext["device"] == "cpu" and ext["dtype"] == "fp32"
        assert web.get(f"{server.url}/health").json()["workers"] == 2
        labelled = jobs.done(jobs.submit(steps=4, worker_label="ext")["id"])
        assert labelled["status"] == "succeeded" and labelled["worker"] == ext["worker_id"]

        slow = jobs.submit(**MEDIUM, worker_label="ext")
        jobs.wait(slow["id"], lambda j: j["status"] == "running" and j["worker"] == ext["worker_id"])
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(10)
        killed_at = time.monotonic()
        second = start_worker(server, "--label", "ext")
        done = jobs.done(slow["id"], timeout=180)
        assert done["status"] == "succeeded" and done["worker"] not in (ext["worker_id"], "worker-0")
        print(f"killed worker's job finished elsewhere {time.monotonic() - killed_at:.1f} s after the kill")
    finally:
        for proc in (first, second):
            if proc and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(30)
