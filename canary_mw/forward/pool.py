"""HTTP11Transport: the router's default forwarding transport, a keep-alive connection pool.

Why not httpx's own transport: its pool (httpcore) checks every pooled connection on every
request and goes through anyio for each read and write; behind uvicorn it forwarded about
400 requests per second on the benchmark machine, where this one forwards several times
more (``python bench/run.py --only asgi transports``; figures in docs/benchmark.md). It is still
an ``httpx.AsyncBaseTransport`` (``handle_async_request``), errors are httpx's, and any other
transport (httpx's, ``AiohttpTransport``, ``respx.MockTransport``) can be passed as
``CanaryRouter(transport=...)`` instead; the router itself calls ``forward``, which takes and
returns the exchange in wire form (``wire.py``), without httpx's models.

Scope, on purpose: HTTP/1.1 (and 1.0 responses), ``http`` and ``https`` upstreams, no
proxies from the environment, no HTTP/2, no retries except one, by ``http11.may_retry``: an
idempotent request without a body whose reused keep-alive connection failed before any byte
of a response is sent once more on a new connection. To make that rare, an idle connection
is polled once before it is reused: the upstream may have closed it a moment ago, before
the event loop read its FIN. Which connection may be reused is the core's verdict
(``http11.Exchange.reusable``); the blocking twin of this pool is ``sync_pool.py``.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections import deque
from collections.abc import AsyncIterable

import httpx

from .connection import HTTP11Connection
from .http11 import Exchange, RetryableError
from .idle import IdleConnections
from .wire import Incoming, Origin, Outgoing, origin_of, response_from_incoming

__all__ = ["HTTP11Transport"]


class HTTP11Transport(httpx.AsyncBaseTransport):
    """A pool of HTTP/1.1 keep-alive connections, bound to the event loop that first uses it.

    >>> transport = HTTP11Transport(httpx.Limits(max_connections=100))
    >>> response = await transport.handle_async_request(httpx.Request("GET", url))

    ``limits``: ``max_connections`` open at once (a request that finds none free waits up
    to the ``pool`` timeout, then gets ``httpx.PoolTimeout``), ``max_keepalive_connections``
    kept idle, ``keepalive_expiry`` seconds an idle connection is reused for. ``verify``:
    certificate checks for ``https`` upstreams (``True``, ``False`` or an ``SSLContext``).
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
        self._idle: IdleConnections[HTTP11Connection] = IdleConnections(
            limits.max_keepalive_connections, limits.keepalive_expiry
        )
        self._open = 0  # connections open or being opened
        self._waiting: deque[asyncio.Future[None]] = deque()
        self._closed = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        incoming = await self._round_trip(
            request.method, origin_of(request), request.url.raw_path, request.headers.raw,
            request.stream, request.extensions.get("timeout", {}),  # type: ignore[arg-type]
        )  # fmt: skip
        return response_from_incoming(incoming)

    async def forward(self, outgoing: Outgoing) -> Incoming:
        """The forwarders' way in: the request in wire form, no httpx models (wire.py)."""
        return await self._round_trip(
            outgoing.method, outgoing.origin, outgoing.target, outgoing.headers,
            outgoing.body, outgoing.timeouts,
        )  # fmt: skip

    async def _round_trip(
        self,
        method: str,
        origin: Origin,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        body: AsyncIterable[bytes],
        timeouts: dict[str, float | None],
    ) -> Incoming:
        if self._closed:
            raise RuntimeError("the transport is closed")
        # A head that cannot be sent fails here, before it costs a connection.
        exchange = Exchange(method, target, headers)
        connection = await self._acquire(origin, timeouts)
        try:
            return await connection.exchange(method, body, exchange, timeouts, self._release)
        except RetryableError:
            pass  # closed while idle, before any answer: once more, on a fresh connection
        exchange = Exchange(method, target, headers)
        connection = await self._acquire(origin, timeouts, fresh=True)
        try:
            return await connection.exchange(method, body, exchange, timeouts, self._release)
        except RetryableError as exc:  # a fresh connection is never retried: unreachable
            raise exc.error from None

    # -- the pool --------------------------------------------------------------------------
    async def _acquire(
        self, origin: Origin, timeouts: dict[str, float | None], *, fresh: bool = False
    ) -> HTTP11Connection:
        """A connection to ``origin``: an idle one unless ``fresh``, else a new one when
        there is room, else the first that frees up within the pool timeout."""
        loop = asyncio.get_running_loop()
        deadline = None
        while True:
            if not fresh:
                connection, stale = self._idle.take(origin, loop.time())
                self._open -= stale
                if connection is not None:
                    return connection
            if self._max_open is None or self._open < self._max_open:
                break
            oldest = self._idle.pop_oldest()
            if oldest is not None:  # full, but an idle connection of another key can go
                oldest.close()
                self._open -= 1
                continue
            pool_timeout = timeouts.get("pool")
            if deadline is None and pool_timeout is not None:
                deadline = loop.time() + pool_timeout
            await self._wait_for_room(loop, deadline)
        self._open += 1
        try:
            return await self._connect(origin, timeouts.get("connect"))
        except BaseException:
            self._open -= 1
            self._wake_one()
            raise

    async def _wait_for_room(self, loop: asyncio.AbstractEventLoop, deadline: float | None) -> None:
        room: asyncio.Future[None] = loop.create_future()
        self._waiting.append(room)
        timer = None
        if deadline is not None:
            timer = loop.call_at(deadline, _no_room, room)
        try:
            await room
        except BaseException:
            if room.done() and not room.cancelled() and room.exception() is None:
                self._wake_one()  # we were given room we will not use: pass it on
            raise
        finally:
            if timer is not None:
                timer.cancel()

    def _wake_one(self) -> None:
        while self._waiting:
            room = self._waiting.popleft()
            if not room.done():
                room.set_result(None)
                return

    def _release(self, connection: HTTP11Connection, reusable: bool) -> None:
        """Called once per exchange by the connection, when it is done with the request."""
        if reusable and not self._closed and self._idle.has_room():
            connection.idle()
            self._idle.put(connection.origin, connection)
        else:
            connection.close()
            self._open -= 1
        self._wake_one()

    async def _connect(self, origin: Origin, timeout: float | None) -> HTTP11Connection:
        scheme, host, port, _ = origin
        loop = asyncio.get_running_loop()
        hostname = host.decode("ascii")
        secure = scheme == b"https"
        # Not asyncio.wait_for: on Python <= 3.11 it drops a cancel that lands in the loop
        # step the connection is made in (_aio.py), and the forwarder is cancelled exactly
        # then when the client leaves: the request would go out anyway (red team, 3.11).
        connecting = asyncio.ensure_future(loop.create_connection(
            lambda: HTTP11Connection(origin), hostname, port,
            ssl=self._ssl_context() if secure else None,
            server_hostname=hostname if secure else None,
        ))  # fmt: skip
        try:
            done, _ = await asyncio.wait((connecting,), timeout=timeout)
        except BaseException:  # cancelled: never leave a connection behind
            connecting.cancel()
            connecting.add_done_callback(_close_made)
            raise
        if not done:
            connecting.cancel()
            connecting.add_done_callback(_close_made)
            raise httpx.ConnectTimeout(f"connecting to {hostname}:{port} timed out")
        try:
            _, connection = connecting.result()
        except OSError as exc:  # refused, unreachable, name not found, TLS failures
            raise httpx.ConnectError(f"cannot connect to {hostname}:{port}: {exc}") from exc
        sock = connection.transport.get_extra_info("socket") if connection.transport else None
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            # A request head and a small body go out at once, not after the peer's delayed ACK.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return connection

    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            verify = self._verify
            if isinstance(verify, ssl.SSLContext):
                self._ssl = verify
            else:
                self._ssl = httpx.create_ssl_context(verify=verify)
        return self._ssl

    async def aclose(self) -> None:
        self._closed = True
        for connection in self._idle.drain():
            connection.close()
            self._open -= 1
        while self._waiting:
            room = self._waiting.popleft()
            if not room.done():
                room.set_exception(httpx.PoolTimeout("the transport was closed"))


def _close_made(connecting: asyncio.Future[tuple[asyncio.Transport, HTTP11Connection]]) -> None:
    """A connection that was made after all, for a request that no longer wants it: closed
    (and any failure retrieved, so it is never logged as unretrieved)."""
    if connecting.cancelled():
        return
    if connecting.exception() is None:
        connecting.result()[0].abort()


def _no_room(room: asyncio.Future[None]) -> None:
    if not room.done():
        room.set_exception(httpx.PoolTimeout("no connection to the upstream became free in time"))
