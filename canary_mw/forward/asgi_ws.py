"""Proxy an ASGI WebSocket to an upstream WebSocket, both directions, close codes kept."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, MutableMapping
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from ..upstreams import Upstream
from .headers import HOP_BY_HOP, RawHeaders

__all__ = ["proxy_websocket"]

logger = logging.getLogger("canary_mw.forward")

Scope = MutableMapping[str, Any]
Receive = Callable[[], Any]
Send = Callable[[Any], Any]

#: Same as uvicorn's default ws_max_size: the canary may send what the client may send.
MAX_MESSAGE = 16 * 1024 * 1024
# Headers the WebSocket client library negotiates itself (or that describe our hop).
_HANDSHAKE = frozenset(
    {b"host", b"origin", b"sec-websocket-key", b"sec-websocket-version",
     b"sec-websocket-extensions", b"sec-websocket-protocol", b"content-length"}
) | HOP_BY_HOP  # fmt: skip
# Close codes that must not appear in a close frame (RFC 6455 §7.4.1).
_RESERVED = {1005: 1000, 1006: 1011, 1015: 1011}


def _forward_headers(scope: Scope, extra: RawHeaders) -> tuple[list[tuple[str, str]], str | None]:
    headers = []
    origin = None
    for name, value in scope["headers"]:
        lowered = name.lower()
        if lowered == b"origin":
            origin = value.decode("latin-1")
        if lowered not in _HANDSHAKE:
            headers.append((name.decode("latin-1"), value.decode("latin-1")))
    client = scope.get("client")
    if client:
        headers.append(("X-Forwarded-For", str(client[0])))
    headers.extend((name.decode("latin-1"), value.decode("latin-1")) for name, value in extra)
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
) -> None:
    if (await receive())["type"] != "websocket.connect":
        return
    query = scope.get("query_string", b"")
    raw_path = (scope.get("raw_path") or scope.get("path", "/").encode()).partition(b"?")[0]
    url = (
        upstream.ws_base
        + raw_path.decode("latin-1")
        + ("?" + query.decode("latin-1") if query else "")
    )
    headers, origin = _forward_headers(scope, extra)
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
