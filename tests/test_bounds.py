"""Bounds on what a client holds open, through the real server on loopback: image URL fetches in flight
(a slow image host), event streams per key (one shared reader, no polling per stream), synchronous waits
(A1111 / OpenAI: the client leaves, the job is cancelled) and webhook delivery (hanging receivers delay
only themselves).

The server runs no worker (`DIFFSERVE_WORKERS=0`): jobs stay queued until a test cancels them, which is
what these tests need (a job that never ends on its own; cancelling one makes it terminal, which sends
its webhook).
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from . import web
from .bodies import IMG2IMG, body
from .servers import DiffserveServer, png_bytes
from .waiting import wait_until
from .webhook_receiver import Receiver

SLOW_S = 8.0  # the slow image host answers after this long
FETCHES_TOTAL, FETCHES_PER_KEY, SLOT_WAIT_S = 4, 2, 1.0
STREAMS_PER_KEY = 40
HOOK_SENDERS = 20  # fewer than the hanging receivers' deliveries: only the per-host bound leaves room

ENV = {
    "DIFFSERVE_WORKERS": "0",
    "DIFFSERVE_SYNC_WAIT_S": "0",  # ModelsLab answers "processing" at once
    "DIFFSERVE_LIMITS__MAX_QUEUED_PER_KEY": "0",
    "DIFFSERVE_IMAGES__MAX_FETCHES_IN_FLIGHT": str(FETCHES_TOTAL),
    "DIFFSERVE_IMAGES__MAX_FETCHES_PER_KEY": str(FETCHES_PER_KEY),
    "DIFFSERVE_IMAGES__FETCH_SLOT_WAIT_S": str(SLOT_WAIT_S),
    "DIFFSERVE_LIMITS__MAX_STREAMS_PER_KEY": str(STREAMS_PER_KEY),
    "DIFFSERVE_WEBHOOKS__CONCURRENCY": str(HOOK_SENDERS),
    "DIFFSERVE_WEBHOOKS__POLL_INTERVAL_S": "0.1",
    "DIFFSERVE_WEBHOOKS__MAX_ATTEMPTS": "1",
}


@pytest.fixture(scope="module")
def bounded(tmp_path_factory, models_root):
    srv = DiffserveServer(tmp_path_factory.mktemp("bounds"), models_root, env_overrides=ENV).start(until="/health")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def bkey(bounded):
    return bounded.create_key("--name", "bounds")


class SlowImageHost:
    """Serves a PNG after SLOW_S; counts the requests it holds at once, in all and per `?k=` (the key)."""

    def __init__(self) -> None:
        self.open = self.most = self.served = 0
        self.open_by: Counter[str] = Counter()
        self.most_by: Counter[str] = Counter()
        self._lock = threading.Lock()
        host = self
        data = png_bytes(64, 64)

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                k = self.path.partition("k=")[2]
                with host._lock:
                    host.open += 1
                    host.most = max(host.most, host.open)
                    host.open_by[k] += 1
                    host.most_by[k] = max(host.most_by[k], host.open_by[k])
                try:
                    time.sleep(SLOW_S)
                    self.send_response(200)
                    self.send_header("Content-Type", "image/png")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    host.served += 1
                except OSError:
                    pass
                finally:
                    with host._lock:
                        host.open -= 1
                        host.open_by[k] -= 1

            def log_message(self, *args):
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/slow.png"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class HealthProbe:
    """Times GET /health every 0.1 s on a thread of its own: (started, seconds) pairs."""

    def __init__(self, server: DiffserveServer) -> None:
        self.times: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(server.url,), daemon=True)

    def _run(self, url: str) -> None:
        with web.client(timeout=30) as client:
            while not self._stop.is_set():
                t0 = time.monotonic()
                assert client.get(f"{url}/health").status_code == 200
                self.times.append((t0, time.monotonic() - t0))
                self._stop.wait(0.1)

    def __enter__(self) -> "HealthProbe":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(35)


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc)."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def native(server, key, method, path, **kw) -> httpx.Response:
    return web.request(method, f"{server.url}{path}", headers={"Authorization": f"Bearer {key}"},
                       timeout=30, **kw)


def queued_job(server, key, **extra) -> int:
    r = native(server, key, "POST", "/v1/jobs", json={"model_id": "tiny-sd", "prompt": "a cat", "mode": "txt2img",
                                                      "width": 64, "height": 64, "steps": 2, **extra})
    assert r.status_code == 202, r.text
    return r.json()["id"]


def test_slow_image_host_costs_fetch_slots_only(bounded):
    """48 submissions (3 keys x 16) whose image URL answers after 8 s: each key gets 2 fetches (the rest: 429
    at once, in ModelsLab's shape), 4 fetches run in all (the others waited 1 s for a slot, then 429), the
    host never sees more than 4 at once nor 2 of one key, and /health stays fast throughout (before the bound, 48 fetches held 48
    threads of the pool /health needs: 45 made it take 12 s)."""
    keys = [bounded.create_key("--name", f"fetch-{i}") for i in range(3)]
    host = SlowImageHost()

    def submit(key):
        t0 = time.monotonic()
        r = web.post(f"{bounded.url}{IMG2IMG}", json=body(key, init_image=f"{host.url}?k={key}"), timeout=60)
        return r, time.monotonic() - t0

    try:
        with HealthProbe(bounded) as probe, ThreadPoolExecutor(48) as pool:
            burst = time.monotonic()
            results = list(pool.map(submit, [k for k in keys for _ in range(16)]))
    finally:
        host.stop()
    ok = [r for r, _ in results if r.status_code == 200]
    refused = [(r, t) for r, t in results if r.status_code == 429]
    assert len(ok) + len(refused) == 48, [r.text for r, _ in results if r.status_code not in (200, 429)]
    assert all(r.json()["status"] == "processing" for r in ok) and host.served == len(ok)
    per_key = [(r, t) for r, t in refused if "for this key" in r.json()["message"]]
    busy = [(r, t) for r, t in refused if "fetch slots are busy" in r.json()["message"]]
    assert len(per_key) + len(busy) == len(refused)
    # what the bounds allow when the 48 arrive within SLOW_S: 4 fetched, 42 refused for their key, 2 refused
    # after waiting for a slot (a loaded machine may spread the arrivals: then a few more get through once the
    # first fetches are done, never more at once; the host's counts below hold either way)
    assert len(ok) >= FETCHES_TOTAL and len(per_key) >= 3 * (16 - FETCHES_PER_KEY) - 6, (
        sorted(t for r, t in results if r.status_code == 200), host.most, host.most_by)
    for r, _ in refused:
        out = r.json()
        assert set(out) == {"status", "message", "retry_after"} and out["status"] == "error", out
        assert r.headers["retry-after"] == str(out["retry_after"])
    assert all(t >= SLOT_WAIT_S - 0.1 for _, t in busy), [t for _, t in busy]  # waited for a slot first
    assert host.most <= FETCHES_TOTAL and max(host.most_by.values()) <= FETCHES_PER_KEY
    # once the burst of 48 is parsed (the first second), the slow fetches hold their slots for 6.5 s more:
    # /health answers throughout (before the bound it waited for the fetches' threads: as long as SLOW_S).
    # Measured: under 0.1 s on a quiet machine; up to 1.4 s at a load average of 13 on 2 cores (other tests),
    # hence the margin
    during = sorted(t for started, t in probe.times if burst + 1.5 < started < burst + SLOW_S)
    assert len(during) >= 3 and during[len(during) // 2] < 0.5 and during[-1] < 2.5, during
    for key in keys:  # the admitted ones are real jobs: cancelled, so they do not wait in the queue
        for job in native(bounded, key, "GET", "/v1/jobs", params={"limit": 100}).json()["data"]:
            native(bounded, key, "POST", f"/v1/jobs/{job['id']}/cancel")


def _follow(server, key, job_id, events: list, opened: threading.Event | None = None):
    with web.stream("GET", f"{server.url}/v1/jobs/{job_id}/events", timeout=60,
                    headers={"Authorization": f"Bearer {key}"}) as r:
        assert r.status_code == 200
        if opened:
            opened.set()
        for line in r.iter_lines():
            if line.startswith("event: "):
                events.append(line[7:])
                if line[7:] in ("succeeded", "failed", "cancelled"):
                    return


def test_event_streams_are_bounded_per_key_and_share_one_reader(bounded, bkey):
    """40 streams on a queued job: a 41st from the key is refused (429, native shape); the 40 cost the API
    no more CPU than a few hundredths of a core (one shared reader, not 40 pollers: before, each read and
    rendered its job 5 times a second); all 40 get `cancelled` promptly when the job is cancelled, and their
    slots are free again afterwards."""
    job_id = queued_job(bounded, bkey)
    pid = bounded.proc.pid
    c0, t0 = cpu_s(pid), time.monotonic()
    time.sleep(3)
    idle = (cpu_s(pid) - c0) / (time.monotonic() - t0)

    events: list[list[str]] = [[] for _ in range(STREAMS_PER_KEY)]
    opened = [threading.Event() for _ in range(STREAMS_PER_KEY)]
    threads = [threading.Thread(target=_follow, args=(bounded, bkey, job_id, events[i], opened[i]), daemon=True)
               for i in range(STREAMS_PER_KEY)]
    for t in threads:
        t.start()
    assert all(o.wait(30) for o in opened)
    r = native(bounded, bkey, "GET", f"/v1/jobs/{job_id}/events")
    assert r.status_code == 429 and "Too many event streams" in r.json()["error"]["message"], r.text

    c0, t0 = cpu_s(pid), time.monotonic()
    time.sleep(4)
    streaming = (cpu_s(pid) - c0) / (time.monotonic() - t0)
    assert streaming - idle < 0.05, (idle, streaming)

    t_cancel = time.monotonic()
    assert native(bounded, bkey, "POST", f"/v1/jobs/{job_id}/cancel").json()["status"] == "cancelled"
    for t in threads:
        t.join(10)
    assert time.monotonic() - t_cancel < 3
    assert all(e == ["queued", "cancelled"] for e in events), events
    other = queued_job(bounded, bkey)  # the slots were given back
    done: list[str] = []
    follower = threading.Thread(target=_follow, args=(bounded, bkey, other, done), daemon=True)
    follower.start()
    time.sleep(0.5)
    native(bounded, bkey, "POST", f"/v1/jobs/{other}/cancel")
    follower.join(10)
    assert done == ["queued", "cancelled"]


@pytest.mark.parametrize("path, payload", [
    ("/sdapi/v1/txt2img", {"prompt": "a cat", "width": 64, "height": 64, "steps": 2}),
    ("/v1/images/generations", {"model": "tiny-sd", "prompt": "a cat", "size": "64x64"}),
])
def test_synchronous_wait_ends_when_the_client_leaves(bounded, bkey, path, payload):
    """A synchronous A1111 / OpenAI request whose client gives up after 1 s: the server stops waiting and
    cancels the job (nobody can fetch its images through that dialect) within a second or so, instead of
    polling until the job ends."""
    with pytest.raises(httpx.ReadTimeout):
        web.post(f"{bounded.url}{path}", json=payload, headers={"Authorization": f"Bearer {bkey}"}, timeout=1.0)
    left = time.monotonic()
    job = native(bounded, bkey, "GET", "/v1/jobs", params={"limit": 1}).json()["data"][0]
    job = wait_until(lambda: native(bounded, bkey, "GET", f"/v1/jobs/{job['id']}").json(), 5,
                     accept=lambda j: j["status"] == "cancelled", what=f"job {job['id']} cancelled")
    assert job["status"] == "cancelled", job
    assert "disconnected" in str(job.get("error")), job
    assert time.monotonic() - left < 3


def test_hanging_webhook_receivers_delay_only_themselves(bounded, bkey):
    """8 receivers that never answer (hosts 127.0.0.2-9), 3 deliveries each: 24 attempts would fill the
    20 senders, but each host holds at most 2 of them; a healthy receiver's delivery then arrives within a
    second of its job ending (before: 4 shared senders, 8 hanging receivers delayed it by 11-12 s)."""
    hanging = [Receiver(hang_s=60, host=f"127.0.0.{i}").start() for i in range(2, 10)]
    healthy = Receiver().start()
    try:
        jobs = [queued_job(bounded, bkey, webhook=h.url) for h in hanging for _ in range(3)]
        for job_id in jobs:
            native(bounded, bkey, "POST", f"/v1/jobs/{job_id}/cancel")
        wait_until(lambda: sum(len(h.received) for h in hanging), 15, every=0.05, accept=lambda n: n >= 16,
                   what="16 delivery attempts at the hanging receivers")
        time.sleep(0.5)  # any attempt past the per-host bound would arrive now
        assert [len(h.received) for h in hanging] == [2] * 8

        job_id = queued_job(bounded, bkey, webhook=healthy.url)
        ended = time.time()
        native(bounded, bkey, "POST", f"/v1/jobs/{job_id}/cancel")
        got = healthy.wait_for(1, timeout=10)
        assert got[0].at - ended < 1.0, got[0].at - ended
        assert got[0].payload["id"] == job_id
    finally:
        for r in (*hanging, healthy):
            r.stop()
