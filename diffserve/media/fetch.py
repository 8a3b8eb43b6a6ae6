"""Fetch an image URL a client gave us, without letting the client aim the server at itself.

Rules (shared with webhook delivery through :class:`UrlPolicy`):

* http and https only; at most ``limits.max_redirects`` redirects, followed by hand so that every
  hop goes through the same checks.
* Unless private addresses are allowed, the host is resolved first and refused if *any* of its
  addresses is loopback, private, link-local (cloud metadata included), multicast, reserved,
  unspecified or otherwise not globally routable (IPv4-mapped/6to4/NAT64 IPv6 forms are unwrapped).
  The request then goes to the address that was checked, not to a second DNS answer (DNS
  rebinding): the URL's host is replaced by that IP while the Host header and, for https, the TLS
  server name (SNI and certificate check) stay those of the original host name.
* The body is streamed and cut off as soon as it exceeds ``limits.max_bytes``; responses with a
  content-encoding are refused (we ask for ``identity``; decompressing would defeat the limit).
* ``limits.fetch_timeout_s`` bounds the whole fetch, redirects included. httpx's timeouts are per
  operation (a server dripping one byte a second never trips them), so a timer also shuts the
  connection's socket down when the total time is up; it learns the socket through httpcore's
  ``trace`` request extension. DNS resolution (``socket.getaddrinfo``) is not covered.
* Connections are not kept alive (see ``_REQUEST_HEADERS``). A caller-supplied client should be
  one used only for these fetches: a connection its pool already holds for the same IP and port
  (from other requests) could be reused, skipping the TLS name check for our host and the timer
  (the deadline is then only checked between body chunks).

Fetch failures raise ``ImageInputError("Unable to fetch image from provided URL")`` (ModelsLab's
exact wording); the reason is in the error's ``reason`` attribute and in the log, not the message.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field as dc_field
from typing import Any

import httpx

from diffserve.config import ImageLimits
from diffserve.core.errors import ImageInputError
from diffserve.media.decode import too_many_bytes_message

log = logging.getLogger(__name__)

FETCH_FAILED = "Unable to fetch image from provided URL"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Sequence[str]]

# Named for the record: both are already covered by is_link_local / is_private.
_METADATA_ADDRESSES = {ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")}
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_DEFAULT_PORTS = {"http": 80, "https": 443}
# "Connection: close": a pinned request's pool key is the IP, not the host name, so a kept-alive
# connection (TLS-verified for one name) could otherwise be reused for another name on that IP.
_REQUEST_HEADERS = {
    "Accept": "image/*,*/*;q=0.5",
    "Accept-Encoding": "identity",
    "Connection": "close",
    "User-Agent": "diffserve",
}


def fetch_failed(field: str, reason: str) -> ImageInputError:
    """The vendor's fetch error; `reason` goes to the `reason` attribute and the log only."""
    log.info("cannot fetch %s: %s", field, reason)
    error = ImageInputError(FETCH_FAILED, field=field)
    error.reason = reason  # type: ignore[attr-defined]
    return error


def is_blocked_address(address: str | IPAddress) -> bool:
    """True for any address a client-supplied URL must not reach (unless private URLs are allowed)."""
    ip = ipaddress.ip_address(address) if isinstance(address, str) else address
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is None and ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:  # judged by the IPv4 address it reaches
            return is_blocked_address(embedded)
    return (
        ip in _METADATA_ADDRESSES
        or ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
        or not ip.is_global  # e.g. 100.64.0.0/10 (carrier-grade NAT, Tailscale)
    )


