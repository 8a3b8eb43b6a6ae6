"""httpx's one-call functions (get, post, delete, request, stream) for the tests, without their set-up cost.

Each `httpx.get(...)` builds a client whose TLS set-up loads certifi's CA bundle: ~50 ms of CPU per call on this
machine, and the suite makes thousands (a server start polls /ready ten times a second; the dialect helpers poll
fetch endpoints). These pass one TLS context, made once per test process; each call is otherwise httpx's own: a
connection of its own, no cookies kept.
"""

from __future__ import annotations

import functools
import ssl
from typing import Any

import httpx


@functools.cache
def _tls() -> ssl.SSLContext:
    return httpx.create_ssl_context()  # what httpx builds per call when no `verify` is given


def request(method: str, url: str, **kw: Any) -> httpx.Response:
    kw.setdefault("verify", _tls())
    return httpx.request(method, url, **kw)


def get(url: str, **kw: Any) -> httpx.Response:
    kw.setdefault("verify", _tls())
    return httpx.get(url, **kw)


def post(url: str, **kw: Any) -> httpx.Response:
    kw.setdefault("verify", _tls())
    return httpx.post(url, **kw)


def delete(url: str, **kw: Any) -> httpx.Response:
    kw.setdefault("verify", _tls())
    return httpx.delete(url, **kw)


def stream(method: str, url: str, **kw: Any):  # noqa: ANN201 - httpx.stream's context manager
    kw.setdefault("verify", _tls())
    return httpx.stream(method, url, **kw)


def client(**kw: Any) -> httpx.Client:
    """An httpx.Client with the shared TLS context (a client of its own: its connections, its cookies)."""
    kw.setdefault("verify", _tls())
    return httpx.Client(**kw)
