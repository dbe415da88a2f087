"""Forward one ASGI HTTP request to an upstream through httpx and stream the answer back."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine, MutableMapping
from enum import Enum
from typing import Any, TypeVar
from urllib.parse import quote

import httpx

from .._aio import run_within
from ..errors import UpstreamError
from ..upstreams import Upstream
from .client import make_async_transport
from .common import ForwarderBase, ForwardObserver, ForwardPolicy
from .headers import RawHeaders, single_content_length
from .pool import HTTP11Transport
from .replies import (
    PAYLOAD_TOO_LARGE,
    REQUEST_TIMEOUT,
    BodyTooLargeError,
    ClientTooSlowError,
    ErrorReply,
)
from .wire import Incoming, Outgoing, incoming_from_response

__all__ = ["REPLAY_LIMIT", "AsyncHTTPForwarder", "Outcome", "Replayable", "raw_path_of"]

logger = logging.getLogger("canary_mw.forward")

Scope = MutableMapping[str, Any]
Receive = Callable[[], Any]
Send = Callable[[Any], Any]
_T = TypeVar("_T")


#: Request body bytes a router with ``fallback=True`` remembers, so that stable can be given
#: them when the upstream turns out unreachable after the forwarder read them. A request
#: whose body goes past this is not replayable: it gets the 502 it would get without
#: fallback (an upload is never held whole, and stable never sees a truncated body).
REPLAY_LIMIT = 64 * 1024


class Outcome(Enum):
    DONE = "done"  # a response (the upstream's or our 5xx) was sent, or the client left
    FALLBACK = "fallback"  # nothing was sent, all that was read can be replayed: serve stable


class ClientDisconnectedError(Exception):
    """The client went away while we were still reading its request body."""


class _Body(httpx.AsyncByteStream):
    """The request body as an async byte stream for httpx, read from ``receive`` on demand
    (never buffered whole), remembering whether any of it was consumed, and stopping with
    BodyTooLargeError once more than ``limit`` bytes came (chunked uploads have no length
    to check up front). A client that lets ``idle`` seconds pass between two messages gets
    ClientTooSlowError: it would otherwise hold an upstream connection as long as it likes."""

    __slots__ = ("consumed", "finished", "first", "idle", "left", "receive")

    def __init__(self, receive: Receive, limit: int | None, idle: float | None = None):
        self.receive = receive
        self.consumed = False
        self.left = limit
        self.idle = idle
        self.first: Any = None  # read by prime(), given back first by the iteration
        self.finished = asyncio.Event()  # the reading ended: ``receive`` is free again

    async def _next(self) -> Any:
        if self.first is not None:
            message, self.first = self.first, None
            return message
        if self.idle is None:
            return await self.receive()
        try:
            return await run_within(self.receive(), self.idle)
        except TimeoutError:
            raise ClientTooSlowError from None

    async def prime(self) -> None:
        """Read the first message now, before an upstream connection is taken: a client that
        sends a head and then nothing never holds one (the iteration gives it back first)."""
        self.first = await self._next()
        self.consumed = True
        if self.first["type"] == "http.disconnect":
            raise ClientDisconnectedError

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            while True:
                message = await self._next()
                self.consumed = True
                if message["type"] == "http.disconnect":
                    raise ClientDisconnectedError
                chunk = message.get("body", b"")
                if chunk:
                    if self.left is not None:
                        self.left -= len(chunk)
                        if self.left < 0:
                            raise BodyTooLargeError
                    yield chunk
                if not message.get("more_body", False):
                    return
        finally:
            # However the reading ended (all of it; the upstream answered first and the send
            # was given up; the client left), nothing reads ``receive`` here any more: the
            # watch for the client leaving may (``_disconnected_while_waiting``).
            self.finished.set()


class Replayable:
    """``receive`` that remembers the messages it returned, up to ``limit`` body bytes, so
    stable can be given the same messages when the forwarder falls back (the disconnect watch
    may have taken a body-less request's ``http.request`` message, or the transport may have
    read some body before finding the upstream unreachable). Past the limit it forgets them
    all and is no longer :attr:`complete`; the forwarder then does not fall back."""

    __slots__ = ("_kept", "_limit", "_receive", "_replaying", "_seen", "complete")

    def __init__(self, receive: Receive, limit: int = REPLAY_LIMIT):
        self._receive = receive
        self._limit = limit
        self._seen: deque[Any] = deque()
        self._kept = 0
        self._replaying = False
        #: Every message returned so far is remembered: replaying gives stable all of them.
        self.complete = True

    def only_read(self, message: Any) -> None:
        """``message`` is the only one read so far, however large: replaying gives it back."""
        self._seen = deque([message])
        self.complete = True

    def replay(self) -> None:
        if not self.complete:
            raise RuntimeError("the request body went past REPLAY_LIMIT: it cannot be replayed")
        self._replaying = True

    async def __call__(self) -> Any:
        if self._replaying:
            if self._seen:
                return self._seen.popleft()
            return await self._receive()
        message = await self._receive()
        if self.complete:
            self._kept += len(message.get("body", b""))
            if self._kept <= self._limit:
                self._seen.append(message)
            else:
                self.complete = False
                self._seen.clear()
        return message


def _replayable(receive: Receive, body: _Body | None) -> bool:
    """Whether stable could still be given the whole request: nothing of it was read, or all
    that was read is remembered."""
    if isinstance(receive, Replayable):
        return receive.complete
    return body is None or not body.consumed


async def _wait_for_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass  # a body the upstream did not read: drain and ignore it


async def _disconnected_while_waiting(receive: Receive, body: _Body | None) -> None:
    """Returns when the client leaves before the upstream's response head arrived. While
    the body streams, ``_Body`` owns ``receive`` (and notices a departure itself)."""
    if body is not None:
        await body.finished.wait()
    await _wait_for_disconnect(receive)


def raw_path_of(scope: Scope) -> bytes:
    """The request's path as the client sent it, without the query (shadow copies use it too)."""
    raw: bytes | None = scope.get("raw_path")
    if raw:
        return raw.partition(b"?")[0]  # some servers include the query in raw_path
    return quote(scope.get("path", "/"), safe="/:@!$&'()*+,;=-._~").encode("ascii")


