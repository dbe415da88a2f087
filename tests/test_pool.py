"""HTTP11Transport, the default forwarding transport, against scripted upstreams on real
sockets: what it writes byte for byte, how it reads every kind of response, how it reuses,
retries and limits connections, and which httpx error each failure becomes."""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
from collections.abc import AsyncIterator, Callable, Iterator

import httpx
import pytest

from canary_mw.forward.pool import HTTP11Transport

pytestmark = pytest.mark.anyio

Handler = Callable[[socket.socket, "Upstream"], None]
TIMEOUTS = {"connect": 2.0, "read": 2.0, "write": 2.0, "pool": 0.3}


def read_head(conn: socket.socket, buffer: bytearray) -> bytes:
    """Bytes up to the end of one request head (b"" when the peer closed first)."""
    while b"\r\n\r\n" not in buffer:
        data = conn.recv(65536)
        if not data:
            return b""
        buffer += data
    head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
    buffer[:] = rest
    return head + b"\r\n\r\n"


def read_exactly(conn: socket.socket, buffer: bytearray, size: int) -> bytes:
    while len(buffer) < size:
        data = conn.recv(65536)
        if not data:
            break
        buffer += data
    body, buffer[:] = bytes(buffer[:size]), buffer[size:]
    return body


class Upstream:
    """A loopback server running ``handler(conn, self)`` for each connection, in a thread,
    recording the raw bytes of each request head it read and how many connections came."""

    def __init__(self, handler: Handler, *, tls: ssl.SSLContext | None = None):
        self.handler = handler
        self.heads: list[bytes] = []
        self.bodies: list[bytes] = []
        self.accepted = 0
        self.closed = threading.Event()  # set when a handler saw the client close
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._tls = tls
        self.port = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"{'https' if self._tls else 'http'}://127.0.0.1:{self.port}"

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            self.accepted += 1
            threading.Thread(target=self._run, args=(conn,), daemon=True).start()

    def _run(self, conn: socket.socket) -> None:
        try:
            if self._tls is not None:
                conn = self._tls.wrap_socket(conn, server_side=True)
            with conn:
                self.handler(conn, self)
        except OSError:
            pass

    def close(self) -> None:
        self._listener.close()


def answer(body: bytes = b"ok", extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n%s\r\n%s" % (len(body), extra, body)


def keep_alive(conn: socket.socket, server: Upstream) -> None:
    """Answers every request on the connection with its own path, reading declared bodies."""
    buffer = bytearray()
    while head := read_head(conn, buffer):
        server.heads.append(head)
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        server.bodies.append(read_exactly(conn, buffer, length))
        conn.sendall(answer(head.split(b" ")[1]))


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


@pytest.fixture
async def transport() -> AsyncIterator[HTTP11Transport]:
    pool = HTTP11Transport(httpx.Limits(max_connections=4, max_keepalive_connections=4))
    yield pool
    await pool.aclose()


async def send(
    transport: httpx.AsyncBaseTransport,
    url: str,
    method: str = "GET",
    *,
    headers: list[tuple[bytes, bytes]] | None = None,
    content: bytes | None = None,
) -> tuple[httpx.Response, bytes]:
    request = httpx.Request(
        method, url, headers=headers or [], content=content, extensions={"timeout": TIMEOUTS}
    )
    response = await transport.handle_async_request(request)
    body = b"".join([chunk async for chunk in response.stream])  # type: ignore[union-attr]
    await response.aclose()
    return response, body


# -- what goes out -------------------------------------------------------------------------
async def test_the_request_goes_out_byte_for_byte(upstream, transport) -> None:
    server = upstream()
    headers = [(b"Host", b"shop.example"), (b"X-Mixed-Case", b"Value"), (b"x-two", b"a"),
               (b"x-two", b"b")]  # fmt: skip
    response, body = await send(transport, f"{server.url}/a%2Fb?q=%20x", headers=headers)
    assert (response.status_code, body) == (200, b"/a%2Fb?q=%20x")
    assert server.heads[0] == (
        b"GET /a%2Fb?q=%20x HTTP/1.1\r\nHost: shop.example\r\nX-Mixed-Case: Value\r\n"
        b"x-two: a\r\nx-two: b\r\n\r\n"  # nothing added: no User-Agent, Accept, encodings
    )


async def test_bodies_are_framed_by_length_or_chunks(upstream, transport) -> None:
    server = upstream()
    await send(transport, server.url + "/len", "POST", content=b"x" * 100_000)
    assert server.bodies[0] == b"x" * 100_000

    def chunked(conn: socket.socket, srv: Upstream) -> None:
        buffer = bytearray()
        srv.heads.append(read_head(conn, buffer))
        while not buffer.endswith(b"0\r\n\r\n"):
            buffer += conn.recv(65536)
        srv.bodies.append(bytes(buffer))
        conn.sendall(answer())

    server = upstream(chunked)

    async def parts() -> AsyncIterator[bytes]:
        yield b"abc"
        yield b""  # an empty part is not a chunk: it would end the body
        yield b"defgh"

    request = httpx.Request("POST", server.url, content=parts(), extensions={"timeout": TIMEOUTS})
    response = await transport.handle_async_request(request)
    await response.aread()
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
    ],
    ids=["crlf", "lf", "nul", "space-in-name", "colon-in-name"],
)
async def test_a_head_that_could_be_split_is_never_written(
    upstream, transport, headers, error
) -> None:
    server = upstream()
    request = httpx.Request("GET", server.url, extensions={"timeout": TIMEOUTS})
    request.headers = httpx.Headers([*request.headers.raw, *headers])
    with pytest.raises(httpx.LocalProtocolError, match=error):
        await transport.handle_async_request(request)
    assert server.heads == []


