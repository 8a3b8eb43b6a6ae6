"""Step-level batching: each family's batched loop against its pipeline, batched vs alone, cancel and failure
inside a batch (engine level, as the worker's batcher drives it), what may share a tick, the queue's
claim_batch rules, and batches through a real server (meta batch_size).

Tolerance: an image made inside a batch equals the image made alone to within 1/255 per pixel channel (a
batched UNet call is not bit-identical to a single one on CPU: the kernels block the work differently); a
request alone in its batch is held to the same bound against today's pipeline call (measured: identical).
"""

from __future__ import annotations

import base64
import io
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from diffserve.core.batching import batch_key
from diffserve.core.errors import Cancelled, InvalidInput
from diffserve.core.request import GenerationRequest
from diffserve.engine.generate import Engine
from diffserve.engine.models.registry import ModelRegistry

from . import web
from .family_models import BATCHED_FAMILIES, build_tiny, tiny_ids
from .jobs_helpers import LONG, Jobs
from .servers import DiffserveServer, png_bytes
from .waiting import wait_until

TOLERANCE = 1  # per pixel channel, out of 255
FAMILY_MODELS = tiny_ids(*BATCHED_FAMILIES)  # the tiny model of each family with a batched loop
# and demo-sd, the default model: an SD UNet with a guidance input (run without CFG, timestep_cond per row)
BATCHED_MODELS = (*FAMILY_MODELS, "demo-sd")


@pytest.fixture(scope="module")
def engine(models_root: Path, one_torch_thread) -> Engine:
    build_tiny(models_root, *FAMILY_MODELS)
    return Engine(ModelRegistry.load(models_root / "no-models.json", models_root), safety_checker="tiny",
                  models_dir=models_root, max_models=len(BATCHED_MODELS), dtype="fp32")  # auto: bf16 on some CPUs


def init_image(side: int = 64) -> Image.Image:
    return Image.effect_noise((side, side), 64).convert("RGB")


def request(model: str, **over) -> GenerationRequest:
    fields = dict(model_id=model, prompt="a lighthouse", init_image_key="k", width=64, height=64, steps=6,
                  guidance_scale=7.5, strength=0.7, seed=1)
    fields.update(over)
    return GenerationRequest(**fields)


def mixed(model: str) -> list[GenerationRequest]:
    """Different prompts, seeds, strengths, step counts, guidance (with and without CFG), negative prompts,
    samples and schedulers."""
    return [
        request(model, prompt="a cat", seed=11, strength=0.5, steps=8),
        request(model, prompt="a dog", negative_prompt="blurry", seed=12, strength=0.9, steps=5, guidance_scale=4.0),
        request(model, prompt="a house", seed=13, strength=0.3, steps=10, guidance_scale=1.0),
        request(model, prompt="a tree", seed=14, strength=0.7, steps=6, samples=2, scheduler="DPMSolverMultistepScheduler"),
        request(model, prompt="a boat", seed=15, strength=0.8, steps=7, scheduler="EulerAncestralDiscreteScheduler",
                use_karras_sigmas=False),
    ]


def run_batched(engine: Engine, reqs: list[GenerationRequest], image: Image.Image, *, join_every: int = 1,
                reports: dict[int, object] | None = None) -> dict[int, list[Image.Image] | BaseException]:
    """As the worker's batcher drives a batch: requests join one per `join_every` ticks, finished rows leave."""
    reports = reports or {}
    batch = engine.open_batch(reqs[0])
    assert batch is not None
    out: dict[int, list[Image.Image] | BaseException] = {}
    rows = {}
    pending = list(enumerate(reqs))
    ticks = 0
    with batch:
        while pending or rows:
            if pending and ticks % join_every == 0:
                i, req = pending.pop(0)
                try:
                    rows[i] = batch.join(req, image, reports.get(i))
                except Exception as e:  # noqa: BLE001 - the request fails alone
                    out[i] = e
                    continue
            if rows:
                for row in batch.tick():
                    i = next(k for k, r in rows.items() if r is row)
                    del rows[i]
                    out[i] = row.error if row.error is not None else batch.finish(row)[0]
            ticks += 1
    return out


