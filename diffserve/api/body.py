"""Reading a request body as one JSON object, bounded in size and in values, strict about NaN/Infinity.

The values (separators and containers) are counted chunk by chunk as the body arrives, so a body built to be
slow to parse (millions of numbers or fields) is refused before it is parsed; a body larger than PARSE_INLINE
is parsed in a worker thread, never on the event loop. Routes whose dialect carries the key in a header
authenticate before they call this."""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request
from pydantic import BaseModel, ValidationError

from diffserve.core.errors import InvalidInput
from diffserve.core.text import check_text

PARSE_INLINE = 64 * 1024  # bodies up to this size parse in well under a millisecond: on the loop


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _values(chunk: bytes) -> int:
    return chunk.count(b",") + chunk.count(b"[") + chunk.count(b"{")


async def read_json_object(request: Request, max_bytes: int | None = None) -> dict[str, Any]:
    ds = request.app.state.ds  # the app's AppState (api/state.py): its limits and its offload pool
    max_values = ds.settings.limits.max_json_values
    max_bytes = ds.settings.limits.max_body_bytes if max_bytes is None else max_bytes
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise InvalidInput(f"Request body is too large (max {max_bytes} bytes)")
    chunks, size, values = [], 0, 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise InvalidInput(f"Request body is too large (max {max_bytes} bytes)")
        values += _values(chunk)
        if values > max_values:
            raise InvalidInput(f"Invalid JSON body: too many values (max {max_values} separators and containers)")
        chunks.append(chunk)
    raw = b"".join(chunks)
    if len(raw) > PARSE_INLINE:
        return await ds.offload(_parse_object, raw)
    return _parse_object(raw)


def _parse_object(raw: bytes) -> dict[str, Any]:
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
    check_text(body)  # a lone surrogate (JSON "\ud800") is refused here, naming its field: never queued
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
