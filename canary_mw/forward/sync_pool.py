"""HTTP11SyncTransport: CanaryWSGI's default forwarding transport, a thread-safe pool of
keep-alive sockets driving the same sans-I/O core as the asyncio one (``http11.py``).

Why not httpx's ``HTTPTransport``: httpcore's blocking HTTP/1.1 connection parses with h11,
which takes bytes left after a complete response as the start of the next response, so a
canary that wrote a response twice (or a 204 with a body) handed one user's page to the
next; and it costs a good part of each forwarded request. Here the reuse verdict is the
core's (``Exchange.reusable``) and the retry rule is ``http11.may_retry``, exactly as in
``pool.py``; a request without a body is one ``send`` of its head, each read is a ``poll``
and a ``recv`` of up to 64 KiB, and there is no thread of its own.

Timeouts come from ``request.extensions["timeout"]`` as httpx sets them: ``connect``
(``ConnectTimeout``), ``write`` (``WriteTimeout``: for the whole head of a request without a
body, for each piece of a body), ``read`` (``ReadTimeout``: for the whole response head, then
for each read of the body) and ``pool`` (``PoolTimeout``, waiting for room). Each is a
deadline: signals arriving meanwhile do not extend it.
"""

from __future__ import annotations

import contextlib
import math
import select
import socket
import ssl
import threading
import time
from collections.abc import Iterable, Iterator, Sequence

import httpx

from .http11 import Exchange, RetryableError, may_retry
from .idle import IdleConnections
from .wire import Incoming, Origin, Outgoing, origin_of, response_from_incoming

__all__ = ["HTTP11SyncTransport"]

Timeouts = dict[str, "float | None"]
READ_SIZE = 64 * 1024
TLS_RECORD = 16 * 1024  # the largest TLS record's plaintext
_UNSET = -1.0  # a socket timeout no caller asks for: the first one set always happens