def max_diff(a: Image.Image, b: Image.Image) -> int:
    return int(np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).max())


@pytest.mark.parametrize("model", BATCHED_MODELS)
def test_a_row_alone_gives_the_pipelines_image(engine, model):
    image = init_image()
    req = request(model, negative_prompt="ugly", samples=2)
    alone = engine.generate(req, image).images
    batched = run_batched(engine, [req], image)[0]
    assert len(batched) == 2
    assert max(max_diff(a, b) for a, b in zip(alone, batched)) <= TOLERANCE


@pytest.mark.parametrize("model", BATCHED_MODELS)
def test_a_mixed_batch_gives_each_request_its_image_alone(engine, model):
    """Requests join at different ticks with their own strength, steps, seed, prompt, guidance and scheduler."""
    image = init_image()
    reqs = mixed(model)
    batched = run_batched(engine, reqs, image, join_every=2)
    for i, req in enumerate(reqs):
        alone = engine.generate(req, image).images
        assert len(batched[i]) == req.samples
        diffs = [max_diff(a, b) for a, b in zip(alone, batched[i])]
        assert max(diffs) <= TOLERANCE, (i, diffs)


def test_rows_start_and_finish_on_another_thread_while_ticks_run(engine):
    """As the worker's batcher runs them: a row starts (prompt and VAE encode) and a done row finishes (VAE
    decode) on a side thread while the batch ticks on this one; each image still equals its request alone."""
    image = init_image()
    reqs = mixed("tiny-sd")[:3]
    batch = engine.open_batch(reqs[0])
    out: dict[int, list[Image.Image]] = {}
    with batch, ThreadPoolExecutor(1) as side:
        rows = {0: batch.join(reqs[0], image)}
        starting = {i: side.submit(batch.start, reqs[i], image) for i in (1, 2)}
        finishing = {}
        while batch.rows or starting:
            for i, started in list(starting.items()):
                if started.done():
                    rows[i] = started.result()
                    batch.add(rows[i])
                    del starting[i]
            if batch.rows:
                for row in batch.tick():
                    finishing[next(i for i, r in rows.items() if r is row)] = side.submit(batch.finish, row)
        out = {i: f.result()[0] for i, f in finishing.items()}
    assert sorted(out) == [0, 1, 2]
    for i, req in enumerate(reqs):
        alone = engine.generate(req, image).images
        assert max(max_diff(a, b) for a, b in zip(alone, out[i])) <= TOLERANCE, i


def test_the_batch_shares_its_forward(engine):
    """The rows really run in one forward: a row reports the most rows it shared a tick with."""
    image = init_image()
    reqs = mixed("tiny-sd")[:3]
    batch = engine.open_batch(reqs[0])
    with batch:
        rows = [batch.join(r, image) for r in reqs]
        assert batch.size == 3
        batch.tick()
    assert [row.batch_size for row in rows] == [3, 3, 3]


def test_a_cancelled_row_leaves_and_the_others_finish(engine):
    image = init_image()
    reqs = mixed("tiny-sd")[:3]

    def cancel_at_two(step, total, latents):
        if step == 2:
            raise Cancelled()

    out = run_batched(engine, reqs, image, reports={1: cancel_at_two})
    assert isinstance(out[1], Cancelled)
    for i in (0, 2):
        assert max_diff(out[i][0], engine.generate(reqs[i], image).images[0]) <= TOLERANCE


def test_a_failing_request_never_fails_its_batch_mates(engine):
    image = init_image()
    reqs = mixed("tiny-sd")[:3]
    reqs[1] = request("tiny-sd", clip_skip=99)  # deeper than the text encoder: refused when it joins
    out = run_batched(engine, reqs, image)
    assert isinstance(out[1], InvalidInput) and "clip_skip" in out[1].message
    for i in (0, 2):
        assert max_diff(out[i][0], engine.generate(reqs[i], image).images[0]) <= TOLERANCE


