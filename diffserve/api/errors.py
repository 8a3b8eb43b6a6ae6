"""The one place an exception becomes a dialect's error answer: a route class per dialect.

Every route of a dialect uses the route class made here with that dialect's renderer, so any
DiffserveError leaves in the vendor's shape and anything unexpected as its internal-error answer,
logged with its traceback and never shown to the client.
"""

from __future__ import annotations

import logging
from typing import Callable

from fastapi import Request, Response
from fastapi.responses import JSONResponse
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from sqlalchemy.exc import DBAPIError, OperationalError
from starlette.requests import ClientDisconnect

from diffserve.core.errors import DiffserveError, InvalidInput, Unavailable
from diffserve.core.text import printable

log = logging.getLogger(__name__)

# (the request, the error or None for an unexpected failure) -> the dialect's error answer
ErrorRenderer = Callable[[Request, DiffserveError | None], Response]


def guarded_route(dialect_renderer: ErrorRenderer, name: str) -> type[APIRoute]:
    render_error = total_renderer(dialect_renderer)

    class GuardedRoute(APIRoute):
        def get_route_handler(self) -> Callable:
            handler = super().get_route_handler()

            async def guarded(request: Request) -> Response:
                try:
                    return await handler(request)
                except DiffserveError as e:
                    return render_error(request, e)
                except ClientDisconnect:  # the client left mid-body, or was dropped as too slow: no one to answer
                    return Response(status_code=400)
                except RequestValidationError as e:  # a typed path/query parameter: a 400 naming it
                    return render_error(request, _invalid(e))
                except (OperationalError, DBAPIError) as e:
                    if not _store_down(e):
                        log.exception("database error on %s", request.url.path)
                        return render_error(request, None)
                    log.warning("job store unreachable on %s: %s", request.url.path, e.orig)
                    return render_error(request, Unavailable(STORE_DOWN))
                except Exception:
                    log.exception("unhandled error on %s", request.url.path)
                    return render_error(request, None)

            return guarded

    GuardedRoute.__name__ = GuardedRoute.__qualname__ = name
    return GuardedRoute


def total_renderer(render_error: ErrorRenderer) -> ErrorRenderer:
    """`render_error` made total: it never raises. The message and field are made printable first (a lone
    surrogate becomes its escape); if the dialect's renderer still fails, its internal-error answer; if that
    fails too, a minimal JSON 500. Each failure is logged with its traceback, never shown."""

    def render(request: Request, exc: DiffserveError | None) -> Response:
        if exc is not None:
            exc.message = printable(str(exc.message))
            if isinstance(exc, InvalidInput) and exc.field is not None:
                exc.field = printable(str(exc.field))
        for error in ((exc, None) if exc is not None else (None,)):
            try:
                return render_error(request, error)
            except Exception:  # noqa: BLE001 - a renderer's own failure must not become a plain-text 500
                log.exception("error renderer failed on %s", printable(str(getattr(request, "url", "?"))))
        return JSONResponse({"error": {"message": "Internal server error", "code": "internal_error"}}, 500)

    return render


STORE_DOWN = "The job store is unreachable; try again shortly"


def _store_down(exc: DBAPIError) -> bool:
    """A lost or refused database connection (PostgreSQL down, network gone), not a bug in a query."""
    return exc.connection_invalidated or isinstance(exc, OperationalError)


def _invalid(exc: RequestValidationError) -> InvalidInput:
    first = exc.errors()[0] if exc.errors() else {}
    loc = [str(part) for part in first.get("loc", ()) if part not in ("query", "path", "body")]
    field = ".".join(loc) or "request"
    return InvalidInput(f"{field}: {first.get('msg', 'invalid value')}", field=field)
