"""An upstream that answers before it has the whole request body (a 401 to an upload it
will not take, a 413) while the client is slow to send the rest, or has stopped: the client
gets that answer, not our 408 once the write timeout has passed. The upstream connection is
not reused (its body was left unfinished). Real uvicorn routers, both HTTP parsers."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from tests.support.routers import start_canary_router
from tests.support.scripted import Upstream, read_head
from tests.support.servers import AppServer, raw_request

pytestmark = pytest.mark.slow

# Long enough that a 408 could not come first on a loaded machine; the test never waits it.
WRITE_TIMEOUT = 30
REFUSAL = b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 12\r\n\r\nno, thanks\r\n"


def refuses_at_once(conn: socket.socket, server: Upstream) -> None:
    """Answers 401 as soon as a request head is in, without reading its body."""
    buffer = bytearray()
    while head := read_head(conn, buffer):
        server.heads.append(head)
        conn.sendall(REFUSAL)


@pytest.fixture(scope="module")
def canary() -> Iterator[Upstream]:
    server = Upstream(refuses_at_once)
    yield server
    server.close()


@pytest.fixture(scope="module", params=["h11", "httptools"])
def router(request: pytest.FixtureRequest, canary: Upstream) -> Iterator[AppServer]:
    server = start_canary_router(
        canary.url, request.param,
        timeout={"connect": 2, "read": 10, "write": WRITE_TIMEOUT, "pool": 2},
    )  # fmt: skip
    yield server
    server.cleanup()


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_an_answer_before_the_body_reaches_a_stalled_client(
    router: AppServer, canary: Upstream, framing: str
) -> None:
    head = b"POST /upload HTTP/1.1\r\nHost: app.test\r\n"
    if framing == "content-length":
        request = head + b"Content-Length: 1000\r\n\r\n" + b"x" * 10
    else:
        request = head + b"Transfer-Encoding: chunked\r\n\r\na\r\n" + b"x" * 10 + b"\r\n"
    # Sent, and then nothing more: the client stalls mid-upload. Before, the answer waited
    # for the rest of the body, and raw_request gave up (10 s) long before our 408 (30 s).
    head, body = raw_request(router.port, request)
    assert head.startswith(b"HTTP/1.1 401 Unauthorized"), head
    assert body == b"no, thanks\r\n"
