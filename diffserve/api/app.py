"""The app factory: settings in, FastAPI app out. Start-up work happens in the lifespan, not at import."""

from __future__ import annotations

import asyncio
import gc
import logging
from pathlib import Path
from contextlib import asynccontextmanager
from fastapi import FastAPI
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
    for router in (modelslab_router(), qolaba_router, management_router, native_router, openai_router,
                   a1111_router, a1111_more_router):
        app.include_router(router)
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

    return app
