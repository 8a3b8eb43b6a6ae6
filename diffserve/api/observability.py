"""What an operator watches: /health (alive), /ready (can serve), /metrics (Prometheus), and the HTTP
metrics middleware. The metric definitions are in diffserve/metrics.py. With `metrics_key_required` on,
/metrics answers only to a valid API key (`Authorization: Bearer <key>`, Prometheus' `authorization`)."""

from __future__ import annotations

import logging
import time
from typing import Any, Iterable

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from diffserve.api.auth import authenticate, bearer_token
from diffserve.api.state import app_state
from diffserve.core.errors import Unauthorized

log = logging.getLogger(__name__)


def _workers(live: list) -> tuple[int, list[str]]:
    """(workers up -- idle or busy --, every model a live worker holds)."""
    return sum(w.state in ("idle", "busy") for w in live), sorted({m for w in live for m in w.models})


class RequestMetrics:
    """Counts every HTTP answer by route, method and status, and observes its time to the response's start.
    A pure ASGI middleware: no task, stream or buffering per request (BaseHTTPMiddleware costs all three)."""

    KEPT = 1024  # (route, method, status) children kept; past it the memory starts over

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}  # labels() per request cost a lock

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()

        async def timed_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                ds = getattr(scope["app"].state, "ds", None)
                if ds is not None and ds.metrics is not None:
                    route = getattr(scope.get("route"), "path", None) or "unmatched"
                    count, took = self._metrics(ds.metrics, route, scope["method"], message["status"])
                    count.inc()
                    took.observe(time.perf_counter() - started)
            await send(message)

        await self.app(scope, receive, timed_send)

    def _metrics(self, metrics: Any, route: str, method: str, status: int) -> tuple[Any, Any]:
        """The request counter's and the timer's children for these labels (one Metrics per app)."""
        key = (route, method, status)
        children = self._children.get(key)
        if children is None:
            if len(self._children) >= self.KEPT:
                self._children.clear()
            children = self._children[key] = (metrics.http.labels(route, method, str(status)),
                                               metrics.http_time.labels(route, method))
        return children


def install(app: FastAPI) -> None:
    app.add_middleware(RequestMetrics)

    @app.get("/health", tags=["server"], summary="Alive: 200 as soon as the API answers (see /ready)")
    async def health(request: Request) -> Any:
        ds = app_state(request)
        up, models = _workers(await ds.offload(ds.workers.live))
        return {"status": "ok" if (up or not ds.supervisor) else "starting", "workers": up, "models_loaded": models}

    @app.get("/ready", tags=["server"], summary="200 once requests can be served: store reachable, a worker up")
    async def ready(request: Request) -> Any:
        ds = app_state(request)
        try:
            live = await ds.offload(ds.workers.live)
        except Exception:  # noqa: BLE001 - the store is down: not ready, and say so
            log.warning("readiness: the job store is unreachable", exc_info=True)
            return JSONResponse({"status": "unavailable", "store": "unreachable", "workers": 0}, status_code=503)
        up, models = _workers(live)
        body = {"status": "ready" if up else "starting", "store": "ok", "workers": up, "models_loaded": models}
        return JSONResponse(body, status_code=200 if up else 503)

    @app.get("/metrics", tags=["server"], summary="Prometheus metrics of the API and every worker process")
    async def metrics(request: Request) -> Response:
        from diffserve.metrics import exposition

        ds = app_state(request)
        if ds.settings.server.metrics_key_required:
            try:
                await authenticate(ds.keys, bearer_token(request), ds.offload)
            except Unauthorized as e:
                return JSONResponse({"error": {"message": e.message, "code": "unauthorized"}}, status_code=401,
                                    headers={"WWW-Authenticate": "Bearer"})

        def gauges() -> Iterable[tuple[str, str, dict[str, str], float]]:
            for model, label, state, count in ds.queue.depth():
                yield ("diffserve_queue_depth", "Jobs in the queue", {"model": model or "", "label": label or "",
                                                                      "state": state}, count)
            states: dict[str, int] = {}
            for worker in ds.workers.live():
                states[worker.state] = states.get(worker.state, 0) + 1
            for state in ("starting", "idle", "busy"):
                yield "diffserve_workers", "Live workers by state", {"state": state}, states.get(state, 0)

        body, content_type = await ds.offload(exposition, gauges)
        return Response(body, media_type=content_type)
