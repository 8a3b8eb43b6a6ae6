"""The load balancer: `serve --workers 2` spreads jobs over both workers, prefers the worker that holds the
job's model, never lets a job starve, and routes Qolaba `inference_type` to workers with that label."""

from __future__ import annotations

import json
import time
from datetime import datetime

import pytest

from . import web
from .dialects import LOCAL_SD, jobs_table, poll_modelslab
from .servers import DiffserveServer, png_bytes
from .waiting import wait_until

V6 = "/api/v6/images/img2img"
AFFINITY_WAIT_S = 1.0


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, models_root, image_host):
    data = tmp_path_factory.mktemp("fleet")
    # tiny-sd-b: the same weights under another id, so "has this model loaded" differs between workers
    (data / "models.json").write_text(json.dumps({"models": {"tiny-sd-b": {
        "kind": "folder", "location": str(models_root / "tiny-sd"), "builtin": "tiny-sd",
        "limits": {"min_size": 32, "max_size": 512}}}}))
    srv = DiffserveServer(data, models_root, {
        "DIFFSERVE_WORKERS": "2",
        "DIFFSERVE_WORKER_LABELS": "a100,h100",
        "DIFFSERVE_AFFINITY_WAIT_S": str(AFFINITY_WAIT_S),
        "DIFFSERVE_QOLABA_APPS": json.dumps({LOCAL_SD: "tiny-sd"}),
    }).start()
    image_host.add("/lb.png", png_bytes(128, 128))
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def key(fleet):
    return fleet.create_key("--name", "lb")


def gen(key_text, image_host, model="tiny-sd", steps=2, strength=0.5, **over):
    b = {"key": key_text, "model_id": model, "prompt": "a harbour", "init_image": image_host.url("/cat.png"),
         "num_inference_steps": steps, "strength": strength, "safety_checker": "no"}
    b.update(over)
    return b


def worker_of(server, job_id) -> str:
    return jobs_table(server, "worker_id")[job_id][0]


def wait_both_ready(server):
    wait_until(lambda: web.get(f"{server.url}/health").json()["workers"], 120, every=0.2,
               accept=lambda n: n == 2, what="/health to count two workers")


def test_jobs_spread_over_both_workers(fleet, key, image_host):
    wait_both_ready(fleet)
    jobs = [fleet.post(V6, gen(key, image_host, steps=10, strength=1, seed=s, instant_response="yes",
                               init_image=image_host.url("/lb.png"))).json() for s in range(4)]
    for job in jobs:
        assert poll_modelslab(fleet, job["fetch_result"], {"key": key})["status"] == "success"
    assert {worker_of(fleet, job["id"]) for job in jobs} == {"worker-0", "worker-1"}


def test_a_worker_that_holds_the_model_gets_its_jobs(fleet, key, image_host):
    wait_both_ready(fleet)
    first = fleet.post(V6, gen(key, image_host, model="tiny-sd-b")).json()
    assert first["status"] == "success", first
    holder = worker_of(fleet, first["id"])
    for seed in range(4):  # one at a time: both workers idle each time, only `holder` has tiny-sd-b
        out = fleet.post(V6, gen(key, image_host, model="tiny-sd-b", seed=seed)).json()
        assert out["status"] == "success" and worker_of(fleet, out["id"]) == holder, (holder, out["id"])
    admin = fleet.create_key("--admin")
    workers = fleet.post("/api/v1/enterprise/system_details", {"key": admin}).json()["workers"]
    holding = [w["worker_id"] for w in workers if "tiny-sd-b" in w["models"]]
    assert holding == [holder]  # the other worker never loaded it


def test_no_job_waits_for_a_busy_holder_longer_than_the_affinity_wait(fleet, key, image_host):
    wait_both_ready(fleet)
    warm = fleet.post(V6, gen(key, image_host, model="tiny-sd-b")).json()
    holder = worker_of(fleet, warm["id"])
    long = fleet.post(V6, gen(key, image_host, model="tiny-sd-b", steps=50, strength=1, samples=2,
                              instant_response="yes", init_image=image_host.url("/lb.png"))).json()
    wait_until(lambda: jobs_table(fleet, "status")[long["id"]][0], every=0.02, accept=lambda s: s != "queued",
               what=f"job {long['id']} out of the queue")
    assert worker_of(fleet, long["id"]) == holder
    short = fleet.post(V6, gen(key, image_host, model="tiny-sd-b", instant_response="yes")).json()
    assert poll_modelslab(fleet, short["fetch_result"], {"key": key})["status"] == "success"
    assert poll_modelslab(fleet, long["fetch_result"], {"key": key})["status"] == "success"
    rows = jobs_table(fleet, "created_at", "started_at", "finished_at", "worker_id")
    created, started, _, worker = rows[short["id"]]
    assert _ts(rows[long["id"]][2]) > _ts(started), "the long job must outlast the wait for this test to mean anything"
    # the holder was busy all along: the other worker took the job once it had waited the affinity wait
    assert worker != holder
    assert _ts(started) - _ts(created) >= AFFINITY_WAIT_S - 0.05


