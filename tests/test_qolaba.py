"""Qolaba getImagetoImage / getImage through the real server over HTTP: the envelope on every answer."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from . import web
from .dialects import (
    CANNY, DEPTH, FLUX_DEV, GPT_IMAGE, IDEOGRAM, KONTEXT, LOCAL_BIG, LOCAL_BROKEN, LOCAL_SD, PULID, REDUX, download,
    job_row,
)
from .servers import png_bytes
from .waiting import wait_until

ENVELOPE_KEYS = {"time_required", "error", "error_data", "input", "output", "app_id", "task_id", "status"}


@pytest.fixture(scope="module")
def key(dialect_server):
    return dialect_server.create_key("--name", "qolaba")


@pytest.fixture(scope="module", autouse=True)
def images(image_host):
    image_host.add("/wide-2000.png", png_bytes(2000, 1000))
    image_host.add("/ref-a.png", png_bytes(64, 64, color=(10, 200, 30)))
    image_host.add("/ref-b.jpg", png_bytes(64, 64, color=(10, 20, 230), fmt="JPEG"), "image/jpeg")


def post(server, key_text, path="/getImagetoImage", **fields):
    headers = {"Authorization": f"Bearer {key_text}"} if key_text is not None else {}
    return web.post(f"{server.url}{path}", json=fields, headers=headers, timeout=120)


def body(image_host, **over):
    """The page's fields, with a local image and app."""
    b = {"app_id": LOCAL_SD, "image": image_host.url("/cat.png"), "prompt": "a watercolor cat",
         "guidance_scale": 7, "batch": 1, "strength": 0.5, "negative_prompt": "blurry", "celery": False}
    b.update(over)
    return b


def wait_task(server, key_text, task_id, timeout=120):
    def answer() -> dict:
        r = post(server, key_text, "/getImage", id=task_id, refID="my-ref")
        assert r.status_code == 200, r.text
        return r.json()

    return wait_until(answer, timeout, every=0.2, accept=lambda out: out["status"] != "PENDING",
                      what=f"task {task_id} to leave PENDING")


def test_sync_request_answers_success_with_images_and_low_res_copies(dialect_server, key, image_host):
    r = post(dialect_server, key, **body(image_host, batch=2))
    out = r.json()
    assert r.status_code == 200 and set(out) == ENVELOPE_KEYS and out["status"] == "SUCCESS", out
    assert out["error"] == "" and out["error_data"] == "" and out["app_id"] == LOCAL_SD
    assert out["input"]["prompt"] == "a watercolor cat" and out["input"]["batch"] == 2
    assert out["time_required"]["runtime"] > 0 and out["time_required"]["startup_time"] >= 0
    res = out["output"]
    assert len(res["result"]) == 2 and res["Has_NSFW_Content"] == [False, False] and len(res["low_res_urls"]) == 2
    full = Image.open(io.BytesIO(download(res["result"][0])))
    low = Image.open(io.BytesIO(download(res["low_res_urls"][0])))
    assert full.size == (64, 64) and low.size == (32, 32) and low.format == "JPEG"
    assert job_row(dialect_server, int(out["task_id"]), "dialect")[0] == "qolaba"


def test_celery_answers_pending_then_get_image_reports_the_task(dialect_server, key, image_host):
    r = post(dialect_server, key, "/getImageToImage", **body(image_host, celery=True))
    p = r.json()
    assert r.status_code == 200 and p["status"] == "PENDING" and p["task_id"].isdigit(), p
    assert p["output"] == {"result": [], "Has_NSFW_Content": [], "low_res_urls": []}
    done = wait_task(dialect_server, key, p["task_id"])
    assert set(done) == ENVELOPE_KEYS and done["status"] == "SUCCESS" and done["task_id"] == p["task_id"]
    assert done["app_id"] == LOCAL_SD and len(done["output"]["result"]) == 1


