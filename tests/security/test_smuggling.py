"""The red-team findings of issue 11 against real processes, as they were found: a real
CanaryRouter (uvicorn) or CanaryWSGI (gunicorn) in front of a real or scripted canary.

1. request-body desync: an early 404 left the upstream owed body bytes on a pooled
   connection, and the next request's body smuggled requests to the canary;
3. a body-less POST on a reused connection that the canary closed was executed again on
   every idle connection;
4. CanaryWSGI (httpx's blocking transport) took bytes after a response as the next user's
   response;
6. a response head without end took the router's memory before its limit was checked.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
from collections.abc import Callable, Iterator

import httpx
import pytest

from tests.support.routers import start_router
from tests.support.scripted import Handler, Upstream, answer, read_body, read_head, target, wait_for
from tests.support.servers import AppServer, peak_rss_kib, raw_request, uvicorn_command, wait_until

pytestmark = pytest.mark.slow

FORCE = b"X-Canary-Force: always\r\n"
TIMEOUT = {"connect": 2, "read": 5, "write": 5, "pool": 1}


def read_response(sock: socket.socket) -> tuple[bytes, bytes]:
    """One response with a Content-Length from a client socket: (head, body)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed before a response head: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))  # fmt: skip
    while len(body) < length:
        body += sock.recv(65536)
    return head, body


def ask(port: int, path: bytes) -> tuple[bytes, bytes]:
    """GET ``path`` forced to the canary, on a connection of its own: (head, body)."""
    request = b"GET %s HTTP/1.1\r\nHost: shop\r\n%sConnection: close\r\n\r\n" % (path, FORCE)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return head, body


@pytest.fixture
def scripted_upstream() -> Iterator[Callable[[Handler], Upstream]]:
    started: list[Upstream] = []

    def start(handler: Handler) -> Upstream:
        started.append(Upstream(handler))
        return started[-1]

    yield start
    for server in started:
        server.close()


@pytest.fixture
def servers() -> Iterator[list[AppServer]]:
    started: list[AppServer] = []
    yield started
    for server in started:
        server.cleanup()


def asgi_router(servers: list[AppServer], canary_url: str) -> AppServer:
    router = start_router("memory://", upstreams={"canary": canary_url},
                          force_header="X-Canary-Force", timeout=TIMEOUT)  # fmt: skip
    servers.append(router)
    return router


# -- finding 1 -----------------------------------------------------------------------------
def test_an_early_404_does_not_let_the_next_body_smuggle_requests(servers) -> None:
    canary = AppServer(uvicorn_command("tests.support.smuggling_apps:app"))
    servers.append(canary.start())
    router = asgi_router(servers, canary.url)

    def seen() -> list[list[str]]:
        return httpx.get(canary.url + "/seen", timeout=5).json()  # type: ignore[no-any-return]

    with socket.create_connection(("127.0.0.1", router.port), timeout=10) as attacker:
        attacker.sendall(b"POST /upload HTTP/1.1\r\nHost: shop\r\n" + FORCE
                         + b"Content-Length: 1000\r\n\r\n" + b"x" * 20)  # fmt: skip
        wait_until(lambda: ["POST", "/upload"] in seen(), timeout=10, what="the canary's 404")
        attacker.sendall(b"y" * 980)  # arrives after the canary's answer did
        head, _ = read_response(attacker)
        assert head.startswith(b"HTTP/1.1 404")
        # A body that, read as the rest of the first one, ends in a request of our choosing.
        smuggled = b"\r\n" * 700 + b"GET /smuggled HTTP/1.1\r\nHost: shop\r\n\r\n"
        attacker.sendall(b"POST /upload HTTP/1.1\r\nHost: shop\r\n" + FORCE
                         + b"Content-Length: %d\r\n\r\n" % len(smuggled) + smuggled)  # fmt: skip
        read_response(attacker)
    head, body = raw_request(router.port, b"GET /me HTTP/1.1\r\nHost: shop\r\n" + FORCE
                             + b"X-User: bob\r\n\r\n")  # fmt: skip
    assert body == b"hello bob"
    assert b"session=bob" in head
    assert ["GET", "/smuggled"] not in seen()


