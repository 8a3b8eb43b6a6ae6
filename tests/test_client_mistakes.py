"""Client mistakes answer 4xx in the dialect's own error shape, naming the field -- never a 5xx (issue 28, item 5):
lone surrogates (JSON `"\\ud800"`) in a key, a prompt or a multipart field are refused where the request is read
and nothing is queued; OpenAI's params are typed as its spec types them; A1111's PLMS runs at 3 steps; a job that
failed in the worker still lists and fetches; an error renderer never raises. Real server over loopback.
"""

from __future__ import annotations

import base64
import json

import anyio
import httpx
import openai
import pytest
from fastapi.responses import JSONResponse

from diffserve.api.auth import authenticate
from diffserve.api.errors import total_renderer
from diffserve.core.errors import InvalidInput, ModelNotFound, Unauthorized
from diffserve.core.offload import Offload
from diffserve.core.text import check_text, invalid_text_path
from diffserve.store.db import make_db_engine
from diffserve.store.keys import KeyStore
from diffserve.store.schema import ensure_schema

from . import web
from .dialects import LOCAL_BROKEN, LOCAL_SD
from .servers import png_bytes

SURROGATE = "\ud800"  # json.dumps writes it as the six characters \ud800, as a hostile client sends it
INIT = base64.b64encode(png_bytes(64, 64)).decode()


@pytest.fixture(scope="module")
def key(dialect_server):
    return dialect_server.create_key("--name", "client-mistakes")


def basic(key_text: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"user:{key_text}".encode()).decode()}


def bearer(key_text: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key_text}"}


def send(server, path: str, body: dict, headers: dict | None = None, raw: dict[str, str] | None = None,
         timeout: float = 120) -> httpx.Response:
    """POST JSON text written here: json.dumps escapes a lone surrogate; `raw` adds fields as JSON tokens Python
    cannot write (1e400)."""
    parts = [f"{json.dumps(k)}: {json.dumps(v)}" for k, v in body.items()]
    parts += [f"{json.dumps(k)}: {token}" for k, token in (raw or {}).items()]
    return web.post(f"{server.url}{path}", content=("{" + ", ".join(parts) + "}").encode(),
                    headers={"Content-Type": "application/json", **(headers or {})}, timeout=timeout)


# Each dialect's error shape, and that it names the field.
def modelslab_error(r: httpx.Response, field: str) -> None:
    out = r.json()
    assert out["status"] == "error" and field in out["message"], out


def qolaba_error(r: httpx.Response, field: str) -> None:
    out = r.json()
    assert (out["status"], out["error"]) == ("FAILED", "Input Validation Error") and field in out["error_data"], out


def native_error(r: httpx.Response, field: str) -> None:
    err = r.json()["error"]
    assert err["code"] == "invalid_input" and err["field"] == field and field in err["message"], err


def a1111_error(r: httpx.Response, field: str) -> None:
    out = r.json()
    assert out["error"] == "InvalidInput" and field in out["detail"] and out["detail"] == out["errors"], out


def openai_error(r: httpx.Response, field: str) -> None:
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["param"] == field and field in err["message"], err


# (dialect, path, body with the prompt given, headers, shape)
def surrogate_prompt_requests(k: str, prompt: str):
    ml = {"key": k, "prompt": prompt, "init_image": INIT, "num_inference_steps": 2}
    a1111 = {"prompt": prompt, "steps": 2, "width": 64, "height": 64}
    return [
        ("v6 img2img", "/api/v6/images/img2img", ml, {}, modelslab_error),
        ("v6 text2img", "/api/v6/images/text2img", {**ml, "init_image": None}, {}, modelslab_error),
        ("v6 inpaint", "/api/v6/images/inpaint", {**ml, "mask_image": INIT}, {}, modelslab_error),
        ("v7 (Key header)", "/api/v7/images/image-to-image", {**ml, "key": None}, {"Key": k}, modelslab_error),
        ("enterprise images", "/api/v1/enterprise/images/img2img", ml, {}, modelslab_error),
        ("realtime", "/api/v6/realtime/img2img", ml, {}, modelslab_error),
        ("pony", "/api/v1/enterprise/pony/img2img", ml, {}, modelslab_error),
        ("qolaba", "/getImagetoImage", {"app_id": LOCAL_SD, "image": INIT, "prompt": prompt}, bearer(k), qolaba_error),
        ("native", "/v1/jobs", {"prompt": prompt, "init_image": INIT, "steps": 2}, bearer(k), native_error),
        ("a1111 txt2img", "/sdapi/v1/txt2img", a1111, basic(k), a1111_error),
        ("a1111 img2img", "/sdapi/v1/img2img", {**a1111, "init_images": [INIT]}, basic(k), a1111_error),
        ("openai generations", "/v1/images/generations", {"prompt": prompt, "size": "64x64"}, bearer(k), openai_error),
    ]