def test_flux_dev_by_default_follows_the_input_size(dialect_server, key, image_host):
    out = post(dialect_server, key, **body(image_host, app_id=FLUX_DEV, image=image_host.url("/wide.png"),
                                           strength=0.1, guidance_scale=3.5, height=1024, width=1024)).json()
    assert out["status"] == "SUCCESS", out
    # Flux Dev "takes the dimension of input image": 100x70 rounded down to the model's multiple of 16
    assert Image.open(io.BytesIO(download(out["output"]["result"][0]))).size == (96, 64)


def test_flux_kontext_takes_several_images_through_file_urls(dialect_server, key, image_host):
    out = post(dialect_server, key, **body(image_host, app_id=KONTEXT, celery=True, height=64, width=64,
                                           file_urls=[image_host.url("/ref-a.png"), image_host.url("/ref-b.jpg")]))
    p = out.json()
    assert p["status"] == "PENDING", p
    assert p["input"]["file_urls"] == [image_host.url("/ref-a.png"), image_host.url("/ref-b.jpg")]
    done = wait_task(dialect_server, key, p["task_id"])
    assert done["status"] == "SUCCESS", done
    assert Image.open(io.BytesIO(download(done["output"]["result"][0]))).size == (64, 64)
    request = job_row(dialect_server, int(p["task_id"]), "request")[0]
    assert '"extra_image_keys": ["' in request and request.count("-ref") == 2


def test_file_urls_are_refused_by_models_that_cannot_use_them(dialect_server, key, image_host):
    r = post(dialect_server, key, **body(image_host, app_id=FLUX_DEV, file_urls=[image_host.url("/ref-a.png")]))
    out = r.json()
    assert r.status_code == 400 and out["status"] == "FAILED" and out["error"] == "Input Validation Error", out
    assert "file_urls" in out["error_data"] and "takes no reference images" in out["error_data"]


def test_an_operator_can_serve_a_closed_app_with_a_local_model(dialect_server, key, image_host):
    out = post(dialect_server, key, **body(image_host, app_id=IDEOGRAM, height=64, width=96)).json()
    assert out["status"] == "SUCCESS", out
    assert Image.open(io.BytesIO(download(out["output"]["result"][0]))).size == (96, 64)  # 64 high, 96 wide


def test_input_image_is_fitted_within_1536(dialect_server, key, image_host):
    # strength 0 returns the (fitted) input image itself: the size rule is checked without a 1536 px run
    out = post(dialect_server, key, **body(image_host, app_id=LOCAL_BIG, image=image_host.url("/wide-2000.png"),
                                           strength=0)).json()
    assert out["status"] == "SUCCESS", out
    assert Image.open(io.BytesIO(download(out["output"]["result"][0]))).size == (1536, 768)


def test_inference_type_without_such_workers_runs_anywhere_and_is_recorded(dialect_server, key, image_host):
    out = post(dialect_server, key, **body(image_host, inference_type="h100")).json()
    assert out["status"] == "SUCCESS" and out["input"]["inference_type"] == "h100", out
    params, worker = job_row(dialect_server, int(out["task_id"]), "dialect_params", "worker_id")
    assert '"routed_to": "any worker"' in params and worker == "worker-0"


