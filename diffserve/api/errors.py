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

from diffserve.core.errors import DiffserveError, InvalidInput

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
                except Exception:
                    log.exception("unhandled error on %s", request.url.path)
                    return render_error(request, None)

            return guarded

    GuardedRoute.__name__ = GuardedRoute.__qualname__ = name
    return GuardedRoute


def _invalid(exc: RequestValidationError) -> InvalidInput:
    first = exc.errors()[0] if exc.errors() else {}
    loc = [str(part) for part in first.get("loc", ()) if part not in ("query", "path", "body")]
    field = ".".join(loc) or "request"
    return InvalidInput(f"{field}: {first.get('msg', 'invalid value')}", field=field)