def test_what_may_share_a_tick():
    base = request("tiny-sd").model_dump(mode="json")
    key = batch_key(base)
    per_row = dict(prompt="other", negative_prompt="n", seed=9, steps=30, strength=0.3, guidance_scale=1.0,
                   samples=3, scheduler="EulerDiscreteScheduler", clip_skip=2, safety_checker=False)
    assert batch_key({**base, **per_row}) == key
    for other in ({"model_id": "tiny-sdxl"}, {"width": 128}, {"height": 72}, {"lora_models": ["x"]},
                  {"lora_models": ["x"], "lora_strengths": [0.5]}, {"embeddings_model": "e"}, {"vae": "v"},
                  {"tomesd": True},  # tomesd rows share ticks with each other (a fixed merge pattern per row)
                  {"tiling": True}):  # the padding mode is the shared model's: tiling rows only with each other
        assert batch_key({**base, **other}) not in (None, key), other
    assert batch_key({**base, "tomesd": True, **per_row}) == batch_key({**base, "tomesd": True})
    for alone in ({"mode": "txt2img"}, {"mode": "inpaint"}, {"ip_adapter_id": "ip"}, {"strength": 0.01}):
        assert batch_key({**base, **alone}) is None, alone


def test_families_without_a_batched_loop_run_alone(engine):
    assert engine.open_batch(request("tiny-sd", strength=0.01)) is None  # no step: a key of None
    from diffserve.engine.families import batch_loop
    from diffserve.engine.models.specs import FAMILIES

    assert [spec.name for spec in FAMILIES if batch_loop(spec.name) is not None] == ["sd", "sdxl", "flux"]
    assert FAMILY_MODELS == ("tiny-sd", "tiny-sdxl", "tiny-flux")


def test_claim_batch_rules(tmp_path):
    """Only jobs of the batch's key, oldest first, as many rows as fit; none once another kind is overdue."""
    from diffserve.jobqueue.local import LocalQueue
    from diffserve.store.db import make_db_engine
    from diffserve.store.jobs import JobStore
    from diffserve.store.schema import ensure_schema

    db = make_db_engine(f"sqlite:///{tmp_path / 'q.db'}")
    ensure_schema(db)
    jobs = JobStore(db)

    def job(queue, model="tiny-sd", **over):
        req = request(model, **over)
        job_id = jobs.create(key_id="k", dialect="t", request=req, output_token=f"t{time.time_ns()}").id
        queue.enqueue(job_id)
        return job_id

    queue = LocalQueue(db, affinity_wait_s=60)
    key = batch_key(request("tiny-sd").model_dump(mode="json"))
    a1, other, a2, big, a3, a4 = (job(queue), job(queue, "tiny-sdxl"), job(queue, seed=5), job(queue, samples=3),
                                  job(queue, width=128), job(queue, strength=0.2, steps=20))
    assert queue.claim_batch("w0", key, 4) == [a1, a2]  # 1 + 1 + 3 rows would be 5: big waits, a4 behind it
    assert queue.claim_batch("w0", key, 4) == [big, a4]  # a3 is another size, `other` another model
    assert queue.claim_batch("w0", key, 4) == []
    a5 = job(queue)
    assert LocalQueue(db, affinity_wait_s=0).claim_batch("w0", key, 4) == []  # `other` is overdue: it goes first
    assert queue.claim_batch("w0", key, 0) == []
    assert queue.claim_batch("w0", key, 1) == [a5]
    assert sorted(queue.claimed_by("w0")) == sorted([a1, a2, big, a4, a5])


# --------------------------------------------------------------------------------------------
# Through a server: concurrent requests share a batch; meta says its size
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def batching_server(tmp_path_factory, models_root):
    srv = DiffserveServer(tmp_path_factory.mktemp("batching"), models_root, env_overrides={
        "DIFFSERVE_BATCHING__MAX_BATCH": "3", "DIFFSERVE_BATCHING__MAX_WAIT_MS": "300"}).start()
    yield srv
    srv.stop()


