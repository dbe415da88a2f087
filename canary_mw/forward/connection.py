"""One HTTP/1.1 client connection: an asyncio protocol driving the sans-I/O core (http11.py).

This is the part of forwarding that runs once per canary request, so it is written for
that: the request head is one ``write``, the response is parsed in C (llhttp, through the
core), the body arrives through ``data_received`` callbacks without a reader task, and each
wait is a bare future with a timer instead of ``asyncio.wait_for``. Errors are httpx's, so
the router maps them to 502 / 503 / 504 exactly as with httpx's own transport.

What is decided here is only *when* to read, write and wait. Whether the connection may
carry another request is the core's verdict (``Exchange.reusable``), whether a failed
request may be sent again is ``http11.may_retry``; the pool (``pool.py``) decides which
connection a request gets.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Callable
from typing import Any

import httpx

from .http11 import Exchange, RetryableError, may_retry, readable_now
from .wire import Incoming

__all__ = ["HTTP11Connection"]

#: Bytes buffered from the upstream before reading is paused (the client reads slower).
READ_HIGH_WATER = 256 * 1024

Release = Callable[["HTTP11Connection", bool], None]


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


class _State:
    """The driver's side of one exchange: what it is waiting for, and how it ended."""

    __slots__ = ("error", "fetching", "head", "sender", "waiter")

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.head: asyncio.Future[None] = loop.create_future()
        self.error: httpx.HTTPError | None = None
        self.waiter: asyncio.Future[None] | None = None
        #: The task sending the request body, and whether it waits for the client's next
        #: chunk (the one wait an early answer gives up: ``_abort_fetch``).
        self.sender: asyncio.Task[None] | None = None
        self.fetching = False

    def wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def fail(self, error: httpx.HTTPError) -> None:
        if self.error is None:
            self.error = error
        if not self.head.done():
            self.head.set_exception(error)
            self.head.exception()  # retrieved: nobody may be waiting any more
        self.wake()


