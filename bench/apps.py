"""The apps the benchmark serves: one trivial backend, and the same backend behind each
routing layer. Configured from environment variables by the bench harness."""

from __future__ import annotations

import json
import os
from typing import Any

MESSAGE = (os.environ.get("MESSAGE", "This is version 1") + "\n").encode()
HEADERS = [(b"content-type", b"text/plain"), (b"content-length", str(len(MESSAGE)).encode())]


async def backend(scope: Any, receive: Any, send: Any) -> None:
    """The same trivial app as shared/peers/openresty/backend_asgi.py."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    if scope["type"] != "http":
        return
    if scope["path"] == "/big":  # for the 1 GiB streaming run
        await _big(scope, send)
        return
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": MESSAGE})


async def _big(scope: Any, send: Any) -> None:
    size = int(scope["query_string"].decode().partition("=")[2] or 0)
    chunk = b"x" * 65536
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", str(size).encode())]})  # fmt: skip
    while size > 0:
        piece = chunk[: min(size, len(chunk))]
        size -= len(piece)
        await send({"type": "http.response.body", "body": piece, "more_body": size > 0})


def router() -> Any:
    """The backend behind CanaryRouter, options from BENCH_ROUTER (JSON)."""
    from canary_mw import CanaryRouter, openresty_rules

    options = json.loads(os.environ["BENCH_ROUTER"])
    if options.pop("openresty_rules", False):
        options["default_rules"] = openresty_rules()
    transport = options.pop("transport", None)
    if transport == "httpx":  # httpx's own pool (httpcore), with the router's default limits
        import httpx

        from canary_mw.forward.client import DEFAULT_LIMITS

        options["transport"] = httpx.AsyncHTTPTransport(limits=DEFAULT_LIMITS)
    elif transport == "aiohttp":
        from canary_mw.forward.transports import AiohttpTransport

        options["transport"] = AiohttpTransport()
    elif transport == "httpx2":
        from canary_mw.forward.transports import HTTPCore2Transport

        options["transport"] = HTTPCore2Transport()
    inner = realistic() if os.environ.get("BENCH_APP") == "realistic" else backend
    app = CanaryRouter(inner, **options)
    if os.environ.get("BENCH_GC_FREEZE"):
        import gc

        gc.freeze()
    return app


def realistic() -> Any:
    """A more typical endpoint: Starlette routing, and a JSON document built per request."""
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    items = [
        {"id": n, "name": f"item {n}", "price": n * 1.25, "tags": ["a", "b"]} for n in range(20)
    ]

    async def listing(request: Any) -> JSONResponse:
        return JSONResponse({"version": MESSAGE.decode().strip(), "items": items})

    return Starlette(routes=[Route("/", listing)])


def pure_noop() -> Any:
    """The floor: a pure ASGI middleware that does nothing but call the app."""

    async def middleware(scope: Any, receive: Any, send: Any) -> None:
        await backend(scope, receive, send)

    return middleware


def pure_tag() -> Any:
    """A pure ASGI middleware that only adds one response header, as the router's tag does:
    what the server's own per-header work costs."""
    tag = [(b"x-canary-version", b"stable")]

    async def middleware(scope: Any, receive: Any, send: Any) -> None:
        def tagged(message: Any) -> Any:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), *tag]
            return send(message)

        await backend(scope, receive, tagged)

    return middleware


def base_http_noop() -> Any:
    """What the common pattern costs: a BaseHTTPMiddleware that does nothing."""
    from starlette.middleware.base import BaseHTTPMiddleware

    async def dispatch(request: Any, call_next: Any) -> Any:
        return await call_next(request)

    return BaseHTTPMiddleware(backend, dispatch=dispatch)


def flask_app() -> Any:
    """The classic Flask demo app, behind CanaryWSGI when BENCH_ROUTER is set."""
    from flask import Flask

    app = Flask(__name__)
    message = MESSAGE.decode()

    @app.route("/", defaults={"path": ""})
    @app.route("/<path:path>")
    def get_message(path: str) -> str:
        return message

    if "BENCH_ROUTER" in os.environ:
        from canary_mw import CanaryWSGI, openresty_rules

        options = json.loads(os.environ["BENCH_ROUTER"])
        if options.pop("openresty_rules", False):
            options["default_rules"] = openresty_rules()
        app.wsgi_app = CanaryWSGI(app.wsgi_app, **options)  # type: ignore[method-assign]
    return app


def wsgi_floor() -> Any:
    """The least a WSGI app can do to forward, as a yardstick (never use it): a fixed GET on
    one kept-alive socket per thread to BENCH_CANARY_URL, the answer relayed after a minimal
    parse, with no checks at all. What any forwarding WSGI app under gunicorn costs at least:
    a second blocking round trip per request in a threaded worker."""
    import socket
    import threading
    from urllib.parse import urlsplit

    canary = urlsplit(os.environ["BENCH_CANARY_URL"])
    address = (canary.hostname or "127.0.0.1", canary.port or 80)
    request = b"GET / HTTP/1.1\r\nHost: canary\r\n\r\n"
    local = threading.local()

    def receive(sock: socket.socket) -> bytes:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("the canary closed the connection")
        return data

    def exchange() -> tuple[str, list[tuple[str, str]], bytes]:
        sock = getattr(local, "sock", None)
        if sock is None:
            sock = local.sock = socket.create_connection(address)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(request)
        data = receive(sock)
        while b"\r\n\r\n" not in data:
            data += receive(sock)
        head, _, body = data.partition(b"\r\n\r\n")
        status, *lines = head.decode("latin-1").split("\r\n")
        headers = [(name, value) for name, _, value in (line.partition(": ") for line in lines)]
        length = next(int(value) for name, value in headers if name == "content-length")
        while len(body) < length:
            body += receive(sock)
        return status[9:], headers, body

    def app(environ: Any, start_response: Any) -> list[bytes]:
        try:
            status, headers, body = exchange()
        except OSError:  # the canary closed an idle connection: once more, on a new one
            local.sock.close()
            local.sock = None
            status, headers, body = exchange()
        start_response(status, [(n, v) for n, v in headers if n != "transfer-encoding"])
        return [body]

    return app