def jobs_of(server, k: str) -> list[dict]:
    r = web.get(f"{server.url}/v1/jobs", headers=bearer(k), timeout=30)
    assert r.status_code == 200, r.text
    return r.json()["data"]


def test_a_lone_surrogate_in_a_prompt_is_refused_on_every_dialect_and_nothing_is_queued(dialect_server):
    k = dialect_server.create_key("--name", "surrogates")
    done = send(dialect_server, "/v1/jobs", {"prompt": "a cat", "init_image": INIT, "steps": 2}, bearer(k)).json()
    for name, path, body, headers, shape in surrogate_prompt_requests(k, "a cat " + SURROGATE):
        r = send(dialect_server, path, body, headers)
        assert r.status_code == 400, (name, r.status_code, r.text)
        shape(r, "prompt")
        assert "surrogate" in r.text, (name, r.text)
        assert [j["id"] for j in jobs_of(dialect_server, k)] == [done["id"]], f"{name} queued a job"
    negative = send(dialect_server, "/api/v6/images/img2img",
                    {"key": k, "prompt": "a cat", "negative_prompt": SURROGATE, "init_image": INIT})
    assert negative.status_code == 400
    modelslab_error(negative, "negative_prompt")
    nested = send(dialect_server, "/sdapi/v1/txt2img",
                  {"prompt": "a cat", "override_settings": {"sd_model_checkpoint": SURROGATE}}, basic(k))
    assert nested.status_code == 400
    a1111_error(nested, "override_settings.sd_model_checkpoint")
    # the key's jobs still list and fetch, in every dialect that shows them
    assert web.get(f"{dialect_server.url}/v1/jobs/{done['id']}", headers=bearer(k), timeout=30).status_code == 200
    fetched = send(dialect_server, f"/api/v6/images/fetch/{done['id']}", {"key": k})
    assert fetched.status_code == 200 and fetched.json()["status"] in ("success", "processing"), fetched.text
    assert send(dialect_server, "/getImage", {"id": str(done["id"])}, bearer(k)).status_code == 200


def test_a_lone_surrogate_in_a_multipart_field_is_refused(dialect_server, key):
    """OpenAI's edits are multipart; a `charset=unicode_escape` body makes Starlette decode `\\ud800` into a lone
    surrogate, in a value or in a field's name."""
    before = len(jobs_of(dialect_server, key))
    for field_name, value in (("prompt", b"a cat \\ud800"), ("size\\udc00", b"64x64")):
        boundary = "diffserve-boundary"
        parts = [(b'prompt', b"a cat"), (field_name.encode(), value)] if field_name != "prompt" else \
            [(b"prompt", value)]
        body = b"".join(b"--%s\r\nContent-Disposition: form-data; name=\"%s\"\r\n\r\n%s\r\n" % (
            boundary.encode(), name, data) for name, data in parts)
        body += b"--%s\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\n" \
                b"Content-Type: image/png\r\n\r\n%s\r\n--%s--\r\n" % (boundary.encode(), png_bytes(64, 64),
                                                                      boundary.encode())
        r = web.post(f"{dialect_server.url}/v1/images/edits", content=body, timeout=60, headers={
            **bearer(key), "Content-Type": f"multipart/form-data; boundary={boundary}; charset=unicode_escape"})
        assert r.status_code == 400, r.text
        openai_error(r, "prompt" if field_name == "prompt" else "size\\udc00")
    assert len(jobs_of(dialect_server, key)) == before


BODY_KEY_PATHS = ["/api/v6/images/img2img", "/api/v6/images/fetch", "/api/v6/images/fetch/1",
                  "/api/v7/images/image-to-image", "/api/v6/images/text2img", "/api/v6/images/inpaint",
                  "/api/v6/realtime/img2img", "/api/v1/enterprise/pony/img2img", "/api/v1/enterprise/images/img2img",
                  "/api/v6/processing/request_count", "/api/v1/enterprise/system_details"]