def _has_body(scope: Scope, length: int | None) -> bool:
    if length is not None:
        return length > 0
    for name, _ in scope["headers"]:
        if name.lower() == b"transfer-encoding":
            return True
    # HTTP/1.x: no Content-Length and no Transfer-Encoding means no body. HTTP/2 and 3 frame
    # bodies themselves, so there we cannot tell and must stream whatever comes.
    return scope.get("http_version", "1.1") not in ("1.0", "1.1")


class AsyncHTTPForwarder(ForwarderBase):
    """Sends each request straight to an ``httpx.AsyncBaseTransport``: no httpx Client in
    between, so no cookie jar at all, no auth or redirect layers, no per-request merging of
    client defaults (about a third of the forwarding cost with a Client in front)."""

    def __init__(
        self,
        policy: ForwardPolicy,
        observer: ForwardObserver,
        transport: httpx.AsyncBaseTransport | None = None,
    ):
        super().__init__(policy, observer)
        self._given = transport
        self._own: httpx.AsyncBaseTransport | None = None
        self._own_loop: asyncio.AbstractEventLoop | None = None

    def transport(self) -> httpx.AsyncBaseTransport:
        """The transport: the one passed in, else ours, made in (and bound to) the running
        event loop: its connections belong to that loop."""
        if self._given is not None:
            return self._given
        loop = asyncio.get_running_loop()
        if self._own is None or self._own_loop is not loop:
            self._own = make_async_transport(self.policy.limits)
            self._own_loop = loop
        return self._own

    @property
    def owns_a_transport(self) -> bool:
        """Whether a transport of ours exists (none until the first forwarded request)."""
        return self._own is not None

    async def aclose(self) -> None:
        """Close our transport (a passed one is its owner's to close). Safe to repeat."""
        own, self._own = self._own, None
        if own is not None:
            await own.aclose()

    async def forward(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        upstream: Upstream,
        tag: RawHeaders,
        *,
        fallback: bool,
    ) -> tuple[Outcome, int]:
        """What happened and the status sent (0 when the client left first)."""
        length = single_content_length(scope["headers"])
        if self.declared_too_large(length):
            return await _reply(send, PAYLOAD_TOO_LARGE, tag)
        idle = self._timeout.get("write")  # the client side gets the upstream side's bound
        body = _Body(receive, self.max_body_size, idle) if _has_body(scope, length) else None
        if body is not None:
            try:
                await body.prime()
            except ClientDisconnectedError:
                return Outcome.DONE, 0
            except ClientTooSlowError:
                return await _reply(send, REQUEST_TIMEOUT, tag, close=True)
        client = scope.get("client")
        request = self.outgoing(
            method=scope["method"], upstream=upstream,
            target=(raw_path_of(scope), scope.get("query_string", b"")),
            headers=scope["headers"], peer=str(client[0]) if client else None,
            scheme=scope.get("scheme", "http"), body=body, length=length,
        )  # fmt: skip
        # Watched from the request until the first body byte: without it, a departed client
        # would hold the upstream connection until the read timeout (``_stream`` watches after).
        try:
            got = await _unless_client_left(self._answer(request, upstream, tag), receive, body)
            if got is None:  # the client left: the exchange was cancelled, its connection closed
                return Outcome.DONE, 0
            response, headers, first, rest = got
        except ClientDisconnectedError:
            return Outcome.DONE, 0
        except BodyTooLargeError:  # the upstream saw a truncated body and an aborted connection
            return await _reply(send, PAYLOAD_TOO_LARGE, tag)
        except ClientTooSlowError:  # the same: the upload stalled, its connection was aborted
            return await _reply(send, REQUEST_TIMEOUT, tag, close=True)
        except httpx.HTTPError as exc:
            if body is not None and body.first is not None and isinstance(receive, Replayable):
                # Read by prime() and never taken by the transport (the watch waits for the
                # body to finish before it reads): all that was read, stable can have it.
                receive.only_read(body.first)
            body_read = not _replayable(receive, body)
            reply = self.failed(exc, upstream, request, body_read=body_read, fallback=fallback)
            if reply is None:
                return Outcome.FALLBACK, 0
            return await _reply(send, reply, tag)
        # A client that stops reading makes the server's send wait (backpressure) with the
        # upstream connection held: each send gets the write timeout, as nginx's send_timeout.
        # A body read whole has already given its connection back: no bound (nor its cost,
        # a task per message) is needed then.
        out = send if rest is None else _bounded(send, idle)
        try:
            await out({"type": "http.response.start", "status": response.status,
                       "headers": headers})  # fmt: skip
            if rest is None:  # the whole body is in: no streaming machinery needed
                await out({"type": "http.response.body", "body": first})
            else:
                await self._stream(first, rest, receive, out)
        except ClientTooSlowError:
            # The response is cut: closing the upstream response aborts its connection, and
            # returning without finishing makes the server drop the client's connection.
            logger.warning("canary_mw: client took no response data for %ss: gave it up", idle)
        finally:
            await response.close()
        return Outcome.DONE, response.status

    async def _answer(
        self, request: Outgoing, upstream: Upstream, tag: RawHeaders
    ) -> tuple[Incoming, RawHeaders, bytes, AsyncIterator[bytes] | None]:
        """The upstream's response, the headers to send, and its first body chunk (with the
        rest of the stream, None when that chunk is all): one awaitable from the request to
        the first body byte, which the client leaving cancels (cancelled, the transport
        closes the upstream connection)."""
        transport = self.transport()
        if isinstance(transport, HTTP11Transport):
            response = await transport.forward(request)
        else:
            answer = await transport.handle_async_request(request.httpx_request())
            response = incoming_from_response(answer, asynchronous=True)
        try:
            headers, declared = self.answered(upstream, response, tag)
            first, rest = await _first_chunk(response, declared)
        except BaseException:
            await response.close()
            raise
        return response, headers, first, rest

    async def _stream(
        self, first: bytes, rest: AsyncIterator[bytes], receive: Receive, send: Send
    ) -> None:
        # Stream the body while watching for the client leaving: servers ignore sends to a
        # closed connection, so without the watcher a departed client would keep the upstream
        # connection busy until the whole body (or a stalled upstream's timeout) went by.
        pump = asyncio.ensure_future(_pump(first, rest, send))
        pump.add_done_callback(_retrieve)  # a pump that fails after we gave up logs nothing
        watcher = asyncio.ensure_future(_wait_for_disconnect(receive))
        try:
            await asyncio.wait((pump, watcher), return_when=asyncio.FIRST_COMPLETED)
        finally:
            watcher.cancel()
            if not pump.done():
                pump.cancel()  # the client left; the caller closes the upstream response
                await asyncio.wait((pump,), timeout=1)
        if pump.done() and not pump.cancelled() and (exc := pump.exception()) is not None:
            if isinstance(exc, ClientTooSlowError):
                raise exc
            logger.warning(
                "canary_mw: upstream failed mid-response: %s: %s", type(exc).__name__, exc
            )
            # The status line is gone: the only honest signal left is to abort the connection.
            raise UpstreamError("upstream failed after the response started") from exc


