"""HTTP11SyncTransport: CanaryWSGI's default forwarding transport, a thread-safe pool of
keep-alive sockets driving the same sans-I/O core as the asyncio one (``http11.py``).

Why not httpx's ``HTTPTransport``: httpcore's blocking HTTP/1.1 connection parses with h11,
which takes bytes left after a complete response as the start of the next response, so a
canary that wrote a response twice (or a 204 with a body) handed one user's page to the
next; and it costs a good part of each forwarded request. Here the reuse verdict is the
core's (``Exchange.reusable``) and the retry rule is ``http11.may_retry``, exactly as in
``pool.py``; each request is one ``sendall`` of its head, ``recv`` of up to 64 KiB at a
time, and no thread of its own.

Timeouts come from ``request.extensions["timeout"]`` as httpx sets them: ``connect``
(``ConnectTimeout``), ``write`` (``WriteTimeout``, per ``send``; a body's whole piece),
``read`` (``ReadTimeout``, per ``recv``; the whole response head) and ``pool``
(``PoolTimeout``, waiting for room).
"""

from __future__ import annotations

import contextlib
import select
import socket
import ssl
import struct
import threading
import time
from collections.abc import Iterable, Iterator

import httpx

from .http11 import Exchange, RetryableError, may_retry, readable_now
from .idle import IdleConnections
from .wire import Incoming, Origin, Outgoing, origin_of, response_from_incoming

__all__ = ["HTTP11SyncTransport"]

Timeouts = dict[str, "float | None"]
READ_SIZE = 64 * 1024
_UNSET = -1.0  # a socket timeout no caller asks for: the first one set always happens
_DONTWAIT = getattr(socket, "MSG_DONTWAIT", 0)


def _timeval(timeout: float | None) -> bytes:
    """``struct timeval`` for SO_RCVTIMEO / SO_SNDTIMEO; zero means no timeout, so a
    timeout of zero is the smallest one instead."""
    if timeout is None:
        return struct.pack("ll", 0, 0)
    micros = max(1, round(timeout * 1_000_000))
    return struct.pack("ll", micros // 1_000_000, micros % 1_000_000)


class _Connection:
    """One socket to one origin, used by one thread at a time.

    A plain TCP socket stays in blocking mode and the kernel enforces its timeouts
    (SO_RCVTIMEO, SO_SNDTIMEO): each send and recv is one system call. With a Python-level
    socket timeout each is a poll and then the call, and under gunicorn's threads every
    call that releases the GIL costs more again in handing it back (measured: the router's
    worker spent over four times bare Flask's kernel time per request). A TLS socket keeps
    Python's timeout, one for both directions: OpenSSL reports a kernel timeout as a
    "want read" in the middle of a record."""

    __slots__ = ("exchanges", "idle_since", "kernel", "origin", "read_timeout", "sock",
                 "write_timeout")  # fmt: skip

    def __init__(self, origin: Origin, sock: socket.socket):
        self.origin = origin
        self.sock = sock
        self.idle_since = 0.0
        self.exchanges = 0
        self.read_timeout: float | None = _UNSET
        self.write_timeout: float | None = _UNSET
        self.kernel = (
            sock.family in (socket.AF_INET, socket.AF_INET6)
            and not isinstance(sock, ssl.SSLSocket)
            and hasattr(socket, "SO_RCVTIMEO")
        )
        if self.kernel:
            sock.settimeout(None)  # blocking: the kernel times each call out

    def for_reading(self, timeout: float | None) -> None:
        """Bound each following recv by ``timeout`` (each change costs a system call, so
        only a change is made)."""
        if timeout != self.read_timeout:
            if self.kernel:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _timeval(timeout))
            else:
                self.sock.settimeout(timeout)
                self.write_timeout = _UNSET  # one timeout for both directions
            self.read_timeout = timeout

    def for_writing(self, timeout: float | None) -> None:
        """Bound each following send by ``timeout``."""
        if timeout != self.write_timeout:
            if self.kernel:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, _timeval(timeout))
            else:
                self.sock.settimeout(timeout)
                self.read_timeout = _UNSET
            self.write_timeout = timeout

    def still_open(self) -> bool:
        """Has the upstream closed this idle connection (or sent bytes nobody asked for)?
        One zero-timeout poll of this socket: an idle connection that is readable at all is
        closed, broken, or carries bytes that must never be read as a response."""
        sock = self.sock
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            return False
        return not readable_now(sock.fileno())

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


