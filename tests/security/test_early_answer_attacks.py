"""Hostile review of bda7938 (the request body sent from a task the upstream's early answer
cancels). Real uvicorn routers (h11, httptools), scripted canaries, raw client sockets."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from tests.support.routers import start_canary_router
from tests.support.scripted import Upstream, declared_length, read_exactly, read_head, wait_for
from tests.support.servers import AppServer

pytestmark = pytest.mark.slow

READ_TIMEOUT = 30  # never waited: every check below has a far shorter deadline
WRITE_TIMEOUT = 30
HEAD_ONLY = b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 12\r\n\r\n"
REFUSAL = HEAD_ONLY + b"no, thanks\r\n"


def scripted(conn: socket.socket, server: Upstream) -> None:
    """Per path: /stall answers a head and never its body; /refuse answers at once without
    reading the body, then records whatever else comes on this connection; /continue sends
    100 Continue, reads the whole body, answers 200. Every connection's bytes are kept."""
    buffer = bytearray()
    seen = server.state.setdefault("conns", [])
    record: list[bytes] = []
    seen.append(record)
    while head := read_head(conn, buffer):
        server.heads.append(head)
        record.append(head)
        path = head.split(b" ")[1]
        if path == b"/stall":
            conn.sendall(HEAD_ONLY)
            server.state["stall_head_sent"] = True
            conn.settimeout(READ_TIMEOUT + 5)
            started = time.monotonic()
            while conn.recv(65536):
                pass
            server.state["stall_closed_after"] = time.monotonic() - started
            return
        if path == b"/refuse":
            conn.sendall(REFUSAL)
            while data := conn.recv(65536):
                record.append(bytes(buffer) + data)
                buffer.clear()
            return
        if path == b"/deaf":  # answers and never reads again: the router's writes back up
            conn.sendall(REFUSAL)
            conn.settimeout(READ_TIMEOUT + 5)
            while True:
                try:
                    if not conn.recv(1, socket.MSG_PEEK):
                        return
                    if server.state.get("deaf_release"):
                        return
                    threading.Event().wait(0.05)  # a deaf peer: reads nothing
                except OSError:
                    return
        if path == b"/hold":  # never answers: the router's send task is still running
            conn.settimeout(READ_TIMEOUT + 5)
            while conn.recv(65536):
                pass
            server.state["hold_closed"] = True
            return
        if path == b"/continue":
            conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
            server.state["continue_sent"] = True
            body = read_exactly(conn, buffer, 20)
            server.bodies.append(body)
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
            continue
        read_exactly(conn, buffer, declared_length(head))
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")


@pytest.fixture(scope="module")
def canary() -> Iterator[Upstream]:
    server = Upstream(scripted)
    yield server
    server.close()


@pytest.fixture(scope="module", params=["h11", "httptools"])
def router(request: pytest.FixtureRequest, canary: Upstream) -> Iterator[AppServer]:
    server = start_canary_router(
        canary.url, request.param,
        timeout={"connect": 2, "read": READ_TIMEOUT, "write": WRITE_TIMEOUT, "pool": 2},
    )  # fmt: skip
    yield server
    server.cleanup()


def _read_response(sock: socket.socket) -> tuple[bytes, bytes]:
    sock.settimeout(10)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))  # fmt: skip
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk
        body += chunk
    return head, body


def test_client_leaving_after_an_early_head_frees_the_upstream(
    router: AppServer, canary: Upstream
) -> None:
    canary.state.pop("stall_closed_after", None)
    canary.state.pop("stall_head_sent", None)
    with socket.create_connection(("127.0.0.1", router.port)) as sock:
        sock.sendall(b"POST /stall HTTP/1.1\r\nHost: app.test\r\nContent-Length: 1000\r\n\r\n"
                     + b"x" * 10)  # fmt: skip
        wait_for(lambda: canary.state.get("stall_head_sent"), 10, "the upstream's head sent")
        # Loopback: the router has its upstream's head long before this (ordering only; the
        # check below waits on a condition).
        threading.Event().wait(0.1)
    # The client left mid-upload, with the upstream's head in and its body not.
    wait_for(lambda: "stall_closed_after" in canary.state, 5, "the upstream connection closed")


def test_early_answer_connection_never_carries_the_next_users_request(
    router: AppServer, canary: Upstream
) -> None:
    """Alice's upload is answered early (her body unfinished); Bob's request must go on
    another connection: the upstream must not read it as the rest of Alice's body."""
    before = canary.accepted
    with socket.create_connection(("127.0.0.1", router.port), source_address=("127.0.0.3", 0)) as a:
        a.sendall(b"POST /refuse HTTP/1.1\r\nHost: app.test\r\nCookie: u=alice\r\n"
                  b"Content-Length: 1000\r\n\r\n" + b"a" * 10)  # fmt: skip
        head, body = _read_response(a)
        assert head.startswith(b"HTTP/1.1 401"), head
        assert body == b"no, thanks\r\n"
        # Alice keeps sending the rest of her body after the answer.
        a.sendall(b"a" * 990)
        with socket.create_connection(
            ("127.0.0.1", router.port), source_address=("127.0.0.4", 0)
        ) as b:
            b.sendall(b"GET /bob HTTP/1.1\r\nHost: app.test\r\nCookie: u=alice\r\n\r\n")
            head, body = _read_response(b)
    assert head.startswith(b"HTTP/1.1 200"), head
    assert body == b"ok"
    assert canary.accepted >= before + 2
    for record in canary.state["conns"]:
        if record and record[0].startswith(b"POST /refuse"):
            assert not any(b"/bob" in piece for piece in record), record


