"""Reading a request body as one JSON object, bounded in size, strict about NaN/Infinity."""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request
from pydantic import BaseModel, ValidationError

from diffserve.core.errors import InvalidInput

DEFAULT_MAX_BODY = 32 * 1024 * 1024  # a 20 MB image as base64 fits


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _configured_max_body(request: Request) -> int:
    """The server's `limits.max_body_bytes` (DEFAULT_MAX_BODY outside a running app)."""
    ds = getattr(request.app.state, "ds", None)
    return ds.settings.limits.max_body_bytes if ds is not None else DEFAULT_MAX_BODY


async def read_json_object(request: Request, max_bytes: int | None = None) -> dict[str, Any]:
    if max_bytes is None:
        max_bytes = _configured_max_body(request)
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise InvalidInput(f"Request body is too large (max {max_bytes} bytes)")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise InvalidInput(f"Request body is too large (max {max_bytes} bytes)")
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw.strip():
        raise InvalidInput("Request body must be a JSON object")
    try:
        body = json.loads(raw, parse_constant=_no_constants)
    except (ValueError, UnicodeDecodeError) as e:
        raise InvalidInput(f"Invalid JSON body: {e}") from None
    except RecursionError:  # e.g. [[[[...]]]] nested deeper than Python's stack
        raise InvalidInput("Invalid JSON body: nested too deeply") from None
    if not isinstance(body, dict):
        raise InvalidInput("Request body must be a JSON object")
    return body


def parse_model(model: type[BaseModel], body: dict[str, Any]):
    """Validate a body against a protocol model; errors name each bad field."""
    try:
        return model.model_validate(body)
    except ValidationError as e:
        parts, first_field = [], None
        for err in e.errors():
            field = ".".join(str(p) for p in err["loc"]) or "body"
            first_field = first_field or field
            msg = err["msg"]
            if err["type"] == "string_type":
                msg = "must be a string"
            parts.append(f"{field} {msg}")
        raise InvalidInput("; ".join(parts), field=first_field) from None


def json_body_doc(model: type[BaseModel]) -> dict[str, Any]:
    """openapi_extra for a route that reads its body itself, so /docs still shows the fields."""
    return {"requestBody": {"required": True,
                            "content": {"application/json": {"schema": model.model_json_schema()}}}}
