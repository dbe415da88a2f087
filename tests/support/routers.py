"""Fixtures that run the stable app behind CanaryRouter and the canary app under uvicorn."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.support.servers import AppServer, RedisServer, free_port, uvicorn_command

TRUSTED_PROXY = "127.0.0.5"


def start_router(store: str, command: list[str] | None = None, **options: Any) -> AppServer:
    env = {"CANARY_TEST_OPTIONS": json.dumps({"store": store, **options})}
    command = command or uvicorn_command("tests.support.apps:make_router_app", factory=True)
    return AppServer(command, env=env).start()


def client_from(address: str, **kwargs: Any) -> httpx.Client:
    """An HTTP client whose connections come from ``address`` (any 127.x works on Linux)."""
    transport = httpx.HTTPTransport(local_address=address)
    return httpx.Client(transport=transport, timeout=30, **kwargs)


@pytest.fixture(scope="module")
def canary_server() -> Iterator[AppServer]:
    server = AppServer(uvicorn_command("tests.support.apps:canary_app")).start()
    yield server
    server.cleanup()


@pytest.fixture(scope="module")
def router_prefix() -> str:
    return f"asgi{free_port()}:"


@pytest.fixture(scope="module")
def router(
    redis_srv: RedisServer, canary_server: AppServer, router_prefix: str
) -> Iterator[AppServer]:
    server = start_router(
        f"{redis_srv.url}?prefix={router_prefix}",
        upstreams={"canary": canary_server.url, "dead": f"http://127.0.0.1:{free_port()}"},
        trusted_proxies=[TRUSTED_PROXY],
        force_header="X-Canary-Force",
        force_cookie="canary_force",
        timeout={"connect": 2, "read": 3, "write": 30, "pool": 1},
    )
    yield server
    server.cleanup()
