"""The base of every URL an answer holds (outputs, fetch links, previews), from the request it answers.

The configured public URL; unset, the request's Host when it names a trusted host (`server.trusted_hosts`:
localhost by default), else the address the request arrived at -- the server's own socket. A Host header a
client forged never shows. Every answer asks (a polled fetch too), so each distinct (scheme, Host, socket, root
path) is worked out once and kept; a client can send any Host header, so what is kept is bounded."""

from __future__ import annotations

from starlette.requests import Request

from diffserve.config import ServerSettings

KEPT = 256  # distinct request parts remembered; past it the memory starts over


class BaseUrls:
    def __init__(self, server: ServerSettings, bind_url: str) -> None:
        self._public = server.public_url.rstrip("/") if server.public_url else None
        self._trusted = frozenset(h.lower().strip("[]") for h in server.trusted_hosts)
        self._bind_url = bind_url  # a Unix socket's answer: the configured bind address
        self._known: dict[tuple, str] = {}

    def __call__(self, request: Request) -> str:
        if self._public:
            return self._public
        scope = request.scope
        server = scope.get("server")
        parts = (scope.get("scheme"), request.headers.get("host"), tuple(server) if server else None,
                 scope.get("root_path", ""))
        known = self._known.get(parts)
        if known is None:
            if len(self._known) >= KEPT:
                self._known.clear()
            known = self._known[parts] = self._work_out(request)
        return known

    def _work_out(self, request: Request) -> str:
        host = request.url.hostname
        if host and host.lower().strip("[]") in self._trusted:
            return str(request.base_url).rstrip("/")
        server = request.scope.get("server")
        if not server or not server[1]:
            return self._bind_url
        address, port = server
        address = f"[{address}]" if ":" in address else address
        return f"{request.url.scheme}://{address}:{port}{request.scope.get('root_path', '')}".rstrip("/")
