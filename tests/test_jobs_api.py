"""The native job API (/v1/jobs): submit, read, list, follow (server-sent events), cancel; progress and
cancel across dialects; /health, /ready and /metrics. Against a real server and its worker process."""

from __future__ import annotations

import base64
import io
import json
import re

import httpx
import pytest
from PIL import Image

from . import web
from .jobs_helpers import LONG, Jobs, data_uri
from .servers import DiffserveServer, free_port
from .waiting import wait_until
from .webhook_receiver import Receiver


@pytest.fixture(scope="module")
def key(jobs_server):
    return jobs_server.create_key("--name", "jobs")


@pytest.fixture(scope="module")
def jobs(jobs_server, key):
    return Jobs(jobs_server, key)


def events(server, key: str, job_id: int, **params) -> list[tuple[str, dict]]:
    out, event = [], None
    with web.stream("GET", f"{server.url}/v1/jobs/{job_id}/events", params=params,
                    headers={"Authorization": f"Bearer {key}"}, timeout=120) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                out.append((event, json.loads(line[6:])))
    return out


def test_submit_and_read_a_job(jobs, jobs_server):
    job = jobs.submit(prompt="a lighthouse", steps=10, strength=0.5, seed=42, samples=2, scheduler="DDIMScheduler")
    assert job["status"] in ("queued", "running") and job["dialect"] == "native" and job["model_id"] == "tiny-sd"
    done = jobs.done(job["id"])
    assert done["status"] == "succeeded" and done["error"] is None and done["eta"] is None
    assert done["progress"]["step"] == done["progress"]["total"] == 5  # 10 steps x strength 0.5
    assert done["meta"]["seed"] == 42 and done["meta"]["device"] == "cpu" and done["meta"]["dtype"] == "fp32"
    assert len(done["outputs"]) == 2
    image = Image.open(io.BytesIO(web.get(done["outputs"][0]).content))
    assert image.format == "PNG" and image.size == (64, 64)


def test_errors_are_in_the_native_shape(jobs, jobs_server, key):
    url = f"{jobs_server.url}/v1/jobs"
    r = web.post(url, json={"prompt": "x", "init_image": data_uri()})
    assert r.status_code == 401 and r.json() == {"error": {"message": "API key required", "code": "unauthorized"}}
    r = jobs.http.post("/v1/jobs", json={"prompt": "x", "init_image": data_uri(), "strength": 3})
    assert r.status_code == 400
    assert r.json()["error"] == {"message": "strength must be between 0 and 1 but is 3", "code": "invalid_input",
                                 "field": "strength"}
    r = jobs.http.post("/v1/jobs", json={"prompt": "x", "init_image": data_uri(), "strenght": 0.5})
    assert r.status_code == 400 and r.json()["error"]["field"] == "strenght"
    r = jobs.http.post("/v1/jobs", json={"prompt": "x", "init_image": data_uri(), "model_id": "nope"})
    assert r.status_code == 400 and r.json()["error"]["message"] == "Model not found: nope"
    assert jobs.http.get("/v1/jobs/999999").json()["error"]["code"] == "not_found"
    assert jobs.http.get("/v1/jobs/abc").status_code == 404
    assert jobs.http.get("/v1/jobs/\u00b2").status_code == 404  # a unicode digit is not an id
    r = jobs.http.get("/v1/jobs", params={"limit": 0})
    assert r.status_code == 400 and r.json()["error"]["field"] == "limit"
    r = jobs.http.get("/v1/jobs", params={"before": 2**70})  # past the database's integers (schemathesis found it)
    assert r.status_code == 400 and r.json()["error"]["field"] == "before"
    assert jobs.http.get("/v1/jobs/9999999999999999999").status_code == 404  # 19 digits, past 2**63
    r = jobs.http.get("/v1/jobs/1/events", params={"previews": "maybe"})
    assert r.status_code == 400 and r.json()["error"]["field"] == "previews"


def test_a_key_sees_only_its_own_jobs(jobs, jobs_server):
    job = jobs.submit(steps=4)
    other = Jobs(jobs_server, jobs_server.create_key("--name", "other"))
    assert other.http.get(f"/v1/jobs/{job['id']}").status_code == 404
    assert other.http.post(f"/v1/jobs/{job['id']}/cancel").status_code == 404
    assert job["id"] not in [j["id"] for j in other.http.get("/v1/jobs").json()["data"]]
    jobs.done(job["id"])


def test_the_events_stream_reports_steps_previews_and_the_end(jobs, jobs_server, key):
    job = jobs.submit(steps=40, strength=1.0, init_image=data_uri(256, 256))  # long enough for previews
    seen = events(jobs_server, key, job["id"], previews="true")
    kinds = [event for event, _ in seen]
    assert kinds[-1] == "succeeded" and "running" in kinds
    steps = [data["progress"]["step"] for event, data in seen if event == "running"]
    assert steps == sorted(steps) and steps[-1] > 0
    previews = [data for event, data in seen if event == "preview"]
    assert previews and previews[0]["image"].startswith("data:image/jpeg;base64,")
    assert seen[-1][1]["outputs"]


