"""A canary's 304 (or 204) that carries a Content-Length, forwarded through each router.

RFC 9110 lets a 304 say, in Content-Length, how long the representation it stands for is
(§8.6) while having no body at all. Handed on as it came, uvicorn's httptools protocol
waits for that many body bytes, raises "Response content shorter than Content-Length" and
drops the client's connection; the router drops the header on 204 and 304 instead (it
describes no bytes on the wire)."""

from __future__ import annotations

import socket
import sys
from collections.abc import Iterator

import pytest

from tests.support.routers import start_router
from tests.support.scripted import Upstream, declared_length, read_exactly, read_head
from tests.support.servers import AppServer, uvicorn_command

pytestmark = pytest.mark.slow

FORCE = b"X-Canary-Force: always\r\n"
ANSWERS = {
    b"/not-modified": b'HTTP/1.1 304 Not Modified\r\nETag: "v2"\r\nContent-Length: 1234\r\n\r\n',
    b"/no-content": b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n",
}


def canary(conn: socket.socket, upstream: Upstream) -> None:
    buffer = bytearray()
    while head := read_head(conn, buffer):
        read_exactly(conn, buffer, declared_length(head))
        path = head.split(b" ")[1]
        conn.sendall(ANSWERS.get(path, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"))


def gunicorn() -> list[str]:
    return [sys.executable, "-m", "gunicorn", "-w", "1", "-k", "gthread", "--threads", "2",
            "-b", "127.0.0.1:{port}", "--log-level", "warning",
            "tests.support.wsgi_apps:make_app()"]  # fmt: skip


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    server = Upstream(canary)
    yield server
    server.close()


@pytest.fixture(scope="module", params=["uvicorn-httptools", "uvicorn-h11", "gunicorn-gthread"])
def router(request: pytest.FixtureRequest, upstream: Upstream) -> Iterator[AppServer]:
    server, _, flavour = request.param.partition("-")
    if server == "uvicorn":
        command = uvicorn_command(
            "tests.support.apps:make_router_app", "--http", flavour, factory=True
        )
    else:
        command = gunicorn()
    started = start_router(
        "memory://", command=command, upstreams={"canary": upstream.url},
        force_header="X-Canary-Force",
    )  # fmt: skip
    yield started
    started.cleanup()


def read_response(sock: socket.socket, buffer: bytearray) -> bytes:
    """One response head (these answers have no body, or the 2-byte 'ok')."""
    head = read_head(sock, buffer)
    assert head, "the router closed the connection"
    if head.startswith(b"HTTP/1.1 200"):
        read_exactly(sock, buffer, declared_length(head))
    return head


@pytest.mark.parametrize("path", [b"/not-modified", b"/no-content"])
def test_a_bodiless_answer_with_a_length_keeps_the_connection(
    router: AppServer, path: bytes
) -> None:
    with socket.create_connection(("127.0.0.1", router.port), timeout=10) as sock:
        buffer = bytearray()
        sock.sendall(b"GET %s HTTP/1.1\r\nHost: shop\r\n%s\r\n" % (path, FORCE))
        head = read_response(sock, buffer).lower()
        assert head.split(b"\r\n")[0].split(b" ")[1] in (b"304", b"204")
        assert b"content-length: 1234" not in head
        # The same connection carries the next request: the router neither waited for body
        # bytes that never come nor dropped the connection.
        sock.sendall(b"GET /next HTTP/1.1\r\nHost: shop\r\n%s\r\n" % FORCE)
        assert read_response(sock, buffer).startswith(b"HTTP/1.1 200")
        assert buffer == b""
