"""The processes the shadow tests run: a stable app behind CanaryRouter (uvicorn) or
CanaryWSGI (gunicorn), configured from SHADOW_TEST_STORE, and a canary that answers a little
differently, can sleep, and tells the test what it received (``GET /_seen``)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterable
from typing import Any

from canary_mw import CanaryRouter, CanaryWSGI

Scope = dict[str, Any]


async def _read_body(receive: Callable[[], Any]) -> tuple[bytes, int]:
    parts, calls = [], 0
    while True:
        message = await receive()
        calls += 1
        parts.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(parts), calls


async def _json(send: Callable[[Any], Any], status: int, document: Any) -> None:
    body = json.dumps(document).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json")]})  # fmt: skip
    await send({"type": "http.response.body", "body": body})


# -- the stable app (served through the router) --------------------------------------------
async def stable_app(scope: Scope, receive: Callable[[], Any], send: Callable[[Any], Any]) -> None:
    if scope["type"] == "lifespan":
        while (message := await receive())["type"] != "lifespan.shutdown":
            await send({"type": message["type"] + ".complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    path = scope["path"]
    if scope["method"] == "POST":
        body, _ = await _read_body(receive)
        await _json(send, 200, {"sha256": hashlib.sha256(body).hexdigest(), "size": len(body)})
    elif path.startswith("/json"):
        await _json(send, 200, {"id": 7, "price": 10, "time": time.time()})
    else:  # /same, /slow, /boom, /probe...: the canary agrees on these bodies except /boom
        await _json(send, 200, {"path": path})


def asgi_router() -> Any:
    return CanaryRouter(stable_app, store=os.environ["SHADOW_TEST_STORE"],
                        canary_url="http://127.0.0.1:9", metrics=False, rollouts=False)  # fmt: skip


def wsgi_stable(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    path = environ["PATH_INFO"]
    if environ["REQUEST_METHOD"] == "POST":
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        document: Any = {"sha256": hashlib.sha256(body).hexdigest(), "size": len(body)}
    elif path.startswith("/json"):
        document = {"id": 7, "price": 10, "time": time.time()}
    else:
        document = {"path": path}
    start_response("200 OK", [("Content-Type", "application/json")])
    return [json.dumps(document).encode()]


def wsgi_router() -> Any:
    return CanaryWSGI(wsgi_stable, store=os.environ["SHADOW_TEST_STORE"],
                      canary_url="http://127.0.0.1:9", metrics=False, rollouts=False)  # fmt: skip


# -- the canary (the mirror's upstream) ----------------------------------------------------
_SEEN: list[dict[str, Any]] = []
_ACTIVE = [0, 0]  # in flight now, most ever in flight


async def canary_app(scope: Scope, receive: Callable[[], Any], send: Callable[[Any], Any]) -> None:
    if scope["type"] != "http":
        if scope["type"] == "lifespan":
            while (message := await receive())["type"] != "lifespan.shutdown":
                await send({"type": message["type"] + ".complete"})
            await send({"type": "lifespan.shutdown.complete"})
        return
    path = scope["path"]
    if path == "/_seen":
        await _json(send, 200, {"seen": _SEEN, "max_active": _ACTIVE[1]})
        return
    body, _ = await _read_body(receive)
    headers = {k.decode(): v.decode() for k, v in scope["headers"]}
    _ACTIVE[0] += 1
    _ACTIVE[1] = max(_ACTIVE)
    _SEEN.append({"method": scope["method"], "path": path, "shadow": headers.get("x-canary-shadow"),
                  "sha256": hashlib.sha256(body).hexdigest(), "at": time.time()})  # fmt: skip
    try:
        if "/slow" in path:  # also under a path prefix (a mirror upstream of .../v2)
            await asyncio.sleep(2.0)
        if scope["method"] == "POST":
            await _json(send, 200, {"sha256": hashlib.sha256(body).hexdigest(), "size": len(body)})
        elif path.startswith("/json"):
            await _json(send, 200, {"id": 7, "price": 12, "time": time.time() + 5})
        elif path.startswith("/boom"):
            await _json(send, 500, {"error": "boom"})
        else:
            await _json(send, 200, {"path": path})
    finally:
        _ACTIVE[0] -= 1
