"""The examples' README walkthrough, automated with real processes: each example app run
twice (canary and stable), a private Redis, and the redis-cli commands the README gives."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.engines import redis_cli
from tests.routers import client_from
from tests.servers import AppServer, RedisServer, redis_server, wait_until

pytestmark = pytest.mark.slow

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
COMMANDS = {
    "flask_app": (
        [sys.executable, "-m", "flask", "--app", "app:create_app", "run", "--port", "{port}"],
        [sys.executable, "-m", "gunicorn", "-w", "2", "-b", "127.0.0.1:{port}", "app:create_app()"],
    ),
    "fastapi_app": (
        [sys.executable, "-m", "uvicorn", "--factory", "app:create_app", "--port", "{port}"],
        [sys.executable, "-m", "uvicorn", "--factory", "app:create_app", "--port", "{port}",
         "--workers", "2"],
    ),
}  # fmt: skip


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    with redis_server() as server:
        yield server


def start_in(example: str, command: list[str], env: dict[str, str]) -> AppServer:
    server = AppServer(command, env=env)
    server.env["PYTHONPATH"] = str(EXAMPLES / example)
    return server.start()


@pytest.mark.parametrize("example", list(COMMANDS))
def test_readme_walkthrough(example: str, redis: RedisServer) -> None:
    canary_cmd, stable_cmd = COMMANDS[example]
    canary = start_in(example, canary_cmd, {"MESSAGE": "This is version 2"})
    stable = start_in(example, stable_cmd, {"CANARY_URL": canary.url, "CANARY_STORE": redis.url})
    try:
        url = f"{stable.url}/"
        with client_from("127.0.0.1") as client:

            def answer(**headers: str) -> str:
                return client.get(url, headers=headers).text

            def settles(expected: str, what: str, **headers: str) -> None:
                # Two workers poll Redis independently: wait until ten answers in a row agree
                # (new connections each time, so both workers take part), within 1 s.
                version = f"This is version {expected}\n"
                wait_until(lambda: all(answer(**headers) == version for _ in range(10)),
                           timeout=1, what=what)  # fmt: skip

            settles("1", "stable at first")
            redis_cli(redis.port, "SADD", "canary:set:ips", "127.0.0.1")
            settles("2", "ip → v2")
            redis_cli(redis.port, "SREM", "canary:set:ips", "127.0.0.1")
            settles("1", "ip → v1")
            settles("1", "alice on stable", Cookie="canary_user=alice")
            redis_cli(redis.port, "SADD", "canary:set:users", "alice")
            settles("2", "user → v2", Cookie="canary_user=alice")
            settles("2", "user by header → v2", **{"X-Canary-User": "alice"})
            redis_cli(redis.port, "HSET", "canary:config", "mode", "off")
            settles("1", "kill switch", Cookie="canary_user=alice")
    finally:
        redis_cli(redis.port, "DEL", "canary:set:ips", "canary:set:users", "canary:config")
        stable.cleanup()
        canary.cleanup()
