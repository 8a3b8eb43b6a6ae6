"""One base-URL rule: a job's webhook payload holds the same links as the answers about it.

The server binds 127.0.0.1 (its configured base URL, the fallback) while the client reaches it as `localhost`,
a trusted host, so its answers' links start with http://localhost:PORT: the webhook must follow them."""

from __future__ import annotations

import httpx

from .jobs_helpers import data_uri
from .webhook_receiver import Receiver


def test_a_jobs_webhook_links_equal_its_fetch_answers_links(server, key):
    receiver = Receiver().start()
    try:
        base = f"http://localhost:{server.port}"
        with httpx.Client(base_url=server.url, timeout=60, headers={
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
