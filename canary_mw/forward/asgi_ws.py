"""Proxy an ASGI WebSocket to an upstream WebSocket, both directions, close codes kept.

Security note: the upstream URL is built from parts: the scheme, host and port are the
configured upstream's, and the TCP connection is pinned to that host and port; from the
request only an origin-form target (``/path?query``) is taken, percent-encoded where it
holds anything but URL characters. Any other target (``@127.0.0.1:6379/``, which uvicorn's
h11 parser passes on, an absolute URL, ``*``) is refused before we connect anywhere:
the handshake is closed with 1008 before ``websocket.accept`` (the client sees a 403).
Headers go through the same hygiene as HTTP (``headers.request_headers``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, MutableMapping
from typing import Any
from urllib.parse import quote_from_bytes, urlunsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.uri import parse_uri

from ..upstreams import Upstream
from .headers import DEFAULT_ADDRESS_HEADERS, HOP_BY_HOP, RawHeaders, request_headers

__all__ = ["proxy_websocket", "upstream_ws_url"]

logger = logging.getLogger("canary_mw.forward")

Scope = MutableMapping[str, Any]
Receive = Callable[[], Any]
Send = Callable[[Any], Any]

#: Same as uvicorn's default ws_max_size: the canary may send what the client may send.
MAX_MESSAGE = 16 * 1024 * 1024
# Headers the WebSocket client library negotiates itself (or that describe our hop). Host
# is read by request_headers (for X-Forwarded-Host) and left out afterwards.
_HANDSHAKE = frozenset(
    {b"origin", b"sec-websocket-key", b"sec-websocket-version",
     b"sec-websocket-extensions", b"sec-websocket-protocol", b"content-length"}
) | HOP_BY_HOP  # fmt: skip
# Close codes that must not appear in a close frame (RFC 6455 §7.4.1).
_RESERVED = {1005: 1000, 1006: 1011, 1015: 1011}
#: Policy violation: the close code for a handshake we refuse (a 403 before accept).
POLICY_VIOLATION = 1008
# RFC 3986 characters that may stay as they are in a path (pchar and "/") and in a query;
# "%" is kept so the client's escapes reach the upstream unchanged.
_PATH_SAFE = "/:@!$&'()*+,;=-._~%"
_QUERY_SAFE = _PATH_SAFE + "?"


def _never_trusted(peer: str | None) -> bool:
    return False


def _origin_form_target(scope: Scope) -> bytes | None:
    """The request's path as the client sent it, or None when it is not origin-form."""
    raw: bytes | None = scope.get("raw_path")
    if raw is None:
        raw = quote_from_bytes(scope.get("path", "/").encode("utf-8"), safe=_PATH_SAFE).encode()
    path = raw.partition(b"?")[0]  # some servers include the query in raw_path
    return path if path[:1] == b"/" else None


def upstream_ws_url(upstream: Upstream, path: bytes, query: bytes) -> str:
    """The upstream's ws:// or wss:// URL for an origin-form ``path`` and ``query``.

    Scheme and authority come from the configured upstream; the client's path and query are
    percent-encoded down to URL characters, so nothing in them can end the path early (a
    ``#`` or ``?``) or be read as an authority. The result is parsed again and compared with
    the upstream, a check that does not rely on the encoding being right; ValueError if it
    names another endpoint or the target is not a path."""
    if path[:1] != b"/":
        raise ValueError("only an origin-form target (/path) is forwarded")
    secure = upstream.url.scheme == "https"
    url = urlunsplit((
        "wss" if secure else "ws",
        upstream.host_header.decode("ascii"),
        upstream.prefix.decode("ascii") + quote_from_bytes(path, safe=_PATH_SAFE),
        quote_from_bytes(query, safe=_QUERY_SAFE),
        "",
    ))  # fmt: skip
    parsed = parse_uri(url)
    port = upstream.url.port or (443 if secure else 80)
    if (parsed.secure, parsed.host, parsed.port, parsed.username) != (
        secure, upstream.url.host, port, None,
    ):  # fmt: skip
        raise ValueError(f"{url!r} does not name the upstream {upstream.name!r}")
    return url


