"""One base-URL rule: a job's webhook payload holds the same links as the answers about it.

The server binds 127.0.0.1 (its configured base URL, the fallback) while the client reaches it as `localhost`,
a trusted host, so its answers' links start with http://localhost:PORT: the webhook must follow them."""

from __future__ import annotations

from . import web
from .jobs_helpers import data_uri
from .webhook_receiver import Receiver


def test_a_jobs_webhook_links_equal_its_fetch_answers_links(server, key):
    receiver = Receiver().start()
    try:
        base = f"http://localhost:{server.port}"
        with web.client(base_url=server.url, timeout=60, headers={
                "Authorization": f"Bearer {key}", "Host": f"localhost:{server.port}"}) as http:
            r = http.post("/v1/jobs", json={"prompt": "a red bicycle", "init_image": data_uri(),
                                            "webhook": receiver.url, "steps": 2})
            assert r.status_code == 202, r.text
            job_id = r.json()["id"]
            payload = receiver.wait_for(1)[0].payload
            answer = http.get(f"/v1/jobs/{job_id}").json()
        assert answer["status"] == "succeeded" and payload["status"] == "success", (answer, payload)
        assert answer["outputs"] and all(url.startswith(f"{base}/") for url in answer["outputs"]), answer
        assert payload["output"] == answer["outputs"], (payload, answer)
    finally:
        receiver.stop()


def test_a_modelslab_webhook_links_equal_its_answers_links(server, key):
    """The same rule on a ModelsLab page: the v6 answer (`proxy_links`, `fetch_result`) and the webhook body."""
    receiver = Receiver().start()
    try:
        base = f"http://localhost:{server.port}"
        with web.client(base_url=server.url, timeout=60, headers={"Host": f"localhost:{server.port}"}) as http:
            r = http.post("/api/v6/images/img2img", json={
                "key": key, "prompt": "a red bicycle", "init_image": data_uri(), "num_inference_steps": "2",
                "webhook": receiver.url, "instant_response": "yes"})
            assert r.status_code == 200 and r.json()["fetch_result"].startswith(f"{base}/"), r.text
            payload = receiver.wait_for(1)[0].payload
            answer = http.post(r.json()["fetch_result"].removeprefix(base), json={"key": key}).json()
        assert answer["status"] == "success" and payload["status"] == "success", (answer, payload)
        assert all(url.startswith(f"{base}/") for url in answer["output"]), answer
        assert payload["output"] == answer["output"] and payload["proxy_links"] == answer["proxy_links"]
    finally:
        receiver.stop()
