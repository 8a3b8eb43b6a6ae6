"""Outputs in S3 (a real SeaweedFS on loopback), switched on at run time with update_s3, and temp expiry.

The tests run in file order on one server: local disk first, then the bucket.
"""

from __future__ import annotations

import base64
import io
import time
from urllib.parse import urlsplit

import httpx
import pytest
from PIL import Image

from . import web
from .bodies import IMG2IMG, body
from .s3server import ACCESS_KEY, PRIVATE_BUCKET, PUBLIC_BUCKET, SECRET_KEY, SeaweedS3
from .servers import DiffserveServer, png_bytes
from .waiting import wait_until
from .webhook_receiver import Receiver

UPDATE_S3 = "/api/v1/enterprise/update_s3"
TEMP_TTL_S = 4.0
INIT_B64 = base64.b64encode(png_bytes(64, 64)).decode()


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    srv = SeaweedS3(tmp_path_factory.mktemp("seaweed")).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory, models_root, s3):
    env = {"DIFFSERVE_STORAGE__REFRESH_S": "0.2", "DIFFSERVE_STORAGE__TEMP_TTL_S": str(TEMP_TTL_S),
           "DIFFSERVE_STORAGE__CLEANUP_INTERVAL_S": "0.3"}
    srv = DiffserveServer(tmp_path_factory.mktemp("s3-data"), models_root, env_overrides=env).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def admin(server):
    return server.create_key("--name", "admin", "--admin")


@pytest.fixture(scope="module")
def user(server):
    return server.create_key("--name", "user")


def s3_settings(admin_key, s3, **over):
    b = {"key": admin_key, "public_url": "", "region_name": "us-east-1", "endpoint_url": s3.endpoint,
         "aws_access_key_id": ACCESS_KEY, "aws_secret_access_key": SECRET_KEY, "image_directory": "diffserve/out",
         "bucket": PRIVATE_BUCKET}
    b.update(over)
    return b


def get(url: str) -> httpx.Response:
    return web.get(url, timeout=30)


def png_size(data: bytes) -> tuple[int, int]:
    return Image.open(io.BytesIO(data)).size


def token_of(url: str) -> str:
    return urlsplit(url).path.rsplit("/", 1)[1].rsplit("-", 1)[0]


LOCAL_TEMP: dict[str, str] = {}


def test_local_disk_temp_and_base64(server, user, image_host):
    temp = server.post(IMG2IMG, body(user, image_host, temp="yes")).json()
    keep = server.post(IMG2IMG, body(user, image_host, base64="yes")).json()
    assert temp["status"] == keep["status"] == "success"
    assert "/temp/generations/" in temp["output"][0] and temp["meta"]["temp"] == "yes"
    assert get(temp["output"][0]).status_code == 200
    assert base64.b64decode(keep["output"][0]) == get(keep["proxy_links"][0]).content
    LOCAL_TEMP.update(temp=temp["output"][0], keep=keep["proxy_links"][0])  # checked after expiry below


def test_update_s3_needs_an_admin_key(server, user, s3):
    r = server.post(UPDATE_S3, s3_settings(user, s3))
    assert r.status_code == 403 and r.json() == {"status": "error", "message": "This endpoint needs an admin API key"}
    r = server.post(UPDATE_S3, s3_settings("not-a-key", s3))
    assert r.status_code == 401 and r.json()["message"] == "Invalid API key"


@pytest.mark.parametrize("change,message", [
    ({"bucket": None}, "bucket is required"),
    ({"aws_secret_access_key": "wrong"}, "Unable to access bucket 'private': access denied"),
    ({"bucket": "no-such-bucket"}, "Unable to access bucket 'no-such-bucket'"),
    ({"image_directory": "../escape"}, "image_directory must be a plain path"),
    ({"endpoint_url": "ftp://example.com"}, "endpoint_url must be an http(s) URL"),
    ({"aws_secret_access_key": ""}, "aws_access_key_id and aws_secret_access_key go together"),
    ({"url_expiry": 0}, "url_expiry must be between 1 and 604800"),
])
def test_bad_s3_settings_are_refused_and_nothing_changes(server, admin, user, s3, image_host, change, message):
    r = server.post(UPDATE_S3, s3_settings(admin, s3, **change))
    assert r.status_code == 400 and r.json()["status"] == "error" and message in r.json()["message"], r.text
    assert SECRET_KEY not in r.text