class HTTP11Connection(asyncio.Protocol):
    """A keep-alive connection to one origin, one exchange at a time."""

    def __init__(self, origin: tuple[bytes, bytes, int, bytes]):
        self.origin = origin
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self.exchanges = 0  # requests started on this connection
        self._exchange: Exchange | None = None
        self._state: _State | None = None
        self._reading_paused = False
        self._writable: asyncio.Future[None] | None = None
        self._fileno = -1

    # -- asyncio.Protocol ----------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        self._fileno = sock.fileno() if sock is not None else -1

    def data_received(self, data: bytes) -> None:
        exchange, state = self._exchange, self._state
        if exchange is None or state is None or exchange.complete:
            self.close()  # bytes nobody asked for: whatever they are, the connection is done
            return
        try:
            exchange.feed(data)
        except httpx.RemoteProtocolError as exc:
            state.fail(exc)
            self.close()  # also wakes a body write waiting for room (connection_lost)
            return
        if exchange.head_done and not state.head.done():
            state.head.set_result(None)
            # An answer during the upload ends it: a body write waiting for room the
            # upstream will never make (it answered without reading on) stops waiting.
            self._wake_writer()
        if exchange.buffered > READ_HIGH_WATER and not self._reading_paused and self.transport:
            self._reading_paused = True
            self.transport.pause_reading()
        state.wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._wake_writer()
        exchange, state = self._exchange, self._state
        if exchange is None or state is None or exchange.complete:
            return
        try:
            if exc is not None:
                raise httpx.RemoteProtocolError(f"the connection to the upstream broke: {exc}")
            exchange.feed_eof()
        except httpx.RemoteProtocolError as error:
            state.fail(error)
            return
        if exchange.head_done and not state.head.done():
            state.head.set_result(None)
        state.wake()

    def pause_writing(self) -> None:
        self._writable = self.loop.create_future()

    def resume_writing(self) -> None:
        self._wake_writer()

    # -- one exchange ----------------------------------------------------------------------
    async def exchange(
        self,
        method: str,
        body: AsyncIterable[bytes],
        exchange: Exchange,
        timeouts: dict[str, float | None],
        release: Release,
    ) -> Incoming:
        """Send the request ``exchange`` frames (new for each attempt) with ``body``; return
        the answer once its head is in (the body streams from it). ``release`` is called
        exactly once, when this exchange is over. Raises RetryableError when ``may_retry``
        allows sending the request again."""
        reused = self.exchanges > 0
        self.exchanges += 1
        self._exchange = exchange
        try:
            state = self._state = _State(self.loop)
            transport = self.transport
            if transport is None or self.closed:
                raise httpx.RemoteProtocolError("the upstream closed the connection unanswered")
            if exchange.has_body:
                await self._send_until_answered(body, exchange, state, timeouts.get("write"))
            else:
                transport.write(exchange.head + exchange.end_body())
            await _wait(state.head, timeouts.get("read"), httpx.ReadTimeout, "read timed out")
        except httpx.RemoteProtocolError as exc:
            self.close()
            release(self, False)
            if may_retry(method, exchange, reused=reused):
                raise RetryableError(exc) from None
            raise
        except BaseException:  # timeouts, a client that left (cancelled), body errors
            self.close()
            release(self, False)
            raise
        stream = _ResponseBody(self, exchange, state, timeouts.get("read"), release)
        return Incoming(exchange.status, exchange.reason, exchange.headers, stream, stream.aclose)

    async def _send_until_answered(
        self,
        body: AsyncIterable[bytes],
        exchange: Exchange,
        state: _State,
        write_timeout: float | None,
    ) -> None:
        """Send the body from a task of its own, so that an answer that comes while it
        waits for the client's next chunk ends the wait. An upstream may answer before it
        has the whole body (a 401, a 413) while the client is slow to send the rest, or has
        stopped: waiting for the client would lose that answer to our 408. The body is then
        unfinished, so the core never lets the connection be reused (http11.py). A wait for
        room to write is not given up this way (the answer wakes it, and the body may be
        complete), nor a step of the body that needs no wait."""
        sending = state.sender = self.loop.create_task(
            self._send_body(body, exchange, state, write_timeout)
        )
        state.head.add_done_callback(self._abort_fetch)
        try:
            await asyncio.wait((sending,))
        except BaseException:  # cancelled: the client left, or the router is shutting down
            sending.cancel()
            raise
        if not sending.cancelled():
            sending.result()  # the send's own failure (a client that left, a write timeout)

    def _abort_fetch(self, _: object = None) -> None:
        """The upstream answered: give up the sender's wait for the client's next chunk,
        unless a declared length is all sent (what is left to read is the body's end, which
        an iterator may wait a moment to say, and ending exactly keeps the connection)."""
        state, exchange = self._state, self._exchange
        if state is None or exchange is None or state.sender is None:
            return
        if state.fetching and not exchange.length_sent and not state.sender.done():
            state.sender.cancel()

    async def _send_body(
        self,
        body: AsyncIterable[bytes],
        exchange: Exchange,
        state: _State,
        write_timeout: float | None,
    ) -> None:
        transport = self.transport
        assert transport is not None  # checked by ``exchange`` just before
        pending = exchange.head  # goes out with the first chunk: one segment, not two
        chunks = aiter(body)
        try:
            while True:
                if state.head.done():
                    # Answered already: the next step may still end the body without a
                    # wait (then the connection stays reusable), but a wait for the client
                    # is given up from the next turn of the loop.
                    self.loop.call_soon(self._abort_fetch)
                state.fetching = True
                try:
                    chunk = await anext(chunks)
                except StopAsyncIteration:
                    break
                finally:
                    state.fetching = False
                if state.head.done() or self.closed:
                    # The upstream answered early (e.g. 413) or closed: stop sending (a write
                    # to a closed uvloop transport raises). The body stays unfinished, so the
                    # core never lets this connection be reused: the upstream would read the
                    # next request as the rest of this body. The wait for the head tells the
                    # rest.
                    return
                wire = exchange.frame(chunk)
                if wire:
                    transport.write(pending + wire if pending else wire)
                    pending = b""
                if self._writable is not None:
                    await _wait(
                        self._writable, write_timeout, httpx.WriteTimeout, "write timed out"
                    )
        finally:
            if isinstance(chunks, AsyncGenerator):
                # Given up early: close the reader now, not when it is collected, so that
                # whoever waits for the body's end (the client-departure watch) goes on.
                await chunks.aclose()
        if self.closed:
            return
        wire = pending + exchange.end_body()  # the whole body went out: complete its framing
        if wire:
            transport.write(wire)

    async def body(
        self, exchange: Exchange, state: _State, read_timeout: float | None
    ) -> AsyncIterator[bytes]:
        """The response body of ``exchange``, as it arrives."""
        while True:
            while (chunk := exchange.take()) is not None:
                if self._reading_paused and exchange.buffered <= READ_HIGH_WATER // 4:
                    self._reading_paused = False
                    if self.transport is not None and not self.closed:
                        self.transport.resume_reading()
                yield chunk
            if exchange.complete:
                return
            if state.error is not None:
                raise state.error
            state.waiter = self.loop.create_future()
            await _wait(state.waiter, read_timeout, httpx.ReadTimeout, "read timed out")

    def still_open(self) -> bool:
        """Before reusing an idle connection: has the upstream closed it? Its FIN may be
        in the socket while the event loop has not read it yet (it closes idle connections
        on its own schedule), and a request sent then fails (a POST cannot be sent again).
        An idle connection that is readable at all is closed or broken; one zero-timeout
        poll of this socket alone, not of every pooled one."""
        if self.closed:
            return False
        if self._fileno >= 0 and readable_now(self._fileno):
            self.close()
            return False
        return True

    # -- state changes ---------------------------------------------------------------------
    def idle(self) -> None:
        """Back in the pool, between exchanges."""
        self._exchange = self._state = None
        self.idle_since = self.loop.time()
        if self._reading_paused:
            # Paused when the last response came faster than its reader took it, and that
            # reader left: left paused, the next exchange's answer would never be read
            # (red team F5: the canary ran the next user's request, who got a 504).
            self._reading_paused = False
            if self.transport is not None and not self.closed:
                self.transport.resume_reading()

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
    end (reusable by the core's verdict) or closed before that (closed with it)."""

    def __init__(
        self,
        connection: HTTP11Connection,
        exchange: Exchange,
        state: _State,
        read_timeout: float | None,
        release: Release,
    ):
        self._connection = connection
        self._exchange = exchange
        self._state = state
        self._read_timeout = read_timeout
        self._release: Release | None = release

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._connection.body(
                self._exchange, self._state, self._read_timeout
            ):
                yield chunk
        except BaseException:
            self._done()
            raise
        self._done()

    async def aclose(self) -> None:
        self._done()

    def _done(self) -> None:
        release, self._release = self._release, None
        if release is None:
            return
        reusable = self._exchange.reusable and not self._connection.closed
        if not reusable:
            self._connection.close()
        release(self._connection, reusable)