def v6(srv, key, **over):
    body = {"key": key, "model_id": "tiny-sd", "prompt": "a boat", "init_image": base64.b64encode(png_bytes(64, 64))
            .decode(), "num_inference_steps": 8, "strength": 0.7, "tomesd": "no", "seed": 3}
    body.update(over)
    return srv.post("/api/v6/images/img2img", body).json()


def test_concurrent_requests_share_a_batch_bounded_by_max_batch(batching_server):
    key = batching_server.create_key()
    with ThreadPoolExecutor(4) as pool:
        outs = list(pool.map(lambda i: v6(batching_server, key, seed=i, strength=0.3 + 0.2 * i,
                                          num_inference_steps=6 + i), range(4)))
    assert all(o["status"] == "success" for o in outs), outs
    sizes = [o["meta"].get("batch_size") for o in outs]
    assert max(sizes) > 1 and max(sizes) <= 3, sizes
    alone = v6(batching_server, key, seed=0, strength=0.3, num_inference_steps=6)  # outs[0]'s request, alone now
    assert alone["meta"]["batch_size"] == 1
    img = {k: Image.open(io.BytesIO(web.get(o["output"][0], timeout=30).content)).convert("RGB")
           for k, o in (("batched", outs[0]), ("alone", alone))}
    assert max_diff(img["batched"], img["alone"]) <= TOLERANCE


def test_tomesd_requests_share_a_batch_and_match_alone(batching_server):
    """The v6 page's default request (tomesd "yes") batches: token merging's pattern is fixed per row, so a
    row's image is the one it gets alone (within TOLERANCE), and it differs from the same request without
    tomesd (the merge really ran)."""
    key = batching_server.create_key()
    with ThreadPoolExecutor(3) as pool:
        outs = list(pool.map(lambda i: v6(batching_server, key, seed=i, tomesd="yes", strength=0.3 + 0.2 * i,
                                          num_inference_steps=6 + i), range(3)))
    assert [o["status"] for o in outs] == ["success"] * 3, outs
    assert max(o["meta"].get("batch_size") or 1 for o in outs) > 1, [o["meta"] for o in outs]
    alone = v6(batching_server, key, seed=0, tomesd="yes", strength=0.3, num_inference_steps=6)
    plain = v6(batching_server, key, seed=0, tomesd="no", strength=0.3, num_inference_steps=6)
    assert alone["meta"]["batch_size"] == 1
    img = {k: Image.open(io.BytesIO(web.get(o["output"][0], timeout=30).content)).convert("RGB")
           for k, o in (("batched", outs[0]), ("alone", alone), ("plain", plain))}
    assert max_diff(img["batched"], img["alone"]) <= TOLERANCE
    assert max_diff(img["alone"], img["plain"]) > TOLERANCE


def test_progress_and_cancel_inside_a_batch(batching_server):
    """Three jobs run in one batch, each reporting its own steps; the cancelled one leaves at a step and the
    other two finish."""
    from .jobs_helpers import Jobs, data_uri

    jobs = Jobs(batching_server, batching_server.create_key())
    long = dict(init_image=data_uri(64, 64), steps=50, strength=1.0, scheduler="DDIMScheduler")
    ids = [jobs.submit(seed=i, **long)["id"] for i in range(3)]
    for job_id in ids:
        jobs.wait(job_id, lambda j: j["status"] == "running" and j["progress"]["step"] >= 1)
    assert jobs.http.post(f"/v1/jobs/{ids[1]}/cancel").json()["status"] in ("running", "cancelled")
    done = [jobs.done(job_id, timeout=120) for job_id in ids]
    assert [d["status"] for d in done] == ["succeeded", "cancelled", "succeeded"]
    assert done[1]["progress"]["step"] < 50 and done[1]["outputs"] == []
    assert [d["progress"]["step"] for d in (done[0], done[2])] == [50, 50]
    assert done[0]["meta"]["batch_size"] == done[2]["meta"]["batch_size"] == 3


