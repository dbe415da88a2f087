"""One HTTP/1.1 client connection: an asyncio protocol, its responses parsed by httptools.

This is the part of forwarding that runs once per canary request, so it is written for
that: the request head is one ``write``, the response is parsed in C (llhttp, the parser
uvicorn uses for the client side of the same request), the body arrives through
``data_received`` callbacks without a reader task, and each wait is a bare future with a
timer instead of ``asyncio.wait_for``. Errors are httpx's, so the router maps them to
502 / 503 / 504 exactly as with httpx's own transport.

A connection carries one exchange (request and response) at a time; everything about that
response lives in its ``_Exchange``, so a connection handed to the next request can never
touch a body the previous one has not finished reading. The pool (``pool.py``) decides
which connection a request gets and when one is closed.
"""

from __future__ import annotations

import asyncio
import re
import select
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any

import httptools
import httpx

__all__ = ["HTTP11Connection", "StaleConnectionError"]

#: Bytes buffered from the upstream before reading is paused (the client reads slower).
READ_HIGH_WATER = 256 * 1024
#: Most bytes of response headers accepted (llhttp itself sets no limit); more is a 502.
MAX_HEAD_BYTES = 64 * 1024
#: Any byte that may not appear in a header name (RFC 9110 token characters only).
_NAME_BAD = re.compile(rb"[^!#$%&'*+\-.^_`|~0-9A-Za-z]")
_NO_BODY_STATUS = frozenset({204, 304})
_FRAMED = (b"content-length", b"transfer-encoding")

Release = Callable[["HTTP11Connection", bool], None]


class StaleConnectionError(Exception):
    """A reused keep-alive connection was closed by the upstream before it answered, and
    nothing of the request's body was sent: the pool may retry on a fresh connection."""


def _expire(future: asyncio.Future[Any], error: type[httpx.TimeoutException], what: str) -> None:
    if not future.done():
        future.set_exception(error(what))


async def _wait(
    future: asyncio.Future[None],
    timeout: float | None,
    error: type[httpx.TimeoutException],
    what: str,
) -> None:
    """``await future``, failing with ``error`` after ``timeout`` seconds (None: no limit)."""
    if future.done():
        future.result()
        return
    loop = future.get_loop()
    timer = None if timeout is None else loop.call_later(timeout, _expire, future, error, what)
    try:
        await future
    finally:
        if timer is not None:
            timer.cancel()


class _Exchange:
    """One response as it arrives: its head, its body chunks, how it ended."""

    __slots__ = (
        "body_started", "chunks", "complete", "error", "head", "head_bytes", "head_only",
        "headers", "reason", "reusable", "status", "until_eof", "waiter",
    )  # fmt: skip

    def __init__(self, loop: asyncio.AbstractEventLoop, head_only: bool):
        self.head: asyncio.Future[None] = loop.create_future()
        self.head_only = head_only
        self.status = 0
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_bytes = 0
        self.chunks: deque[bytes] = deque()
        self.complete = False
        self.reusable = False
        self.until_eof = False  # no length, not chunked: the body ends with the connection
        self.body_started = False  # some of the request body was taken from its stream
        self.error: BaseException | None = None
        self.waiter: asyncio.Future[None] | None = None

    def wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def finish(self, *, reusable: bool) -> None:
        self.complete = True
        self.reusable = reusable
        self.wake()

    def fail(self, error: BaseException) -> None:
        if self.complete:
            return
        self.error = error
        if not self.head.done():
            self.head.set_exception(error)
            self.head.exception()  # retrieved: nobody may be waiting any more
        self.wake()


