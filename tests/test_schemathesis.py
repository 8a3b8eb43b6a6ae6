"""Schemathesis against the OpenAPI schema of the running server: every documented operation gets
generated bodies (valid and invalid for its schema), half of them with a valid key. No answer may be
a 5xx, the server must stay up, and a valid request must still succeed afterwards.

Bounded: EXAMPLES per operation and generation mode (about a minute in all on this machine).
"""

from __future__ import annotations

import base64

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable

from .bodies import IMG2IMG, body
from .servers import png_bytes

EXAMPLES = 20


@pytest.fixture(scope="module")
def key(hardened_server):
    return hardened_server.create_key("--name", "schemathesis")  # a user key: admin operations answer 403


def test_no_server_errors_on_any_operation(hardened_server, key):
    server = hardened_server
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 20 and any(op.path == IMG2IMG for op in operations)
    failures: list[str] = []
    calls = {"n": 0}
    statuses: dict[int, int] = {}

    for operation in operations:
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
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
                if response.status_code >= 500:
                    failures.append(f"{case.method} {case.formatted_path} -> {response.status_code}: "
                                    f"{response.text[:200]} (body {str(case.body)[:200]})")

            try:
                run()
            except Unsatisfiable:  # e.g. no invalid input exists for an operation without parameters
                pass

    print("answers by HTTP status:", dict(sorted(statuses.items())))
    assert calls["n"] >= len(operations) * EXAMPLES
    assert statuses.get(400, 0) > 0 and statuses.get(401, 0) > 0  # past auth, into validation
    assert not failures, "\n".join(failures[:20])
    assert server.proc.poll() is None
    assert httpx.get(f"{server.url}/health").json()["status"] == "ok"
    init = base64.b64encode(png_bytes(64, 64)).decode()
    assert server.post(IMG2IMG, body(key, init_image=init)).json()["status"] == "success"
