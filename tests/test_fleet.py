"""Fleet mode on real parts: PostgreSQL store, Celery messages on Redis, outputs in SeaweedFS, an API process
with no workers of its own and two `diffserve worker` processes, each on a host of its own (a network
namespace reaching the servers only across its link). Model affinity fleet-wide, duplicate and redelivered
messages, a worker killed mid-job, a Redis restart, an API process killed, PostgreSQL down, management."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path

import psycopg
import pytest

from . import web
from .jobs_helpers import Jobs, data_uri
from .s3server import PRIVATE_BUCKET
from .waiting import wait_until
from .webhook_receiver import Receiver

V6 = "/api/v6/images/img2img"
pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def jobs(fleet):
    return Jobs(fleet.api, fleet.api.create_key("--max-queued", "0"))


def rows(fleet, sql: str, *args) -> list[tuple]:
    with psycopg.connect(fleet.pg.url.replace("postgresql+psycopg", "postgresql")) as conn:
        return conn.execute(sql, args).fetchall()


def test_the_workers_are_other_hosts_and_serve_a_synchronous_request(fleet, fleet_admin, jobs):
    workers = fleet.worker_rows(fleet_admin)
    assert sorted(w["labels"][0] for w in workers) == ["host0", "host1"]
    assert all(w["state"] == "idle" and w["models"] == ["tiny-sd"] for w in workers), workers
    out = fleet.api.post(V6, {"key": jobs.key, "prompt": "a harbour", "init_image": data_uri(64, 64),
                              "num_inference_steps": 2, "strength": 0.5, "base64": "no"}).json()
    assert out["status"] == "success", out
    assert out["output"][0].startswith(f"{fleet.s3.endpoint}/{PRIVATE_BUCKET}/")
    assert web.get(out["output"][0]).status_code == 200  # the worker wrote it to S3 across its link


def test_a_job_goes_to_the_worker_that_has_its_model_loaded(fleet, jobs):
    """2 workers, 2 models, 40 interleaved jobs: each worker keeps one model (at most 1 loaded) -> ~2 loads."""
    submitted = [jobs.submit(model_id=("tiny-sd", "tiny-sd-b")[i % 2], steps=2, strength=0.5, seed=i)["id"]
                 for i in range(40)]
    done = [jobs.done(j) for j in submitted]
    assert all(j["status"] == "succeeded" for j in done), [j for j in done if j["status"] != "succeeded"]
    ran = rows(fleet, "select worker_id, request->>'model_id' from jobs where id = any(%s) order by started_at",
               submitted)
    loads, holding = 0, {}
    for worker, model in ran:
        if holding.setdefault(worker, "tiny-sd") != model:  # both workers preload tiny-sd
            loads += 1
            holding[worker] = model
    assert len(holding) == 2 and loads <= 3, (loads, ran)


def test_a_gpu_label_routes_to_the_workers_with_it_and_clear_queue_reaches_the_fleet(fleet, fleet_admin, jobs):
    workers = {w["labels"][0]: w["worker_id"] for w in fleet.worker_rows(fleet_admin)}
    for label in ("host0", "host1"):
        done = jobs.done(jobs.submit(steps=2, worker_label=label)["id"])
        assert done["status"] == "succeeded" and done["worker"] == workers[label], (label, done)
    long = jobs.submit(init_image=data_uri(256, 256), steps=40, strength=1.0, worker_label="host0")
    jobs.wait(long["id"], lambda j: j["status"] == "running")
    waiting = [jobs.submit(steps=2, worker_label="host0")["id"] for _ in range(2)]  # only host0 may run them
    out = fleet.api.post("/api/v1/enterprise/clear_queue", {"key": fleet_admin}).json()
    assert out["status"] == "success", out
    assert [jobs.done(j)["status"] for j in waiting] == ["cancelled", "cancelled"]
    assert jobs.done(long["id"], timeout=300)["status"] == "succeeded"  # a running job finishes


def test_a_message_delivered_twice_runs_its_job_once(fleet, jobs):
    from diffserve.config import QueueSettings
    from diffserve.jobqueue.celery import TASK, celery_app, queue_name

    app = celery_app(QueueSettings(broker_url=fleet.redis.url))
    finished = jobs.done(jobs.submit(steps=2)["id"])
    queued = [jobs.submit(steps=4, seed=s)["id"] for s in range(3)]
    for job_id in (finished["id"], *queued, *queued):
        app.send_task(TASK, args=[job_id], kwargs={"label": None}, queue=queue_name(None))
    for job_id in queued:
        assert jobs.done(job_id)["status"] == "succeeded"
    time.sleep(1.5)  # the duplicates are consumed meanwhile
    attempts = rows(fleet, "select id, attempts, status from jobs where id = any(%s)", [finished["id"], *queued])
    assert all(a == 1 and st == "succeeded" for _, a, st in attempts), attempts
    assert fleet.redis_llen() == 0


def test_a_worker_killed_mid_job_its_job_finishes_on_the_other(fleet, fleet_admin, jobs):
    job = jobs.submit(init_image=data_uri(256, 256), steps=40, strength=1.0)
    running = jobs.wait(job["id"], lambda j: j["status"] == "running" and j["worker"])
    victim = next(w for w in fleet.worker_rows(fleet_admin) if w["worker_id"] == running["worker"])
    index = int(victim["labels"][0].removeprefix("host"))
    fleet.kill_worker(index)
    killed_at = time.monotonic()
    again = jobs.wait(job["id"], lambda j: j["status"] == "running" and j["worker"] not in (None, running["worker"]))
    rerun_s = time.monotonic() - killed_at
    done = jobs.done(job["id"], timeout=300)
    assert done["status"] == "succeeded" and done["worker"] == again["worker"], done
    token, attempts = rows(fleet, "select output_token, attempts from jobs where id = %s", job["id"])[0]
    assert attempts == 2
    # written once: by the second attempt, under its own key (an attempt's outputs are its own: core/job.py)
    outputs = [k for k in fleet.s3.keys(PRIVATE_BUCKET) if f"generations/{token}" in k and k.endswith("-0.png")]
    assert len(outputs) == 1 and outputs[0].endswith(f"generations/{token}-a2-0.png"), outputs
    print(f"killed worker's job running again on the other worker {rerun_s:.1f} s after the kill")
    assert rerun_s < 30  # stale after DIFFSERVE_WORKER_STALE_S=3, released within the next 2 s check
    fleet.start_worker(index)
    fleet.wait_workers(2)


def test_a_redis_restart_loses_no_job(fleet, jobs):
    fleet.redis.kill()
    while_down = [jobs.submit(steps=2, seed=s)["id"] for s in range(3)]  # messages cannot be sent
    fleet.redis.restart()  # empty: no persistence
    after = [jobs.submit(steps=2, seed=s)["id"] for s in range(3)]
    for job_id in (*while_down, *after):
        assert jobs.done(job_id, timeout=120)["status"] == "succeeded"


def test_killing_an_api_process_loses_no_job_and_its_webhooks_still_go_out(fleet, jobs):
    receiver = Receiver().start()
    second = fleet.start_api(1)
    try:
        on_second = Jobs(second, jobs.key)
        submitted = [on_second.submit(steps=6, seed=s, webhook=f"http://127.0.0.1:{receiver.port}/hook")["id"]
                     for s in range(4)]
        second.stop(sig=signal.SIGKILL)
        for job_id in submitted:
            assert jobs.done(job_id, timeout=120)["status"] == "succeeded"  # read through the first API
        wait_until(lambda: {r.payload["id"] for r in receiver.received}, 60, every=0.2,
                   accept=lambda ids: len(ids) >= 4, what="webhooks for 4 distinct jobs")
        delivered = [r.payload["id"] for r in receiver.received]
        assert sorted(delivered) == sorted(submitted), delivered  # each once, by the API still alive
    finally:
        receiver.stop()


def test_management_reaches_every_worker(fleet, fleet_admin, jobs):
    assert jobs.done(jobs.submit(model_id="tiny-sd-b", steps=2)["id"])["status"] == "succeeded"
    assert any(w["models"] for w in fleet.worker_rows(fleet_admin))
    r = fleet.api.post("/api/v1/enterprise/clear_cache", {"key": fleet_admin}).json()
    assert r["status"] == "success", r
    wait_until(lambda: [w["models"] for w in fleet.worker_rows(fleet_admin)], 30, every=0.2,
               accept=lambda models: not any(models), what="every worker's loaded models cleared")
    assert not any(w["models"] for w in fleet.worker_rows(fleet_admin))
    before = {w["worker_id"]: w["started_at"] for w in fleet.worker_rows(fleet_admin)}
    assert all(w["machine"] for w in fleet.worker_rows(fleet_admin))  # standalone workers: <machine>-<pid>
    assert fleet.api.post("/api/v1/enterprise/restart_server", {"key": fleet_admin}).json()["status"] == "success"
    now = wait_until(
        lambda: {w["worker_id"]: w["started_at"] for w in fleet.worker_rows(fleet_admin) if w["state"] == "idle"},
        120, every=0.3, accept=lambda now: len(now) == 2 and all(now[w] != before.get(w) for w in now),
        what="two idle workers, each started afresh")
    assert len(now) == 2 and all(now[w] != before.get(w) for w in now), (before, now)  # each started afresh
    assert jobs.done(jobs.submit(steps=2)["id"])["status"] == "succeeded"


def test_load_model_and_delete_model_reach_every_machine(fleet, fleet_admin, jobs, image_host, tmp_path):
    """The API downloads the checkpoint, puts it in S3 and posts the registration; each worker fetches the weights
    from S3 into its own models folder and its own models file; another API process learns the entry too."""
    from safetensors.torch import save_file

    from .ldm_checkpoint import diffusers_to_ldm_checkpoint

    tiny = fleet.root / "worker-0" / "models" / "tiny-sd"  # built by that worker's preload
    checkpoint = tmp_path / "fleet.safetensors"
    save_file(diffusers_to_ldm_checkpoint(tiny), str(checkpoint))
    config = tmp_path / "config"  # a diffusers config folder every machine has (offline single-file loading)
    shutil.copytree(tiny, config, ignore=shutil.ignore_patterns("*.safetensors"))
    url = image_host.add("/models/fleet-ckpt", checkpoint.read_bytes(), "application/octet-stream")
    out = fleet.api.post("/api/v1/enterprise/load_model", {
        "key": fleet_admin, "url": url, "model_id": "fleet-ckpt", "model_type": "custom_ckpt",
        "from_safetensors": "yes", "config": str(config)}).json()
    assert out["status"] == "success", out

    def registered(i: int) -> bool:
        models = json.loads((fleet.root / f"worker-{i}" / "models.json").read_text())["models"]
        return "fleet-ckpt" in models and Path(models["fleet-ckpt"]["location"]).is_file()

    wait_until(lambda: registered(0) and registered(1), 60, every=0.2, what="fleet-ckpt registered on both workers")
    for i in (0, 1):  # the weights came from S3 into each worker's own folder
        location = json.loads((fleet.root / f"worker-{i}" / "models.json").read_text())["models"]["fleet-ckpt"]
        assert str(fleet.root / f"worker-{i}") in location["location"]
    wait_until(lambda: fleet.api.post("/api/v1/enterprise/verify_model",
                                      {"key": fleet_admin, "model_id": "fleet-ckpt"}).json().get("model_status"),
               60, every=0.2, accept=lambda status: status == "loaded", what="verify_model fleet-ckpt: loaded")
    body = {"key": jobs.key, "model_id": "fleet-ckpt", "prompt": "p", "init_image": data_uri(), "strength": 0.5,
            "num_inference_steps": 2, "safety_checker": "no"}  # the model is not built in: no offline checker
    assert fleet.api.post(V6, body).json()["status"] == "success"
    other = fleet.start_api(1)
    try:
        out = other.post(V6, body).json()
        assert out["status"] == "success", out  # the second API learnt the model from the store
        assert fleet.api.post("/api/v1/enterprise/delete_model",
                              {"key": fleet_admin, "model_id": "fleet-ckpt"}).json()["status"] == "success"
        wait_until(lambda: not registered(0) and not registered(1), 60, every=0.2,
                   what="fleet-ckpt gone from both workers")
        wait_until(lambda: other.post(V6, body).json().get("message"), 60, every=0.2,
                   accept=lambda message: message == "Model not found: fleet-ckpt",
                   what="the second API to answer Model not found: fleet-ckpt")
    finally:
        other.stop()


def test_postgres_down_answers_503_in_the_dialect_shape_and_recovers(fleet, jobs):
    fleet.pg.pause()
    try:
        r = fleet.api.post(V6, {"key": jobs.key, "prompt": "p", "init_image": data_uri(), "num_inference_steps": 2},
                           timeout=30)
        assert r.status_code == 503 and r.json()["status"] == "error", r.text
    finally:
        fleet.pg.resume()
    r = wait_until(
        lambda: fleet.api.post(V6, {"key": jobs.key, "prompt": "p", "init_image": data_uri(),
                                    "num_inference_steps": 2}, timeout=60),
        60, every=1, accept=lambda r: r.status_code == 200 and r.json()["status"] == "success",
        what="v6 img2img to succeed again after PostgreSQL resumed")
    assert r.status_code == 200 and r.json()["status"] == "success", f"no recovery: {r.status_code} {r.text}"


def test_an_api_process_s_own_workers_are_named_apart_in_a_fleet():
    """Two API processes with local workers on one store: neither may take the other's workers for its own."""
    from diffserve.config import Settings
    from diffserve.workers.placement import local_worker_id, worker_index
    from diffserve.workers.recovery import is_local

    assert local_worker_id(Settings(), 1) == "worker-1" and is_local("worker-1")
    fleet_name = local_worker_id(Settings(queue={"backend": "celery"}), 1)
    assert fleet_name.endswith(f"-api{os.getpid()}-worker-1") and not is_local(fleet_name)
    assert worker_index(fleet_name) == 1  # its device and label follow its index as before