class HTTP11SyncTransport(httpx.BaseTransport):
    """A thread-safe pool of HTTP/1.1 keep-alive connections for blocking code.

    >>> transport = HTTP11SyncTransport(httpx.Limits(max_connections=100))
    >>> response = transport.handle_request(httpx.Request("GET", url))

    ``limits`` and ``verify`` mean what they mean for ``HTTP11Transport`` (pool.py).
    """

    def __init__(
        self,
        limits: httpx.Limits | None = None,
        *,
        verify: bool | ssl.SSLContext = True,
    ):
        limits = limits or httpx.Limits(max_connections=100, max_keepalive_connections=20)
        self._max_open = limits.max_connections
        self._verify = verify
        self._ssl: ssl.SSLContext | None = None
        self._lock = threading.Lock()
        self._room = threading.Condition(self._lock)
        self._idle: IdleConnections[_Connection] = IdleConnections(
            limits.max_keepalive_connections, limits.keepalive_expiry
        )
        self._open = 0  # connections open or being opened
        self._closed = False

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        incoming = self._round_trip(
            request.method, origin_of(request), request.url.raw_path, request.headers.raw,
            request.stream, request.extensions.get("timeout", {}),  # type: ignore[arg-type]
        )  # fmt: skip
        return response_from_incoming(incoming)

    def forward(self, outgoing: Outgoing) -> Incoming:
        """The forwarders' way in: the request in wire form, no httpx models (wire.py)."""
        return self._round_trip(
            outgoing.method, outgoing.origin, outgoing.target, outgoing.headers,
            outgoing.body, outgoing.timeouts,
        )  # fmt: skip

    def _round_trip(
        self,
        method: str,
        origin: Origin,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        body: Iterable[bytes],
        timeouts: Timeouts,
    ) -> Incoming:
        if self._closed:
            raise RuntimeError("the transport is closed")
        # A head that cannot be sent fails here, before it costs a connection.
        exchange = Exchange(method, target, headers)
        try:
            return self._exchange(self._acquire(origin, timeouts), method, body, exchange, timeouts)
        except RetryableError:
            pass  # closed while idle, before any answer: once more, on a fresh connection
        exchange = Exchange(method, target, headers)
        connection = self._acquire(origin, timeouts, fresh=True)
        try:
            return self._exchange(connection, method, body, exchange, timeouts)
        except RetryableError as exc:  # a fresh connection is never retried: unreachable
            raise exc.error from None

    # -- one exchange ------------------------------------------------------------------------
    def _exchange(
        self,
        connection: _Connection,
        method: str,
        body: Iterable[bytes],
        exchange: Exchange,
        timeouts: Timeouts,
    ) -> Incoming:
        reused = connection.exchanges > 0
        connection.exchanges += 1
        try:
            self._send(connection, body, exchange, timeouts.get("write"))
            _receive_head(connection, exchange, timeouts.get("read"))
        except httpx.RemoteProtocolError as exc:
            self._release(connection, False)
            if may_retry(method, exchange, reused=reused):
                raise RetryableError(exc) from None
            raise
        except BaseException:  # timeouts, body errors, a worker being stopped
            self._release(connection, False)
            raise
        stream = _ResponseBody(self, connection, exchange)
        return Incoming(exchange.status, exchange.reason, exchange.headers, stream, stream.close)

    def _send(
        self,
        connection: _Connection,
        body: Iterable[bytes],
        exchange: Exchange,
        write_timeout: float | None,
    ) -> None:
        connection.for_writing(write_timeout)
        if not exchange.has_body:
            _send_all(connection.sock, exchange.head + exchange.end_body())
            return
        # Each piece is sent while listening: when the upstream answers early (e.g. 413) or
        # closes, sending stops, even when it stopped reading and the socket is full. The
        # body stays unfinished, so the core never lets this connection be reused: the
        # upstream would read the next request as the rest of this body.
        pending = exchange.head  # goes out with the first chunk: one send, not two
        for chunk in body:
            wire = exchange.frame(chunk)
            if wire:
                if not _send_listening(connection, exchange, pending + wire, write_timeout):
                    return
                pending = b""
        wire = pending + exchange.end_body()
        if wire and not _send_listening(connection, exchange, wire, write_timeout):
            # end_body() counted the end as sent; it was not, all of it.
            exchange.request_done = False

    # -- the pool ----------------------------------------------------------------------------
    def _acquire(self, origin: Origin, timeouts: Timeouts, *, fresh: bool = False) -> _Connection:
        """An idle connection to ``origin`` (unless ``fresh``), else a new one when there is
        room, else the first that frees up within the pool timeout."""
        pool_timeout = timeouts.get("pool")
        deadline = None if pool_timeout is None else time.monotonic() + pool_timeout
        with self._lock:
            while True:
                if self._closed:
                    raise httpx.PoolTimeout("the transport was closed")
                if not fresh:
                    connection, stale = self._idle.take(origin, time.monotonic())
                    self._open -= stale
                    if connection is not None:
                        return connection
                if self._max_open is None or self._open < self._max_open:
                    self._open += 1
                    break
                oldest = self._idle.pop_oldest()
                if oldest is not None:  # full, but an idle connection of another key can go
                    oldest.close()
                    self._open -= 1
                    continue
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise httpx.PoolTimeout("no connection to the upstream became free in time")
                self._room.wait(left)
        try:
            return self._connect(origin, timeouts.get("connect"))
        except BaseException:
            with self._lock:
                self._open -= 1
                self._room.notify()
            raise

    def _release(self, connection: _Connection, reusable: bool) -> None:
        """Called once per exchange, when it is over."""
        with self._lock:
            if reusable and not self._closed and self._idle.has_room():
                connection.idle_since = time.monotonic()
                self._idle.put(connection.origin, connection)
            else:
                connection.close()
                self._open -= 1
            self._room.notify()

    def _connect(self, origin: Origin, timeout: float | None) -> _Connection:
        scheme, host, port, _ = origin
        hostname = host.decode("ascii")
        try:
            sock = socket.create_connection((hostname, port), timeout=timeout)
        except TimeoutError:
            raise httpx.ConnectTimeout(f"connecting to {hostname}:{port} timed out") from None
        except OSError as exc:  # refused, unreachable, name not found
            raise httpx.ConnectError(f"cannot connect to {hostname}:{port}: {exc}") from exc
        try:
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                # A request head and a small body go out at once, not after a delayed ACK.
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if scheme == b"https":
                sock = self._ssl_context().wrap_socket(sock, server_hostname=hostname)
        except TimeoutError:
            sock.close()
            raise httpx.ConnectTimeout(f"TLS with {hostname}:{port} timed out") from None
        except OSError as exc:  # ssl.SSLError (certificate checks) is an OSError
            sock.close()
            raise httpx.ConnectError(f"cannot connect to {hostname}:{port}: {exc}") from exc
        return _Connection(origin, sock)

    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            verify = self._verify
            if isinstance(verify, ssl.SSLContext):
                self._ssl = verify
            else:
                self._ssl = httpx.create_ssl_context(verify=verify)
        return self._ssl

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for connection in self._idle.drain():
                connection.close()
                self._open -= 1
            self._room.notify_all()


