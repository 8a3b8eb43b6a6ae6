"""The A1111 API client fixture the A1111 test files share: `call(method, path, **kw)` against the jobs
server's /sdapi/v1 with a key of the module's own, named after it (test_a1111_effects: `a1111-effects`).
A test file takes it with `from .a1111_client import call`."""

from __future__ import annotations

import pytest

from . import web


@pytest.fixture(scope="module")
def call(jobs_server, request):
    name = request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_").replace("_", "-")
    key = jobs_server.create_key("--name", name)
    client = web.client(base_url=f"{jobs_server.url}/sdapi/v1", auth=("u", key), timeout=300)
    yield client.request
    client.close()
