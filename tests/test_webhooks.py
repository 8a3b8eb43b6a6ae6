"""Webhook delivery through the real server to real receivers on loopback."""

from __future__ import annotations

import base64
import json
import signal
import time

import pytest

from .servers import DiffserveServer, free_port
from .bodies import IMG2IMG, body
from .waiting import wait_until
from .webhook_receiver import Receiver, verify_signature

SECRET = "whsec_" + base64.b64encode(b"a signing secret of thirty-two by").decode()
FAST_RETRIES = {
    "DIFFSERVE_WEBHOOKS__SIGNING_SECRET": SECRET,
    "DIFFSERVE_WEBHOOKS__MAX_ATTEMPTS": "3",
    "DIFFSERVE_WEBHOOKS__BACKOFF_INITIAL_S": "0.3",
    "DIFFSERVE_WEBHOOKS__BACKOFF_FACTOR": "2",
    "DIFFSERVE_WEBHOOKS__TIMEOUT_S": "1",
    "DIFFSERVE_WEBHOOKS__POLL_INTERVAL_S": "0.1",
}


@pytest.fixture(scope="module")
def hook_server(tmp_path_factory, models_root):
    data = tmp_path_factory.mktemp("webhooks")
    # a model whose weights are missing: its jobs fail in the worker, which gives a "failed" webhook
    (data / "models.json").write_text(json.dumps(
        {"models": {"broken": {"kind": "folder", "location": str(data / "no-such-model"), "family": "sd"}}}))
    srv = DiffserveServer(data, models_root, env_overrides=FAST_RETRIES).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def hook_key(hook_server):
    return hook_server.create_key("--name", "webhooks")


@pytest.fixture
def receiver():
    r = Receiver(secret=SECRET).start()
    yield r
    r.stop()


def fetch(server, key, job_id) -> dict:
    return server.post(f"/api/v6/images/fetch/{job_id}", {"key": key}).json()


def wait_webhook_status(server, key, job_id, wanted: set[str], timeout: float = 30) -> str:
    return wait_until(lambda: fetch(server, key, job_id)["webhook_status"], timeout,
                      accept=lambda status: status in wanted, what=f"webhook_status of {job_id} in {wanted}")


def test_flaky_receiver_gets_the_payload_after_two_failures(hook_server, hook_key, image_host, receiver):
    receiver.fail_first = 2
    out = hook_server.post(IMG2IMG, body(hook_key, image_host, webhook=receiver.url, track_id="order-77")).json()
    assert out["status"] == "success", out  # the job did not wait for the webhook
    got = receiver.wait_for(3)
    assert [r.answered for r in got] == [500, 500, 200]
    assert wait_webhook_status(hook_server, hook_key, out["id"], {"success", "failed"}) == "success"
    time.sleep(0.5)
    assert len(receiver.received) == 3  # nothing after the 2xx

    ids = {r.headers["webhook-id"] for r in got}
    assert len(ids) == 1 and ids.pop().startswith("msg_")  # one id for every retry: receivers dedupe on it
    for r in got:
        assert verify_signature(SECRET, r.headers, r.body)
        assert not verify_signature(SECRET, r.headers, r.body.replace(b"order-77", b"order-78"))
        assert r.body == got[0].body
    # exponential backoff: 0.3 s, then 0.6 s (lower bounds: the schedule never fires early)
    assert got[1].at - got[0].at >= 0.25 and got[2].at - got[1].at >= 0.55

    payload = got[-1].payload
    assert payload["status"] == "success" and payload["id"] == out["id"] and payload["track_id"] == "order-77"
    assert payload["output"] == out["output"] and payload["meta"]["seed"] == out["meta"]["seed"]
    assert payload["generationTime"] == out["generationTime"]


def test_failed_job_gets_the_failure_payload(hook_server, hook_key, image_host, receiver):
    out = hook_server.post(IMG2IMG, body(hook_key, image_host, model_id="broken", webhook=receiver.url,
                                         track_id=42)).json()
    assert out["status"] == "failed", out
    payload = receiver.wait_for(1)[0].payload
    assert payload == {"status": "failed", "id": out["id"], "message": out["message"], "track_id": "42"}
    assert wait_webhook_status(hook_server, hook_key, out["id"], {"success", "failed"}) == "success"