def test_presigned_outputs_in_the_bucket(server, admin, user, s3, image_host):
    r = server.post(UPDATE_S3, s3_settings(admin, s3, url_expiry=3600))
    assert r.status_code == 200, r.text
    saved = r.json()
    assert saved["status"] == "success" and saved["settings"]["bucket"] == PRIVATE_BUCKET
    assert SECRET_KEY not in r.text and saved["settings"]["prefix"] == "diffserve/out/"
    time.sleep(0.5)  # workers re-read the settings every 0.2 s

    out = server.post(IMG2IMG, body(user, image_host, seed=5)).json()
    assert out["status"] == "success", out
    url = out["output"][0]
    parts = urlsplit(url)
    assert url.startswith(f"{s3.endpoint}/{PRIVATE_BUCKET}/diffserve/out/generations/") and "X-Amz-Signature" in url
    assert "X-Amz-Expires=3600" in parts.query
    assert png_size(get(url).content) == (64, 64)
    assert get(f"{s3.endpoint}{parts.path}").status_code == 403  # the bucket is private: unsigned is refused
    token = token_of(url)
    # the job's link name (ModelsLab's future_links) is answered by the API, from the bucket (api/outputs.py)
    assert get(f"{server.url}/generations/{token}-0.png").content == get(url).content
    # written by the worker (output) and by the API (input), both in the bucket; nothing on local disk
    assert {f"diffserve/out/generations/{token}-0.png", f"diffserve/out/inputs/{token}-init.png"} <= set(
        s3.keys(PRIVATE_BUCKET, "diffserve/out/"))
    assert not list((server.data_dir / "generations").glob(f"{token}*"))
    assert not (server.data_dir / "inputs").exists() or not list((server.data_dir / "inputs").glob(f"{token}*"))


def test_base64_output_from_the_bucket(server, user, image_host):
    out = server.post(IMG2IMG, body(user, image_host, base64="yes", samples=2)).json()
    assert out["status"] == "success", out
    for b64, url in zip(out["output"], out["proxy_links"]):
        assert base64.b64decode(b64) == get(url).content


def test_a_presigned_url_expires_and_fetch_signs_a_fresh_one(server, admin, user, s3, image_host):
    assert server.post(UPDATE_S3, s3_settings(admin, s3, url_expiry=2)).status_code == 200
    time.sleep(0.5)
    out = server.post(IMG2IMG, body(user, image_host)).json()
    url = out["output"][0]
    assert "X-Amz-Expires=2" in url
    assert get(url).status_code == 200
    time.sleep(3)
    expired = get(url)
    assert expired.status_code == 403 and "expired" in expired.text.lower()
    fresh = server.post(f"/api/v6/images/fetch/{out['id']}", {"key": user}).json()["output"][0]
    assert fresh != url and get(fresh).status_code == 200


def test_a_webhook_retry_carries_freshly_signed_urls(server, admin, user, s3, image_host):
    """The payload is rendered at every attempt: a retry made after the first attempt's presigned URLs expired
    carries URLs signed then, which serve the image; the rest of the body and the delivery id stay the same."""
    assert server.post(UPDATE_S3, s3_settings(admin, s3, url_expiry=3)).status_code == 200
    time.sleep(0.5)
    receiver = Receiver(fail_first=1).start()  # the retry comes after the 5 s backoff: past the 3 s expiry
    try:
        out = server.post(IMG2IMG, body(user, image_host, webhook=receiver.url)).json()
        first, retry = receiver.wait_for(2)[:2]
        assert [first.answered, retry.answered] == [500, 200]
        new_url = retry.payload["output"][0]
        image = get(new_url).content  # fresh: the job's image
        fetched = server.post(f"/api/v6/images/fetch/{out['id']}", {"key": user}).json()["output"][0]
        assert png_size(image) == (64, 64) and image == get(fetched).content
        old_url = first.payload["output"][0]
        assert "X-Amz-Expires=3" in old_url and retry.at - first.at > 3
        assert new_url != old_url and get(old_url).status_code == 403  # the first attempt's link lapsed
        assert retry.payload["proxy_links"] == [new_url]
        same = {k: v for k, v in first.payload.items() if k not in ("output", "proxy_links")}
        assert {k: v for k, v in retry.payload.items() if k not in ("output", "proxy_links")} == same
        assert first.headers["webhook-id"] == retry.headers["webhook-id"]
    finally:
        receiver.stop()


