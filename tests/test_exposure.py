"""No needless exposure, against the real server over loopback: every answer carries a Content-Security-Policy,
no-framing and nosniff headers; the A1111 model list shows no server path; /metrics can require a key; output
URLs never follow a Host header a client forged (docs/security.md, "Defences")."""

from __future__ import annotations

import httpx
import pytest

from . import web
from .jobs_helpers import Jobs, data_uri
from .servers import DiffserveServer


@pytest.fixture(scope="module")
def key(jobs_server):
    return jobs_server.create_key("--name", "exposure")


def assert_protected(r: httpx.Response) -> None:
    csp = r.headers.get("content-security-policy", "")
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp, \
        (r.request.url, csp)
    assert "default-src 'none'" in csp and "object-src 'none'" in csp
    assert r.headers.get("x-frame-options") == "DENY", r.request.url
    assert r.headers.get("x-content-type-options") == "nosniff", r.request.url


def test_the_playground_and_api_answers_carry_the_security_headers(jobs_server, key):
    auth = {"Authorization": f"Bearer {key}"}
    answers = [web.get(f"{jobs_server.url}{path}", headers=auth, timeout=30)
               for path in ("/ui/", "/ui/app.js", "/ui/style.css", "/v1/models", "/health", "/sdapi/v1/sd-models",
                            "/generations/no-such-file.png", "/v1/jobs/999999")]
    answers += [web.get(f"{jobs_server.url}/v1/models", timeout=30),  # 401
                web.post(f"{jobs_server.url}/api/v6/images/img2img", json={"key": "nope"}, timeout=30)]
    assert [r.status_code for r in answers] == [200, 200, 200, 200, 200, 200, 404, 404, 401, 401]
    for r in answers:
        assert_protected(r)
    page = answers[0].text
    assert "<script>" not in page and " style=" not in page and "onclick" not in page  # nothing inline to allow
    assert '<script src="app.js"></script>' in page


def test_sd_models_shows_no_server_path(jobs_server, key, models_root):
    models = web.get(f"{jobs_server.url}/sdapi/v1/sd-models", auth=("user", key), timeout=30).json()
    assert {"tiny-sd", "tiny-sdxl"} <= {m["title"] for m in models}
    for m in models:
        assert m["filename"] == m["model_name"] == m["title"], m  # the id stands in for A1111's checkpoint path
        for value in m.values():
            text = str(value or "")
            assert not text.startswith(("/", "~", ".")) and str(models_root) not in text, m
            assert str(jobs_server.data_dir) not in text, m


def test_output_urls_do_not_follow_a_forged_host_header(jobs_server, key):
    jobs = Jobs(jobs_server, key)
    forged = {"Host": "evil.example", "X-Forwarded-Host": "evil.example"}
    r = jobs.http.post("/v1/jobs", json={"prompt": "p", "init_image": data_uri(), "steps": 2, "strength": 1.0},
                       headers=forged)
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    jobs.done(job_id)
    port = jobs_server.port
    job = jobs.http.get(f"/v1/jobs/{job_id}", headers=forged).json()
    assert job["status"] == "succeeded" and job["outputs"], job
    for url in job["outputs"]:  # the address the request arrived at, not the Host header
        assert url.startswith(f"http://127.0.0.1:{port}/generations/") and "evil" not in url, url
        assert web.get(url, timeout=30).status_code == 200
    listed = jobs.http.get("/v1/jobs?limit=5", headers=forged).json()["data"]
    assert all("evil" not in u for j in listed for u in j["outputs"])
    # a trusted host (localhost, by default) is followed, port and all: the playground at localhost sees its origin
    job = jobs.http.get(f"/v1/jobs/{job_id}", headers={"Host": f"localhost:{port}"}).json()
    assert all(u.startswith(f"http://localhost:{port}/generations/") for u in job["outputs"]), job


@pytest.fixture(scope="module")
def metrics_server(tmp_path_factory, models_root):
    """An API process alone (no worker: /metrics needs none) with `metrics_key_required` on."""
    env = {"DIFFSERVE_WORKERS": "0", "DIFFSERVE_METRICS_KEY_REQUIRED": "true"}
    srv = DiffserveServer(tmp_path_factory.mktemp("metrics"), models_root, env_overrides=env).start(until="/health")
    yield srv
    srv.stop()


def test_metrics_can_require_a_key(metrics_server, jobs_server):
    url = f"{metrics_server.url}/metrics"
    for headers in ({}, {"Authorization": "Bearer wrong-key"}, {"Authorization": "Basic dXNlcjpwdw=="}):
        r = web.get(url, headers=headers, timeout=30)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", (headers, r.text)
        assert "diffserve_" not in r.text and r.json()["error"]["code"] == "unauthorized"
    key = metrics_server.create_key("--name", "prometheus")
    r = web.get(url, headers={"Authorization": f"Bearer {key}"}, timeout=30)
    assert r.status_code == 200 and "diffserve_http_requests_total" in r.text and "diffserve_workers" in r.text
    assert_protected(r)
    assert web.get(f"{metrics_server.url}/health", timeout=30).status_code == 200  # health stays open
    # the default (the other servers): open, as Prometheus scrapes usually are
    assert web.get(f"{jobs_server.url}/metrics", timeout=30).status_code == 200
