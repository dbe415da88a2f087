"""A client that leaves after the canary's response head arrived, before any body byte: the
router closes its upstream connection at once, not after the read timeout (30 s here).
Real uvicorn routers; the canary is a raw socket that sends a head and then stalls."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.routers import start_router
from tests.support.servers import AppServer, wait_until

pytestmark = pytest.mark.slow

ALL_TO_CANARY = [{"id": "all", "when": {"path_prefix": "/"}, "target": "canary"}]
HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 100\r\n\r\n"
READ_TIMEOUT = 30
CLOSED_WITHIN = 5  # generous; what matters is that it is far below READ_TIMEOUT


class StallingCanary:
    """Accepts one connection at a time, reads the request head, sends HEAD, then waits to
    see the router close the connection (EOF) or CLOSED_WITHIN seconds pass."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.head_sent = threading.Event()
        self.router_port = 0
        self.outcome: str | None = None
        self.done = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        connection, peer = self.listener.accept()
        with connection:
            self.router_port = peer[1]
            data = b""
            while b"\r\n\r\n" not in data:
                data += connection.recv(65536)
            connection.sendall(HEAD)
            self.head_sent.set()
            connection.settimeout(CLOSED_WITHIN)
            try:
                self.outcome = "closed" if connection.recv(65536) == b"" else "data"
            except TimeoutError:
                self.outcome = "still open"
            except ConnectionResetError:
                self.outcome = "closed"
        self.done.set()

    def close(self) -> None:
        self.listener.close()


def unread_by_router(canary: StallingCanary) -> int | None:
    """Bytes waiting in the router's socket to the canary, not yet read by the router process
    (the rx_queue column of /proc/net/tcp); None until that socket is listed."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote = fields[1], fields[2]
        if (
            int(local.split(":")[1], 16) == canary.router_port
            and int(remote.split(":")[1], 16) == canary.port
        ):
            return int(fields[4].split(":")[1], 16)
    return None


@pytest.fixture
def canary() -> Iterator[StallingCanary]:
    server = StallingCanary()
    yield server
    server.close()


@pytest.mark.parametrize("transport", ["default", "httpx", "aiohttp", "httpx2"])
def test_client_leaving_after_the_head_closes_the_upstream(
    canary: StallingCanary, transport: str
) -> None:
    router: AppServer = start_router(
        "memory://",
        canary_url=f"http://127.0.0.1:{canary.port}",
        default_rules=ALL_TO_CANARY,
        timeout={"connect": 5, "read": READ_TIMEOUT, "write": 30, "pool": 5},
        transport=transport,
    )
    try:
        with socket.create_connection(("127.0.0.1", router.port)) as client:
            client.sendall(b"GET /slow HTTP/1.1\r\nHost: shop.example\r\n\r\n")
            assert canary.head_sent.wait(10), "the request never reached the canary"
            # The router has read the head (nothing left in its socket): it now waits for the
            # first body byte. Only then does the client leave.
            wait_until(
                lambda: unread_by_router(canary) == 0,
                timeout=10,
                what="the router to read the canary's head",
            )
        assert canary.done.wait(CLOSED_WITHIN + 5)
        assert canary.outcome == "closed", (
            f"the router kept the canary connection {canary.outcome!r} for {CLOSED_WITHIN} s "
            "after its client left (it would be held until the read timeout)"
        )
    finally:
        router.cleanup()
