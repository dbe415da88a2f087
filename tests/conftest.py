from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Iterator

import pytest

from tests.support.contract import Flavoured, open_store
from tests.support.servers import Cluster, RedisServer, Sentinel, redis_server

pytest_plugins = ("tests.support.routers", "tests.support.faultlog")

# Servers and the command line run as subprocesses, hundreds of them: let them keep compiled
# bytecode, as a default Python does, rather than compile canary_mw again in each one (about
# 0.2 s of CPU a process) where the environment says not to write it.
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def redis_srv() -> Iterator[RedisServer]:
    """A private redis-server shared by the session; tests isolate themselves by prefix."""
    with redis_server() as server:
        yield server


@pytest.fixture
def fresh_redis() -> Iterator[RedisServer]:
    """A private redis-server for one test (fault tests kill and pause it)."""
    with redis_server(persistent=True) as server:
        yield server


@pytest.fixture(scope="session")
def sentinel() -> Iterator[Sentinel]:
    setup = Sentinel()
    try:
        yield setup
    finally:
        setup.cleanup()


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    setup = Cluster()
    try:
        yield setup
    finally:
        setup.cleanup()


_prefix_counter = iter(range(1_000_000))


@pytest.fixture
def prefix(request: pytest.FixtureRequest) -> str:
    """A key prefix unique to the test, so tests sharing a server never see each other."""
    return f"{{t{next(_prefix_counter)}}}:"  # a hash tag: one slot in Redis Cluster


_memory_names = iter(range(1_000_000))


@pytest.fixture(params=["memory", "redis", "sentinel", "cluster"])
def backend_url(request: pytest.FixtureRequest) -> str:
    """Each store backend in turn: the contract suites run over all of them."""
    if request.param == "memory":
        return f"memory://backend-{next(_memory_names)}"
    server = request.getfixturevalue({"redis": "redis_srv"}.get(request.param, request.param))
    return str(server.url)


@pytest.fixture(params=["sync", "async"])
async def store(
    request: pytest.FixtureRequest, backend_url: str, prefix: str
) -> AsyncIterator[Flavoured]:
    """A blocking or an asyncio store on ``backend_url``, behind one awaitable interface."""
    handle = open_store(request.param, backend_url, prefix)
    yield handle
    await handle.close()


@pytest.fixture
def store_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.WARNING, logger="canary_mw")
    return caplog
