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


#: Rules that send every request to the canary.
ALL_TO_CANARY = [{"id": "all", "when": {"path_prefix": "/"}, "target": "canary"}]


def start_canary_router(canary_url: str, parser: str, **options: Any) -> AppServer:
    """A router under uvicorn with the HTTP parser ``parser`` ("h11" or "httptools"),
    sending every request to ``canary_url``; ``options`` are more router options."""
    command = uvicorn_command("tests.support.apps:make_router_app", "--http", parser, factory=True)
    return start_router("memory://", command, canary_url=canary_url, default_rules=ALL_TO_CANARY,
                        **options)  # fmt: skip


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
