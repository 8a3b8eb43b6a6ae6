"""Early links (ModelsLab's `future_links`) hold whichever attempt of a job wins (api/outputs.py): handed out
while one attempt runs, they answer 404 until the job succeeded, then the winning attempt's image -- even
when the attempt that ran then was handed on and wrote its own image late under the link's name.

The API process in this process (no workers: the test plays the workers through the ledger), on SQLite."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from diffserve.api.app import create_app
from diffserve.config import Settings
from diffserve.core.request import GenerationRequest
from diffserve.store.jobs import new_output_token
from diffserve.store.ledger import Outcome

from .servers import png_bytes

FETCH = "/api/v6/images/fetch"


@pytest.fixture
def api(tmp_path, monkeypatch):
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "metrics"))  # create_app sets it: restored after
    with TestClient(create_app(Settings(data_dir=tmp_path), run_workers=False)) as client:
        yield client


def new_job(ds, key_id: str, *, temp: bool):
    request = GenerationRequest(model_id="tiny-sd", prompt="x", init_image_key="inputs/x.png", width=64, height=64,
                                steps=4, guidance_scale=7.5, strength=0.7, seed=1, samples=2, temp=temp)
    return ds.service.jobs.ledger.create(key_id=key_id, dialect="modelslab", request=request,
                                         output_token=new_output_token())


def run_attempt(ds, job_id: int, worker: str) -> int:
    assert ds.queue.claim(worker, 0) == job_id
    return ds.service.jobs.ledger.start(job_id, worker).attempts


@pytest.mark.parametrize("temp", [False, True])
def test_early_links_of_a_handed_on_job_answer_the_winning_attempt_s_images(api, temp):
    ds = api.app.state.ds
    key, secret = ds.keys.create(name="links")
    job = new_job(ds, key.key_id, temp=temp)

    def fetch() -> dict:
        return api.post(f"{FETCH}/{job.id}", json={"key": secret}).json()

    queued = fetch()
    assert queued["status"] == "processing" and len(queued["future_links"]) == 2
    assert run_attempt(ds, job.id, "w1") == 1
    early = fetch()["future_links"]  # handed out while attempt 1 runs
    assert early == queued["future_links"] and ("/temp/generations/" in early[0]) == temp
    # attempt 1's worker is lost: the job is handed on, attempt 2 runs; the links stay the same
    assert ds.service.jobs.ledger.requeue(job.id, None, "worker lost", holder="w1")
    assert run_attempt(ds, job.id, "w2") == 2 and fetch()["future_links"] == early
    # the lost attempt writes late, under the first attempt's keys (the links' names): never shown
    first, second = job.attempt_keys(1), job.attempt_keys(2)
    for k in first:
        ds.service.storage.put(k, png_bytes(color=(255, 0, 0)))
    assert [api.get(u).status_code for u in early] == [404, 404]  # nothing until the job succeeded
    images = [png_bytes(color=(0, 0, i)) for i in (1, 2)]
    for k, data in zip(second, images):
        ds.service.storage.put(k, data)
    assert not ds.service.jobs.ledger.finish(job.id, 1, Outcome.succeeded(first, [False, False]))  # fenced out
    assert ds.service.jobs.ledger.finish(job.id, 2, Outcome.succeeded(second, [False, False]))
    done = fetch()
    assert done["status"] == "success" and all("-a2-" in u for u in done["output"])
    for link, final, data in zip(early, done["output"], images):
        got = api.get(link)
        assert got.status_code == 200 and got.content == data == api.get(final).content
        assert got.headers["content-type"] == "image/png"
    # a file named like a link but no job's (an upload's random name) is served as it is
    ds.service.storage.put(f"{'temp/' if temp else ''}generations/not-a-job-0.png", b"plain")
    assert api.get(early[0].rsplit("/", 1)[0] + "/not-a-job-0.png").content == b"plain"
    # once the winner's image is gone (expired, deleted), its link answers 404 like the image's own URL
    ds.service.storage.delete(second[0])
    assert api.get(early[0]).status_code == api.get(done["output"][0]).status_code == 404
