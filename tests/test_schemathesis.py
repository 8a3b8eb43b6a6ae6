"""Schemathesis against the OpenAPI schema of the running server: every documented operation gets
generated bodies (valid and invalid for its schema), half of them with a valid key. No answer may be
a 5xx, the server must stay up, and a valid request must still succeed afterwards.

Bounded: EXAMPLES per operation and generation mode, one operation per handler (aliases share it). The synchronous
generating routes (A1111, OpenAI) get invalid bodies only: a valid one is a real generation at the schema's sizes.

Then wrong JSON types field by field on the OpenAI, A1111 and native bodies: a valid body with one field replaced
by each of WRONG_TYPES (null, lists, objects, booleans, 1e400, a lone surrogate...), written as raw JSON text
(Python's json cannot write 1e400), so that field is the only mistake and its own check is what answers.
"""

from __future__ import annotations

import base64
import json

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable

from . import web
from .bodies import IMG2IMG, body
from .servers import png_bytes

EXAMPLES = 20
SYNCHRONOUS = ("/sdapi/v1/img2img", "/sdapi/v1/txt2img", "/v1/images/generations", "/v1/images/edits")


@pytest.fixture(scope="module")
def key(hardened_server):
    return hardened_server.create_key("--name", "schemathesis")  # a user key: admin operations answer 403


def test_no_server_errors_on_any_operation(hardened_server, key):
    server = hardened_server
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    operations = _one_per_handler([result.ok() for result in schema.get_all_operations()])
    assert len(operations) >= 20 and {IMG2IMG, "/v1/jobs", *SYNCHRONOUS} <= {op.path for op in operations}
    failures: list[str] = []
    calls = {"n": 0}
    statuses: dict[int, int] = {}

    for operation in operations:
        modes = [schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE]
        for mode in modes[1:] if operation.path in SYNCHRONOUS else modes:
            @given(case=operation.as_strategy(generation_mode=mode), with_key=st.booleans())
            @settings(max_examples=EXAMPLES, deadline=None, database=None, phases=[Phase.generate],
                      suppress_health_check=list(HealthCheck))
            def run(case, with_key):
                headers = {}
                if with_key:
                    headers["Authorization"] = f"Bearer {key}"  # Qolaba's way; ModelsLab's is the body
                    if isinstance(case.body, dict):
                        case.body["key"] = key
                response = case.call(base_url=server.url, headers=headers, timeout=60)
                calls["n"] += 1
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
                if response.status_code >= 500 and response.status_code != 501:  # 501: a feature diffserve lacks
                    failures.append(f"{case.method} {case.formatted_path} -> {response.status_code}: "
                                    f"{response.text[:200]} (body {str(case.body)[:200]})")

            try:
                run()
            except Unsatisfiable:  # e.g. no invalid input exists for an operation without parameters
                pass

    print(f"{len(operations)} operations, answers by HTTP status:", dict(sorted(statuses.items())))
    assert calls["n"] >= len(operations) * EXAMPLES
    assert statuses.get(400, 0) > 0 and statuses.get(401, 0) > 0  # past auth, into validation
    assert not failures, "\n".join(failures[:20])
    assert server.proc.poll() is None
    assert web.get(f"{server.url}/health").json()["status"] == "ok"
    init = base64.b64encode(png_bytes(64, 64)).decode()
    assert server.post(IMG2IMG, body(key, init_image=init)).json()["status"] == "success"


def _one_per_handler(operations: list) -> list:
    """The aliases of one handler (the enterprise server paths repeated under /realtime, /pony, /images: same
    method, summary and body) are exercised once: the same code answers them."""
    seen, out = set(), []
    for op in operations:
        raw = op.definition.raw
        handler = (op.method, raw.get("summary"), json.dumps(raw.get("requestBody"), sort_keys=True))
        if handler not in seen or raw.get("summary") is None:
            seen.add(handler)
            out.append(op)
    return out


WRONG_TYPES = ["null", "[1]", '{"a": 1}', "true", "1e400", "-1e400", "-1", "0", "1.5", "1" + "0" * 30, '"x"', '""',
               '"\\ud800"', '"1e400"']


def _typed_routes(key: str) -> dict[str, tuple[dict[str, str], dict]]:
    """path -> (headers, a valid body: small, quick to run)."""
    init = base64.b64encode(png_bytes(64, 64)).decode()
    a1111 = {"prompt": "a cat", "steps": 2, "width": 64, "height": 64}
    basic = {"Authorization": "Basic " + base64.b64encode(f"user:{key}".encode()).decode()}
    bearer = {"Authorization": f"Bearer {key}"}
    return {
        "/v1/images/generations": (bearer, {"prompt": "a cat", "size": "64x64", "quality": "low"}),
        "/sdapi/v1/txt2img": (basic, a1111),
        "/sdapi/v1/img2img": (basic, {**a1111, "init_images": [init]}),
        "/sdapi/v1/options": (basic, {"sd_model_checkpoint": "tiny-sd"}),
        "/sdapi/v1/extra-single-image": (basic, {"image": init, "upscaling_resize": 2, "upscaler_1": "Lanczos"}),
        "/sdapi/v1/png-info": (basic, {"image": init}),
        "/v1/jobs": (bearer, {"prompt": "a cat", "init_image": init, "steps": 2}),
    }


def test_wrong_json_types_field_by_field(hardened_server):
    server = hardened_server
    key = server.create_key("--name", "wrong-types", "--max-queued", "0")  # accepted native jobs are cancelled
    spec = web.get(f"{server.url}/openapi.json").json()
    failures, statuses = [], {}
    with web.client(base_url=server.url, timeout=60) as client:
        for path, (headers, valid) in _typed_routes(key).items():
            schema = spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
            for field in sorted(schema["properties"]):
                for token in WRONG_TYPES:
                    if token == "null" and field in valid:  # absent: a valid request at the defaults (512 px...)
                        continue
                    parts = [f"{json.dumps(k)}: {json.dumps(v)}" for k, v in valid.items() if k != field]
                    text = "{" + ", ".join([*parts, f"{json.dumps(field)}: {token}"]) + "}"
                    r = client.post(path, content=text.encode(), headers={**headers, "Content-Type": "application/json"})
                    statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
                    shaped = r.headers.get("content-type", "").startswith("application/json")
                    if r.status_code >= 500 or (r.status_code >= 400 and not shaped):  # 200: stream=true is SSE
                        failures.append(f"{path} {field}={token} -> {r.status_code}: {r.text[:200]}")
                    elif path == "/v1/jobs" and r.status_code == 202:
                        client.post(f"/v1/jobs/{r.json()['id']}/cancel", headers=headers)
    print("answers by HTTP status:", dict(sorted(statuses.items())))
    assert statuses.get(400, 0) > 500 and statuses.get(200, 0) > 0  # wrong types refused, harmless ones run
    assert not failures, "\n".join(failures[:20])
    assert server.proc.poll() is None
