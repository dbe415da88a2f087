"""Helpers to drive both engines from one async test."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Awaitable, Callable
from typing import Any

from canary_mw import ASGIFacts, Decision
from canary_mw.engine import AsyncEngine, Engine
from canary_mw.stores import async_store_from_url, store_from_url
from tests.support.servers import redis_binary


def facts(ip: str = "198.51.100.1", cookies: str | None = None) -> ASGIFacts:
    headers = [(b"cookie", cookies.encode())] if cookies else []
    return ASGIFacts({"type": "http", "headers": headers, "client": (ip, 1000)})


#: The lookup budget tests get unless they are about the budget itself: the library's 50 ms
#: default is a production bound, and a loaded CI machine's first round trip on a new
#: connection can miss it, which reads as "stable" where a test expects a looked-up answer.
PATIENT_LOOKUP = 5.0


class Driven:
    """An Engine or AsyncEngine behind one awaitable interface. Its lookups wait up to
    ``lookup_timeout`` (default PATIENT_LOOKUP; pass DEFAULT_LOOKUP_TIMEOUT to test the
    production budget)."""

    def __init__(
        self,
        flavour: str,
        url: str,
        prefix: str,
        *,
        lookup_timeout: float = PATIENT_LOOKUP,
        **options: Any,
    ):
        self.flavour = flavour
        if flavour == "sync":
            store = store_from_url(url, prefix=prefix, lookup_timeout=lookup_timeout)
            self.engine: Engine | AsyncEngine = Engine(store, **options)
        else:
            aio_store = async_store_from_url(url, prefix=prefix, lookup_timeout=lookup_timeout)
            self.engine = AsyncEngine(aio_store, **options)

    async def decide(self, request: ASGIFacts) -> Decision:
        if isinstance(self.engine, Engine):
            return self.engine.decide(request)
        return await self.engine.decide(request)

    async def start(self) -> bool:
        if isinstance(self.engine, Engine):
            return self.engine.start(wait=5)
        return await self.engine.start(wait=5)

    async def close(self) -> None:
        if isinstance(self.engine, Engine):
            self.engine.close()
            self.engine.store.close()
        else:
            await self.engine.aclose()
            await self.engine.store.aclose()


async def eventually(check: Callable[[], Awaitable[bool]], *, timeout: float, what: str) -> float:
    """Await ``check`` until it holds; returns the seconds it took, fails after ``timeout``."""
    start = time.monotonic()
    while not await check():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"{what}: not true after {timeout}s")
        await asyncio.sleep(0.005)
    return time.monotonic() - start


def redis_cli(port: int, *args: str, cluster: bool = False) -> str:
    """Run the real redis-cli, as an operator would."""
    command = [redis_binary("redis-cli"), "-p", str(port), *(["-c"] if cluster else []), *args]
    return subprocess.run(command, check=True, capture_output=True, text=True, timeout=10).stdout