class _ResponseBody(httpx.SyncByteStream):
    """The body of one response, read from the socket as the consumer asks for it; hands
    the connection back when read to the end (reusable by the core's verdict) or closed
    before that (closed with it)."""

    def __init__(self, pool: HTTP11SyncTransport, connection: _Connection, exchange: Exchange):
        self._pool: HTTP11SyncTransport | None = pool
        self._connection = connection
        self._exchange = exchange

    def __iter__(self) -> Iterator[bytes]:
        exchange, connection = self._exchange, self._connection
        try:
            while True:
                while (chunk := exchange.take()) is not None:
                    yield chunk
                if exchange.complete:
                    break
                _receive(connection, exchange)
        except BaseException:
            self._done(False)
            raise
        self._done(exchange.reusable)

    def close(self) -> None:
        self._done(self._exchange.reusable)

    def _done(self, reusable: bool) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool._release(self._connection, reusable)


def _receive_head(connection: _Connection, exchange: Exchange, timeout: float | None) -> None:
    """Read until the final head is in, within ``timeout`` for the whole head (as the asyncio
    driver waits for it): a socket timeout alone bounds each read, and an upstream sending a
    header line every few seconds would hold the thread for up to MAX_HEAD_BYTES lines
    (red team F4). Leaves the read timeout at ``timeout`` for the body's reads."""
    connection.for_reading(timeout)
    if timeout is None:
        while not exchange.head_done:
            _receive(connection, exchange)
        return
    deadline = time.monotonic() + timeout
    left = timeout
    while not exchange.head_done:  # it may be in already (an answer during the upload)
        if left <= 0:
            connection.for_reading(timeout)
            raise httpx.ReadTimeout("read timed out")
        connection.for_reading(left)  # the first time, the timeout already set: no syscall
        _receive(connection, exchange)
        left = deadline - time.monotonic()
    connection.for_reading(timeout)