class _Connection:
    """One socket to one origin, used by one thread at a time.

    A plain TCP socket is non-blocking, and the waits are ours: a send is tried at once (a
    request head nearly always fits: one system call) and waits in ``poll`` only for room,
    a read waits in ``poll`` for data and then reads. Every wait counts down to a deadline
    that signals do not move (``poll`` is retried with the time left, PEP 475; a blocking
    call with SO_RCVTIMEO starts its whole timeout again after each signal), and no call
    changes the socket's mode per request (``settimeout`` is a system call each time). A
    TLS socket keeps Python's timeout, one for both directions: OpenSSL may need to read to
    write and the other way round, which Python's timeout handles."""

    __slots__ = ("_reader", "_timeout", "exchanges", "idle_since", "origin", "plain", "sock")

    def __init__(self, origin: Origin, sock: socket.socket):
        self.origin = origin
        self.sock = sock
        self.idle_since = 0.0
        self.exchanges = 0
        self._timeout: float | None = _UNSET
        self.plain = not isinstance(sock, ssl.SSLSocket)
        if self.plain:
            sock.setblocking(False)
        self._reader = select.poll()
        self._reader.register(sock.fileno(), select.POLLIN)

    def _set_timeout(self, timeout: float | None) -> None:
        """TLS only: Python's timeout for the next call (a system call, so only a change)."""
        if timeout != self._timeout:
            self.sock.settimeout(timeout)
            self._timeout = timeout

    def readable_within(self, timeout: float | None) -> bool:
        """Wait up to ``timeout`` seconds (None: for ever) until the socket can be read (a
        closed one: the read says how)."""
        if self.sock.fileno() < 0:
            return True
        return bool(self._reader.poll(None if timeout is None else _milliseconds(timeout)))

    def recv(self, timeout: float | None) -> bytes:
        """Up to READ_SIZE bytes (b"" at the end), read within ``timeout``."""
        sock = self.sock
        try:
            if not self.plain:
                self._set_timeout(timeout)
                return sock.recv(READ_SIZE)
            # The first wait is the whole timeout (poll itself goes on with the time left
            # after a signal, PEP 475); after a false alarm, what is left of it.
            deadline = None if timeout is None else time.monotonic() + timeout
            left = timeout
            while True:
                if not self.readable_within(left):
                    raise httpx.ReadTimeout("read timed out")
                try:
                    return sock.recv(READ_SIZE)
                except BlockingIOError:  # readable was a false alarm (poll's word is a hint)
                    left = None if deadline is None else max(0.0, deadline - time.monotonic())
        except (TimeoutError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            # (TLS with no time left is a non-blocking read: "want read" is its timeout.)
            raise httpx.ReadTimeout("read timed out") from None
        except OSError as exc:
            raise _broken(exc) from exc

    def send_all(self, data: bytes, timeout: float | None) -> None:
        """All of ``data``, within ``timeout`` for the whole of it: an upstream that reads a
        few bytes at a time cannot hold the thread for one timeout per few bytes. The same
        non-blocking sends as a body's (send_some), plain and TLS alike."""
        sent = self.send_some(data)  # a request head nearly always goes in one system call
        if sent == len(data):
            return
        deadline = None if timeout is None else time.monotonic() + timeout
        view = memoryview(data)[sent:]
        while True:
            view = view[self.send_some(view) :]
            if not view:
                return
            left = None if deadline is None else deadline - time.monotonic()
            if not _writable_within(self.sock, left):
                raise httpx.WriteTimeout("write timed out")

    def recv_now(self) -> bytes | None:
        """What can be read without waiting (b"" at the end), or None when nothing can: a
        TLS socket the upstream wrote only handshake messages to (TLS 1.3 sends session
        tickets after the handshake, which wake a poll but carry no HTTP), or half a
        record. Waiting there would wait for an answer to a request not yet sent."""
        try:
            if not self.plain:
                self._set_timeout(0.0)
            return self.sock.recv(READ_SIZE)
        except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return None
        except OSError as exc:
            raise _broken(exc) from exc

    def send_some(self, data: bytes | memoryview) -> int:
        """Send what fits of ``data`` now, without waiting, and say how much went out (0:
        poll again; the caller's deadline bounds the waits). A TLS socket sends at most one
        record per call, non-blocking too: a blocking SSL_write of a whole piece waited for
        room deaf to an early answer, for ever without a write timeout (review 3c9adb9).
        OpenSSL wants a retry after "want write" with the same bytes, which the caller's
        unchanged view gives (Python lets the buffer move)."""
        try:
            if self.plain:
                return self.sock.send(data)
            self._set_timeout(0.0)
            return self.sock.send(data[:TLS_RECORD])
        except (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
            return 0  # no room (or TLS must read first): poll again
        except OSError as exc:
            raise _broken(exc) from exc

    def still_open(self) -> bool:
        """Has the upstream closed this idle connection (or sent bytes nobody asked for)?
        One zero-timeout poll of this socket: an idle connection that is readable at all is
        closed, broken, or carries bytes that must never be read as a response."""
        sock = self.sock
        if not self.plain and sock.pending():  # type: ignore[attr-defined]
            return False
        return not self.readable_within(0)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def _broken(exc: OSError) -> httpx.RemoteProtocolError:
    return httpx.RemoteProtocolError(f"the connection to the upstream broke: {exc}")


def _milliseconds(timeout: float) -> int:
    """A timeout in seconds as poll takes it: whole milliseconds, rounded up."""
    return max(0, math.ceil(timeout * 1000))


def _writable_within(sock: socket.socket, timeout: float | None) -> bool:
    """Wait up to ``timeout`` seconds (None: for ever) for room to send (or an error, which
    the next send reports)."""
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLOUT)
    return bool(poller.poll(None if timeout is None else _milliseconds(timeout)))


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
        # Also when the whole answer came with its head (most small ones do): the connection
        # stays this exchange's until the body has been iterated past or closed, so a
        # canary's late second copy of the answer finds it idle and is caught before reuse.
        body = _ResponseBody(self, connection, exchange, timeouts.get("read"))
        return Incoming(
            exchange.status, exchange.reason, exchange.headers, body, body.close,
            complete=exchange.complete,
        )  # fmt: skip

    def _send(
        self,
        connection: _Connection,
        body: Iterable[bytes],
        exchange: Exchange,
        write_timeout: float | None,
    ) -> None:
        if not exchange.has_body:
            connection.send_all(exchange.head + exchange.end_body(), write_timeout)
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
        room, else the first that frees up within the pool timeout.

        The lock guards the bookkeeping only: asking an idle connection whether the upstream
        closed it (a poll) and closing one happen outside it. Under gunicorn's threads a
        lock held across a call that lets the GIL go puts every other forwarding thread to
        sleep on the lock."""
        now = time.monotonic()
        pool_timeout = timeouts.get("pool")
        deadline = None if pool_timeout is None else now + pool_timeout
        while True:
            victim = None
            expired: Sequence[_Connection] = ()
            with self._lock:
                while True:
                    if self._closed:
                        raise httpx.PoolTimeout("the transport was closed")
                    if not fresh:
                        connection, stale = self._idle.pop(origin, now)
                        if stale:  # closed once the lock is let go
                            self._open -= len(stale)
                            expired = [*expired, *stale]
                        if connection is not None:
                            break
                    if self._max_open is None or self._open < self._max_open:
                        self._open += 1
                        connection = None
                        break
                    # Full, but an idle connection of another key can go.
                    victim = self._idle.pop_oldest()
                    if victim is not None:
                        break
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        raise httpx.PoolTimeout("no connection to the upstream became free in time")
                    self._room.wait(left)
                    now = time.monotonic()
            for old in expired:  # (already counted as closed)
                old.close()
            if victim is not None:
                self._discard(victim)
            elif connection is None:
                break  # room for a new one
            elif connection.still_open():
                return connection
            else:
                self._discard(connection)  # the upstream closed it while idle: look again
            now = time.monotonic()
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
            if reusable and not self._closed and self._idle.offer(connection, time.monotonic()):
                self._room.notify()
                return
        self._discard(connection)

    def _discard(self, connection: _Connection) -> None:
        """Close a connection that counted as open, then make its room known."""
        connection.close()
        with self._lock:
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

    def __init__(
        self,
        pool: HTTP11SyncTransport,
        connection: _Connection,
        exchange: Exchange,
        read_timeout: float | None,
    ):
        self._pool: HTTP11SyncTransport | None = pool
        self._connection = connection
        self._exchange = exchange
        self._read_timeout = read_timeout  # for each read of the body

    def __iter__(self) -> Iterator[bytes]:
        exchange, connection = self._exchange, self._connection
        try:
            while True:
                chunk = exchange.take()  # all that came in (nothing comes in while we yield)
                if chunk is not None:
                    yield chunk
                if exchange.complete:
                    break
                _receive(connection, exchange, self._read_timeout)
        except BaseException:
            self._done(False)
            raise
        self._done(exchange.reusable)

    def close(self) -> None:
        if self._pool is not None:  # (iterated to its end: given back already)
            self._done(self._exchange.reusable)

    def _done(self, reusable: bool) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool._release(self._connection, reusable)


def _receive_head(connection: _Connection, exchange: Exchange, timeout: float | None) -> None:
    """Read until the final head is in, within ``timeout`` for the whole head (as the asyncio
    driver waits for it): a timeout per read alone would let an upstream sending a header
    line every few seconds hold the thread for up to MAX_HEAD_BYTES lines (red team F4)."""
    if exchange.head_done:  # it is in already (an answer during the upload)
        return
    deadline = None if timeout is None else time.monotonic() + timeout
    left = timeout
    while True:
        _receive(connection, exchange, left)
        if exchange.head_done:
            return
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise httpx.ReadTimeout("read timed out")


def _receive(connection: _Connection, exchange: Exchange, timeout: float | None) -> None:
    """One read from the upstream into the core, within ``timeout``."""
    data = connection.recv(timeout)
    if data:
        exchange.feed(data)
    else:
        exchange.feed_eof()


def _heard(connection: _Connection, exchange: Exchange) -> bool:
    """The upstream sent something while we send the body: read it into the core. True when
    it is a final answer or the upstream closed (stop sending); an interim head (``100
    Continue`` to the client's ``Expect``) is no answer, and the body goes on, as in the
    asyncio driver."""
    data = connection.recv_now()
    if data is None:
        return False  # no HTTP bytes yet (TLS: session tickets, or half a record)
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
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        if isinstance(sock, ssl.SSLSocket) and sock.pending() and _heard(connection, exchange):
            return False
        ready = poller.poll(None if left is None else left * 1000)
        if not ready:
            raise httpx.WriteTimeout("write timed out")
        events = ready[0][1]
        if events & ~select.POLLOUT and _heard(connection, exchange):  # readable, hung up
            return False
        if events & select.POLLOUT:
            view = view[connection.send_some(view) :]
    return True
