"""Slow clients cannot hold the canary's pooled connections (red team F11): an upload whose
body never comes takes no connection, one that stalls gets 408 after the write timeout, and a
client that stops reading is given up after it. Real uvicorn routers (both HTTP parsers) with
a pool of two connections; the victim is another user's canary request, which must get its
answer, not "503 too many requests to the canary upstream". CanaryWSGI under gunicorn gthread
only has the first guarantee (PEP 3333 gives no way to wait for the client with a timeout)."""

from __future__ import annotations

import json
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.routers import ALL_TO_CANARY, canary_server, start_canary_router  # noqa: F401 (a fixture)
from tests.support.servers import AppServer, wait_until

pytestmark = pytest.mark.slow

SLOW_CLIENTS = 2  # as many as the pool has connections
WRITE_TIMEOUT = 2


def _router(canary: AppServer, parser: str, *, pool_wait: float) -> AppServer:
    return start_canary_router(
        canary.url, parser,
        limits={"max_connections": SLOW_CLIENTS, "max_keepalive_connections": SLOW_CLIENTS},
        timeout={"connect": 2, "read": 10, "write": WRITE_TIMEOUT, "pool": pool_wait},
    )  # fmt: skip


def _gunicorn(canary: AppServer, *, pool_wait: float) -> AppServer:
    # More threads than pool connections: the pool, not the threads, is what is measured.
    command = [sys.executable, "-m", "gunicorn", "-w", "1", "-k", "gthread", "--threads", "6",
               "-b", "127.0.0.1:{port}", "--log-level", "warning", "tests.support.wsgi_apps:make_app()"]  # fmt: skip
    options = {
        "store": "memory://", "canary_url": canary.url, "default_rules": ALL_TO_CANARY,
        "limits": {"max_connections": SLOW_CLIENTS, "max_keepalive_connections": SLOW_CLIENTS},
        "timeout": {"connect": 2, "read": 10, "write": WRITE_TIMEOUT, "pool": pool_wait},
    }  # fmt: skip
    return AppServer(command, env={"CANARY_TEST_OPTIONS": json.dumps(options)}).start()


def _unread(router: AppServer, client: socket.socket) -> int | None:
    """Bytes from ``client`` still waiting in the router's socket (/proc/net/tcp rx_queue)."""
    port = client.getsockname()[1]
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote = fields[1], fields[2]
        if int(local.split(":")[1], 16) == router.port and int(remote.split(":")[1], 16) == port:
            return int(fields[4].split(":")[1], 16)
    return None


def _send_head(router: AppServer, head: bytes, *, rcvbuf: int | None = None) -> socket.socket:
    client = socket.socket()
    if rcvbuf is not None:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    client.connect(("127.0.0.1", router.port))
    client.sendall(head)
    # The router's server has read it, so the request is in the app before the victim's.
    wait_until(lambda: _unread(router, client) == 0, timeout=10, what="the router to read")
    return client


def _victim(router: AppServer) -> httpx.Response:
    with httpx.Client(timeout=30) as client:
        return client.get(f"{router.url}/victim")


@pytest.fixture(params=["h11", "httptools", "gunicorn"])
def any_router(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(params=["h11", "httptools"])
def parser(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def slow() -> Iterator[list[socket.socket]]:
    sockets: list[socket.socket] = []
    yield sockets
    for client in sockets:
        client.close()


UPLOAD = b"POST /echo HTTP/1.1\r\nHost: shop.example\r\nContent-Length: 100000\r\n\r\n"


def test_an_upload_whose_body_never_comes_takes_no_connection(
    canary_server: AppServer,  # noqa: F811
    any_router: str,
    slow: list[socket.socket],
) -> None:
    # The pool wait is shorter than the write timeout: the victim can only be answered if the
    # slow uploads never took a connection at all.
    if any_router == "gunicorn":
        router = _gunicorn(canary_server, pool_wait=0.5)
    else:
        router = _router(canary_server, any_router, pool_wait=0.5)
    try:
        slow.extend(_send_head(router, UPLOAD) for _ in range(SLOW_CLIENTS))
        response = _victim(router)
        assert response.status_code == 200, response.text
        assert response.headers.get("x-canary-version") == "canary"
    finally:
        router.cleanup()


def test_a_stalled_upload_gets_408_and_gives_its_connection_back(
    canary_server: AppServer,  # noqa: F811
    parser: str,
    slow: list[socket.socket],
) -> None:
    router = _router(canary_server, parser, pool_wait=0.5)
    try:
        slow.extend(_send_head(router, UPLOAD + b"x" * 10) for _ in range(SLOW_CLIENTS))
        for client in slow:  # far below "never"; the write timeout is 2 s
            client.settimeout(WRITE_TIMEOUT + 8)
            assert client.recv(65536).startswith(b"HTTP/1.1 408 "), "no 408 for a stalled upload"
        response = _victim(router)
        assert response.status_code == 200, response.text
    finally:
        router.cleanup()


def _state(canary: AppServer, ident: str) -> str | None:
    reply = httpx.get(f"{canary.url}/status", params={"id": ident}, timeout=5)
    state: str | None = json.loads(reply.text)["state"]
    return state


def test_a_client_that_stops_reading_is_given_up(
    canary_server: AppServer,  # noqa: F811
    parser: str,
    slow: list[socket.socket],
) -> None:
    # The victim may wait for a connection longer than the write timeout: one comes back once
    # a reader is given up (before the fix it never did, and the victim got 503).
    router = _router(canary_server, parser, pool_wait=WRITE_TIMEOUT + 6)
    try:
        idents = [f"reader-{parser}-{n}-{router.port}" for n in range(SLOW_CLIENTS)]
        for ident in idents:
            head = (
                f"GET /download?size=100000000&pace=0.01&id={ident} HTTP/1.1\r\n"
                "Host: shop.example\r\n\r\n"
            ).encode()
            # paced, so that the canary notices the abort (it would run past an aborted send)
            slow.append(_send_head(router, head, rcvbuf=4096))  # and never read
        for ident in idents:
            wait_until(lambda i=ident: _state(canary_server, i) == "streaming", timeout=10)
        response = _victim(router)
        assert response.status_code == 200, response.text
        for ident in idents:  # the router closed the readers' canary connections
            wait_until(lambda i=ident: _state(canary_server, i) == "aborted", timeout=10)
    finally:
        router.cleanup()
