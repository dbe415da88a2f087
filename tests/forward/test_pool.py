"""Both forwarding transports (HTTP11Transport, asyncio; HTTP11SyncTransport, blocking)
against scripted upstreams on real sockets, every case over both: what they write byte for
byte, how they read every kind of response, when they reuse, retry and limit connections,
and which httpx error each failure becomes. The hostile cases are the red-team findings of
issue 11 (1: body desync, 3: repeated POST, 4: pool poisoning, 6: unbounded head)."""

from __future__ import annotations

import os
import socket
import ssl
import threading
from collections.abc import Callable, Iterator

import httpx
import pytest

from canary_mw.forward import connection
from tests.support.scripted import (
    DRIVERS,
    TIMEOUTS,
    Driver,
    Handler,
    Upstream,
    answer,
    declared_length,
    keep_alive,
    parts_after,
    read_body,
    read_exactly,
    read_head,
    scripted,
    target,
    wait_for,
)


@pytest.fixture
def upstream() -> Iterator[Callable[..., Upstream]]:
    started: list[Upstream] = []

    def start(handler: Handler = keep_alive, **options: object) -> Upstream:
        server = Upstream(handler, **options)  # type: ignore[arg-type]
        started.append(server)
        return server

    yield start
    for server in started:
        server.close()


@pytest.fixture(params=DRIVERS)
def make_driver(request: pytest.FixtureRequest) -> Iterator[Callable[..., Driver]]:
    made: list[Driver] = []

    def make(limits: httpx.Limits | None = None, **options: object) -> Driver:
        driver = Driver(request.param, limits, **options)
        made.append(driver)
        return driver

    yield make
    for driver in made:
        driver.close()


@pytest.fixture
def driver(make_driver: Callable[..., Driver]) -> Driver:
    return make_driver()


# -- what goes out -------------------------------------------------------------------------
def test_the_request_goes_out_byte_for_byte(upstream, driver) -> None:
    server = upstream()
    headers = [(b"Host", b"shop.example"), (b"X-Mixed-Case", b"Value"), (b"x-two", b"a"),
               (b"x-two", b"b")]  # fmt: skip
    response, body = driver.send(f"{server.url}/a%2Fb?q=%20x", headers=headers)
    assert (response.status_code, body) == (200, b"/a%2Fb?q=%20x")
    assert server.heads[0] == (
        b"GET /a%2Fb?q=%20x HTTP/1.1\r\nHost: shop.example\r\nX-Mixed-Case: Value\r\n"
        b"x-two: a\r\nx-two: b\r\n\r\n"  # nothing added: no User-Agent, Accept, encodings
    )


def test_bodies_are_framed_by_length_or_chunks(upstream, driver) -> None:
    server = upstream()
    driver.send(server.url + "/len", "POST", content=b"x" * 100_000)
    assert server.bodies[0] == b"x" * 100_000

    def chunked(conn: socket.socket, srv: Upstream) -> None:
        buffer = bytearray()
        srv.heads.append(read_head(conn, buffer))
        while not buffer.endswith(b"0\r\n\r\n"):
            buffer += conn.recv(65536)
        srv.bodies.append(bytes(buffer))
        conn.sendall(answer())

    server = upstream(chunked)
    # An empty part is not a chunk: it would end the body.
    driver.send(server.url, "POST", content=[b"abc", b"", b"defgh"])
    assert b"transfer-encoding: chunked" in server.heads[0].lower()
    assert server.bodies[0] == b"3\r\nabc\r\n5\r\ndefgh\r\n0\r\n\r\n"