def test_public_url_outputs(server, admin, user, s3, image_host):
    public = f"{s3.endpoint}/{PUBLIC_BUCKET}"
    r = server.post(UPDATE_S3, s3_settings(admin, s3, bucket=PUBLIC_BUCKET, public_url=public + "/",
                                           image_directory="imgs"))
    assert r.status_code == 200, r.text
    time.sleep(0.5)
    receiver = Receiver().start()
    try:
        out = server.post(IMG2IMG, body(user, image_host, webhook=receiver.url)).json()
        url = out["output"][0]
        assert url.startswith(f"{public}/imgs/generations/") and "?" not in url
        assert png_size(get(url).content) == (64, 64)
        # the webhook and a fetch answer the same link, under the settings in force
        assert receiver.wait_for(1)[0].payload["output"] == [url]
        assert server.post(f"/api/v6/images/fetch/{out['id']}", {"key": user}).json()["output"] == [url]
    finally:
        receiver.stop()


def test_temp_outputs_expire_on_both_backends_and_others_stay(server, user, image_host, s3):
    # each temp object is looked at right after the request that wrote it: it lives TEMP_TTL_S from then (the
    # input from the submission), and two more generations first took longer than that on a loaded machine
    temp = server.post(IMG2IMG, body(user, image_host, temp=True)).json()
    assert "/imgs/temp/generations/" in temp["output"][0]
    assert get(temp["output"][0]).status_code == 200
    token = token_of(temp["output"][0])
    assert f"imgs/temp/inputs/{token}-init.png" in s3.keys(PUBLIC_BUCKET, "imgs/temp/")
    upload = server.post("/api/v6/base64_to_url", {"key": user, "base64_string": INIT_B64}).json()["output"][0]
    assert "/imgs/temp/" in upload and get(upload).status_code == 200  # base64_to_url: 24 h, same cleanup
    keep = server.post(IMG2IMG, body(user, image_host)).json()
    wait_until(lambda: (s3.keys(PUBLIC_BUCKET, f"imgs/temp/generations/{token}"), get(upload).status_code),
               TEMP_TTL_S + 10, every=0.2, accept=lambda seen: not seen[0] and seen[1] == 404,
               what="the temp generation gone from S3 and the upload answering 404")
    assert not s3.keys(PUBLIC_BUCKET, f"imgs/temp/generations/{token}")
    assert not s3.keys(PUBLIC_BUCKET, f"imgs/temp/inputs/{token}")
    assert get(temp["output"][0]).status_code == 404
    assert get(upload).status_code == 404
    assert get(keep["output"][0]).status_code == 200
    # the local temp output from before the switch expired too; the other local output stays
    assert get(LOCAL_TEMP["temp"]).status_code == 404
    assert get(LOCAL_TEMP["keep"]).status_code == 200


def storage_in_process(tmp_path, s3, prefix: str, refresh_s: float = 0):
    """The storage layer alone, on the private bucket from DIFFSERVE_STORAGE__* settings (saved settings re-read
    every `refresh_s`; 0: on every operation): (storage, its SQLite database)."""
    from diffserve.config import Settings, StorageSettings
    from diffserve.storage.configured import build_storage
    from diffserve.store.db import make_db_engine
    from diffserve.store.schema import ensure_schema

    settings = Settings(data_dir=tmp_path, storage=StorageSettings(
        backend="s3", bucket=PRIVATE_BUCKET, endpoint_url=s3.endpoint, access_key_id=ACCESS_KEY,
        secret_access_key=SECRET_KEY, prefix=prefix, refresh_s=refresh_s))
    engine = make_db_engine(settings.db_url)
    ensure_schema(engine)
    return build_storage(settings, engine), engine


