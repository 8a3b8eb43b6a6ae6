"""The one place an exception becomes a dialect's error answer: a route class per dialect.

Every route of a dialect uses the route class made here with that dialect's renderer, so any
DiffserveError leaves in the vendor's shape and anything unexpected as its internal-error answer,
logged with its traceback and never shown to the client.
"""

from __future__ import annotations

import logging
from typing import Callable

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from sqlalchemy.exc import DBAPIError, OperationalError

from diffserve.core.errors import DiffserveError, InvalidInput, Unavailable

log = logging.getLogger(__name__)

# (the request, the error or None for an unexpected failure) -> the dialect's error answer
ErrorRenderer = Callable[[Request, DiffserveError | None], Response]


def guarded_route(render_error: ErrorRenderer, name: str) -> type[APIRoute]:
    class GuardedRoute(APIRoute):
        def get_route_handler(self) -> Callable:
            handler = super().get_route_handler()

            async def guarded(request: Request) -> Response:
                try:
                    return await handler(request)
                except DiffserveError as e:
                    return render_error(request, e)
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


STORE_DOWN = "The job store is unreachable; try again shortly"


def _store_down(exc: DBAPIError) -> bool:
    """A lost or refused database connection (PostgreSQL down, network gone), not a bug in a query."""
    return exc.connection_invalidated or isinstance(exc, OperationalError)


def _invalid(exc: RequestValidationError) -> InvalidInput:
    first = exc.errors()[0] if exc.errors() else {}
    loc = [str(part) for part in first.get("loc", ()) if part not in ("query", "path", "body")]
    field = ".".join(loc) or "request"
    return InvalidInput(f"{field}: {first.get('msg', 'invalid value')}", field=field)
