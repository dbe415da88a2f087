"""Apps the integration tests run under real uvicorn processes.

``canary_app``: a raw ASGI app (full control over bytes and framing) playing the canary.
``make_router_app``: a Starlette app playing stable, wrapped in CanaryRouter configured from
the CANARY_TEST_OPTIONS environment variable (JSON keyword arguments).
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import json
import os
from typing import Any
from urllib.parse import parse_qs

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from canary_mw import DECISION_KEY, CanaryRouter
from canary_mw.forward.client import DEFAULT_LIMITS
from canary_mw.forward.transports import AiohttpTransport, HTTPCore2Transport
from canary_mw.health import HealthCheck

CHUNK = 64 * 1024
STATE: dict[str, str] = {}
RELEASE: dict[str, asyncio.Event] = {}
SEEN: collections.deque[dict[str, Any]] = collections.deque(maxlen=2000)


def pattern(size: int) -> bytes:
    """Deterministic, incompressible-looking bytes: what /download sends."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(counter.to_bytes(8, "big")).digest()
        counter += 1
    return bytes(out[:size])


BLOCK = pattern(CHUNK)


def download_digest(size: int) -> str:
    """sha256 of what /download?size=N sends: BLOCK repeated, cut to N bytes."""
    digest = hashlib.sha256()
    for _ in range(size // CHUNK):
        digest.update(BLOCK)
    digest.update(BLOCK[: size % CHUNK])
    return digest.hexdigest()


async def _read_body(receive: Any) -> tuple[int, str]:
    digest, size = hashlib.sha256(), 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        digest.update(chunk)
        size += len(chunk)
        if not message.get("more_body", False):
            break
    return size, digest.hexdigest()


async def _respond(
    send: Any, status: int, body: bytes, headers: list[tuple[bytes, bytes]] = ()
) -> None:  # type: ignore[assignment]
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-length", str(len(body)).encode()), *headers],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _json(send: Any, data: Any, headers: list[tuple[bytes, bytes]] = ()) -> None:  # type: ignore[assignment]
    await _respond(
        send, 200, json.dumps(data).encode(), [(b"content-type", b"application/json"), *headers]
    )


async def canary_app(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    if scope["type"] == "websocket":
        await _websocket_echo(scope, receive, send)
        return
    path = scope["path"]
    query = {k: v[0] for k, v in parse_qs(scope["query_string"].decode()).items()}
    if path == "/seen":  # what reached the canary, for the smuggling and hostile-input tests
        mark = query["mark"].encode()
        await _json(send, [seen for seen in SEEN if mark in seen["target"].encode("latin-1")])
        return
    SEEN.append({
        "target": (scope["raw_path"] + b"?" + scope["query_string"]).decode("latin-1"),
        "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in scope["headers"]],
    })  # fmt: skip
    if path == "/echo" or path.startswith("/raw/"):
        size, digest = await _read_body(receive)
        await _json(
            send,
            {
                "served_by": "canary",
                "method": scope["method"],
                "raw_path": scope["raw_path"].decode("latin-1"),
                "query_string": scope["query_string"].decode("latin-1"),
                "headers": [
                    [k.decode("latin-1"), v.decode("latin-1")] for k, v in scope["headers"]
                ],
                "body_size": size,
                "body_sha256": digest,
            },
        )
    elif path == "/download":
        await _download(
            scope,
            receive,
            send,
            int(query["size"]),
            query.get("id", ""),
            float(query.get("pace", "0")),
        )
    elif path == "/status":
        await _json(send, {"state": STATE.get(query["id"])})
    elif path == "/sse":
        await _sse(send, query["id"])
    elif path == "/release":
        RELEASE.setdefault(query["id"], asyncio.Event()).set()
        await _json(send, {"released": query["id"]})
    elif path == "/cookies":
        await _read_body(receive)
        cookie = dict(scope["headers"]).get(b"cookie", b"").decode()
        await _json(
            send,
            {"cookie": cookie},
            [
                (b"set-cookie", b"session=" + query.get("user", "x").encode() + b"; Path=/"),
                (b"set-cookie", b"theme=dark; Path=/"),
            ],
        )
    elif path == "/hop":
        await _read_body(receive)
        await _respond(
            send,
            200,
            b"hop",
            [
                (b"connection", b"X-Secret-Hop"),
                (b"x-secret-hop", b"1"),
                (b"keep-alive", b"timeout=5"),
                (b"proxy-connection", b"keep-alive"),
                (b"x-end-to-end", b"kept"),
                (b"x-canary-version", b"spoofed-by-canary"),
            ],
        )
    elif path == "/hang":
        await asyncio.sleep(3600)
    elif path == "/code":
        await _read_body(receive)
        await _respond(send, int(query["code"]), b"from canary")
    else:
        await _read_body(receive)
        await _respond(send, 200, b"This is version 2\n", [(b"content-type", b"text/plain")])


async def _download(
    scope: Any, receive: Any, send: Any, size: int, ident: str, pace: float
) -> None:
    STATE[ident] = "streaming"
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-length", str(size).encode()),
                (b"content-type", b"application/octet-stream"),
            ],
        }
    )

    async def stream() -> None:
        sent = 0
        while sent < size:
            piece = BLOCK[: min(CHUNK, size - sent)]
            await send({"type": "http.response.body", "body": piece, "more_body": True})
            sent += len(piece)
            if pace:
                await asyncio.sleep(pace)
        await send({"type": "http.response.body", "body": b""})

    async def disconnected() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    streamer, watcher = asyncio.ensure_future(stream()), asyncio.ensure_future(disconnected())
    done, _ = await asyncio.wait((streamer, watcher), return_when=asyncio.FIRST_COMPLETED)
    STATE[ident] = "done" if streamer in done else "aborted"
    streamer.cancel()
    watcher.cancel()