def resolve_host(host: str, port: int) -> list[str]:
    """All addresses the system resolver gives for host (IP literals come back unchanged)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(info[4][0] for info in infos))


@dataclass(frozen=True)
class Target:
    """A URL that passed the policy. Connect to `address` (None: connect by host name)."""

    url: httpx.URL
    host: str  # ASCII (IDNA) host name, as sent in SNI
    port: int
    address: str | None


@dataclass(frozen=True)
class UrlPolicy:
    """Which URLs the server may fetch for a client.

    `trusted_hosts` are host names exempt from the address check (their address is still pinned),
    e.g. an internal storage host; `resolver` is injectable for tests.
    """

    allow_private: bool = False
    trusted_hosts: frozenset[str] = dc_field(default_factory=frozenset)
    resolver: Resolver = resolve_host

    def check(self, url: str | httpx.URL, *, field: str) -> Target:
        try:
            parsed = httpx.URL(url)
        except (httpx.InvalidURL, TypeError, ValueError):
            raise ImageInputError(f"{field} is not a valid URL", field=field) from None
        if parsed.scheme not in _DEFAULT_PORTS:
            raise ImageInputError(f"{field} URL must use http or https", field=field)
        host = parsed.raw_host.decode("ascii").lower()
        if not host:
            raise ImageInputError(f"{field} is not a valid URL", field=field)
        port = parsed.port or _DEFAULT_PORTS[parsed.scheme]
        if self.allow_private:
            return Target(parsed, host, port, None)
        try:
            addresses = self.resolver(host, port)
        except (OSError, UnicodeError) as exc:
            raise fetch_failed(field, f"cannot resolve {host}: {exc}") from None
        if not addresses:
            raise fetch_failed(field, f"cannot resolve {host}")
        if host not in {h.lower() for h in self.trusted_hosts} and any(is_blocked_address(a) for a in addresses):
            log.warning("refused %s: %s resolves to %s", field, host, ", ".join(addresses))
            raise ImageInputError(
                f"{field} URL is not allowed: it resolves to a private or reserved address", field=field
            )
        return Target(parsed, host, port, addresses[0])


def check_url(url: str, *, allow_private: bool, field: str = "url") -> Target:
    """Apply the default policy to `url` (resolving it); the Target says which address to use."""
    return UrlPolicy(allow_private=allow_private).check(url, field=field)


def fetch_image_bytes(
    url: str,
    *,
    field: str,
    limits: ImageLimits,
    allow_private: bool,
    client: httpx.Client | None = None,
    policy: UrlPolicy | None = None,
) -> bytes:
    """GET `url` under `limits` and the network policy; return the body (not yet decoded).

    `policy`, when given, replaces the default ``UrlPolicy(allow_private=allow_private)``.
    Without `client`, a private client is used for this call (no env proxies or .netrc).
    """
    policy = policy or UrlPolicy(allow_private=allow_private)
    deadline = Deadline(limits.fetch_timeout_s)
    own_client = client is None
    http = client or httpx.Client(trust_env=False)
    try:
        current: str | httpx.URL = url
        for _hop in range(limits.max_redirects + 1):
            target = policy.check(current, field=field)
            response = http.send(_build_request(http, target, deadline, field), stream=True, follow_redirects=False)
            try:
                if response.is_redirect:
                    current = _redirect_target(target, response, field)
                    continue
                if not response.is_success:
                    raise fetch_failed(field, f"HTTP {response.status_code}")
                return _read_body(response, field=field, limits=limits, deadline=deadline)
            finally:
                response.close()
        raise fetch_failed(field, f"more than {limits.max_redirects} redirects")
    except httpx.HTTPError as exc:
        reason = "timed out" if deadline.expired() else f"{type(exc).__name__}: {exc}"
        raise fetch_failed(field, reason) from None
    finally:
        deadline.cancel()
        if own_client:
            http.close()


def _build_request(http: httpx.Client, target: Target, deadline: Deadline, field: str) -> httpx.Request:
    if deadline.remaining() <= 0:
        raise fetch_failed(field, "timed out")
    return pinned_request(http, target, "GET", headers=_REQUEST_HEADERS, deadline=deadline)


def pinned_request(
    http: httpx.Client, target: Target, method: str, *, headers: dict[str, str], deadline: Deadline,
    content: bytes | None = None, connect_s: float | None = None, read_s: float | None = None,
) -> httpx.Request:
    """A request for `target` that connects to the address the policy checked (DNS-rebinding safe).

    Built for the original URL, so the Host header names the host and, for https, SNI and the
    certificate check use the host name; then the URL is pinned to `target.address`. The deadline's
    trace hook lets it shut the socket down when the total time is up; `connect_s` / `read_s` bound the
    connect and each read (and write) below that. Send it with
    ``follow_redirects=False`` and a client used only for such requests (see the module notes).
    """
    extensions: dict[str, Any] = {"trace": deadline.trace}
    if target.url.scheme == "https":
        extensions["sni_hostname"] = target.host
    total = max(deadline.remaining(), 0.001)
    read = min(read_s, total) if read_s else total
    timeout = httpx.Timeout(total, connect=min(connect_s, total) if connect_s else total, read=read, write=read)
    request = http.build_request(method, target.url, headers=headers, content=content, timeout=timeout,
                                 extensions=extensions)
    if target.address is not None:
        request.url = request.url.copy_with(host=target.address)
    return request


def _redirect_target(target: Target, response: httpx.Response, field: str) -> httpx.URL:
    try:  # relative to the URL as the client wrote it, not to the pinned address
        return target.url.join(response.headers["location"])
    except (httpx.InvalidURL, UnicodeError, ValueError):
        raise fetch_failed(field, "invalid redirect location") from None


def _read_body(response: httpx.Response, *, field: str, limits: ImageLimits, deadline: Deadline) -> bytes:
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limits.max_bytes:
        raise ImageInputError(too_many_bytes_message(field, int(declared), limits.max_bytes), field=field)
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise fetch_failed(field, f"unsupported content-encoding {encoding!r}")
    body = bytearray()
    for chunk in response.iter_raw():
        body += chunk
        if len(body) > limits.max_bytes:
            raise ImageInputError(too_many_bytes_message(field, None, limits.max_bytes), field=field)
        if deadline.expired():
            raise fetch_failed(field, "timed out")
    return bytes(body)


class Deadline:
    """Total time budget of one fetch; shuts its sockets down when the budget is spent."""

    def __init__(self, seconds: float) -> None:
        self._expires = time.monotonic() + seconds
        self._fired = False
        self._streams: list[Any] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True
        self._timer.start()

    def remaining(self) -> float:
        return self._expires - time.monotonic()

    def expired(self) -> bool:
        return self._fired or self.remaining() <= 0

    def cancel(self) -> None:
        self._timer.cancel()

    def trace(self, event: str, info: dict[str, Any]) -> None:
        """httpcore trace hook: remember each new connection's stream (plain, then TLS)."""
        if event not in ("connection.connect_tcp.complete", "connection.start_tls.complete"):
            return
        stream = info.get("return_value")
        with self._lock:
            self._streams.append(stream)
            fired = self._fired
        if fired:
            _shutdown(stream)

    def _fire(self) -> None:
        with self._lock:
            self._fired = True
            streams = list(self._streams)
        for stream in streams:
            _shutdown(stream)


def _shutdown(stream: Any) -> None:
    """Wake any thread blocked on this stream's socket; the fetch then fails and closes it."""
    try:
        sock = stream.get_extra_info("socket")
        # socket.socket's own shutdown: SSLSocket's version also tears down TLS state under the
        # reading thread's feet. A plain socket replaced by its TLS wrapper is detached (OSError).
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except (OSError, AttributeError, TypeError):
        pass