@pytest.mark.parametrize("change,status,category,message", [
    ({"app_id": REDUX, "height": 512, "width": 512}, 400, "Input Validation Error",
     "height x width must be one of 720x1280, 800x1000, 1024x1024, 1280x720, 1600x676 for Flux Redux (got 512x512)"),
    ({"app_id": REDUX}, 400, "Input Validation Error", "width must be between 32 and 512"),  # 1024x1024 > tiny
    ({"app_id": GPT_IMAGE}, 404, "Service Not Found",
     "GPT Image (app_id ap-zuzhawbgipcrnxdtefhjbnvhc) is not available"),
    ({"app_id": PULID}, 400, "Input Validation Error", "width must be between 32 and 512"),  # as Redux
    ({"app_id": "ap-does-not-exist"}, 404, "Service Not Found", "No service for app_id 'ap-does-not-exist'"),
    ({"app_id": None}, 400, "Input Validation Error", "app_id is required"),
    ({"image": None}, 400, "Input Validation Error", "image is required"),
    ({"image": "IMAGE_HOST/not-an-image.png"}, 400, "Input Validation Error",
     "Given image type is not supported. Please try with JPG or PNG."),
    ({"image": "http://127.0.0.1:1/x.png"}, 400, "Input Validation Error", "Unable to fetch image from provided URL"),
    ({"batch": 9}, 400, "Input Validation Error", "batch must be between 1 and 8"),
    ({"batch": "two"}, 400, "Input Validation Error", "batch must be an integer"),
    ({"guidance_scale": 31}, 400, "Input Validation Error", "guidance_scale must be between 1 and 30"),
    ({"strength": 2}, 400, "Input Validation Error", "strength must be between 0 and 1"),
    ({"height": 100}, 400, "Input Validation Error", "height must be between 256 and 1536"),
    ({"inference_type": "t4"}, 400, "Input Validation Error", "inference_type must be one of: a10g, a100, h100"),
    ({"file_urls": [1, 2]}, 400, "Input Validation Error", "file_urls must be a list of image URLs"),
])
def test_errors_in_the_envelope(dialect_server, key, image_host, change, status, category, message):
    fields = body(image_host, **change)
    if isinstance(fields.get("image"), str):
        fields["image"] = fields["image"].replace("IMAGE_HOST", image_host.url(""))
    r = post(dialect_server, key, **fields)
    out = r.json()
    assert r.status_code == status and set(out) == ENVELOPE_KEYS, r.text
    assert (out["status"], out["error"]) == ("FAILED", category) and message in out["error_data"], out
    if change.get("app_id"):
        assert out["app_id"] == change["app_id"]


@pytest.mark.parametrize("app_id", [CANNY, DEPTH])
def test_flux_canny_and_depth_by_default(dialect_server, key, image_host, app_id):
    out = post(dialect_server, key, **body(image_host, app_id=app_id, strength=0.1, guidance_scale=10)).json()
    assert out["status"] == "SUCCESS", out
    assert Image.open(io.BytesIO(download(out["output"]["result"][0]))).size == (64, 64)


def test_a_failed_generation_is_an_image_generation_error(dialect_server, key, image_host):
    r = post(dialect_server, key, **body(image_host, app_id=LOCAL_BROKEN))
    out = r.json()
    assert r.status_code == 500 and set(out) == ENVELOPE_KEYS, r.text
    assert (out["status"], out["error"]) == ("FAILED", "Image Generation Error")
    assert "no-such-model" in out["error_data"]
    assert out["task_id"].isdigit() and out["output"]["result"] == []
    again = post(dialect_server, key, "/getImage", id=out["task_id"])
    assert again.status_code == 200 and again.json()["status"] == "FAILED"
    assert again.json()["error_data"] == out["error_data"]


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer not-a-key"}, {"Authorization": "Token abc"}])
def test_bad_token_is_invalid_api_key(dialect_server, image_host, headers):
    r = web.post(f"{dialect_server.url}/getImagetoImage", json=body(image_host), headers=headers, timeout=60)
    out = r.json()
    assert r.status_code == 401 and out["status"] == "FAILED" and out["error_data"] == "Invalid API Key", out


def test_get_image_errors_and_ownership(dialect_server, key, image_host):
    mine = post(dialect_server, key, **body(image_host, celery=True)).json()
    other = dialect_server.create_key("--name", "qolaba-other")
    for task_id, who in ((mine["task_id"], other), ("999999999", key), ("abc", key)):
        r = post(dialect_server, who, "/getImage", id=task_id)
        assert r.status_code == 404 and r.json()["error_data"] == f"Task not found: {task_id}", r.text
    r = post(dialect_server, key, "/getImage", refID="x")
    assert r.status_code == 400 and r.json()["error_data"] == "id is required"
    assert wait_task(dialect_server, key, mine["task_id"])["status"] == "SUCCESS"