class HTTP11Connection(asyncio.Protocol):
    """A keep-alive connection to one origin, one exchange at a time."""

    def __init__(self, origin: tuple[bytes, bytes, int]):
        self.origin = origin
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self.exchanges = 0  # requests started on this connection
        self._parser: httptools.HttpResponseParser | None = None
        self._current: _Exchange | None = None
        self._buffered = 0
        self._reading_paused = False
        self._writable: asyncio.Future[None] | None = None
        self._fileno = -1

    # -- asyncio.Protocol ----------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        self._fileno = sock.fileno() if sock is not None else -1

    def data_received(self, data: bytes) -> None:
        parser, current = self._parser, self._current
        if parser is None or current is None or current.complete:
            self.close()  # bytes nobody asked for: whatever they are, the connection is done
            return
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            current.fail(httpx.RemoteProtocolError("the upstream switched protocols unasked"))
            self.close()
        except httptools.HttpParserError as exc:
            if not current.complete:
                # Our own callbacks' verdicts (headers too large...) ride on the context.
                ours = exc.__context__
                if not isinstance(ours, httpx.RemoteProtocolError):
                    ours = httpx.RemoteProtocolError(f"invalid response: {exc}")
                current.fail(ours)
            self.close()  # (complete: a whole response came, then bytes that belong to none)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._wake_writer()
        current = self._current
        if current is None or current.complete:
            return
        if current.head.done() and current.until_eof and exc is None:
            current.finish(reusable=False)
        elif not current.head.done():
            current.fail(httpx.RemoteProtocolError("the upstream closed the connection unanswered"))
        else:
            current.fail(httpx.RemoteProtocolError("the upstream closed the connection mid-body"))

    def pause_writing(self) -> None:
        self._writable = self.loop.create_future()

    def resume_writing(self) -> None:
        self._wake_writer()

    # -- httptools callbacks (only ever called while an exchange is current) -------------
    def on_message_begin(self) -> None:
        current = self._current
        if current is None or current.status:  # a second final response to one request
            raise httpx.RemoteProtocolError("more than one response to one request")

    def on_status(self, reason: bytes) -> None:
        self._current.reason += reason  # type: ignore[union-attr]

    def on_header(self, name: bytes, value: bytes) -> None:
        current = self._current
        assert current is not None
        current.head_bytes += len(name) + len(value)
        if current.head_bytes > MAX_HEAD_BYTES:  # raised into llhttp: the parse stops
            raise httpx.RemoteProtocolError("the upstream's response headers are too large")
        current.headers.append((name, value))

    def on_headers_complete(self) -> None:
        current, parser = self._current, self._parser
        assert current is not None
        assert parser is not None
        status = parser.get_status_code()
        if status < 200:  # 100 Continue, 103 Early Hints: the final answer follows
            current.headers, current.reason, current.head_bytes = [], b"", 0
            return
        current.status = status
        if current.head_only:
            # llhttp cannot be told that a response has no body because the request was
            # HEAD: take the head, and let the connection go rather than misread the rest.
            current.finish(reusable=False)
        elif status not in _NO_BODY_STATUS:
            current.until_eof = not any(name.lower() in _FRAMED for name, _ in current.headers)
        if not current.head.done():
            current.head.set_result(None)

    def on_body(self, body: bytes) -> None:
        current = self._current
        if current is None or current.complete:
            return
        current.chunks.append(body)
        self._buffered += len(body)
        if self._buffered > READ_HIGH_WATER and not self._reading_paused and self.transport:
            self._reading_paused = True
            self.transport.pause_reading()
        current.wake()

    def on_message_complete(self) -> None:
        current, parser = self._current, self._parser
        if current is not None and current.status and not current.complete:
            current.finish(reusable=parser is not None and parser.should_keep_alive())

    # -- one exchange ----------------------------------------------------------------------
    async def exchange(
        self, request: httpx.Request, timeouts: dict[str, float | None], release: Release
    ) -> httpx.Response:
        """Send ``request``; return the response once its head is in (the body streams from
        it). ``release`` is called exactly once, when this exchange is over."""
        reused = self.exchanges > 0
        self.exchanges += 1
        current = self._current = _Exchange(self.loop, request.method == "HEAD")
        self._parser = httptools.HttpResponseParser(self)
        try:
            await self._send(request, current, timeouts.get("write"))
            await _wait(current.head, timeouts.get("read"), httpx.ReadTimeout, "read timed out")
        except httpx.RemoteProtocolError:
            self.close()
            release(self, False)
            if reused and not current.body_started and not current.status:
                raise StaleConnectionError from None
            raise
        except BaseException:  # timeouts, a client that left (cancelled), body errors
            self.close()
            release(self, False)
            raise
        return httpx.Response(
            current.status, headers=current.headers,
            stream=_ResponseBody(self, current, timeouts.get("read"), release),
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": current.reason},
        )  # fmt: skip

    async def _send(
        self, request: httpx.Request, current: _Exchange, write_timeout: float | None
    ) -> None:
        transport = self.transport
        if transport is None or self.closed:
            raise httpx.RemoteProtocolError("the upstream closed the connection unanswered")
        raw = request.headers.raw
        length: int | None = None
        chunked = False
        lines = [b"%s %s HTTP/1.1" % (request.method.encode("ascii"), request.url.raw_path)]
        for name, value in raw:
            lowered = name.lower()
            if lowered == b"content-length":
                length = int(value)
            elif lowered == b"transfer-encoding":
                chunked = value.strip().lower() == b"chunked"
            lines.append(name + b": " + value)
        _check_head(lines, [name for name, _ in raw])
        lines.append(b"\r\n")
        transport.write(b"\r\n".join(lines))
        if length is None and not chunked:
            return
        current.body_started = True  # from here on the request cannot be sent again
        sent = 0
        async for chunk in request.stream:  # type: ignore[union-attr]
            if not chunk:
                continue
            if current.head.done():
                break  # the upstream answered early (e.g. 413): stop sending the body
            sent += len(chunk)
            if length is not None and sent > length:
                raise httpx.LocalProtocolError("the request body is longer than its length")
            transport.write(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
            if self._writable is not None:
                await _wait(self._writable, write_timeout, httpx.WriteTimeout, "write timed out")
            if self.closed:
                raise httpx.RemoteProtocolError("the upstream closed the connection mid-request")
        else:
            if chunked:
                transport.write(b"0\r\n\r\n")
            elif length is not None and sent < length:
                raise httpx.LocalProtocolError("the request body is shorter than its length")

    async def body(self, current: _Exchange, read_timeout: float | None) -> AsyncIterator[bytes]:
        """The response body of ``current``, as it arrives."""
        chunks = current.chunks
        while True:
            while chunks:
                chunk = chunks.popleft()
                self._buffered -= len(chunk)
                if self._reading_paused and self._buffered <= READ_HIGH_WATER // 4:
                    self._reading_paused = False
                    if self.transport is not None and not self.closed:
                        self.transport.resume_reading()
                yield chunk
            if current.complete:
                return
            if current.error is not None:
                raise current.error
            current.waiter = self.loop.create_future()
            await _wait(current.waiter, read_timeout, httpx.ReadTimeout, "read timed out")

    def still_open(self) -> bool:
        """Before reusing an idle connection: has the upstream closed it? Its FIN may be
        in the socket while the event loop has not read it yet (it closes idle connections
        on its own schedule), and a request sent then fails (a POST cannot be sent again).
        An idle connection that is readable at all is closed or broken; one zero-timeout
        poll of this socket alone, not of every pooled one."""
        if self.closed:
            return False
        if self._fileno >= 0:
            try:
                readable, _, _ = select.select([self._fileno], [], [], 0)
            except (OSError, ValueError):
                return False
            if readable:
                self.close()
                return False
        return True

    # -- state changes ---------------------------------------------------------------------
    def idle(self) -> None:
        """Back in the pool, between exchanges."""
        self._current = self._parser = None
        self._buffered = 0
        self.idle_since = self.loop.time()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def _wake_writer(self) -> None:
        writable, self._writable = self._writable, None
        if writable is not None and not writable.done():
            writable.set_result(None)


class _ResponseBody(httpx.AsyncByteStream):
    """The body of one response; hands the connection back when it has been read to the
    end (reusable) or closed before that (closed with it)."""

    def __init__(
        self,
        connection: HTTP11Connection,
        exchange: _Exchange,
        read_timeout: float | None,
        release: Release,
    ):
        self._connection = connection
        self._exchange = exchange
        self._read_timeout = read_timeout
        self._release: Release | None = release

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._connection.body(self._exchange, self._read_timeout):
                yield chunk
        except BaseException:
            self._done(reusable=False)
            raise
        self._done(reusable=self._exchange.reusable and not self._connection.closed)

    async def aclose(self) -> None:
        self._done(reusable=self._exchange.complete and self._exchange.reusable)

    def _done(self, *, reusable: bool) -> None:
        release, self._release = self._release, None
        if release is None:
            return
        if not reusable:
            self._connection.close()
        release(self._connection, reusable and not self._connection.closed)


def _check_head(lines: list[bytes], names: list[bytes]) -> None:
    """Refuse to write a head that a CR, LF or NUL could split in two (request smuggling),
    or a header name that is not an HTTP token: one scan of the joined bytes for each."""
    joined = b"".join(lines)
    if b"\r" in joined or b"\n" in joined or b"\0" in joined:
        raise httpx.LocalProtocolError("CR, LF or NUL in the request line or a header")
    if b"" in names or _NAME_BAD.search(b"".join(names)):
        raise httpx.LocalProtocolError(f"invalid header name among {names!r}")
    if lines[0].count(b" ") != 2:
        raise httpx.LocalProtocolError("a space in the request method or target")