def test_cancel_a_running_job_stops_it_at_a_step_and_the_worker_goes_on(jobs):
    job = jobs.submit(**LONG)
    jobs.wait(job["id"], lambda j: j["status"] == "running" and j["progress"]["step"] >= 1)
    running = jobs.get(job["id"])
    assert running["eta"] > 0 and running["progress"]["total"] == 50
    answer = jobs.http.post(f"/v1/jobs/{job['id']}/cancel").json()
    assert answer["status"] in ("running", "cancelled")
    done = jobs.done(job["id"], timeout=30)
    assert done["status"] == "cancelled" and done["error"] == "Cancelled by the client"
    assert done["progress"]["step"] < 50 and done["outputs"] == []
    nxt = jobs.done(jobs.submit(steps=4)["id"])  # the worker took the next job
    assert nxt["status"] == "succeeded"


def test_cancel_a_queued_job_drops_it(jobs):
    first = jobs.submit(**LONG)
    jobs.wait(first["id"], lambda j: j["status"] == "running")
    second = jobs.submit(steps=4)
    assert jobs.get(second["id"])["status"] == "queued"
    assert jobs.http.post(f"/v1/jobs/{second['id']}/cancel").json()["status"] == "cancelled"
    jobs.http.post(f"/v1/jobs/{first['id']}/cancel")
    assert jobs.done(first["id"], timeout=30)["status"] == "cancelled"
    assert jobs.get(second["id"])["progress"]["step"] == 0


def test_jobs_of_every_dialect_are_listed_cancelled_and_shown_cancelled(jobs, jobs_server, key):
    hook = Receiver().start()
    try:
        v6 = jobs_server.post("/api/v6/images/img2img", {
            "key": key, "prompt": "women playing tennis", "init_image": LONG["init_image"], "num_inference_steps": 50,
            "strength": 1, "scheduler": "DDIMScheduler", "instant_response": True, "webhook": hook.url,
            "track_id": "t-1"}).json()
        assert v6["status"] == "processing"
        listed = jobs.http.get("/v1/jobs", params={"limit": 5}).json()["data"]
        assert listed[0]["id"] == v6["id"] and listed[0]["dialect"] == "modelslab"
        jobs.wait(v6["id"], lambda j: j["status"] == "running")
        fetch = jobs_server.post(f"/api/v6/images/fetch/{v6['id']}", {"key": key}).json()
        assert fetch["status"] == "processing" and fetch["eta"] > 0
        jobs.http.post(f"/v1/jobs/{v6['id']}/cancel")
        assert jobs.done(v6["id"], timeout=30)["status"] == "cancelled"
        fetch = jobs_server.post(f"/api/v6/images/fetch/{v6['id']}", {"key": key}).json()
        assert fetch["status"] == "failed" and fetch["message"] == "Cancelled by the client"
        payload = hook.wait_for(1)[0].payload
        assert payload["id"] == v6["id"] and payload["status"] == "failed" and payload["track_id"] == "t-1"
    finally:
        hook.stop()


def test_listing_pages_with_before(jobs):
    ids = [jobs.submit(steps=2)["id"] for _ in range(3)]
    for job_id in ids:
        jobs.done(job_id)
    page = jobs.http.get("/v1/jobs", params={"limit": 2}).json()
    assert [j["id"] for j in page["data"]] == ids[:0:-1] and page["next_before"] == ids[1]
    rest = jobs.http.get("/v1/jobs", params={"limit": 2, "before": page["next_before"]}).json()
    assert rest["data"][0]["id"] == ids[0]


def test_models_list_shows_family_limits_and_the_default(jobs):
    models = {m["id"]: m for m in jobs.http.get("/v1/models").json()["data"]}
    assert models["tiny-sd"]["default"] and models["tiny-sd"]["family"] == "sd"
    assert models["tiny-sd"]["limits"]["max_size"] == 512 and "DDIMScheduler" in models["tiny-sd"]["schedulers"]
    assert models["tiny-flux"]["family"] == "flux" and models["tiny-flux"]["schedulers"] == []


def sample(text: str, name: str, **labels) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            found = dict(re.findall(r'(\w+)="([^"]*)"', line.split(" ")[0]))
            if all(found.get(k) == v for k, v in labels.items()):
                return float(line.rsplit(" ", 1)[1])
    return None


def test_metrics_count_jobs_steps_loads_and_requests_across_processes(jobs, jobs_server):
    jobs.done(jobs.submit(steps=6, strength=1.0)["id"])
    text = web.get(f"{jobs_server.url}/metrics").text
    # written by the worker process
    assert sample(text, "diffserve_jobs_total", dialect="native", model="tiny-sd", status="succeeded") >= 1
    assert sample(text, "diffserve_jobs_total", dialect="native", model="tiny-sd", status="cancelled") >= 1
    assert sample(text, "diffserve_denoise_steps_total", model="tiny-sd") >= 6
    assert sample(text, "diffserve_model_loads_total", model="tiny-sd") == 1
    assert sample(text, "diffserve_queue_wait_seconds_count", model="tiny-sd") >= 1
    assert sample(text, "diffserve_job_run_seconds_count", model="tiny-sd") >= 1
    assert sample(text, "diffserve_batch_rows_count", model="tiny-sd") >= 1
    # written by the API process
    assert sample(text, "diffserve_http_requests_total", route="/v1/jobs", method="POST", status="202") >= 1
    assert sample(text, "diffserve_http_requests_total", route="/v1/jobs/{job_id}", method="GET", status="200") >= 1
    assert sample(text, "diffserve_workers", state="idle") == 1
    assert "# TYPE diffserve_webhook_deliveries_total counter" in text