def test_a_worker_killed_mid_batch_gives_back_every_job_of_its_batch(batching_server):
    """SIGKILL the worker while three jobs share its batch: the supervisor releases all three claims, the new
    worker runs them again (a batch again), and each succeeds on its second attempt."""
    import os
    import signal

    from .jobs_helpers import Jobs, data_uri
    from .test_restart import wait_for_new_worker, worker_pids

    jobs = Jobs(batching_server, batching_server.create_key())
    long = dict(init_image=data_uri(64, 64), steps=50, strength=1.0, scheduler="DDIMScheduler")
    ids = [jobs.submit(seed=10 + i, **long)["id"] for i in range(3)]
    for job_id in ids:
        jobs.wait(job_id, lambda j: j["status"] == "running" and j["progress"]["step"] >= 1)
    (pid,) = worker_pids(batching_server).values()
    os.kill(pid, signal.SIGKILL)
    wait_for_new_worker(batching_server, pid)
    done = [jobs.done(job_id, timeout=180) for job_id in ids]
    assert [d["status"] for d in done] == ["succeeded"] * 3
    with sqlite3.connect(batching_server.data_dir / "diffserve.db") as db:
        attempts = [db.execute("select attempts from jobs where id = ?", (i,)).fetchone()[0] for i in ids]
    assert attempts == [2, 2, 2]
    assert max(d["meta"]["batch_size"] for d in done) > 1


def test_batching_off_runs_one_job_at_a_time_byte_identical(tmp_path_factory, models_root, batching_server):
    """MODE=off: concurrent jobs run one at a time through today's path (no batch_size in meta), and the image
    is byte-identical to the same request run alone with batching on (a row alone is the pipeline's call)."""
    off = DiffserveServer(tmp_path_factory.mktemp("batching-off"), models_root,
                          env_overrides={"DIFFSERVE_BATCHING__MODE": "off"}).start()
    try:
        key = off.create_key()
        with ThreadPoolExecutor(3) as pool:
            outs = list(pool.map(lambda i: v6(off, key, seed=20 + i), range(3)))
        assert [o["status"] for o in outs] == ["success"] * 3
        assert [o["meta"].get("batch_size") for o in outs] == [None] * 3
        with sqlite3.connect(off.data_dir / "diffserve.db") as db:
            spans = sorted(db.execute("select started_at, finished_at from jobs").fetchall())
        assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))  # never two at once
        alone = v6(batching_server, batching_server.create_key(), seed=20)
        assert alone["meta"]["batch_size"] == 1
        assert web.get(outs[0]["output"][0]).content == web.get(alone["output"][0]).content
    finally:
        off.stop()


@pytest.mark.parametrize("model", ["tiny-sdxl", "tiny-flux"])
def test_sdxl_and_flux_requests_share_a_batch_through_the_worker(batching_server, model):
    key = batching_server.create_key()
    jobs = Jobs(batching_server, key)
    # a long tiny-sd job holds the worker until both requests wait in the queue (on a busy machine the second
    # could otherwise arrive after the first ran alone): the worker then takes them together
    blocker = jobs.submit(**LONG)["id"]
    jobs.wait(blocker, lambda job: job["status"] == "running")

    def waiting() -> list:
        return [job for job in jobs.http.get("/v1/jobs", params={"limit": 5}).json()["data"]
                if job["model_id"] == model and job["status"] == "queued"]

    with ThreadPoolExecutor(2) as pool:
        pending = [pool.submit(v6, batching_server, key, model_id=model, seed=30 + i, num_inference_steps=10,
                               negative_prompt="blurry" if i else None) for i in range(2)]
        try:
            wait_until(waiting, 60, every=0.05, accept=lambda queued: len(queued) == 2, what="both requests queued")
        finally:
            jobs.http.post(f"/v1/jobs/{blocker}/cancel")
        outs = [f.result() for f in pending]
    assert [o["status"] for o in outs] == ["success"] * 2, outs
    assert [o["meta"]["batch_size"] for o in outs] == [2, 2]