@pytest.mark.parametrize("path", BODY_KEY_PATHS)
def test_a_key_with_a_lone_surrogate_is_a_4xx(dialect_server, key, path):
    """A key of the right length with a lone surrogate reached the key's hash: 500 with a traceback, unauthenticated."""
    forged = key[:-1] + SURROGATE
    r = send(dialect_server, path, {"key": forged, "prompt": "a cat", "init_image": INIT})
    assert r.status_code == 400, r.text  # the body is read (and refused) before the key is looked up
    modelslab_error(r, "key")


def test_the_key_lookup_refuses_text_that_is_not_unicode(tmp_path):
    """The last line behind the body check: `authenticate` itself (a key from any source) never hashes a surrogate."""
    engine = make_db_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    ensure_schema(engine)
    keys = KeyStore(engine)
    _, full = keys.create("alice")
    assert anyio.run(authenticate, keys, full, Offload()).name == "alice"
    with pytest.raises(Unauthorized, match="Invalid API key"):
        anyio.run(authenticate, keys, full[:-1] + SURROGATE, Offload())


def test_finding_lone_surrogates_in_decoded_json():
    assert invalid_text_path({"prompt": "ok é 😀", "init_images": ["iVBOR", "x"]}) is None
    assert invalid_text_path({"prompt": "ok", "init_images": ["iVBOR", "x" + SURROGATE]}) == "init_images[1]"
    assert invalid_text_path({"a": {"b" + SURROGATE: 1}}) == "a.b\\ud800"  # a key named printably
    assert invalid_text_path(json.loads('{"p": "\\ud83d\\ude00"}')) is None  # a pair is one character
    with pytest.raises(InvalidInput) as caught:
        check_text(json.loads('{"p": {"q": [1, "\\udfff"]}}'))
    assert caught.value.field == "p.q[1]"


OPENAI_TEXT_PARAMS = ["model", "size", "quality", "response_format", "output_format", "background"]
WRONG_TEXT = [("7", "the number 7"), ("true", "a boolean"), ("[\"png\"]", "a list"), ("{\"a\": 1}", "an object"),
              ("1e400", "the number inf")]


@pytest.mark.parametrize("param", OPENAI_TEXT_PARAMS)
def test_openai_non_string_params_are_400s_naming_them(dialect_server, key, param):
    for token, said in WRONG_TEXT:
        r = send(dialect_server, "/v1/images/generations", {"prompt": "a cat", "size": "64x64"} | {param: "x"},
                 bearer(key), raw={param: token})
        assert r.status_code == 400, (param, token, r.text)
        openai_error(r, param)
        assert f"{param} must be a string (got {said}" in r.json()["error"]["message"]
        assert r.headers["x-should-retry"] == "false"


@pytest.mark.parametrize("param,token,message", [
    ("n", "1e400", "n must be an integer"), ("n", "-1e400", "n must be an integer"),
    ("n", "1.5", "n must be an integer"), ("n", "true", "n must be an integer"), ("n", "\"2\"", "n must be an integer"),
    ("n", "100000000000000000000000000000", "n must be between 1 and"), ("n", "0", "n must be between 1 and"),
    ("output_compression", "1e400", "output_compression must be an integer"),
    ("output_compression", "101", "output_compression must be between 0 and 100"),
    ("partial_images", "1e400", "partial_images must be an integer"),
    ("partial_images", "-1e400", "partial_images must be an integer"),
    ("partial_images", "4", "partial_images must be between 0 and 3"),
    ("stream", "\"maybe\"", "stream must be a boolean"), ("stream", "1", "stream must be a boolean"),
    ("prompt", "[\"a cat\"]", "prompt must be a string"),
])
def test_openai_numbers_and_flags_are_typed_as_the_spec_types_them(dialect_server, key, param, token, message):
    body = {"prompt": "a cat", "size": "64x64", "output_format": "jpeg"}
    body.pop(param, None)
    r = send(dialect_server, "/v1/images/generations", body, bearer(key), raw={param: token})
    assert r.status_code == 400, r.text
    openai_error(r, param)
    assert message in r.json()["error"]["message"], r.text