# -- finding 3 -----------------------------------------------------------------------------
def test_a_body_less_post_is_executed_once_and_answered_502(scripted_upstream, servers) -> None:
    warm = 3
    barrier = threading.Barrier(warm, timeout=10)

    def process_then_close(conn: socket.socket, srv: Upstream) -> None:
        buffer = bytearray()
        while head := read_head(conn, buffer):
            srv.heads.append(head)
            if b"/warm" not in head:
                return  # processes it (the payment is made), then closes unanswered
            barrier.wait()
            conn.sendall(answer())

    upstream = scripted_upstream(process_then_close)
    router = asgi_router(servers, upstream.url)
    threads = [threading.Thread(target=raw_request, args=(router.port, b"GET /warm HTTP/1.1\r\n"
               b"Host: shop\r\n" + FORCE + b"\r\n")) for _ in range(warm)]  # fmt: skip
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(15)
    assert upstream.accepted == warm  # the router now holds that many idle connections
    head, body = raw_request(router.port, b"POST /pay HTTP/1.1\r\nHost: shop\r\n" + FORCE + b"\r\n")
    assert head.startswith(b"HTTP/1.1 502")
    # Reached, and it closed unanswered: not "could not be reached", which would tell the
    # client (and whoever reads the page) that the payment surely did not happen.
    assert body == b"Bad Gateway: the canary upstream sent no valid response.\n"
    assert [target(head) for head in upstream.heads].count(b"/pay") == 1


# -- finding 4 -----------------------------------------------------------------------------
def page(path: bytes) -> bytes:
    return answer(b"the page of " + path, b"set-cookie: session=" + path[1:] + b"\r\n")


HOSTILE = {
    "response-twice": lambda path: page(path) + page(path),
    "204-with-body": lambda path: b"HTTP/1.1 204 No Content\r\n\r\n" + page(path),
    "body-longer-than-length": lambda path: (
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok" + page(path)
    ),
}


@pytest.mark.parametrize("reply", HOSTILE.values(), ids=HOSTILE.keys())
def test_canary_wsgi_never_hands_one_users_response_to_the_next(
    scripted_upstream, servers, reply
) -> None:
    def hostile(conn: socket.socket, srv: Upstream) -> None:
        buffer = bytearray()
        while head := read_head(conn, buffer):
            srv.heads.append(head)
            read_body(conn, buffer, head)  # CanaryWSGI sends even a GET chunked under gunicorn
            conn.sendall(reply(target(head)))

    upstream = scripted_upstream(hostile)
    options = {"store": "memory://", "upstreams": {"canary": upstream.url},
               "force_header": "X-Canary-Force", "timeout": TIMEOUT}  # fmt: skip
    command = [
        sys.executable,
        "-m",
        "gunicorn",
        "-w",
        "1",
        "-k",
        "gthread",
        "--threads",
        "2",
        "-b",
        "127.0.0.1:{port}",
        "--log-level",
        "warning",
        "tests.support.wsgi_apps:make_app()",
    ]
    router = AppServer(command, env={"CANARY_TEST_OPTIONS": json.dumps(options)})
    servers.append(router.start())
    assert ask(router.port, b"/alice")[0].startswith(b"HTTP/1.1 2")
    head, body = ask(router.port, b"/bob")
    assert b"alice" not in head + body
    assert [target(head) for head in upstream.heads] == [b"/alice", b"/bob"]


# -- finding 6 -----------------------------------------------------------------------------
def test_an_endless_reason_phrase_is_a_502_with_memory_bounded(scripted_upstream, servers):
    sent = [0]

    def endless(conn: socket.socket, srv: Upstream) -> None:
        if b"/warm" in read_head(conn, bytearray()):
            conn.sendall(answer())
            return
        conn.sendall(b"HTTP/1.1 200 ")
        piece = b"a" * 65536
        while sent[0] < 120 << 20:  # a 120 MiB reason phrase, or until the router gives up
            conn.sendall(piece)
            sent[0] += len(piece)

    upstream = scripted_upstream(endless)
    router = asgi_router(servers, upstream.url)
    raw_request(router.port, b"GET /warm HTTP/1.1\r\nHost: shop\r\n" + FORCE + b"\r\n")
    before = peak_rss_kib(router.pid)
    head, _ = raw_request(router.port, b"GET /big HTTP/1.1\r\nHost: shop\r\n" + FORCE + b"\r\n")
    assert head.startswith(b"HTTP/1.1 502")
    wait_for(lambda: upstream.finished == 2, what="the upstream to see the connection closed")
    assert sent[0] < 16 << 20  # socket buffers' worth, not the 120 MiB
    assert peak_rss_kib(router.pid) - before < 16 * 1024