async def _reply(
    send: Send, reply: ErrorReply, tag: RawHeaders, *, close: bool = False
) -> tuple[Outcome, int]:
    """Answer with one of our own short replies (nothing of the upstream's was sent).
    ``close``: the rest of the request body is not read, so the connection cannot be reused."""
    extra = [*tag, (b"connection", b"close")] if close else tag
    await send({"type": "http.response.start", "status": reply.status,
                "headers": reply.headers(extra)})  # fmt: skip
    await send({"type": "http.response.body", "body": reply.body})
    return Outcome.DONE, reply.status


async def _first_chunk(
    response: Incoming, declared: int | None
) -> tuple[bytes, AsyncIterator[bytes] | None]:
    """The first body chunk, and the rest of the stream (None when the first chunk is the
    whole body). Most canary responses are small with a Content-Length: they are sent in one
    message, without a pump task and a second disconnect watcher. The stream is read to its
    end either way, so the connection can be reused (closing a response early costs it)."""
    chunks = response.stream.__aiter__()
    try:
        first: bytes = await chunks.__anext__()
    except StopAsyncIteration:
        return b"", None
    if declared is not None and len(first) >= declared:
        async for extra in chunks:  # the end of the message: no more I/O once all is in
            first += extra
        return first, None
    return first, chunks


