"""Every request body is bounded as it arrives, on every route, whatever its transfer form.

One ASGI middleware counts the bytes a route receives: a declared Content-Length over the limit is refused
before anything is read, and a chunked body the moment its running total passes the limit, so nothing past
the limit is buffered, parsed or spooled (multipart files included: the parser closes its temporary files
when the stream fails). The refusal is raised inside the route as a BodyTooLarge (an InvalidInput), so each
dialect answers it in its own error shape; the answer carries `Connection: close`, since the rest of the
body is never read. A route that renders no dialect errors gets a plain JSON 413.
"""

from __future__ import annotations

import json
from typing import Any, Awaitable, Callable

from diffserve.core.errors import InvalidInput

Message = dict[str, Any]
ASGIApp = Callable[[dict, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Awaitable[None]]


class BodyTooLarge(InvalidInput):
    def __init__(self, max_bytes: int) -> None:
        super().__init__(f"Request body is too large (max {max_bytes} bytes)")


def _declared_length(scope: dict) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None


class BodyLimit:
    """ASGI middleware: `max_bytes` over the whole body of any HTTP request."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict, receive: Callable[[], Awaitable[Message]],
                       send: Callable[[Message], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _declared_length(scope)
        received = 0
        refused = False
        started = False

        async def limited_receive() -> Message:
            nonlocal received, refused
            if refused or (declared is not None and declared > self.max_bytes):
                refused = True
                raise BodyTooLarge(self.max_bytes)
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    refused = True
                    raise BodyTooLarge(self.max_bytes)
            return message

        async def closing_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if refused:  # the rest of the body stays unread: the connection cannot carry another request
                    message = {**message, "headers": [*message.get("headers", ()), (b"connection", b"close")]}
            await send(message)

        try:
            await self.app(scope, limited_receive, closing_send)
        except BodyTooLarge as exc:
            if started:
                raise
            body = json.dumps({"error": {"message": exc.message, "code": "body_too_large"}}).encode()
            await send({"type": "http.response.start", "status": 413,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(body)).encode()), (b"connection", b"close")]})
            await send({"type": "http.response.body", "body": body})
