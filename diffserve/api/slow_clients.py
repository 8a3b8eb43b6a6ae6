"""Slow clients are dropped: uvicorn's httptools protocol with a header and a body read timeout.

uvicorn closes idle keep-alive connections but gives a request's headers and body unlimited time, so
half-sent requests (slowloris) hold connections and file descriptors forever. This protocol arms one timer
per connection: `header_timeout_s` from the connection (or from the first byte of a later request on a
keep-alive connection) until its headers are complete -- an absolute deadline, since a slowloris client
sends a byte now and then -- then `body_timeout_s` between two pieces of its body. When the timer fires the
connection is closed. A pause that is the server's own doing (reading paused because the app has not yet
read the body it holds, or a `100 Continue` not yet sent) does not count against the client.

A request answered before its body was read (a refused key, a refused body) has the rest of its body read
and dropped, as uvicorn does, so the client sees the answer -- but at most `max_unread_body` bytes of it
(the body limit): past that the connection is closed.

Connections are capped too (`max_connections`, kept below the process's file-descriptor limit): a new
connection past the cap closes the oldest one that holds no request in progress (still sending its headers,
else idle between two requests), so a flood of half-sent requests cannot lock out `/health` or real clients
even within the header timeout; if every connection is busy, the new one is closed.
"""

from __future__ import annotations

import asyncio
import logging
import time

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from diffserve.config import ServerSettings

log = logging.getLogger(__name__)


class SlowClientGuard(HttpToolsProtocol):
    header_timeout_s = 10.0
    body_timeout_s = 30.0
    max_connections = 1000
    max_unread_body = 32 * 1024 * 1024

    _timer: asyncio.TimerHandle | None = None
    _phase = ""
    _since = 0.0
    _dropped = 0
    _deadline = 0.0  # when the phase ends
    _due = 0.0  # when the timer fires (at most the shorter timeout ahead)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._since = time.monotonic()
        self._arm("headers", self.header_timeout_s)
        if len(self.connections) > self.max_connections:
            self._make_room()

    def _holds_no_request(self) -> bool:
        return self._phase == "headers" or self.cycle is None or self.cycle.response_complete

    def _make_room(self) -> None:
        idle = [c for c in self.connections
                if c is not self and isinstance(c, SlowClientGuard) and c._holds_no_request()
                and not c.transport.is_closing()]
        # half-sent requests first (oldest first), then idle keep-alive connections
        victim = min(idle, key=lambda c: (c._phase != "headers", c._since)) if idle else self
        log.debug("%d connections (max %d): closing the one from %s", len(self.connections), self.max_connections,
                  victim.client)
        victim.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._phase != "headers":  # a later request on a keep-alive connection: its deadline starts now
            self._arm("headers", self.header_timeout_s)
        self._dropped = 0

    def on_headers_complete(self) -> None:
        self._arm("body", self.body_timeout_s)
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        self._arm("body", self.body_timeout_s)
        if self.cycle is not None and self.cycle.response_complete:  # answered already: dropped, up to a bound
            self._dropped += len(body)
            if self._dropped > self.max_unread_body and not self.transport.is_closing():
                log.debug("closing a connection from %s: more than %d bytes of body after the answer",
                          self.client, self.max_unread_body)
                self.transport.close()
            return
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def _arm(self, phase: str, delay: float) -> None:
        """`phase` ends `delay` from now. One timer per connection, re-armed only when it would fire too late:
        a request's phases move the deadline, and the timer, when it fires early, waits on for what is left
        (a timer armed and cancelled per phase cost three of each per request)."""
        self._phase = phase
        self._deadline = deadline = self.loop.time() + delay
        if self._timer is not None:
            if self._due <= deadline:
                return
            self._timer.cancel()
        self._schedule(delay)

    def _schedule(self, delay: float) -> None:
        """The timer, at most the shorter timeout ahead: a later, shorter phase then finds it early enough."""
        delay = min(delay, self.header_timeout_s, self.body_timeout_s)
        self._due = self.loop.time() + delay
        self._timer = self.loop.call_later(delay, self._expired)

    def _disarm(self) -> None:
        """No phase to time (the timer, if any, finds none when it fires)."""
        self._phase = ""

    def _waiting_on_us(self) -> bool:
        cycle = self.cycle
        return self._phase == "body" and (self.flow.read_paused or
                                          bool(cycle and cycle.waiting_for_100_continue and not cycle.response_started))

    def _expired(self) -> None:
        self._timer = None
        if self.transport.is_closing() or not self._phase:
            return
        left = self._deadline - self.loop.time()
        if left > 0:  # the deadline moved since it was armed
            self._schedule(left)
            return
        if self._waiting_on_us():
            self._arm("body", self.body_timeout_s)
            return
        log.debug("closing a connection from %s: its request %s did not arrive in time", self.client,
                  "headers" if self._phase == "headers" else "body")
        self._phase = ""
        self.transport.close()


FD_RESERVE = 128  # descriptors kept for everything else the API process opens (database, files, pipes)


def connection_cap(configured: int) -> int:
    """`configured`, lowered to leave FD_RESERVE descriptors under the process's soft limit."""
    try:
        import resource
    except ImportError:  # not a POSIX system
        return configured
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return configured
    return max(1, min(configured, soft - FD_RESERVE))


def protocol_class(settings: ServerSettings, max_body_bytes: int) -> type[asyncio.Protocol]:
    """The protocol class uvicorn is given (`http=`), with this server's timeouts and bounds."""
    return type("SlowClientGuard", (SlowClientGuard,), {"header_timeout_s": settings.header_timeout_s,
                                                        "body_timeout_s": settings.body_timeout_s,
                                                        "max_connections": connection_cap(settings.max_connections),
                                                        "max_unread_body": max_body_bytes})
