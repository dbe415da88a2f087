"""Apps for the rollout tests (tests/rollout/test_rollout_processes.py): a canary whose failure
rate and latency the test sets at run time (``POST /_set?fail=0.2&delay=0.1``), and a router
(CanaryRouter over a stable app) configured from the environment (STORE_URL, CANARY_URL)."""

from __future__ import annotations

import asyncio
import os
import random
from typing import Any
from urllib.parse import parse_qs

from canary_mw import CanaryRouter

_behaviour = {"fail": 0.0, "delay": 0.0}


async def _lifespan(receive: Any, send: Any) -> None:
    while (await receive())["type"] != "lifespan.shutdown":
        await send({"type": "lifespan.startup.complete"})
    await send({"type": "lifespan.shutdown.complete"})


async def _answer(send: Any, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"text/plain"), (b"content-length", b"%d" % len(body))]})  # fmt: skip
    await send({"type": "http.response.body", "body": body})


async def canary_app(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    if scope["path"] == "/_set":
        query = parse_qs(scope["query_string"].decode())
        for name in _behaviour:
            if name in query:
                _behaviour[name] = float(query[name][0])
        await _answer(send, 200, b"ok\n")
        return
    # Like stable, 10-20 ms of work (a service answering in microseconds would make the
    # network hop to the canary its whole latency), plus what the test adds.
    await asyncio.sleep(random.uniform(0.01, 0.02) + _behaviour["delay"])
    failed = random.random() < _behaviour["fail"]
    await _answer(send, 500 if failed else 200, b"canary\n")


async def stable_app(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    await asyncio.sleep(random.uniform(0.01, 0.02))
    await _answer(send, 200, b"stable\n")


def router_app() -> Any:
    return CanaryRouter(
        stable_app, store=os.environ["STORE_URL"], canary_url=os.environ["CANARY_URL"]
    )


def sticky_router_app() -> Any:
    """The router, placing users with a signed sticky cookie (STICKY_SECRET, shared by every
    router of the test, as it is by every instance of a deployment)."""
    return CanaryRouter(
        stable_app, store=os.environ["STORE_URL"], canary_url=os.environ["CANARY_URL"],
        sticky_cookie="canary_mw_version", sticky_secret=os.environ["STICKY_SECRET"],
    )  # fmt: skip
