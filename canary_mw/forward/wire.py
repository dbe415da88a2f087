"""A forwarded request and its answer as raw bytes: what the forwarders hand the default
transports (``HTTP11Transport``, ``HTTP11SyncTransport``) and get back, without httpx's
request and response models.

Why: building an ``httpx.Request`` and an ``httpx.Response`` (header normalisation, URL
objects, stream wrappers) cost about as much per forwarded request as the sans-I/O core's
parsing (``python bench/forward_cost.py`` measures it). The router already holds
everything in wire form (raw header pairs, the origin-form target), so it passes that
through. Any other transport (httpx's own, ``AiohttpTransport``, respx) still gets a real
``httpx.Request`` and its ``httpx.Response`` is read through the same ``Incoming`` shape
(:func:`incoming_from_response`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from ..upstreams import Upstream
from .partition import PARTITION

__all__ = [
    "NO_BODY",
    "Incoming",
    "Outgoing",
    "incoming_from_response",
    "origin_of",
    "response_from_incoming",
]

#: The body of a request without one (iterable both ways, so shared by ASGI and WSGI).
NO_BODY = httpx.ByteStream(b"")
RawHeaders = list[tuple[bytes, bytes]]
#: Where a connection goes, and whose it is: (scheme, host, port, partition.py's key).
Origin = tuple[bytes, bytes, int, bytes]
_DEFAULT_PORTS = {b"http": 80, b"https": 443}


@dataclass(slots=True)
class Outgoing:
    """One request for an upstream, as it goes on the wire."""

    method: str
    upstream: Upstream
    #: The origin-form target sent: the upstream's path prefix, the path and the query.
    target: bytes
    #: Every header sent (Host and the body's framing included), lower-case names.
    headers: RawHeaders
    #: The body: a (sync or async, as the transport needs) iterable of bytes, or NO_BODY.
    body: Any
    #: Whose connection this may use (partition.py): pooled connections are kept per user.
    partition: bytes
    #: httpx's timeout dict: connect, read, write, pool.
    timeouts: dict[str, float | None]

    @property
    def origin(self) -> Origin:
        """Where the connection goes, and whose it is: (scheme, host, port, partition)."""
        upstream = self.upstream
        return (upstream.raw_scheme, upstream.raw_host, upstream.port, self.partition)

    def httpx_request(self) -> httpx.Request:
        """The same request as an ``httpx.Request``, for any other transport."""
        path, _, query = self.target.partition(b"?")
        url = self.upstream.url_for(path, query)
        extensions = {"timeout": self.timeouts, PARTITION: self.partition}
        return httpx.Request(
            self.method, url, headers=self.headers, stream=self.body, extensions=extensions
        )


@dataclass(slots=True)
class Incoming:
    """An upstream's answer, once its head is in: the body streams from ``stream`` (an
    iterable or async iterable of bytes, as the transport is), and ``close`` (a function, or
    a coroutine function for an async transport) ends the exchange: the connection goes back
    to the pool only if the body was read to its exact end.

    ``complete``: the whole body came with the head (most small answers): ``stream`` gives
    it without waiting on the upstream, so nothing can fail any more."""

    status: int
    reason: bytes
    headers: RawHeaders
    stream: Any
    close: Callable[[], Any]
    complete: bool = False


def incoming_from_response(response: httpx.Response, *, asynchronous: bool) -> Incoming:
    """An ``httpx.Response`` from another transport, read through the same shape."""
    reason = response.extensions.get("reason_phrase", b"")
    close = response.aclose if asynchronous else response.close
    return Incoming(response.status_code, reason, response.headers.raw, response.stream, close)


# -- the default transports used directly, as httpx transports -----------------------------
def origin_of(request: httpx.Request) -> Origin:
    """Where an ``httpx.Request``'s connection goes, and whose it is."""
    url = request.url
    scheme = url.raw_scheme
    if scheme not in _DEFAULT_PORTS:
        raise httpx.UnsupportedProtocol(f"cannot forward to a {scheme.decode()!r} URL")
    port = url.port or _DEFAULT_PORTS[scheme]
    return (scheme, url.raw_host, port, request.extensions.get(PARTITION, b""))


def response_from_incoming(incoming: Incoming) -> httpx.Response:
    return httpx.Response(
        incoming.status, headers=incoming.headers, stream=incoming.stream,
        extensions={"http_version": b"HTTP/1.1", "reason_phrase": incoming.reason},
    )  # fmt: skip