#: How long an answer may take before a task starts watching for the client leaving. Most
#: canary answers come sooner, and then no watch is made at all: a task that waits on
#: ``receive`` costs its creation, a first step and a cancellation per request (a few per
#: cent of the router's CPU per canary request: bench/ab_canary.sh). A client gone
#: meanwhile is noticed this much later.
WATCH_DELAY = 0.025


async def _unless_client_left(
    work: Coroutine[Any, Any, _T], receive: Receive, body: _Body | None
) -> _T | None:
    """The result of ``work``, or None when the client left first: then ``work`` was
    cancelled (its transport closed the upstream connection) and has finished.

    ``work`` runs in the caller's task. If it is still waiting after WATCH_DELAY, a watch
    task starts, and cancels the caller's task when the client leaves."""
    task = asyncio.current_task()
    if task is None:  # not run by a task (never under an ASGI server): nothing to cancel
        return await work
    departure = _Departure(task, receive, body)
    timer = task.get_loop().call_later(WATCH_DELAY, departure.watch)
    try:
        return await work
    except asyncio.CancelledError:
        if not departure.fired:
            raise  # cancelled from outside (the server is stopping): not ours to swallow
        uncancel = getattr(task, "uncancel", None)  # Python 3.11+: undo our own cancel
        if uncancel is not None:
            uncancel()
        return None
    finally:
        departure.armed = False
        timer.cancel()
        if departure.watching is not None:
            departure.watching.cancel()  # before anything else reads ``receive``


class _Departure:
    """Watches for the client leaving while the forwarder waits for the answer, and then
    cancels the forwarding task (also when ``receive`` fails)."""

    __slots__ = ("armed", "body", "fired", "receive", "task", "watching")

    def __init__(self, task: asyncio.Task[Any], receive: Receive, body: _Body | None):
        self.task = task
        self.receive = receive
        self.body = body
        self.armed = True
        self.fired = False
        self.watching: asyncio.Future[None] | None = None

    def watch(self) -> None:
        """The timer's callback: start the watch task (unless the answer came meanwhile)."""
        if self.armed:
            self.watching = asyncio.ensure_future(
                _disconnected_while_waiting(self.receive, self.body)
            )
            self.watching.add_done_callback(self._left)

    def _left(self, watch: asyncio.Future[None]) -> None:
        if not watch.cancelled():
            watch.exception()  # retrieved, so a failed receive is never logged as unretrieved
        if self.armed:  # disarmed once the answer is in: the callback may run after that
            self.armed = False
            self.fired = True
            self.task.cancel()


def _bounded(send: Send, limit: float | None) -> Send:
    """``send`` raising ClientTooSlowError when one message waits over ``limit`` seconds."""
    if limit is None:
        return send

    async def bounded(message: Any) -> None:
        try:
            await run_within(send(message), limit)
        except TimeoutError:
            raise ClientTooSlowError from None

    return bounded


def _retrieve(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


async def _pump(first: bytes, rest: AsyncIterator[bytes], send: Send) -> None:
    if first:
        await send({"type": "http.response.body", "body": first, "more_body": True})
    async for chunk in rest:
        if chunk:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})
