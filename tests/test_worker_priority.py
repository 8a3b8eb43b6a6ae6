"""worker.cpu_priority: the local workers can compute at a lower CPU priority than the API beside them (nice 10 or
SCHED_IDLE), torch's threads included."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCHED_NAMES = {os.SCHED_OTHER: "other", os.SCHED_BATCH: "batch", os.SCHED_IDLE: "idle"}


def threads(pid: int) -> list[int]:
    return [int(tid) for tid in os.listdir(f"/proc/{pid}/task")]


def children(pid: int) -> list[int]:
    return [int(child) for tid in threads(pid)
            for child in Path(f"/proc/{pid}/task/{tid}/children").read_text().split()]


def scheduling(tid: int) -> tuple[str, int]:
    return SCHED_NAMES[os.sched_getscheduler(tid)], os.getpriority(os.PRIO_PROCESS, tid)


def test_the_servers_worker_computes_below_the_api_by_default(server):
    """The default (`low`, docs/performance.md "Serving latency": the API's fetches keep their p99 while the worker
    computes on the same cores): every thread of the worker, torch's compute threads included, at nice 10; the
    API's at the server's own priority."""
    assert server.proc is not None
    api = threads(server.proc.pid)
    workers = [pid for pid in children(server.proc.pid)
               if "spawn_main" in Path(f"/proc/{pid}/cmdline").read_text()]
    assert len(workers) == 1, workers
    worker_threads = threads(workers[0])
    assert len(worker_threads) >= 2  # torch's own threads among them
    base = os.getpriority(os.PRIO_PROCESS, server.proc.pid)
    assert {scheduling(tid) for tid in api} == {("other", base)}
    assert {scheduling(tid) for tid in worker_threads} == {("other", max(base, 10))}


@pytest.mark.parametrize("priority, policy, nice", [("normal", "other", 0), ("low", "other", 10),
                                                    ("idle", "idle", None)])
def test_each_cpu_priority_applies_to_the_threads_started_after_it(priority, policy, nice):
    """Threads started after lower_priority (as torch's are in a worker) inherit its policy and nice value."""
    base = os.getpriority(os.PRIO_PROCESS, 0)
    expected = (policy, base if nice is None else max(base, nice))  # SCHED_IDLE leaves nice as it was
    code = (
        "import os, threading\n"
        "from diffserve.workers.supervisor import lower_priority\n"
        "from tests.test_worker_priority import scheduling\n"
        f"lower_priority({priority!r})\n"
        "seen = []\n"
        "t = threading.Thread(target=lambda: seen.append(scheduling(threading.get_native_id())))\n"
        "t.start(); t.join()\n"
        "print(scheduling(threading.get_native_id()), seen[0])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"{expected} {expected}"