def _forward_headers(
    scope: Scope,
    upstream: Upstream,
    extra: RawHeaders,
    trusted_peer: bool,
    address_headers: frozenset[bytes],
) -> tuple[list[tuple[str, str]], str | None]:
    origin = None
    for name, value in scope["headers"]:
        if name.lower() == b"origin":
            origin = value.decode("latin-1")
    client = scope.get("client")
    outgoing = request_headers(
        scope["headers"],
        client=str(client[0]).encode("latin-1") if client else None,
        # What the client spoke, in HTTP's words: proxy-header middlewares map it back.
        scheme=b"https" if scope.get("scheme") == "wss" else b"http",
        host=None,
        default_host=upstream.host_header,
        trusted_peer=trusted_peer,
        extra=extra,
        drop=_HANDSHAKE,
        address_headers=address_headers,
    )
    # The WebSocket library writes Host itself, from the URL (a second one would be sent).
    headers = [
        (name.decode("latin-1"), value.decode("latin-1"))
        for name, value in outgoing
        if name != b"host"
    ]
    return headers, origin


async def proxy_websocket(
    scope: Scope,
    receive: Receive,
    send: Send,
    upstream: Upstream,
    tag: RawHeaders,
    *,
    open_timeout: float | None,
    extra: RawHeaders,
    is_trusted_peer: Callable[[str | None], bool] = _never_trusted,
    address_headers: frozenset[bytes] = DEFAULT_ADDRESS_HEADERS,
) -> None:
    """Proxy one WebSocket. ``is_trusted_peer(address)``: whether the socket peer is a
    trusted proxy, whose forwarding headers are passed on (by default, nobody is), of the
    client-address ones only ``address_headers`` (the kinds the proxy writes)."""
    if (await receive())["type"] != "websocket.connect":
        return
    path = _origin_form_target(scope)
    try:
        if path is None:
            raise ValueError("only an origin-form target (/path) is forwarded")
        url = upstream_ws_url(upstream, path, scope.get("query_string", b""))
    except ValueError as exc:
        # A client's mistake (or probe), like a 400: not worth a warning per request.
        logger.debug("canary_mw: WebSocket refused: %s", exc)
        await send({"type": "websocket.close", "code": POLICY_VIOLATION})
        return
    client = scope.get("client")
    trusted = is_trusted_peer(str(client[0]) if client else None)
    headers, origin = _forward_headers(scope, upstream, extra, trusted, address_headers)
    try:
        remote = await connect(
            url,
            subprotocols=scope.get("subprotocols") or None,
            additional_headers=headers,
            origin=origin,  # type: ignore[arg-type]
            open_timeout=open_timeout,
            proxy=None,  # never from the environment
            user_agent_header=None,
            compression=None,
            max_size=MAX_MESSAGE,
            ping_interval=None,  # the two ends keep their own connection alive
            # Pinned to the upstream, whatever the URL says; this also makes the library
            # refuse a redirect to another host.
            host=upstream.url.host,
            port=upstream.url.port or (443 if upstream.url.scheme == "https" else 80),
        )
    except Exception as exc:
        logger.warning("canary_mw: WebSocket upstream %r unreachable: %s: %s",
                       upstream.name, type(exc).__name__, exc)  # fmt: skip
        await send({"type": "websocket.close", "code": 1011})
        return
    await send({"type": "websocket.accept", "subprotocol": remote.subprotocol, "headers": tag})
    outbound = asyncio.ensure_future(_client_to_upstream(receive, remote))
    inbound = asyncio.ensure_future(_upstream_to_client(remote, send))
    try:
        await asyncio.wait((outbound, inbound), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (outbound, inbound):
            task.cancel()
        await asyncio.wait((outbound, inbound), timeout=1)
        with contextlib.suppress(Exception):
            await remote.close()


async def _client_to_upstream(receive: Receive, remote: ClientConnection) -> None:
    while True:
        message = await receive()
        if message["type"] == "websocket.receive":
            data = message.get("bytes")
            await remote.send(data if data is not None else message.get("text", ""))
        elif message["type"] == "websocket.disconnect":
            code = message.get("code", 1000)
            await remote.close(code=_RESERVED.get(code, code), reason=message.get("reason") or "")
            return


async def _upstream_to_client(remote: ClientConnection, send: Send) -> None:
    try:
        async for data in remote:
            if isinstance(data, bytes):
                await send({"type": "websocket.send", "bytes": data})
            else:
                await send({"type": "websocket.send", "text": data})
    except ConnectionClosed:
        pass
    code = remote.close_code if remote.close_code is not None else 1000
    await send({"type": "websocket.close", "code": _RESERVED.get(code, code),
                "reason": remote.close_reason or ""})  # fmt: skip
