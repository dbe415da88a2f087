"""What the ASGI and the WSGI forwarder share: building the upstream request and deciding
what a failure becomes. Only reading the body and sending the response differ."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, MutableMapping
from dataclasses import dataclass
from typing import Any, Protocol

import httpx

from ..upstreams import Upstream
from .headers import (
    DEFAULT_ADDRESS_HEADERS,
    HOP_BY_HOP,
    RawHeaders,
    request_headers,
    response_headers,
)
from .partition import IDENTITY_HEADERS, IDENTITY_QUERY, partition_key
from .replies import ErrorReply, classify, error_kind, is_unreachable
from .wire import NO_BODY, Incoming, Outgoing

__all__ = [
    "IDEMPOTENT",
    "ForwardObserver",
    "ForwardPolicy",
    "ForwarderBase",
    "ambiguous_authority_reply",
    "refuse_ambiguous_authority",
]

logger = logging.getLogger("canary_mw.forward")

IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})


def _origin_form(path: bytes, query: bytes, method: str) -> tuple[bytes, bytes]:
    """An absolute-form target (``http://host/p``, which uvicorn's h11 parser passes on as
    the path) becomes its origin-form path: the upstream is ours, never the one it names.
    The router refuses such a request when the named host is not the Host header's.
    ``OPTIONS http://host`` (no path, no query) asks about the server: ``*`` (RFC 9112
    §3.2.4)."""
    if path[:1] == b"/" or b"://" not in path:
        return path, query
    rest = path.partition(b"://")[2]
    slash = rest.find(b"/")
    if slash >= 0:
        return rest[slash:], query
    return (b"*" if method == "OPTIONS" and not query else b"/"), query


class ForwardObserver(Protocol):
    """Told how each forwarded request went (the router's metrics and passive health)."""

    def forwarded(self, upstream: Upstream, error: str | None) -> None:
        """The upstream answered (``error`` None) or failed with ``error`` (errors.error_kind)."""

    def fell_back(self, upstream: Upstream) -> None:
        """The upstream could not be reached and stable serves the request instead."""


@dataclass(frozen=True)
class ForwardPolicy:
    """How a forwarder treats requests and responses: the part of the configuration it needs."""

    preserve_host: bool
    is_trusted_peer: Callable[[str | None], bool]
    #: Added to every forwarded request (the loop guard).
    request_extra: RawHeaders
    request_drop: frozenset[bytes]
    response_drop: frozenset[bytes]
    timeout: httpx.Timeout
    limits: httpx.Limits
    max_body_size: int | None = None
    #: The client-address headers a trusted proxy writes (client_ip_headers, lower-case).
    address_headers: frozenset[bytes] = DEFAULT_ADDRESS_HEADERS
    #: The headers whose values keep pooled connections apart, per user (partition.py).
    identity_headers: frozenset[bytes] = IDENTITY_HEADERS
    #: The query parameters whose values do the same (lower-case).
    identity_query: frozenset[bytes] = IDENTITY_QUERY


class ForwarderBase:
    def __init__(self, policy: ForwardPolicy, observer: ForwardObserver):
        self.policy = policy
        self.max_body_size = policy.max_body_size
        self._timeout = policy.timeout.as_dict()
        self._preserve_host = policy.preserve_host
        self._is_trusted_peer = policy.is_trusted_peer
        self._request_extra = policy.request_extra
        # Hop-by-hop headers included: response_headers then makes no set per response.
        self._response_drop = policy.response_drop | HOP_BY_HOP
        self._bodiless_drop = self._response_drop | {b"content-length"}
        self._identity = policy.identity_headers
        self._query_identity = policy.identity_query
        self._request_drop = policy.request_drop
        self._observer = observer

    def declared_too_large(self, length: int | None) -> bool:
        """A Content-Length over the limit: refuse before anything reaches the upstream."""
        return self.max_body_size is not None and length is not None and length > self.max_body_size

    def outgoing(
        self,
        *,
        method: str,
        upstream: Upstream,
        target: tuple[bytes, bytes],
        headers: Iterable[tuple[bytes, bytes]],
        peer: str | None,
        scheme: str,
        body: Any,
        length: int | None,
    ) -> Outgoing:
        """The request for the upstream: raw path and query as received, clean headers, the
        body streamed as it comes (Content-Length when the client gave one, else chunked).
        The framing and Host headers are set here, once, in wire form (wire.py says why)."""
        outgoing = request_headers(
            list(headers),
            client=peer.encode("latin-1") if peer else None,
            scheme=scheme.encode("latin-1"),
            host=None if self._preserve_host else upstream.host_header,
            default_host=upstream.host_header,
            trusted_peer=self._is_trusted_peer(peer),
            extra=self._request_extra,
            drop=self._request_drop,
            address_headers=self.policy.address_headers,
        )
        if body is None:
            body = NO_BODY
        elif length:
            outgoing.append((b"content-length", b"%d" % length))
        else:
            outgoing.append((b"transfer-encoding", b"chunked"))
        # Pooled connections are kept per user (partition.py): a canary's late bytes can
        # only ever reach the user whose exchange they belong to.
        key = partition_key(outgoing, self._identity, target[1], self._query_identity)
        request_target = upstream.request_target(*_origin_form(*target, method))
        return Outgoing(method, upstream, request_target, outgoing, body, key, self._timeout)

    def upstream_request(self, **request: Any) -> httpx.Request:
        """:meth:`outgoing` (same keywords) as an ``httpx.Request``, for any httpx transport."""
        return self.outgoing(**request).httpx_request()

    def failed(
        self,
        exc: httpx.HTTPError,
        upstream: Upstream,
        request: Outgoing,
        *,
        body_read: bool,
        fallback: bool,
    ) -> ErrorReply | None:
        """The reply for a failure before the upstream answered, or None when stable may
        serve the request instead: fallback is on, the method is idempotent, the upstream
        never got the request, and nothing of the body was read."""
        self._observer.forwarded(upstream, error_kind(exc))
        target = request.target.decode("latin-1")  # as sent, not as b'...'
        logger.warning(
            "canary_mw: upstream %r failed before responding to %s %s: %s: %s",
            upstream.name, request.method, target, type(exc).__name__, exc,
        )  # fmt: skip
        if fallback and not body_read and is_unreachable(exc) and request.method in IDEMPOTENT:
            self._observer.fell_back(upstream)
            return None
        return classify(exc)

    def answered(
        self, upstream: Upstream, incoming: Incoming, tag: RawHeaders
    ) -> tuple[RawHeaders, int | None]:
        """The upstream answered: its headers to pass on (hop-by-hop removed, our tag added)
        and the body length it declared (None: unknown, or not a single valid number)."""
        self._observer.forwarded(upstream, None)
        # A 304's Content-Length describes the representation, not bytes on the wire (RFC
        # 9110 §8.6), and a 204 has none: passed on, servers wait for a body that never
        # comes (uvicorn's httptools protocol drops the client's connection).
        drop = self._bodiless_drop if incoming.status in (204, 304) else self._response_drop
        headers, length = response_headers(incoming.headers, drop=drop)
        headers.extend(tag)
        return headers, length


#: The reply to a request that names its authority twice, or has no usable target
#: (RequestFacts.authority_conflict).
_AMBIGUOUS_AUTHORITY = (
    b"Bad Request: two Host headers, a request target that is not a path, or a path with a "
    b"'.' or '..' segment\n"
)


async def refuse_ambiguous_authority(
    scope: MutableMapping[str, Any], receive: Callable[[], Any], send: Callable[[Any], Any]
) -> None:
    """ASGI app for a request with two Host lines, an absolute-form target naming another
    host than Host, or a target that is not a path: 400 (RFC 9112 §3.2), or for a WebSocket
    a close before accept (the client sees 403). Routing by one authority and forwarding the
    other is how a client would reach a host the rules never chose."""
    if scope["type"] == "websocket":
        if (await receive())["type"] == "websocket.connect":
            await send({"type": "websocket.close", "code": 1008})
        return
    await send({"type": "http.response.start", "status": 400, "headers": [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", b"%d" % len(_AMBIGUOUS_AUTHORITY)),
        (b"connection", b"close"),
    ]})  # fmt: skip
    await send({"type": "http.response.body", "body": _AMBIGUOUS_AUTHORITY})


def ambiguous_authority_reply() -> tuple[str, list[tuple[str, str]], bytes]:
    """The same refusal for WSGI: status line, headers, body."""
    return "400 Bad Request", [
        ("Content-Type", "text/plain; charset=utf-8"),
        ("Content-Length", str(len(_AMBIGUOUS_AUTHORITY))),
    ], _AMBIGUOUS_AUTHORITY  # fmt: skip
