"""Scripted upstreams on real loopback sockets, and one blocking face for both forwarding
drivers, so every transport test runs unchanged over HTTP11Transport (asyncio) and
HTTP11SyncTransport (blocking).

``Upstream(handler)`` runs ``handler(conn, upstream)`` in a thread per accepted connection
and records what it read; ``Driver`` sends requests through one transport and returns
``(response, body)``; for the asyncio transport it runs an event loop in a thread of its own
(the transport binds to the loop that first uses it).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import Any

import httpx

from canary_mw.forward.pool import HTTP11Transport
from canary_mw.forward.sync_pool import HTTP11SyncTransport

Handler = Callable[[socket.socket, "Upstream"], None]
TIMEOUTS = {"connect": 2.0, "read": 2.0, "write": 2.0, "pool": 0.3}
#: HTTP11Transport on asyncio's loop and on uvloop's (uvicorn's choice when installed: its
#: transports differ, e.g. a write after the peer closed raises); HTTP11SyncTransport.
DRIVERS = ("async", "uvloop", "sync")


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


def declared_length(head: bytes) -> int:
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":")[1])
    return 0


def read_body(conn: socket.socket, buffer: bytearray, head: bytes) -> bytes:
    """The request body after ``head``: by its Content-Length, or chunked up to the last
    chunk (the raw chunked bytes: the tests look at framing)."""
    if b"transfer-encoding: chunked" not in head.lower():
        return read_exactly(conn, buffer, declared_length(head))
    while True:
        if buffer.startswith(b"0\r\n\r\n"):
            end = 0
            break
        if (end := buffer.find(b"\r\n0\r\n\r\n")) >= 0:
            end += 2
            break
        data = conn.recv(65536)
        if not data:
            end = len(buffer) - 5
            break
        buffer += data
    body, buffer[:] = bytes(buffer[: end + 5]), buffer[end + 5 :]
    return body


def target(head: bytes) -> bytes:
    return head.split(b" ")[1]


def wait_for(predicate: Callable[[], object], timeout: float = 5, what: str = "") -> None:
    """Wait until ``predicate()`` holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        time.sleep(0.005)


class Upstream:
    """A loopback server running ``handler(conn, self)`` for each connection, in a thread,
    recording the raw bytes of each request head it read and how many connections came."""

    def __init__(self, handler: Handler, *, tls: ssl.SSLContext | None = None):
        self.handler = handler
        self.heads: list[bytes] = []
        self.bodies: list[bytes] = []
        self.accepted = 0
        self.finished = 0  # handlers that returned (their connection closed)
        self.closed = threading.Event()  # set when a handler saw the client close
        self.state: dict[str, Any] = {}  # for handlers that change behaviour mid-test
        self._lock = threading.Lock()
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
            with self._lock:
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
        finally:
            with self._lock:
                self.finished += 1

    def close(self) -> None:
        self._listener.close()