def test_hanging_receiver_delays_nothing_and_ends_failed(hook_server, hook_key, image_host, receiver):
    receiver.hang_s = 20
    slow = hook_server.post(IMG2IMG, body(hook_key, image_host, webhook=receiver.url)).json()
    assert slow["status"] == "success", slow
    # while attempts to the hanging receiver are in flight, other deliveries go out at once
    other = Receiver(secret=SECRET).start()
    try:
        quick = hook_server.post(IMG2IMG, body(hook_key, image_host, webhook=other.url)).json()
        assert other.wait_for(1, timeout=10)[0].payload["id"] == quick["id"]
        assert fetch(hook_server, hook_key, slow["id"])["webhook_status"] in ("pending", "retrying")
    finally:
        other.stop()
    assert wait_webhook_status(hook_server, hook_key, slow["id"], {"success", "failed"}) == "failed"
    assert len(receiver.received) == 3  # max_attempts, each cut off after timeout_s
    done = fetch(hook_server, hook_key, slow["id"])
    assert done["status"] == "success" and done["output"] == slow["output"]


def test_dead_receiver_ends_failed_and_the_job_is_fine(hook_server, hook_key, image_host):
    dead = f"http://127.0.0.1:{free_port()}/hook"  # nothing listens there
    out = hook_server.post(IMG2IMG, body(hook_key, image_host, webhook=dead, instant_response="yes")).json()
    assert out["status"] == "processing" and out["webhook_status"] == "pending", out
    assert wait_webhook_status(hook_server, hook_key, out["id"], {"success", "failed"}) == "failed"
    assert fetch(hook_server, hook_key, out["id"])["status"] == "success"


def test_no_webhook_no_status(hook_server, hook_key, image_host):
    out = hook_server.post(IMG2IMG, body(hook_key, image_host)).json()
    assert out["status"] == "success" and out["webhook_status"] == ""


@pytest.mark.parametrize("url,message", [
    ("ftp://example.com/hook", "webhook must be an http(s) URL"),
    ("http://no-such-host.invalid/hook", "webhook host cannot be resolved"),
])
def test_bad_webhook_urls_are_refused_before_queueing(hook_server, hook_key, image_host, url, message):
    r = hook_server.post(IMG2IMG, body(hook_key, image_host, webhook=url))
    assert r.status_code == 400 and r.json() == {"status": "error", "message": message}, r.text


def test_a_crash_mid_attempt_keeps_the_delivery(hook_server, hook_key, image_host, receiver):
    """The server is killed (workers and all) while its first POST is in flight; after the restart the
    delivery is made again. Runs last: it restarts the module's server."""
    receiver.on_request = lambda r: hook_server.stop(signal.SIGKILL) if len(receiver.received) == 1 else None
    out = hook_server.post(IMG2IMG, body(hook_key, image_host, webhook=receiver.url, track_id="survives")).json()
    assert out["status"] == "success", out
    receiver.wait_for(1)
    hook_server.proc.wait(30)  # killed by the receiver before it heard an answer
    hook_server.start()
    got = receiver.wait_for(2)
    assert got[1].headers["webhook-id"] == got[0].headers["webhook-id"]
    payload = got[1].payload
    assert payload["id"] == out["id"] and payload["track_id"] == "survives" and payload["status"] == "success"
    assert verify_signature(SECRET, got[1].headers, got[1].body)
    assert wait_webhook_status(hook_server, hook_key, out["id"], {"success", "failed"}) == "success"


def test_signature_headers_follow_the_documented_scheme():
    """Without a secret there is no signature; with one, docs/webhooks.md's receiver check accepts it, and
    a plain-text secret works like a whsec_ one."""
    from diffserve.webhooks.signing import delivery_headers

    plain = delivery_headers("msg_1", b"{}", None)
    assert "webhook-signature" not in plain and plain["webhook-id"] == "msg_1"
    assert int(plain["webhook-timestamp"]) == pytest.approx(time.time(), abs=5)
    for secret in (SECRET, "a plain text secret"):
        signed = delivery_headers("msg_2", b'{"a":1}', secret)
        assert verify_signature(secret, signed, b'{"a":1}')
        assert not verify_signature(secret, signed, b'{"a":2}')
        assert not verify_signature(secret, {**signed, "webhook-id": "msg_3"}, b'{"a":1}')
    old = delivery_headers("msg_4", b"{}", SECRET, timestamp=int(time.time()) - 3600)
    assert not verify_signature(SECRET, old, b"{}")  # replayed an hour later: refused
