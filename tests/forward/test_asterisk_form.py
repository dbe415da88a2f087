"""``OPTIONS *`` (RFC 9112 §3.2.4) reaches the canary as ``*``, whatever the upstream's path
prefix, and any other method with the asterisk form is refused: it names no resource, so
forwarding it as some path (``/prefix*``) would ask the canary about something else."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from tests.support.routers import start_router
from tests.support.scripted import Upstream, read_head
from tests.support.servers import AppServer, raw_request, wait_until


class RecordingCanary(Upstream):
    """Answers every request 200 with an Allow header (and closes), keeping each request
    line in ``lines``."""

    def __init__(self) -> None:
        self.lines: list[bytes] = []  # before the server thread starts
        super().__init__(self._answer)

    def _answer(self, conn: socket.socket, server: Upstream) -> None:
        head = read_head(conn, bytearray())
        if head:
            self.lines.append(head.split(b"\r\n", 1)[0])
            conn.sendall(b"HTTP/1.1 200 OK\r\nallow: GET, OPTIONS\r\ncontent-length: 0\r\n"
                         b"connection: close\r\n\r\n")  # fmt: skip


@pytest.fixture
def setup() -> Iterator[tuple[RecordingCanary, AppServer]]:
    canary = RecordingCanary()
    url = f"http://127.0.0.1:{canary.port}/prefix"
    router = start_router("memory://", upstreams={"canary": url},
                          default_rules=[{"id": "all", "when": {"not": {"ip": ["0.0.0.0/32"]}}}])  # fmt: skip
    try:
        yield canary, router
    finally:
        router.cleanup()
        canary.close()


def test_options_asterisk_goes_as_is_and_get_asterisk_is_refused(
    setup: tuple[RecordingCanary, AppServer],
) -> None:
    canary, router = setup
    head, _ = raw_request(router.port, b"OPTIONS * HTTP/1.1\r\nHost: app.test\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    assert b"\r\nallow: GET, OPTIONS\r\n" in head
    wait_until(lambda: canary.lines, timeout=5, what="the canary's request")
    assert canary.lines == [b"OPTIONS * HTTP/1.1"]
    head, _ = raw_request(router.port, b"GET * HTTP/1.1\r\nHost: app.test\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400"), head
    assert canary.lines == [b"OPTIONS * HTTP/1.1"]  # nothing more reached it