def answer(body: bytes = b"ok", extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n%s\r\n%s" % (len(body), extra, body)


def keep_alive(conn: socket.socket, server: Upstream) -> None:
    """Answers every request on the connection with its own path, reading declared bodies."""
    buffer = bytearray()
    while head := read_head(conn, buffer):
        server.heads.append(head)
        server.bodies.append(read_body(conn, buffer, head))
        conn.sendall(answer(target(head)))


def scripted(reply: bytes, *, then_close: bool = False) -> Handler:
    """Answers every request head with ``reply`` (not reading bodies)."""

    def handler(conn: socket.socket, server: Upstream) -> None:
        buffer = bytearray()
        while head := read_head(conn, buffer):
            server.heads.append(head)
            conn.sendall(reply)
            if then_close:
                conn.shutdown(socket.SHUT_WR)
                return

    return handler


Content = bytes | Iterable[bytes] | None


class Driver:
    """One transport under test, used from blocking test code (any thread)."""

    def __init__(self, kind: str, limits: httpx.Limits | None = None, **options: Any):
        self.kind = kind
        limits = limits or httpx.Limits(max_connections=4, max_keepalive_connections=4)
        self._loop: asyncio.AbstractEventLoop | None = None
        self.sync: HTTP11SyncTransport | None = None
        self.async_: HTTP11Transport | None = None
        if kind == "sync":
            self.sync = HTTP11SyncTransport(limits, **options)
        else:
            if kind == "uvloop":
                import uvloop

                self._loop = uvloop.new_event_loop()
            else:
                self._loop = asyncio.new_event_loop()
            threading.Thread(target=self._loop.run_forever, daemon=True).start()
            self.async_ = HTTP11Transport(limits, **options)

    def _run(self, coroutine: Any) -> Any:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(30)

    def request(
        self,
        url: str,
        method: str = "GET",
        *,
        headers: list[tuple[bytes, bytes]] | None = None,
        content: Content = None,
        timeouts: dict[str, float] | None = None,
    ) -> httpx.Request:
        extensions = {"timeout": timeouts or TIMEOUTS}
        if content is None:  # as the routers build it: no Content-Length: 0 added
            return httpx.Request(
                method, url, headers=headers or [], stream=httpx.ByteStream(b""),
                extensions=extensions,
            )  # fmt: skip
        if isinstance(content, bytes):
            return httpx.Request(
                method, url, headers=headers or [], content=content, extensions=extensions
            )
        parts = content
        if self.kind == "sync":
            return httpx.Request(
                method, url, headers=headers or [], content=iter(parts), extensions=extensions
            )

        async def stream() -> AsyncIterator[bytes]:
            iterator = iter(parts)  # a part may block (waiting for the test): off the loop
            while (part := await asyncio.to_thread(next, iterator, None)) is not None:
                yield part

        return httpx.Request(
            method, url, headers=headers or [], content=stream(), extensions=extensions
        )

    def open(self, request: httpx.Request) -> httpx.Response:
        """The response with its head in; its body not read yet."""
        if self.sync is not None:
            return self.sync.handle_request(request)
        assert self.async_ is not None
        return self._run(self.async_.handle_async_request(request))  # type: ignore[no-any-return]

    def read(self, response: httpx.Response) -> bytes:
        if self.sync is not None:
            body = b"".join(response.stream)  # type: ignore[union-attr]
            response.close()
            return body

        async def read() -> bytes:
            body = b"".join([chunk async for chunk in response.stream])  # type: ignore[union-attr]
            await response.aclose()
            return body

        return self._run(read())  # type: ignore[no-any-return]

    def close_response(self, response: httpx.Response) -> None:
        if self.sync is not None:
            response.close()
        else:
            self._run(response.aclose())

    def send(self, url: str, method: str = "GET", **options: Any) -> tuple[httpx.Response, bytes]:
        response = self.open(self.request(url, method, **options))
        return response, self.read(response)

    def close(self) -> None:
        if self.sync is not None:
            self.sync.close()
        else:
            assert self._loop is not None
            assert self.async_ is not None
            self._run(self.async_.aclose())
            self._loop.call_soon_threadsafe(self._loop.stop)


def parts_after(event: threading.Event, first: bytes, rest: bytes) -> Iterator[bytes]:
    """A request body that sends ``first``, then ``rest`` once ``event`` is set."""
    yield first
    event.wait(5)
    yield rest


def deaf(conn: socket.socket, server: Upstream) -> None:
    """A handler that reads the request head, then nothing until ``server.state["release"]``
    is set (tests/security/conftest.py's ``upstream`` sets it): a body fills the buffers."""
    read_head(conn, bytearray())
    server.state["release"].wait(30)


def elapsed(action: Callable[[], object]) -> tuple[float, BaseException | None, object]:
    """How long ``action`` took, what it raised (or None) and what it returned."""
    start = time.monotonic()
    try:
        result = action()
    except BaseException as exc:  # the tests look at what it was
        return time.monotonic() - start, exc, None
    return time.monotonic() - start, None, result
