"""Apps for the request-side security tests (tests/security/test_request_security.py).

``headers_app``: a raw ASGI canary that answers every HTTP request and WebSocket with what it
received (target, headers) as JSON, so a test can see exactly what the router forwarded.
``make_bare_app``: the stable Starlette app of tests.support.apps without CanaryRouter, the baseline
for how long uvicorn itself takes over a request.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.applications import Starlette
from starlette.routing import Route

from tests.support.apps import stable_page


def _received(scope: Any) -> bytes:
    return json.dumps(
        {
            "target": scope["raw_path"].decode("latin-1"),
            "query": scope["query_string"].decode("latin-1"),
            "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in scope["headers"]],
        }
    ).encode()


async def headers_app(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    if scope["type"] == "websocket":
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": _received(scope).decode()})
        await send({"type": "websocket.close", "code": 1000})
        return
    while (await receive()).get("more_body"):
        pass
    body = _received(scope)
    await send({"type": "http.response.start", "status": 200, "headers": [
        (b"content-type", b"application/json"), (b"content-length", b"%d" % len(body)),
    ]})  # fmt: skip
    await send({"type": "http.response.body", "body": body})


def make_bare_app() -> Any:
    return Starlette(routes=[Route("/{path:path}", stable_page, methods=["GET", "POST"])])