def _ts(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


@pytest.mark.parametrize("gpu,worker", [("h100", "worker-1"), ("a100", "worker-0")])
def test_inference_type_runs_on_workers_with_that_label(fleet, key, image_host, gpu, worker):
    wait_both_ready(fleet)
    headers = {"Authorization": f"Bearer {key}"}
    for _ in range(3):
        out = web.post(f"{fleet.url}/getImagetoImage", headers=headers, timeout=120, json={
            "app_id": LOCAL_SD, "image": image_host.url("/cat.png"), "prompt": "a boat", "strength": 0.5,
            "inference_type": gpu}).json()
        assert out["status"] == "SUCCESS", out
        params, ran_on = jobs_table(fleet, "dialect_params", "worker_id")[int(out["task_id"])]
        assert ran_on == worker and json.loads(params)["routed_to"] == gpu


def test_inference_type_without_such_workers_runs_on_any(fleet, key, image_host):
    out = web.post(f"{fleet.url}/getImagetoImage", headers={"Authorization": f"Bearer {key}"}, timeout=120, json={
        "app_id": LOCAL_SD, "image": image_host.url("/cat.png"), "prompt": "a boat", "inference_type": "a10g"}).json()
    assert out["status"] == "SUCCESS", out
    params = json.loads(jobs_table(fleet, "dialect_params")[int(out["task_id"])][0])
    assert params["routed_to"] == "any worker" and params["inference_type"] == "a10g"


def test_claim_order_rules(tmp_path):
    """The queue's rules on their own (no server): affinity first, labels respected, a job held by a worker
    that may not take it is not left waiting, and once overdue any worker takes the oldest job."""
    from diffserve.core.request import GenerationRequest
    from diffserve.jobqueue.local import LocalQueue
    from diffserve.store.db import make_db_engine
    from diffserve.store.schema import ensure_schema
    from diffserve.store.jobs import JobStore
    from diffserve.store.workers import WorkerStore

    db = make_db_engine(f"sqlite:///{tmp_path / 'q.db'}")
    ensure_schema(db)
    jobs, workers = JobStore(db), WorkerStore(db)
    queue = LocalQueue(db, affinity_wait_s=60)

    def job(model, label=None):
        request = GenerationRequest(model_id=model, prompt="p", init_image_key="k", width=64, height=64, steps=1,
                                    guidance_scale=7.5, strength=0.5, seed=1, worker_label=label)
        job_id = jobs.create(key_id="k", dialect="t", request=request, output_token=f"t{model}{label}{time.time()}").id
        queue.enqueue(job_id)
        return job_id

    for worker_id, models, labels in (("w0", ["A"], ()), ("w1", ["B"], ("h100",)), ("w2", [], ("h100",))):
        workers.register(worker_id, 1, labels)
        workers.update(worker_id, state="idle", models=models)
    j1, j2, j3, j4, j5 = job("B"), job("A"), job("B", "h100"), job("C"), job("A", "h100")
    assert queue.claim("w0", 0, loaded=["A"]) == j2  # its own model first, though j1 is older
    assert queue.claim("w0", 0, loaded=["A"]) == j4  # j1: w1 holds B; j3, j5: labelled h100
    assert queue.claim("w0", 0, loaded=["A"]) is None  # only B jobs left for it, and w1 holds B
    assert queue.claim("w2", 0, labels=["h100"]) == j5  # w0 holds A but may not take an h100 job
    assert queue.claim("w1", 0, loaded=["B"], labels=["h100"]) == j1
    assert LocalQueue(db, affinity_wait_s=0).claim("w0", 0, loaded=["A"]) is None  # j3 needs h100
    assert LocalQueue(db, affinity_wait_s=0).claim("w2", 0, labels=["h100"]) == j3  # overdue: oldest first
