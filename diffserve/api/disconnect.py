"""Whether the client of a request is still there, for requests that wait (synchronous answers).

Starlette's `Request.is_disconnected()` peeks at `receive` in an already-cancelled scope; behind a
BaseHTTPMiddleware (as the metrics middleware was) that peek is itself cancelled, so it never sees a
disconnect. Here a task listens on `receive` for the whole wait instead (the body has been read by
then: all that can come is `http.disconnect`), and `gone()` reads its flag.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from fastapi import Request


@asynccontextmanager
async def client_watch(request: Request) -> AsyncIterator[Callable[[], Awaitable[bool]]]:
    """Yields `gone`: an async check, True once the client has closed the connection."""
    left = asyncio.Event()

    async def listen() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass  # the rest of a body the route did not read
        left.set()

    async def gone() -> bool:
        return left.is_set()

    task = asyncio.get_running_loop().create_task(listen())
    try:
        yield gone
    finally:
        task.cancel()