def _receive(connection: _Connection, exchange: Exchange) -> None:
    """One read from the upstream into the core (the read timeout is already set)."""
    try:
        data = connection.sock.recv(READ_SIZE)
    except (TimeoutError, BlockingIOError):  # Python's timeout, or the kernel's
        raise httpx.ReadTimeout("read timed out") from None
    except OSError as exc:
        raise httpx.RemoteProtocolError(f"the connection to the upstream broke: {exc}") from exc
    if data:
        exchange.feed(data)
    else:
        exchange.feed_eof()


def _send_all(sock: socket.socket, data: bytes) -> None:
    try:
        sock.sendall(data)
    except (TimeoutError, BlockingIOError):
        raise httpx.WriteTimeout("write timed out") from None
    except OSError as exc:
        raise httpx.RemoteProtocolError(f"the connection to the upstream broke: {exc}") from exc


def _heard(connection: _Connection, exchange: Exchange) -> bool:
    """The upstream sent something while we send the body: read it into the core. True when
    it is a final answer or the upstream closed (stop sending); an interim head (``100
    Continue`` to the client's ``Expect``) is no answer, and the body goes on, as in the
    asyncio driver."""
    try:
        data = connection.sock.recv(READ_SIZE)
    except (TimeoutError, BlockingIOError):
        raise httpx.ReadTimeout("read timed out") from None
    except OSError as exc:
        raise httpx.RemoteProtocolError(f"the connection to the upstream broke: {exc}") from exc
    if not data:
        return True  # the wait for the head reads the EOF again, and says what it means
    exchange.feed(data)
    return exchange.head_done


def _send_listening(
    connection: _Connection, exchange: Exchange, data: bytes, timeout: float | None
) -> bool:
    """Send ``data`` within ``timeout``, reading what the upstream says meanwhile: True when
    all of it went out, False when the upstream answered (a final head) or closed first."""
    sock = connection.sock
    fileno = sock.fileno()
    poller = select.poll()
    poller.register(fileno, select.POLLIN | select.POLLOUT)
    deadline = None if timeout is None else time.monotonic() + timeout
    view = memoryview(data)
    while view:
        if isinstance(sock, ssl.SSLSocket) and sock.pending() and _heard(connection, exchange):
            return False
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        ready = poller.poll(None if left is None else left * 1000)
        if not ready:
            raise httpx.WriteTimeout("write timed out")
        events = ready[0][1]
        if events & ~select.POLLOUT and _heard(connection, exchange):  # readable, hung up
            return False
        if events & select.POLLOUT:
            try:
                # Without waiting: a blocking socket would otherwise wait until all of
                # ``view`` fits, deaf to an answer meanwhile.
                sent = sock.send(view, _DONTWAIT) if connection.kernel else sock.send(view)
            except BlockingIOError:
                continue  # the room poll saw is gone: poll again
            except TimeoutError:
                raise httpx.WriteTimeout("write timed out") from None
            except OSError as exc:
                message = f"the connection to the upstream broke: {exc}"
                raise httpx.RemoteProtocolError(message) from exc
            view = view[sent:]
    return True