async def _sse(send: Any, ident: str) -> None:
    release = RELEASE.setdefault(ident, asyncio.Event())
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")],
        }
    )
    await send({"type": "http.response.body", "body": b"data: first\n\n", "more_body": True})
    STATE[ident] = "waiting"
    await release.wait()  # held until the test asks: the stream is provably unfinished
    await send({"type": "http.response.body", "body": b"data: second\n\n", "more_body": True})
    await send({"type": "http.response.body", "body": b""})
    STATE[ident] = "finished"


async def _websocket_echo(scope: Any, receive: Any, send: Any) -> None:
    await receive()
    protocols = scope.get("subprotocols") or []
    await send({"type": "websocket.accept", "subprotocol": protocols[0] if protocols else None})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        if message.get("text") == "close-please":
            await send({"type": "websocket.close", "code": 4001, "reason": "asked to"})
            return
        if message.get("text") is not None:
            await send({"type": "websocket.send", "text": "echo:" + message["text"]})
        else:
            await send({"type": "websocket.send", "bytes": b"echo:" + message["bytes"]})


# -- the stable side ----------------------------------------------------------------------
async def stable_page(request: Request) -> PlainTextResponse:
    decision = request.scope.get(DECISION_KEY)
    body = await request.body()
    return PlainTextResponse(
        "This is version 1\n",
        headers={
            "x-decision": f"{decision.reason}:{decision.rule_id}" if decision else "none",
            "x-body-size": str(len(body)),
        },
    )


async def stable_cookies(request: Request) -> JSONResponse:
    return JSONResponse({"served_by": "stable"})


async def stable_websocket(websocket: WebSocket) -> None:
    await websocket.accept()
    async for text in websocket.iter_text():
        await websocket.send_text("stable:" + text)


def make_router_app() -> Any:
    options = json.loads(os.environ["CANARY_TEST_OPTIONS"])
    if "health" in options:
        options["health"] = HealthCheck(**options["health"])
    if "limits" in options:
        options["limits"] = httpx.Limits(**options["limits"])
    transport = options.pop("transport", "default")
    if transport == "httpx":  # httpx's own pool (httpcore)
        options["transport"] = httpx.AsyncHTTPTransport(
            limits=options.get("limits", DEFAULT_LIMITS)
        )
    elif transport == "aiohttp":
        options["transport"] = AiohttpTransport()
    elif transport == "httpx2":
        options["transport"] = HTTPCore2Transport()
    app = Starlette(
        routes=[
            WebSocketRoute("/ws", stable_websocket),
            Route("/{path:path}", stable_page, methods=["GET", "POST", "PUT", "DELETE", "HEAD"]),
        ]
    )
    app.add_middleware(CanaryRouter, **options)
    return app