def test_openai_client_sees_a_bad_request_naming_the_param(dialect_server, key):
    """OpenAI's own client: a BadRequestError whose `param` is the field (n=1.5 was silently run as 1)."""
    client = openai.OpenAI(base_url=f"{dialect_server.url}/v1", api_key=key, max_retries=0)
    with pytest.raises(openai.BadRequestError) as caught:
        client.images.generate(prompt="a cat", model="tiny-sd", size="64x64", n=1.5)
    assert caught.value.param == "n"
    with pytest.raises(openai.BadRequestError) as caught:
        client.images.generate(prompt="a cat", model="tiny-sd", size="64x64", extra_body={"quality": 3})
    assert caught.value.param == "quality"
    # the multipart form of the same params: text that stands for the type is read as it
    edit = client.images.edit(image=("a.png", png_bytes(64, 64), "image/png"), prompt="a cat", model="tiny-sd",
                              size="64x64", quality="low", n=1, response_format="b64_json")
    assert len(edit.data) == 1
    with pytest.raises(openai.BadRequestError) as caught:
        client.images.edit(image=("a.png", png_bytes(64, 64), "image/png"), prompt="a cat", model="tiny-sd",
                           extra_body={"n": "1.5"})
    assert caught.value.param == "n"


def test_a1111_plms_runs_at_3_steps_on_demo_sd(dialect_server, key):
    """diffusers' PNDM with its default (Runge-Kutta warm-up) cannot schedule 3 steps: demo-sd, whose own scheduler
    is Euler, answered "Image generation failed: ValueError" (500). PLMS is now built as SD 1.x configures it."""
    for path, extra in (("/sdapi/v1/img2img", {"init_images": [INIT], "denoising_strength": 0.75}),
                        ("/sdapi/v1/txt2img", {})):
        body = {"prompt": "a red apple", "steps": 3, "width": 64, "height": 64, "sampler_name": "PLMS", "seed": 1,
                "override_settings": {"sd_model_checkpoint": "demo-sd"}, **extra}
        r = send(dialect_server, path, body, basic(key), timeout=300)
        assert r.status_code == 200, r.text
        info = json.loads(r.json()["info"])
        assert info["sd_model_name"] == "demo-sd" and info["sampler_name"] == "PLMS" and info["steps"] == 3


def test_a_job_that_failed_in_the_worker_still_lists_and_fetches_everywhere(dialect_server, key):
    r = send(dialect_server, "/getImagetoImage", {"app_id": LOCAL_BROKEN, "image": INIT, "prompt": "a cat é"},
             bearer(key))
    assert r.status_code == 500 and r.json()["status"] == "FAILED", r.text  # the server's own failure: a 500
    job_id = int(r.json()["task_id"])
    listed = {j["id"]: j for j in jobs_of(dialect_server, key)}
    assert listed[job_id]["status"] == "failed" and listed[job_id]["error"]
    one = web.get(f"{dialect_server.url}/v1/jobs/{job_id}", headers=bearer(key), timeout=30)
    assert one.status_code == 200 and one.json()["error"] == listed[job_id]["error"]
    events = web.get(f"{dialect_server.url}/v1/jobs/{job_id}/events", headers=bearer(key), timeout=30)
    assert events.status_code == 200 and "event: failed" in events.text
    for path in (f"/api/v6/images/fetch/{job_id}", f"/api/v7/images/fetch/{job_id}",
                 f"/api/v1/enterprise/fetch/{job_id}"):
        fetched = send(dialect_server, path, {"key": key})
        assert fetched.status_code == 200 and fetched.json()["status"] == "failed", (path, fetched.text)
    again = send(dialect_server, "/getImage", {"id": str(job_id)}, bearer(key))
    assert again.status_code == 200 and again.json()["status"] == "FAILED"
    progress = web.get(f"{dialect_server.url}/sdapi/v1/progress", headers=basic(key), timeout=30)
    assert progress.status_code == 200


def test_an_error_renderer_never_raises():
    """A renderer that fails (here: on purpose, and on a message it cannot encode) gives the dialect's internal
    error answer; one that fails on that too gives a minimal JSON 500 -- never Starlette's plain-text 500."""
    seen = []

    def strict(_request, exc):
        seen.append(exc)
        if exc is not None and "boom" in exc.message:
            raise RuntimeError("renderer bug")
        return JSONResponse({"vendor": exc.message if exc else "internal"}, 400 if exc else 500)

    render = total_renderer(strict)
    bad = ModelNotFound("x" + SURROGATE)  # the message quotes a client's lone surrogate
    r = render(None, bad)
    assert r.status_code == 400 and json.loads(r.body)["vendor"] == "Model not found: x\\ud800"
    assert render(None, InvalidInput("boom")).status_code == 500 and seen[-1] is None

    def broken(_request, _exc):
        raise RuntimeError("always")

    r = total_renderer(broken)(None, InvalidInput("x"))
    assert r.status_code == 500 and json.loads(r.body)["error"]["code"] == "internal_error"