@pytest.mark.parametrize(
    ("headers", "error"),
    [
        ([(b"x-a", b"1\r\nX-Injected: 1")], "CR, LF or NUL"),
        ([(b"x-a", b"1\nX-Injected: 1")], "CR, LF or NUL"),
        ([(b"x-a", b"nul\0")], "CR, LF or NUL"),
        ([(b"x a", b"1")], "invalid header name"),
        ([(b"x:a", b"1")], "invalid header name"),
        ([(b"content-length", b"1"), (b"content-length", b"1")], "one numeric Content-Length"),
        ([(b"content-length", b"+1")], "one numeric Content-Length"),
        ([(b"transfer-encoding", b"gzip")], "only be 'chunked'"),
        ([(b"transfer-encoding", b"chunked"), (b"content-length", b"1")], "both"),
    ],
    ids=["crlf", "lf", "nul", "space-in-name", "colon-in-name", "two-lengths", "signed-length",
         "other-coding", "length-and-chunked"],
)  # fmt: skip
def test_a_head_that_could_be_split_is_never_written(upstream, driver, headers, error) -> None:
    server = upstream()
    request = driver.request(server.url)
    request.headers = httpx.Headers([*request.headers.raw, *headers])
    with pytest.raises(httpx.LocalProtocolError, match=error):
        driver.open(request)
    assert server.heads == []


def test_a_head_that_cannot_be_sent_costs_no_connection(upstream, driver) -> None:
    server = upstream()
    driver.send(server.url + "/before")
    request = driver.request(server.url)
    request.headers = httpx.Headers([(b"x-a", b"1\r\nX-Injected: 1")])
    with pytest.raises(httpx.LocalProtocolError):
        driver.open(request)
    assert driver.send(server.url + "/after")[1] == b"/after"
    assert server.accepted == 1  # the idle connection was neither taken nor closed


# -- what comes back -----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("reply", "close", "status", "body"),
    [
        (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
         False, 200, b"abcde"),
        (b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nuntil the end", True, 200, b"until the end"),
        (b"HTTP/1.0 200 OK\r\n\r\nold server", True, 200, b"old server"),
        (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n"
         + answer(b"final"), False, 200, b"final"),
        (b"HTTP/1.1 204 No Content\r\n\r\n", False, 204, b""),
        (b"HTTP/1.1 304 Not Modified\r\ncontent-length: 99\r\n\r\n", False, 304, b""),
        (b"HTTP/1.1 503 Busy\r\ncontent-length: 4\r\nx-from: up\r\n\r\nbusy", False, 503, b"busy"),
    ],
    ids=["chunked", "until-close", "http-1.0", "interim-responses", "204", "304", "503"],
)  # fmt: skip
def test_every_kind_of_response_is_read(upstream, driver, reply, close, status, body):
    server = upstream(scripted(reply, then_close=close))
    response, received = driver.send(server.url)
    assert (response.status_code, received) == (status, body)


def test_response_headers_arrive_raw_and_in_order(upstream, driver) -> None:
    reply = answer(extra=b"Set-Cookie: a=1\r\nset-cookie: b=2\r\nX-Custom: Mixed Case\r\n")
    server = upstream(scripted(reply))
    response, _ = driver.send(server.url)
    assert response.headers.raw[1:] == [
        (b"Set-Cookie", b"a=1"), (b"set-cookie", b"b=2"), (b"X-Custom", b"Mixed Case")
    ]  # fmt: skip
    assert response.extensions["reason_phrase"] == b"OK"