def test_early_answer_while_the_upstream_write_is_backed_up(
    router: AppServer, canary: Upstream
) -> None:
    """The upstream answers and reads no more while a large upload fills the socket buffers
    (the send task waits on ``_writable``): the answer still reaches the client, and the
    client connection serves its next request after the rest of the body."""
    size = 16 * 1024 * 1024
    canary.state.pop("deaf_release", None)
    with socket.create_connection(("127.0.0.1", router.port)) as sock:
        sock.sendall(b"POST /deaf HTTP/1.1\r\nHost: app.test\r\nContent-Length: %d\r\n\r\n" % size)
        failed: list[BaseException] = []

        def upload() -> None:
            try:
                sock.sendall(b"z" * size)
            except OSError as exc:
                failed.append(exc)

        sender = threading.Thread(target=upload, daemon=True)
        sender.start()
        try:
            head, body = _read_response(sock)
            assert head.startswith(b"HTTP/1.1 401"), head
            assert body == b"no, thanks\r\n"
        finally:
            canary.state["deaf_release"] = True
            sender.join(20)


def test_rest_of_a_cut_body_is_not_a_request(router: AppServer, canary: Upstream) -> None:
    """After the early answer, the rest of Alice's body (which reads like a request) is body
    on her client connection, and her next real request gets its own answer."""
    before = len(canary.heads)
    smuggled = b"GET /smuggled HTTP/1.1\r\nHost: app.test\r\n\r\n"
    with socket.create_connection(("127.0.0.1", router.port)) as sock:
        sock.sendall(b"POST /refuse HTTP/1.1\r\nHost: app.test\r\n"
                     b"Content-Length: %d\r\n\r\n" % (10 + len(smuggled)) + b"a" * 10)  # fmt: skip
        head, body = _read_response(sock)
        assert head.startswith(b"HTTP/1.1 401"), head
        sock.sendall(smuggled)
        sock.sendall(b"GET /next HTTP/1.1\r\nHost: app.test\r\n\r\n")
        head, body = _read_response(sock)
        assert head.startswith(b"HTTP/1.1 200"), head
        assert body == b"ok"
    heads = canary.heads[before:]
    assert not any(h.startswith(b"GET /smuggled") for h in heads), heads
    for record in canary.state["conns"]:
        assert not any(b"/smuggled" in piece for piece in record), record


def test_client_leaving_mid_upload_before_any_answer_frees_the_upstream(
    router: AppServer, canary: Upstream
) -> None:
    """The send task owns ``receive`` and sees the client's http.disconnect: the exchange
    ends and the upstream connection is closed, long before the read timeout."""
    canary.state.pop("hold_closed", None)
    before = len(canary.heads)
    with socket.create_connection(("127.0.0.1", router.port)) as sock:
        sock.sendall(b"POST /hold HTTP/1.1\r\nHost: app.test\r\nContent-Length: 1000\r\n\r\n"
                     + b"h" * 10)  # fmt: skip
        wait_for(lambda: len(canary.heads) > before, 10, "the head at the upstream")
    wait_for(lambda: canary.state.get("hold_closed"), 5, "the upstream connection closed")


def test_interim_100_continue_does_not_cut_the_body(router: AppServer, canary: Upstream) -> None:
    """A 100 Continue is not the answer: the body goes on, whole, after it."""
    canary.state.pop("continue_sent", None)
    with socket.create_connection(("127.0.0.1", router.port)) as sock:
        sock.sendall(b"POST /continue HTTP/1.1\r\nHost: app.test\r\nContent-Length: 20\r\n\r\n"
                     + b"0123456789")  # fmt: skip
        wait_for(lambda: canary.state.get("continue_sent"), 10, "the 100 sent")
        threading.Event().wait(0.1)  # ordering only: the router has the 100 before the rest
        sock.sendall(b"abcdefghij")
        head, body = _read_response(sock)
    assert head.startswith(b"HTTP/1.1 200"), head
    assert body == b"0123456789abcdefghij"


def test_no_task_lost_or_unretrieved_in_the_router(router: AppServer, canary: Upstream) -> None:
    """After early answers, a stalled upload, a departed client and a 100 Continue (above),
    a request with a body answered normally: the router logged no "Task exception was never
    retrieved" nor a pending task destroyed (the send task's errors are its caller's)."""
    with socket.create_connection(("127.0.0.1", router.port)) as sock:
        sock.sendall(b"POST /plain HTTP/1.1\r\nHost: app.test\r\nContent-Length: 4\r\n\r\nbody")
        head, body = _read_response(sock)
    assert head.startswith(b"HTTP/1.1 200"), head
    assert body == b"ok"
    output = router.output()
    assert "never retrieved" not in output, output
    assert "was destroyed but it is pending" not in output, output
