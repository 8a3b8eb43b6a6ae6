"""Unknown paths and wrong methods answer in the shape of the API the path belongs to (never FastAPI's
`{"detail": ...}` where a vendor client expects its own shape): ModelsLab under /api/, the native API
under /v1/, Qolaba's envelope for /get... paths. Anything else keeps FastAPI's answer."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from diffserve.api.qolaba.render import SERVICE_NOT_FOUND, envelope

REASONS = {404: "Not Found", 405: "Method Not Allowed"}
CODES = {404: "not_found", 405: "method_not_allowed"}


def install(app: FastAPI) -> None:
    @app.exception_handler(HTTPException)
    async def vendor_shaped(request: Request, exc: HTTPException):
        path = request.url.path
        reason = REASONS.get(exc.status_code, str(exc.detail))
        message = f"{reason}: {request.method} {path[:200]}"
        headers = getattr(exc, "headers", None) or {}
        if path.startswith("/api/"):
            return JSONResponse({"status": "error", "message": message}, exc.status_code, headers=headers)
        if path.startswith("/v1/"):
            body = {"error": {"message": message, "code": CODES.get(exc.status_code, "error")}}
            return JSONResponse(body, exc.status_code, headers=headers)
        if path.lower().startswith("/get"):
            return JSONResponse(envelope(status="FAILED", error=SERVICE_NOT_FOUND, error_data=message),
                                exc.status_code, headers=headers)
        return await http_exception_handler(request, exc)