# -- what comes back -----------------------------------------------------------------------
def scripted(reply: bytes, *, then_close: bool = False) -> Handler:
    def handler(conn: socket.socket, server: Upstream) -> None:
        buffer = bytearray()
        while head := read_head(conn, buffer):
            server.heads.append(head)
            conn.sendall(reply)
            if then_close:
                conn.shutdown(socket.SHUT_WR)
                return

    return handler


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
async def test_every_kind_of_response_is_read(upstream, transport, reply, close, status, body):
    server = upstream(scripted(reply, then_close=close))
    response, received = await send(transport, server.url)
    assert (response.status_code, received) == (status, body)


async def test_response_headers_arrive_raw_and_in_order(upstream, transport) -> None:
    reply = answer(extra=b"Set-Cookie: a=1\r\nset-cookie: b=2\r\nX-Custom: Mixed Case\r\n")
    server = upstream(scripted(reply))
    response, _ = await send(transport, server.url)
    assert response.headers.raw[1:] == [
        (b"Set-Cookie", b"a=1"), (b"set-cookie", b"b=2"), (b"X-Custom", b"Mixed Case")
    ]  # fmt: skip
    assert response.extensions["reason_phrase"] == b"OK"


async def test_head_responses_have_no_body(upstream, transport) -> None:
    server = upstream(scripted(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n"))
    response, body = await send(transport, server.url, "HEAD")
    assert (response.status_code, body) == (200, b"")
    await send(transport, server.url, "HEAD")
    assert server.accepted == 2  # llhttp would wait for a body: never reused after HEAD


@pytest.mark.parametrize(
    "reply",
    [b"garbage\r\n\r\n", b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nab",
     b"HTTP/1.1 200 OK\r\nbad header\r\n\r\n"],
    ids=["not-http", "two-lengths", "header-without-colon"],
)  # fmt: skip
async def test_invalid_responses_are_protocol_errors(upstream, transport, reply) -> None:
    server = upstream(scripted(reply))
    with pytest.raises(httpx.RemoteProtocolError):
        await send(transport, server.url)


async def test_response_headers_are_bounded(upstream, transport) -> None:
    def filler(count: int) -> bytes:  # count headers of about 1 KiB each
        return b"".join(b"x-filler-%d: %s\r\n" % (n, b"v" * 1000) for n in range(count))

    server = upstream(scripted(answer(extra=filler(100))))
    with pytest.raises(httpx.RemoteProtocolError, match="too large"):
        await send(transport, server.url)
    server = upstream(scripted(answer(extra=filler(50))))  # 50 KiB is fine
    assert (await send(transport, server.url))[0].status_code == 200


async def test_a_second_response_to_one_request_is_not_passed_on(upstream, transport) -> None:
    server = upstream(scripted(answer(b"one") + answer(b"two")))
    _, body = await send(transport, server.url)
    assert body == b"one"
    _, body = await send(transport, server.url)
    assert body == b"one"  # a new connection: the extra response died with the old one
    assert server.accepted == 2


async def test_a_body_cut_short_is_an_error(upstream, transport) -> None:
    server = upstream(
        scripted(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly this", then_close=True)
    )
    with pytest.raises(httpx.RemoteProtocolError, match="mid-body"):
        await send(transport, server.url)


# -- connections ---------------------------------------------------------------------------
async def test_connections_are_kept_alive_and_reused(upstream, transport) -> None:
    server = upstream()
    for n in range(5):
        _, body = await send(transport, f"{server.url}/{n}")
        assert body == f"/{n}".encode()
    assert server.accepted == 1


async def test_a_response_closed_early_closes_its_connection(upstream, transport) -> None:
    def big(conn: socket.socket, srv: Upstream) -> None:
        buffer = bytearray()
        read_head(conn, buffer)
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 10000000\r\n\r\n" + b"x" * 1000)
        conn.settimeout(5)
        if conn.recv(1) == b"":
            srv.closed.set()

    server = upstream(big)
    request = httpx.Request("GET", server.url, extensions={"timeout": TIMEOUTS})
    response = await transport.handle_async_request(request)
    await response.aclose()
    assert await asyncio.to_thread(server.closed.wait, 5)


async def test_a_stale_connection_is_retried_only_without_a_body(upstream, transport) -> None:
    def once_per_connection(conn: socket.socket, srv: Upstream) -> None:
        buffer = bytearray()
        srv.heads.append(read_head(conn, buffer))
        conn.sendall(answer())
        read_head(conn, buffer)  # the next request on this connection: closed unanswered

    server = upstream(once_per_connection)
    await send(transport, server.url)
    response, body = await send(transport, server.url)  # reused, closed, sent again
    assert (response.status_code, body, server.accepted) == (200, b"ok", 2)
    with pytest.raises(httpx.RemoteProtocolError):  # a body is never sent twice
        await send(transport, server.url, "POST", content=b"payment")
    assert server.accepted == 2


async def test_the_pool_limit_holds_and_recovers(upstream) -> None:
    release = threading.Event()

    def slow(conn: socket.socket, srv: Upstream) -> None:
        buffer = bytearray()
        while read_head(conn, buffer):
            release.wait(10)
            conn.sendall(answer())

    server = upstream(slow)
    pool = HTTP11Transport(httpx.Limits(max_connections=2, max_keepalive_connections=2))
    busy = [asyncio.ensure_future(send(pool, server.url)) for _ in range(2)]
    await asyncio.sleep(0.05)
    with pytest.raises(httpx.PoolTimeout):
        await send(pool, server.url)  # both connections busy for longer than the pool timeout
    release.set()
    assert [response.status_code for response, _ in await asyncio.gather(*busy)] == [200, 200]
    assert (await send(pool, server.url))[0].status_code == 200
    assert server.accepted == 2
    await pool.aclose()


async def test_idle_connections_expire(upstream) -> None:
    server = upstream()
    pool = HTTP11Transport(httpx.Limits(max_connections=4, keepalive_expiry=0.05))
    await send(pool, server.url)
    await asyncio.sleep(0.1)
    await send(pool, server.url)
    assert server.accepted == 2
    await pool.aclose()


# -- failures become httpx's errors --------------------------------------------------------
async def test_refused_is_a_connect_error(transport) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(httpx.ConnectError):
        await send(transport, f"http://127.0.0.1:{port}/")


async def test_no_answer_is_a_read_timeout(upstream, transport) -> None:
    server = upstream(lambda conn, srv: (read_head(conn, bytearray()), conn.recv(1)))
    with pytest.raises(httpx.ReadTimeout):
        await send(transport, server.url)


async def test_an_upstream_that_stops_reading_is_a_write_timeout(upstream, transport) -> None:
    stop = threading.Event()
    server = upstream(lambda conn, srv: stop.wait(10))
    with pytest.raises(httpx.WriteTimeout):
        await send(transport, server.url, "POST", content=b"x" * (64 << 20))
    stop.set()


async def test_closed_unanswered_is_a_protocol_error(upstream, transport) -> None:
    server = upstream(lambda conn, srv: read_head(conn, bytearray()))
    with pytest.raises(httpx.RemoteProtocolError, match="unanswered"):
        await send(transport, server.url)


# -- TLS -----------------------------------------------------------------------------------
async def test_https_upstreams_are_verified(upstream) -> None:
    import trustme

    authority = trustme.CA()
    server_side = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    authority.issue_cert("127.0.0.1").configure_cert(server_side)
    server = upstream(tls=server_side)
    trusting = ssl.create_default_context()
    authority.configure_trust(trusting)
    pool = HTTP11Transport(verify=trusting)
    response, body = await send(pool, server.url + "/secure")
    assert (response.status_code, body) == (200, b"/secure")
    await pool.aclose()
    strict = HTTP11Transport()  # the system's CAs do not know this certificate
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        await send(strict, server.url)
    await strict.aclose()
