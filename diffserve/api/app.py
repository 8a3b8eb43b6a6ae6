"""The app factory: settings in, FastAPI app out. Start-up work happens in the lifespan, not at import."""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles

from diffserve.config import Settings
from diffserve.core.job import TEMP_PREFIX
from diffserve.storage.local import PUBLIC_PREFIX
from diffserve.api.enterprise_storage import router as storage_router
from diffserve.api.management.router import router as management_router
from diffserve.api.modelslab.processing import router as processing_router
from diffserve.api.modelslab.router import router as modelslab_router
from diffserve.api.pony.router import router as pony_router
from diffserve.api.qolaba.router import router as qolaba_router
from diffserve.api.realtime.router import router as realtime_router
from diffserve.api.state import app_state, build_state

log = logging.getLogger(__name__)


def create_app(settings: Settings, *, run_workers: bool = True) -> FastAPI:
    """`run_workers`: start local worker processes beside the API (the embedded default)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state = await anyio.to_thread.run_sync(lambda: build_state(settings, run_workers=run_workers))
        if state.service.completions:
            state.service.completions.start(asyncio.get_running_loop())
        if state.supervisor:
            await anyio.to_thread.run_sync(state.supervisor.start)
        if state.delivery:  # webhook deliveries (resumed after a restart) and temp cleanup
            state.delivery.start()
        app.state.ds = state
        try:
            yield
        finally:
            await anyio.to_thread.run_sync(state.close)

    app = FastAPI(
        title="diffserve",
        version="0.1.0",
        description="Self-hosted image-to-image server speaking the ModelsLab and Qolaba img2img APIs.",
        lifespan=lifespan,
    )
    for router in (modelslab_router, processing_router, realtime_router, pony_router, qolaba_router,
                   management_router, storage_router):
        app.include_router(router)
    (settings.data_dir / PUBLIC_PREFIX).mkdir(parents=True, exist_ok=True)
    app.mount(f"/{PUBLIC_PREFIX}", StaticFiles(directory=settings.data_dir / PUBLIC_PREFIX), name="generations")
    temp_outputs = settings.data_dir / TEMP_PREFIX / PUBLIC_PREFIX  # `temp: yes` outputs (inputs stay unserved)
    temp_outputs.mkdir(parents=True, exist_ok=True)
    app.mount(f"/{TEMP_PREFIX}{PUBLIC_PREFIX}", StaticFiles(directory=temp_outputs), name="temp-generations")

    @app.get("/health", tags=["server"], summary="200 once requests can be served")
    async def health(request: Request) -> Any:
        ds = app_state(request)
        live = await anyio.to_thread.run_sync(ds.workers.live)
        ready = [w for w in live if w.state in ("idle", "busy")]
        body = {
            "status": "ok" if (ready or not ds.supervisor) else "starting",
            "workers": len(ready),
            "models_loaded": sorted({m for w in live for m in w.models}),
        }
        return JSONResponse(body, status_code=200 if body["status"] == "ok" else 503)

    return app