def test_a_temp_object_in_s3_is_kept_for_its_whole_ttl(tmp_path, s3):
    """S3 lists LastModified in whole seconds: an object written at 12:00:00.7 is listed at 12:00:00. The cleaner
    must not take it for older than it is (it deleted such objects up to a second before their TTL)."""
    from datetime import timedelta

    from diffserve.storage.cleanup import TempCleaner
    from diffserve.store.db import utcnow

    storage, _ = storage_in_process(tmp_path, s3, prefix="ttl")
    cleaner = TempCleaner(storage, ttl_s=60, interval_s=60)  # rounds run here, not on its thread
    time.sleep((0.5 - utcnow().microsecond / 1e6) % 1.0)  # written mid-second: listed about 0.5 s early
    written_after = utcnow()
    storage.put("temp/generations/young.png", b"Y")
    assert cleaner.run_once(now=written_after + timedelta(seconds=59.9)) == 0  # younger than the TTL: kept
    assert s3.keys(PRIVATE_BUCKET, "ttl/") == ["ttl/temp/generations/young.png"]
    assert cleaner.run_once(now=written_after + timedelta(seconds=62)) == 1  # older: deleted
    assert s3.keys(PRIVATE_BUCKET, "ttl/") == []


def test_env_settings_and_saved_settings_in_process(tmp_path, s3):
    """The storage layer alone: S3 from DIFFSERVE_STORAGE__* settings, then overridden by saved settings
    (what update_s3 writes), then back to local disk."""
    from diffserve.core.errors import NotFound
    from diffserve.store.storage_config import StorageConfigStore

    storage, engine = storage_in_process(tmp_path, s3, prefix="/env/")
    storage.put("temp/generations/a.png", b"A")
    assert s3.keys(PRIVATE_BUCKET, "env/") == ["env/temp/generations/a.png"]
    assert storage.get("temp/generations/a.png") == b"A"
    assert [o.key for o in storage.list("temp/")] == ["temp/generations/a.png"]
    assert get(storage.url("temp/generations/a.png", "http://unused")).content == b"A"
    with pytest.raises(NotFound):
        storage.get("temp/generations/missing.png")

    saved = StorageConfigStore(engine)
    saved.save({"backend": "s3", "bucket": PUBLIC_BUCKET, "endpoint_url": s3.endpoint, "access_key_id": ACCESS_KEY,
                "secret_access_key": SECRET_KEY, "prefix": "saved", "public_url": f"{s3.endpoint}/{PUBLIC_BUCKET}"})
    storage.put("generations/b.png", b"B")
    assert s3.keys(PUBLIC_BUCKET, "saved/") == ["saved/generations/b.png"]
    assert storage.url("generations/b.png", "http://unused") == f"{s3.endpoint}/{PUBLIC_BUCKET}/saved/generations/b.png"

    saved.save({"backend": "local"})
    storage.put("generations/c.png", b"C")
    assert (tmp_path / "generations" / "c.png").read_bytes() == b"C"
    assert storage.url("generations/c.png", "http://me:1") == "http://me:1/generations/c.png"
    storage.delete("generations/c.png")
    assert not (tmp_path / "generations" / "c.png").exists()


class NoModels:
    """The runner asks the engine which models it holds (the worker row); no model is run here."""

    def loaded_models(self) -> list[str]:
        return []