def test_head_responses_have_no_body(upstream, driver) -> None:
    server = upstream(scripted(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n"))
    response, body = driver.send(server.url, "HEAD")
    assert (response.status_code, body) == (200, b"")
    driver.send(server.url, "HEAD")
    assert server.accepted == 2  # llhttp would wait for a body: never reused after HEAD


@pytest.mark.parametrize(
    "reply",
    [b"garbage\r\n\r\n", b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nab",
     b"HTTP/1.1 200 OK\r\nbad header\r\n\r\n",
     b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
     b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n"],
    ids=["not-http", "two-lengths", "header-without-colon", "length-and-chunked", "101"],
)  # fmt: skip
def test_invalid_responses_are_protocol_errors(upstream, driver, reply) -> None:
    server = upstream(scripted(reply))
    with pytest.raises(httpx.RemoteProtocolError):
        driver.send(server.url)


def test_response_headers_are_bounded(upstream, driver) -> None:
    def filler(count: int, size: int = 1000) -> bytes:  # count headers of about size bytes
        return b"".join(b"x-filler-%d: %s\r\n" % (n, b"v" * size) for n in range(count))

    server = upstream(scripted(answer(extra=filler(100))))
    with pytest.raises(httpx.RemoteProtocolError, match="too large"):
        driver.send(server.url)
    server = upstream(scripted(answer(extra=filler(50))))  # 50 KiB is fine
    assert driver.send(server.url)[0].status_code == 200
    server = upstream(scripted(answer(extra=filler(300, 1))))
    with pytest.raises(httpx.RemoteProtocolError, match="too many"):
        driver.send(server.url)
    server = upstream(scripted(b"HTTP/1.1 200 " + b"r" * 2000 + b"\r\ncontent-length: 0\r\n\r\n"))
    with pytest.raises(httpx.RemoteProtocolError, match="reason phrase"):
        driver.send(server.url)


@pytest.mark.parametrize(
    "start",
    [b"HTTP/1.1 200 ", b"HTTP/1.1 200 OK\r\nx-long: ", b"HTTP/1.1 200 OK\r\nx-lo"],
    ids=["reason-phrase", "header-value", "header-name"],
)
def test_an_endless_head_fails_after_the_limit_not_at_its_end(upstream, driver, start) -> None:
    """Finding 6: a 120 MiB reason phrase or header line was read whole (memory, seconds)
    before the 64 KiB limit was checked. Now the limit counts bytes as they arrive."""
    sent = [0]

    def endless(conn: socket.socket, srv: Upstream) -> None:
        read_head(conn, bytearray())
        conn.sendall(start)
        piece = b"a" * 65536
        while sent[0] < 120 << 20:  # until the client gives up (the send then fails)
            conn.sendall(piece)
            sent[0] += len(piece)

    server = upstream(endless)
    with pytest.raises(httpx.RemoteProtocolError, match="too large"):
        driver.send(server.url)
    wait_for(lambda: server.finished == 1, what="the upstream to see the connection closed")
    assert sent[0] < 16 << 20  # socket buffers, not the 120 MiB


@pytest.mark.parametrize("split", [False, True], ids=["one-read", "separate-reads"])
def test_trailers_are_never_promoted_to_headers(upstream, driver, split) -> None:
    head = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nx-real: 1\r\n\r\n"
    rest = b"3\r\nabc\r\n0\r\nx-trailer: evil\r\nset-cookie: session=stolen\r\n\r\n"

    def trailing(conn: socket.socket, srv: Upstream) -> None:
        buffer = bytearray()
        while read_head(conn, buffer):
            if split:
                conn.sendall(head)
                conn.sendall(rest)
            else:
                conn.sendall(head + rest)

    server = upstream(trailing)
    response, body = driver.send(server.url)
    assert body == b"abc"
    assert response.headers.raw == [(b"transfer-encoding", b"chunked"), (b"x-real", b"1")]
    assert driver.send(server.url)[1] == b"abc"
    assert server.accepted == 1  # trailers are framing: the connection stays reusable


def test_a_second_response_to_one_request_is_not_passed_on(upstream, driver) -> None:
    server = upstream(scripted(answer(b"one") + answer(b"two")))
    _, body = driver.send(server.url)
    assert body == b"one"
    _, body = driver.send(server.url)
    assert body == b"one"  # a new connection: the extra response died with the old one
    assert server.accepted == 2


def test_a_body_cut_short_is_an_error(upstream, driver) -> None:
    server = upstream(
        scripted(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly this", then_close=True)
    )
    with pytest.raises(httpx.RemoteProtocolError, match="mid-body"):
        driver.send(server.url)


# -- hostile upstreams: nothing of one exchange reaches another ----------------------------
def _hostile(extra: Callable[[bytes], bytes], *, later: bool) -> Handler:
    """Answers each request with its path, followed by ``extra(path)``: in the same write,
    or in a second write once the first was sent (``later``: it arrives while idle)."""

    def handler(conn: socket.socket, srv: Upstream) -> None:
        buffer = bytearray()
        while head := read_head(conn, buffer):
            srv.heads.append(head)
            path = target(head)
            if later:
                conn.sendall(answer(path))
                conn.sendall(extra(path))
            else:
                conn.sendall(answer(path) + extra(path))
            srv.state.setdefault("sent", threading.Event()).set()

    return handler


@pytest.mark.parametrize("later", [False, True], ids=["same-write", "second-write"])
@pytest.mark.parametrize(
    "extra",
    [
        lambda path: answer(path, b"set-cookie: user=" + path + b"\r\n"),
        lambda path: b"\r\n",
        lambda path: b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nalice",
    ],
    ids=["response-twice", "stray-crlf", "a-forged-response"],
)  # fmt: skip
def test_bytes_after_a_response_never_reach_the_next_one(upstream, driver, extra, later):
    """Finding 4: whatever follows a complete response (a second copy of it, even a
    CRLF) poisons the connection: the next request goes on a new one."""
    server = upstream(_hostile(extra, later=later))
    assert driver.send(server.url + "/alice")[1] == b"/alice"
    wait_for(lambda: "sent" in server.state and server.state["sent"].is_set())
    assert driver.send(server.url + "/bob")[1] == b"/bob"
    assert server.accepted == 2


@pytest.mark.parametrize(
    "reply",
    [b"HTTP/1.1 204 No Content\r\ncontent-length: 5\r\n\r\nalice",
     b"HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nalice",
     b"HTTP/1.1 304 Not Modified\r\n\r\nalice",
     b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nalice"],
    ids=["204-with-body", "204-then-response", "304-with-body", "body-longer-than-length"],
)  # fmt: skip
def test_a_body_where_none_may_be_is_never_the_next_response(upstream, driver, reply) -> None:
    server = upstream(scripted(reply))
    first = driver.send(server.url)
    second = driver.send(server.url)
    assert (second[0].status_code, second[1]) == (first[0].status_code, first[1])
    assert b"alice" not in second[1]
    assert server.accepted == 2


def test_an_early_answer_closes_the_connection(upstream, driver) -> None:
    """Finding 1: the upstream answered (404) before reading the request body; the rest of
    the body was not sent, yet the connection went back to the pool, and the upstream read
    the next request as the rest of that body (request smuggling)."""
    answered = threading.Event()

    def early(conn: socket.socket, srv: Upstream) -> None:
        buffer = bytearray()
        head = read_head(conn, buffer)
        srv.heads.append(head)
        conn.sendall(b"HTTP/1.1 404 Not Found\r\ncontent-length: 9\r\n\r\nnot found")
        answered.set()
        # Still owed the body: what comes next on this connection is body, whatever it says.
        srv.bodies.append(read_exactly(conn, buffer, declared_length(head)))
        while head := read_head(conn, buffer):  # pipelined requests after the body
            if head.strip():  # CR and LF between requests are skipped, as servers do
                srv.heads.append(head)
                conn.sendall(answer(b"smuggled"))

    server = upstream(early)
    request = driver.request(
        server.url + "/upload", "POST", headers=[(b"content-length", b"1000")],
        content=parts_after(answered, b"x" * 20, b"y" * 980),
    )  # fmt: skip
    response = driver.open(request)
    assert (response.status_code, driver.read(response)) == (404, b"not found")
    # The next request's body: a CRLF sled longer than what the upstream was still owed,
    # then a request of the attacker's choosing.
    smuggle = b"\r\n" * 600 + b"GET /smuggled HTTP/1.1\r\nhost: x\r\n\r\n"
    _, body = driver.send(server.url + "/next", "POST", content=smuggle)
    assert body != b"smuggled"
    assert [target(head) for head in server.heads if b"/smuggled" in head] == []


def test_an_upstream_that_answers_and_closes_mid_upload_is_answered(upstream, driver) -> None:
    answered = threading.Event()

    def answer_and_close(conn: socket.socket, srv: Upstream) -> None:
        srv.heads.append(read_head(conn, bytearray()))
        conn.sendall(b"HTTP/1.0 413 Too Large\r\ncontent-length: 0\r\n\r\n")
        conn.shutdown(socket.SHUT_RDWR)
        answered.set()

    server = upstream(answer_and_close)
    # The body ends after the upstream closed: only its last chunk is left to write.
    request = driver.request(server.url + "/upload", "POST",
                             content=parts_after(answered, b"a" * 10, b""))  # fmt: skip
    response = driver.open(request)
    assert (response.status_code, driver.read(response)) == (413, b"")


def test_an_early_answer_to_a_chunked_upload_closes_the_connection(upstream, driver) -> None:
    answered = threading.Event()

    def early(conn: socket.socket, srv: Upstream) -> None:
        buffer = bytearray()
        while head := read_head(conn, buffer):
            srv.heads.append(head)
            if b"chunked" in head:
                conn.sendall(b"HTTP/1.1 413 Too Large\r\ncontent-length: 0\r\n\r\n")
                answered.set()
                return  # reads nothing more: whatever follows would be misread
            conn.sendall(answer(target(head)))

    server = upstream(early)
    request = driver.request(server.url + "/upload", "PUT",
                             content=parts_after(answered, b"a" * 10, b"b" * 10))  # fmt: skip
    response = driver.open(request)
    assert (response.status_code, driver.read(response)) == (413, b"")
    assert driver.send(server.url + "/next")[1] == b"/next"
    assert server.accepted == 2


def test_an_interim_answer_does_not_stop_the_upload(upstream, driver) -> None:
    """Red team F9: a 100 Continue (the canary's answer to a forwarded Expect) made the
    blocking driver stop sending the body: the canary waited for the rest, the router for a
    final head (504), and the canary got a truncated body."""
    continued = threading.Event()

    def continue_then_read(conn: socket.socket, srv: Upstream) -> None:
        buffer = bytearray()
        while head := read_head(conn, buffer):
            srv.heads.append(head)
            conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
            continued.set()
            body = read_body(conn, buffer, head)
            srv.bodies.append(body)
            conn.sendall(answer(b"%d" % len(body)))

    server = upstream(continue_then_read)
    size = 300_000
    request = driver.request(
        server.url + "/upload", "POST",
        headers=[(b"content-length", b"%d" % size), (b"expect", b"100-continue")],
        content=parts_after(continued, b"a" * 1000, b"b" * (size - 1000)),
    )  # fmt: skip
    response = driver.open(request)
    assert (response.status_code, driver.read(response)) == (200, b"%d" % size)
    assert server.bodies == [b"a" * 1000 + b"b" * (size - 1000)]
    assert driver.send(server.url + "/next", "POST", content=b"x")[1] == b"1"
    assert server.accepted == 1  # the exchange ended exactly: its connection was reused


def test_a_connection_pooled_while_its_reading_is_paused_reads_again(
    upstream, driver, monkeypatch
) -> None:
    """Red team F5: the read that paused reading (body buffered faster than taken) also
    completed the response, whose reader then left: the connection went back to the pool
    still paused, and the next request on it was sent, run and never read (504)."""
    monkeypatch.setattr(connection, "READ_HIGH_WATER", 10)  # any buffered body pauses
    server = upstream(scripted(answer(b"b" * 1000)))
    first = driver.open(driver.request(server.url + "/first"))
    driver.close_response(first)  # the whole body was in: the connection stays reusable
    response, body = driver.send(server.url + "/second")
    assert (response.status_code, body) == (200, b"b" * 1000)
    assert server.accepted == 1


def test_an_early_answer_reaches_a_driver_waiting_for_room_to_write(upstream, driver) -> None:
    """An upstream that answers mid-upload, then neither reads on nor closes: both drivers
    waited for room to write until the write timeout (a 504 for the canary's 413)."""
    produced = [0]
    done = threading.Event()

    def parts() -> Iterator[bytes]:
        for _ in range(512):  # 32 MiB: more than the socket buffers hold
            produced[0] += 1
            yield b"x" * 65536

    def stalled() -> bool:  # the client stopped asking for parts: it waits for room
        before = produced[0]
        return before > 0 and not done.wait(0.3) and produced[0] == before

    def answer_then_stop_reading(conn: socket.socket, srv: Upstream) -> None:
        srv.heads.append(read_head(conn, bytearray()))
        wait_for(stalled, timeout=10, what="the upload to fill the socket buffers")
        conn.sendall(b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 3\r\n\r\nbig")
        done.wait(10)  # keeps the connection open, reading nothing

    server = upstream(answer_then_stop_reading)
    try:
        sent = driver.request(server.url + "/upload", "POST",
                              headers=[(b"content-length", b"%d" % (512 * 65536))],
                              content=parts())  # fmt: skip
        response = driver.open(sent)
        assert (response.status_code, driver.read(response)) == (413, b"big")
    finally:
        done.set()


# -- connections ---------------------------------------------------------------------------
def test_connections_are_kept_alive_and_reused(upstream, driver) -> None:
    server = upstream()
    for n in range(5):
        _, body = driver.send(f"{server.url}/{n}")
        assert body == f"/{n}".encode()
    assert server.accepted == 1


def test_a_response_closed_early_closes_its_connection(upstream, driver) -> None:
    def big(conn: socket.socket, srv: Upstream) -> None:
        buffer = bytearray()
        read_head(conn, buffer)
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 10000000\r\n\r\n" + b"x" * 1000)
        conn.settimeout(5)
        if conn.recv(1) == b"":
            srv.closed.set()

    server = upstream(big)
    response = driver.open(driver.request(server.url))
    driver.close_response(response)
    assert server.closed.wait(5)


def test_connections_are_reused_on_descriptors_above_1023(upstream, driver) -> None:
    """select() cannot poll a descriptor above 1023: the idle check must not use it, or a
    busy server (many descriptors) closes every idle connection instead of reusing it."""
    server = upstream()
    fillers = []
    try:
        while not fillers or fillers[-1] < 1100:
            fillers.append(os.open(os.devnull, os.O_RDONLY))
        for n in range(3):
            assert driver.send(f"{server.url}/{n}")[1] == f"/{n}".encode()
    finally:
        for fd in fillers:
            os.close(fd)
    assert server.accepted == 1


def _answer_once_then_close(conn: socket.socket, srv: Upstream) -> None:
    """Answers the first request on a connection; reads the next one and closes unanswered."""
    buffer = bytearray()
    srv.heads.append(read_head(conn, buffer))
    conn.sendall(answer())
    if head := read_head(conn, buffer):
        srv.heads.append(head)


def test_a_stale_connection_is_retried_only_without_a_body(upstream, driver) -> None:
    server = upstream(_answer_once_then_close)
    driver.send(server.url)
    response, body = driver.send(server.url)  # reused, closed, sent again
    assert (response.status_code, body, server.accepted) == (200, b"ok", 2)
    with pytest.raises(httpx.RemoteProtocolError):  # a body is never sent twice
        driver.send(server.url, "POST", content=b"payment")
    assert server.accepted == 2


def _idle_connections(driver: Driver, server: Upstream, count: int) -> None:
    """Open ``count`` connections at once (the upstream holds its answers until all came)."""
    threads = [threading.Thread(target=driver.send, args=(server.url + "/warm",))
               for _ in range(count)]  # fmt: skip
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert server.accepted == count


def _warm_then_close_unanswered(count: int) -> Handler:
    barrier = threading.Barrier(count, timeout=10)

    def handler(conn: socket.socket, srv: Upstream) -> None:
        buffer = bytearray()
        head = read_head(conn, buffer)
        srv.heads.append(head)
        if b"/warm" not in head:
            return  # processes the request, then closes unanswered
        barrier.wait()
        conn.sendall(answer())
        if head := read_head(conn, buffer):
            srv.heads.append(head)  # the same

    return handler


@pytest.mark.parametrize(
    ("method", "attempts"),
    [("POST", 1), ("PATCH", 1), ("GET", 2), ("DELETE", 2)],
)
def test_a_request_is_sent_at_most_twice_and_never_twice_unless_idempotent(
    upstream, make_driver, method, attempts
) -> None:
    """Finding 3: every idle connection that closed unanswered was taken as stale and the
    request sent again on the next one: a body-less POST /pay ran once per idle connection
    plus once more."""
    driver = make_driver(httpx.Limits(max_connections=8, max_keepalive_connections=8))
    server = upstream(_warm_then_close_unanswered(3))
    _idle_connections(driver, server, 3)
    with pytest.raises(httpx.RemoteProtocolError):
        driver.send(server.url + "/pay", method)
    sent = [head for head in server.heads if b"/pay" in head]
    assert len(sent) == attempts


def test_a_malformed_answer_on_a_reused_connection_is_not_retried(upstream, driver) -> None:
    def malformed_second(conn: socket.socket, srv: Upstream) -> None:
        buffer = bytearray()
        srv.heads.append(read_head(conn, buffer))
        conn.sendall(answer())
        if head := read_head(conn, buffer):
            srv.heads.append(head)
            conn.sendall(b"HTTP/1.1 200 OK\r\nbad header\r\n\r\n")

    server = upstream(malformed_second)
    driver.send(server.url)
    with pytest.raises(httpx.RemoteProtocolError):
        driver.send(server.url + "/again")
    assert (len(server.heads), server.accepted) == (2, 1)


def test_the_pool_limit_holds_and_recovers(upstream, make_driver) -> None:
    release = threading.Event()

    def slow(conn: socket.socket, srv: Upstream) -> None:
        buffer = bytearray()
        while head := read_head(conn, buffer):
            srv.heads.append(head)
            release.wait(10)
            conn.sendall(answer())

    server = upstream(slow)
    driver = make_driver(httpx.Limits(max_connections=2, max_keepalive_connections=2))
    results: list[int] = []
    busy = [threading.Thread(target=lambda: results.append(driver.send(server.url)[0].status_code))
            for _ in range(2)]  # fmt: skip
    for thread in busy:
        thread.start()
    wait_for(lambda: len(server.heads) == 2, what="both connections to be busy")
    with pytest.raises(httpx.PoolTimeout):
        driver.send(server.url)  # both connections busy for longer than the pool timeout
    release.set()
    for thread in busy:
        thread.join(10)
    assert results == [200, 200]
    assert driver.send(server.url)[0].status_code == 200
    assert server.accepted == 2


def test_idle_connections_expire(upstream, make_driver) -> None:
    server = upstream()
    driver = make_driver(httpx.Limits(max_connections=4, keepalive_expiry=0.05))
    driver.send(server.url)
    threading.Event().wait(0.1)  # time itself is the condition: past the expiry
    driver.send(server.url)
    assert server.accepted == 2


def test_failed_exchanges_give_their_connection_back(upstream, make_driver) -> None:
    server = upstream(lambda conn, srv: read_head(conn, bytearray()))  # closes unanswered
    driver = make_driver(httpx.Limits(max_connections=1, max_keepalive_connections=1))
    for _ in range(5):
        with pytest.raises(httpx.RemoteProtocolError):
            driver.send(server.url)
    assert driver.send(upstream().url + "/after")[1] == b"/after"  # not a PoolTimeout


# -- failures become httpx's errors --------------------------------------------------------
def test_a_dribbled_head_is_bounded_by_the_read_timeout(upstream, driver) -> None:
    """Red team F4: one header line more often than the read timeout kept the blocking
    driver reading for as long as the upstream liked (the asyncio one times the head)."""

    def dribble(conn: socket.socket, srv: Upstream) -> None:
        srv.heads.append(read_head(conn, bytearray()))
        conn.sendall(b"HTTP/1.1 200 OK\r\n")
        for _ in range(12):  # 4.8 s in all, each gap well under the read timeout
            threading.Event().wait(0.4)  # the dribble's pace
            conn.sendall(b"x-dribble: 1\r\n")
        conn.sendall(b"content-length: 0\r\n\r\n")

    server = upstream(dribble)
    with pytest.raises(httpx.ReadTimeout):
        driver.send(server.url, timeouts={**TIMEOUTS, "read": 1.5})


def test_refused_is_a_connect_error(driver) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(httpx.ConnectError):
        driver.send(f"http://127.0.0.1:{port}/")


def test_a_connection_never_accepted_is_a_connect_timeout(driver) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)  # never accepts: once its queue is full, SYNs go unanswered
        fillers = []
        try:
            for _ in range(4):
                filler = socket.socket()
                filler.setblocking(False)
                filler.connect_ex(listener.getsockname())
                fillers.append(filler)
            url = f"http://127.0.0.1:{listener.getsockname()[1]}/"
            with pytest.raises(httpx.ConnectTimeout):
                driver.send(url, timeouts={**TIMEOUTS, "connect": 0.2})
        finally:
            for filler in fillers:
                filler.close()


def test_no_answer_is_a_read_timeout(upstream, driver) -> None:
    server = upstream(lambda conn, srv: (read_head(conn, bytearray()), conn.recv(1)))
    with pytest.raises(httpx.ReadTimeout):
        driver.send(server.url, timeouts={**TIMEOUTS, "read": 0.2})


def test_an_upstream_that_stops_reading_is_a_write_timeout(upstream, driver) -> None:
    stop = threading.Event()
    server = upstream(lambda conn, srv: stop.wait(10))
    with pytest.raises(httpx.WriteTimeout):
        driver.send(server.url, "POST", content=b"x" * (64 << 20),
                    timeouts={**TIMEOUTS, "write": 0.3})  # fmt: skip
    stop.set()


def test_closed_unanswered_is_a_protocol_error(upstream, driver) -> None:
    server = upstream(lambda conn, srv: read_head(conn, bytearray()))
    with pytest.raises(httpx.RemoteProtocolError, match="unanswered"):
        driver.send(server.url)


# -- TLS -----------------------------------------------------------------------------------
def test_https_upstreams_are_verified(upstream, make_driver) -> None:
    import trustme

    authority = trustme.CA()
    server_side = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    authority.issue_cert("127.0.0.1").configure_cert(server_side)
    server = upstream(tls=server_side)
    trusting = ssl.create_default_context()
    authority.configure_trust(trusting)
    driver = make_driver(verify=trusting)
    for path in ("/secure", "/again"):
        response, body = driver.send(server.url + path)
        assert (response.status_code, body) == (200, path.encode())
    assert server.accepted == 1  # kept alive over TLS too
    strict = make_driver()  # the system's CAs do not know this certificate
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        strict.send(server.url)


def test_a_request_body_longer_than_its_length_is_refused(upstream, driver) -> None:
    server = upstream()
    request = driver.request(server.url, "POST", headers=[(b"content-length", b"3")],
                             content=[b"abcdef"])  # fmt: skip
    with pytest.raises(httpx.LocalProtocolError, match="longer"):
        driver.open(request)
    assert b"".join(server.bodies) == b""  # not one byte of the overlong body went out
