"""The app factory: settings in, FastAPI app out. Start-up work happens in the lifespan, not at import."""

from __future__ import annotations

import asyncio
import gc
import logging
from pathlib import Path
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles

from diffserve.config import Settings
from diffserve.core.offload import Offload
from diffserve.core.job import TEMP_PREFIX
from diffserve.storage.local import PUBLIC_PREFIX
from diffserve.api.management.router import router as management_router
from diffserve.api.native.router import router as native_router
from diffserve.api.openai.router import router as openai_router
from diffserve.api.a1111.router import router as a1111_router
from diffserve.api.a1111.more import router as a1111_more_router
from diffserve.api.modelslab.router import build_router as modelslab_router
from diffserve.api.qolaba.router import router as qolaba_router
from diffserve.api.body_limit import BodyLimit
from diffserve.api.outputs import OutputFiles
from diffserve.api.observability import install as install_observability
from diffserve.api.security import SecurityHeaders
from diffserve.api.unknown_paths import install as install_unknown_paths
from diffserve.api.state import build_state
from diffserve.metrics import Metrics, use_multiprocess_dir

UI_DIR = Path(__file__).with_name("ui")
METRICS_DIR = "metrics"  # <data_dir>/metrics: every process's Prometheus samples (multiprocess mode)

log = logging.getLogger(__name__)


def create_app(settings: Settings, *, run_workers: bool = True) -> FastAPI:
    """`run_workers`: start local worker processes beside the API (the embedded default)."""
    use_multiprocess_dir(settings.data_dir / METRICS_DIR, wipe=True)  # before any process builds metrics
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        offload = Offload(settings.server.blocking_threads)  # every blocking call of this process from now on
        state = await offload(build_state, settings, run_workers=run_workers, metrics=metrics, offload=offload)
        if state.service.completions:
            state.service.completions.start(asyncio.get_running_loop())
        if state.listener:
            state.listener.start()
        await offload(state.registrations.catch_up)  # models added through another API process of the fleet
        state.registrations.start()
        if state.supervisor:
            await offload(state.supervisor.start)
        state.delivery.start()  # webhook deliveries (resumed after a restart) and temp cleanup
        app.state.ds = state
        # what start-up built (routes, models, SQLAlchemy's and pydantic's caches: ~150k objects) lives as long as
        # the process: frozen, the collector's full passes skip it instead of pausing every request for it
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            await state.service.watch.stop()  # the task that streams and synchronous waits share
            await offload(state.close)

    app = FastAPI(
        title="diffserve",
        version="0.1.0",
        description="Self-hosted image-to-image server speaking the ModelsLab and Qolaba img2img APIs.",
        lifespan=lifespan,
    )
    # every body, chunked or not; innermost, so routes see its refusal as it is (a BaseHTTPMiddleware outside it
    # would wrap it in an exception group)
    app.add_middleware(BodyLimit, max_bytes=settings.limits.max_body_bytes)
    install_observability(app)
    app.add_middleware(SecurityHeaders)  # CSP, no framing, nosniff on every answer (api/security.py)
    install_unknown_paths(app)
    documented = (modelslab_router(), qolaba_router, management_router, native_router, openai_router,
                  a1111_router, a1111_more_router)  # the order /openapi.json and /docs list them in
    spans = _include_hot_first(app, documented, hot=(native_router,))
    app.mount("/ui", StaticFiles(directory=UI_DIR, html=True), name="ui")  # the playground: plain static files

    @app.get("/", include_in_schema=False)
    async def root() -> RedirectResponse:
        return RedirectResponse("/ui/")

    (settings.data_dir / PUBLIC_PREFIX).mkdir(parents=True, exist_ok=True)
    # images; a job's link names resolve to its winning attempt's image (api/outputs.py)
    app.mount(f"/{PUBLIC_PREFIX}", OutputFiles(directory=settings.data_dir / PUBLIC_PREFIX,
                                               prefix=f"{PUBLIC_PREFIX}/"), name="generations")
    temp_outputs = settings.data_dir / TEMP_PREFIX / PUBLIC_PREFIX  # `temp: yes` outputs (inputs stay unserved)
    temp_outputs.mkdir(parents=True, exist_ok=True)
    app.mount(f"/{TEMP_PREFIX}{PUBLIC_PREFIX}", OutputFiles(directory=temp_outputs,
                                                            prefix=f"{TEMP_PREFIX}{PUBLIC_PREFIX}/"),
              name="temp-generations")
    _document_in_order(app, documented, spans)
    return app


def _include_hot_first(app: FastAPI, routers: tuple[APIRouter, ...], *,
                       hot: tuple[APIRouter, ...]) -> dict[int, tuple[int, int]]:
    """Include `routers`, the `hot` ones first. A request is matched against the app's routes in order until one
    fits (~90 routes), twice; the native API's few routes first make a submission try ~20 instead of ~95. Only
    routers whose paths no other router can match go first (the native API's /v1/jobs..., /v1/models): every
    request reaches the route it reached before. Each router's span of app.router.routes."""
    spans: dict[int, tuple[int, int]] = {}
    for router in sorted(routers, key=lambda r: not any(r is h for h in hot)):  # stable: the rest in order
        start = len(app.router.routes)
        app.include_router(router)
        spans[id(router)] = (start, len(app.router.routes))
    return spans


def _document_in_order(app: FastAPI, routers: tuple[APIRouter, ...], spans: dict[int, tuple[int, int]]) -> None:
    """/openapi.json (and /docs) list the routers in `routers`' order, as before the hot ones were moved first:
    the schema is built once, from the routes in that order."""
    served = app.router.routes
    first, last = min(a for a, _ in spans.values()), max(b for _, b in spans.values())
    in_order = [*served[:first], *(r for router in routers for r in served[slice(*spans[id(router)])]),
                *served[last:]]
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:  # built once; no await in here, so no request sees the swapped list
            app.router.routes = in_order
            try:
                build()
            finally:
                app.router.routes = served
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