def test_queue_depth_gauge_per_model(jobs, jobs_server):
    first = jobs.submit(**LONG)
    jobs.wait(first["id"], lambda j: j["status"] == "running")
    second = jobs.submit(steps=2)
    text = web.get(f"{jobs_server.url}/metrics").text
    assert sample(text, "diffserve_queue_depth", model="tiny-sd", state="waiting") == 1
    assert sample(text, "diffserve_queue_depth", model="tiny-sd", state="running") == 1
    jobs.http.post(f"/v1/jobs/{first['id']}/cancel")
    jobs.done(second["id"])


def test_health_answers_before_the_worker_is_ready(tmp_path, models_root):
    srv = DiffserveServer(tmp_path / "data", models_root)
    srv.port = free_port()
    import subprocess
    import sys

    srv.data_dir.mkdir(parents=True)
    srv.proc = subprocess.Popen([sys.executable, "-m", "diffserve.cli.main", "serve", "--port", str(srv.port)],
                                env=srv.env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
    try:
        seen_ready_503 = []

        def ready_status() -> int:
            health = web.get(f"{srv.url}/health", timeout=2)
            ready = web.get(f"{srv.url}/ready", timeout=2)
            assert health.status_code == 200
            if ready.status_code == 503:
                seen_ready_503.append(ready.json())
                assert ready.json()["status"] == "starting" and ready.json()["store"] == "ok"
            else:
                assert ready.status_code == 200 and ready.json()["workers"] == 1
            return ready.status_code

        wait_until(ready_status, 120, every=0.05, accept=lambda status: status == 200, ignore=httpx.HTTPError,
                   what="/ready to answer 200")
        assert seen_ready_503  # /health was up while the worker was still loading
    finally:
        srv.stop()


def test_qolaba_status_shows_progress_and_a_cancel(jobs, jobs_server, key):
    first = jobs.submit(**LONG)
    jobs.wait(first["id"], lambda j: j["status"] == "running" and j["progress"]["step"] >= 1)
    auth = {"Authorization": f"Bearer {key}"}
    pending = web.post(f"{jobs_server.url}/getImagetoImage", headers=auth, timeout=60, json={
        "app_id": "ap-fGhKl3mfkdlpqrshuwwabc", "image": data_uri(), "prompt": "watercolor", "batch": 1,
        "strength": 0.6, "celery": True}).json()
    assert pending["status"] == "PENDING"
    task = pending["task_id"]
    status = web.post(f"{jobs_server.url}/getImage", headers=auth, json={"id": task}).json()
    assert status["status"] == "PENDING" and status["progress"]["step"] == 0 and status["eta"] > 0
    running = web.post(f"{jobs_server.url}/getImage", headers=auth, json={"id": str(first["id"])}).json()
    assert running["progress"]["step"] >= 1 and running["progress"]["total"] == 50
    jobs.http.post(f"/v1/jobs/{task}/cancel")
    jobs.http.post(f"/v1/jobs/{first['id']}/cancel")
    done = web.post(f"{jobs_server.url}/getImage", headers=auth, json={"id": task}).json()
    assert done["status"] == "FAILED" and done["error_data"] == "Cancelled by the client"
    jobs.done(first["id"], timeout=30)


def test_an_input_png_is_stored_as_sent_unless_it_had_to_change(jobs, jobs_server):
    """The init image is stored for the worker as the client's own bytes when they are a PNG of the image at
    the output size (no encoding in the API: ~36 ms at 512 x 512); resized, it is encoded at the new size."""
    from .servers import png_bytes

    def stored_input(sent: bytes, **body) -> bytes:
        job = jobs.done(jobs.submit(init_image="data:image/png;base64," + base64.b64encode(sent).decode(),
                                    **body)["id"])
        assert job["status"] == "succeeded", job
        token = job["outputs"][0].rsplit("/", 1)[1].rsplit("-", 1)[0]
        return (jobs_server.data_dir / "inputs" / f"{token}-init.png").read_bytes()

    image = Image.open(io.BytesIO(png_bytes(64, 64)))
    sent = io.BytesIO()
    image.save(sent, format="PNG", compress_level=1)  # not what the server's own encoding writes
    sent = sent.getvalue()
    assert sent != png_bytes(64, 64) and stored_input(sent) == sent
    resized = stored_input(png_bytes(96, 64), width=64, height=64)
    with Image.open(io.BytesIO(resized)) as image:
        assert image.format == "PNG" and image.size == (64, 64)
