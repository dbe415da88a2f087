"""CanaryRouter under uvicorn for tests/forward/test_tiny_chunks.py, with what the test measures:
per canary response, the ASGI body messages the router sent, the reads its upstream
connections made meanwhile, and how often two body messages went out without the event
loop running anything else in between. ``GET /counts`` answers them (JSON, by path)."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from canary_mw import CanaryRouter
from canary_mw.forward.connection import HTTP11Connection

READS = [0]
_data_received = HTTP11Connection.data_received


def _counted_data_received(self: HTTP11Connection, data: bytes) -> None:
    READS[0] += 1
    _data_received(self, data)


# The only way to count reads from outside the transport: wrap the protocol's callback.
HTTP11Connection.data_received = _counted_data_received  # type: ignore[method-assign]


async def stable(request: Request) -> PlainTextResponse:
    return PlainTextResponse("stable\n")


class Measured:
    """Outermost ASGI layer: counts what each request's response was sent as."""

    def __init__(self, app: Any):
        self.app = app
        self.counts: dict[str, dict[str, int]] = {}

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any], send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["path"] == "/counts":
            body = json.dumps(self.counts).encode()
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": body})
            return
        loop = asyncio.get_running_loop()
        turns = [0]
        running = [True]

        def turn() -> None:  # runs once per loop iteration while the request lasts
            if running[0]:
                turns[0] += 1
                loop.call_soon(turn)

        turn()
        reads_before = READS[0]
        counts = {"messages": 0, "bytes": 0, "no_turn_between": 0}
        last_turn: list[int | None] = [None]

        async def counted(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.body" and message.get("body"):
                counts["messages"] += 1
                counts["bytes"] += len(message["body"])
                if last_turn[0] == turns[0]:
                    counts["no_turn_between"] += 1
                last_turn[0] = turns[0]
            await send(message)

        try:
            await self.app(scope, receive, counted)
        finally:
            running[0] = False
            counts["reads"] = READS[0] - reads_before
            self.counts[scope["path"]] = counts


def make_app() -> Any:
    options = json.loads(os.environ["CANARY_TEST_OPTIONS"])
    app = Starlette(routes=[Route("/{path:path}", stable)])
    app.add_middleware(CanaryRouter, **options)
    return Measured(app)