def test_a_job_written_under_replaced_settings_is_read_where_it_was_written(tmp_path, s3):
    """update_s3 switches the storage while a worker runs a job; the worker re-reads the settings only every
    refresh_s, so it writes the job's images under the replaced ones. The job's record names them: its URLs and
    bytes are read there (and old settings stay readable), while new objects go where the current ones say."""
    from diffserve.api.modelslab.render import Links, success
    from diffserve.core.job import JobStatus
    from diffserve.core.request import GenerationRequest
    from diffserve.jobqueue.local import LocalQueue
    from diffserve.storage.configured import holding
    from diffserve.store.jobs import JobStore, new_output_token
    from diffserve.store.ledger import Outcome
    from diffserve.store.storage_config import StorageConfigStore
    from diffserve.store.workers import WorkerStore
    from diffserve.workers.runner import JobRunner

    api, engine = storage_in_process(tmp_path, s3, prefix="switch-env")  # re-reads the settings every time
    worker_storage, _ = storage_in_process(tmp_path, s3, prefix="switch-env", refresh_s=3600)  # its own process
    queue, jobs, saved = LocalQueue(engine), JobStore(engine), StorageConfigStore(engine)
    WorkerStore(engine).register("w1", 1)
    runner = JobRunner("w1", jobs.ledger.using(queue), queue, worker_storage, NoModels(), WorkerStore(engine))

    def run_job(png: bytes, *, input_key: str = "inputs/x.png", read: bool = True, switch_to: dict | None = None):
        request = GenerationRequest(model_id="tiny-sd", prompt="x", init_image_key=input_key, width=8,
                                    height=8, steps=1, guidance_scale=7.5, strength=0.7, seed=1, samples=1)
        job = jobs.ledger.using(queue).create(key_id="k", dialect="modelslab", request=request,
                                              output_token=new_output_token())
        assert queue.claim("w1", 0) == job.id
        started = runner.start(job.id)
        if read:  # read at the job's start (the worker's settings as they are then)
            assert runner.image(input_key).size == (8, 8)
        if switch_to is not None:
            saved.save(switch_to)  # the operator's update_s3, while the job runs
        keys = runner.write_outputs(started, [png])
        assert runner.end(started, Outcome.succeeded(keys, [False]), 0.0) is JobStatus.SUCCEEDED
        return jobs.get(job.id)

    def url(storage, job) -> str:
        return success(job, Links("http://api.invalid", storage))["output"][0]

    new_bucket = {"backend": "s3", "bucket": PUBLIC_BUCKET, "endpoint_url": s3.endpoint, "access_key_id": ACCESS_KEY,
                  "secret_access_key": SECRET_KEY, "prefix": "switch-new",
                  "public_url": f"{s3.endpoint}/{PUBLIC_BUCKET}"}
    api.put("inputs/x.png", png_bytes(8, 8))  # the API stores the job's input under the environment's settings
    one = png_bytes(8, 8)
    first = run_job(one, switch_to=new_bucket)
    # written where the worker's settings (the environment's, version 0) said; the API is on version 1 already
    assert first.storage_version == 0 and api.pinned()[0] == 1
    assert s3.keys(PRIVATE_BUCKET, "switch-env/generations/") == [f"switch-env/{first.outputs[0]}"]
    assert s3.keys(PUBLIC_BUCKET, "switch-new/") == []
    assert get(api.url(first.outputs[0], "http://api.invalid")).status_code == 404  # current settings: nothing
    assert get(url(api, first)).content == one  # the job's answer: presigned in the bucket it was written to
    assert holding(api, first).get(first.outputs[0]) == one

    # an input the API stores under the new settings: the worker that has not re-read them finds it all the same
    api.put("inputs/y.png", png_bytes(8, 8))
    assert worker_storage.pinned()[0] == 0
    two = png_bytes(8, 16)
    second = run_job(two, input_key="inputs/y.png", switch_to={"backend": "local"})
    assert second.storage_version == 1 and api.pinned()[0] == 2
    assert s3.keys(PUBLIC_BUCKET, "switch-new/generations/") == [f"switch-new/{second.outputs[0]}"]
    assert url(api, second) == f"{s3.endpoint}/{PUBLIC_BUCKET}/switch-new/{second.outputs[0]}"
    # a process that never saw the old settings reads both jobs where they were written
    fresh, _ = storage_in_process(tmp_path, s3, prefix="switch-env")
    assert fresh.pinned()[0] == 2
    assert get(url(fresh, second)).content == two and get(url(fresh, first)).content == one
    # and once the worker re-reads the settings (refresh_s later), the next job goes to local disk
    worker_storage.invalidate()
    three = run_job(png_bytes(16, 8), read=False)
    assert three.storage_version == 2 and (tmp_path / three.outputs[0]).is_file()
    assert url(api, three) == f"http://api.invalid/{three.outputs[0]}"
