"""Forward one WSGI request to an upstream with a blocking httpx client (PEP 3333)."""

from __future__ import annotations

import functools
import operator
import os
import threading
from collections.abc import Callable, Iterable, Iterator, MutableMapping
from http import HTTPStatus
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

from ..upstreams import Upstream
from .client import make_sync_transport
from .common import ForwarderBase, ForwardObserver, ForwardPolicy
from .headers import RawHeaders, single_content_length
from .replies import PAYLOAD_TOO_LARGE, BodyTooLargeError, ErrorReply, classify
from .sync_pool import HTTP11SyncTransport
from .wire import Incoming, incoming_from_response

__all__ = ["ForwardedBody", "SyncHTTPForwarder", "environ_headers"]


Environ = MutableMapping[str, Any]
StartResponse = Callable[..., Any]
READ_SIZE = 64 * 1024
_WSGI_HOP_BY_HOP = frozenset({b"trailers"})


def environ_headers(environ: Environ) -> RawHeaders:
    """The request headers as raw pairs. WSGI folds names to ``HTTP_X_FOO``; we send them back
    as ``x-foo`` (HTTP names are case-insensitive; underscores cannot be told from dashes).

    So an underscore twin (``X_Forwarded_For``) is only kept apart by the server: gunicorn and
    waitress drop names with ``_``; werkzeug's development server joins a twin into the real
    header, where the trusted-proxy rules then see it as part of that header."""
    # The environ holds some twenty keys besides the headers: they are passed over in C
    # (filter with a method caller), and each header's name is converted once per name.
    headers: RawHeaders = [
        (_header_name(key), str(environ[key]).encode("latin-1"))
        for key in filter(_is_header_key, environ)
    ]
    for key, name in _CONTENT_KEYS:
        value = environ.get(key)
        if value:
            headers.append((name, str(value).encode("latin-1")))
    return headers


_is_header_key = operator.methodcaller("startswith", "HTTP_")
_CONTENT_KEYS = (("CONTENT_TYPE", b"content-type"), ("CONTENT_LENGTH", b"content-length"))


@functools.lru_cache(maxsize=1024)
def _header_name(key: str) -> bytes:
    """``HTTP_X_FOO`` → ``b"x-foo"`` (bounded: clients choose names)."""
    return key[5:].replace("_", "-").lower().encode("latin-1")


def request_target(environ: Environ) -> tuple[bytes, bytes]:
    """The raw path and query as the client sent them, when the server kept them (gunicorn's
    ``RAW_URI``, waitress's and werkzeug's ``REQUEST_URI``); else rebuilt from the decoded
    ``SCRIPT_NAME`` + ``PATH_INFO`` and ``QUERY_STRING``."""
    raw = environ.get("RAW_URI") or environ.get("REQUEST_URI")
    if raw:
        target = raw.encode("latin-1")
        if not target.startswith(b"/"):  # absolute-form: http://host/path?query
            parts = urlsplit(raw)
            path = parts.path or "/"
            if not parts.path and not parts.query and environ.get("REQUEST_METHOD") == "OPTIONS":
                path = "*"  # OPTIONS http://host asks about the server (RFC 9112 §3.2.4)
            target = path.encode("latin-1") + (
                b"?" + parts.query.encode("latin-1") if parts.query else b""
            )
        path, _, query = target.partition(b"?")
        return path, query
    path = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
    quoted = quote(path.encode("latin-1"), safe="/:@!$&'()*+,;=-._~")
    return (quoted or "/").encode("ascii"), environ.get("QUERY_STRING", "").encode("latin-1")


class _Input(httpx.SyncByteStream):
    """``wsgi.input`` as a byte iterator for httpx: exactly Content-Length bytes, or until EOF
    when the server marks the input as terminated (chunked uploads). Never read whole; stops
    with BodyTooLargeError once a terminated input goes over ``limit``."""

    __slots__ = ("consumed", "first", "left", "remaining", "stream")

    def __init__(self, stream: Any, length: int | None, limit: int | None):
        self.stream = stream
        self.remaining = length
        self.consumed = False
        self.left = limit
        self.first: bytes | None = None  # read by prime(), given back first by the iteration

    def _read(self) -> bytes:
        size = READ_SIZE if self.remaining is None else min(READ_SIZE, self.remaining)
        chunk: bytes = self.stream.read(size)
        self.consumed = True
        if self.remaining is not None:
            self.remaining -= len(chunk)
        elif self.left is not None:
            self.left -= len(chunk)
            if self.left < 0:
                raise BodyTooLargeError
        return chunk

    def prime(self) -> None:
        """Read the first chunk now, before an upstream connection is taken: a client that
        sends a head and then nothing holds a server thread, but never a pooled connection
        that every other canary request needs."""
        self.first = self._read()

    def __iter__(self) -> Iterator[bytes]:
        first, self.first = self.first, None
        if first is not None:
            if not first:
                return
            yield first
        while self.remaining is None or self.remaining > 0:
            chunk = self._read()
            if not chunk:
                return
            yield chunk


class _Replayed:
    """``wsgi.input`` for the stable app after a fallback: the chunk ``_Input.prime()`` read
    before connecting, then the rest of the server's input (PEP 3333's read, readline,
    readlines and iteration)."""

    def __init__(self, first: bytes, stream: Any):
        self._first = first
        self._stream = stream

    def read(self, size: int | None = -1) -> bytes:
        whole = size is None or size < 0
        if not self._first:
            return bytes(self._stream.read() if whole else self._stream.read(size))
        if whole:
            data, self._first = self._first + bytes(self._stream.read()), b""
            return data
        data, self._first = self._first[:size], self._first[size:]
        if len(data) < size:  # type: ignore[operator]
            # Apps read CONTENT_LENGTH bytes in one call, as servers' inputs return them.
            data += bytes(self._stream.read(size - len(data)))  # type: ignore[operator]
        return data

    def readline(self, size: int | None = -1) -> bytes:
        limit = -1 if size is None else size
        if not self._first:
            return bytes(self._stream.readline() if limit < 0 else self._stream.readline(limit))
        end = self._first.find(b"\n") + 1 or len(self._first)
        if limit >= 0:
            end = min(end, limit)
        line, self._first = self._first[:end], self._first[end:]
        if not line.endswith(b"\n") and not self._first and (limit < 0 or len(line) < limit):
            line += self.readline(-1 if limit < 0 else limit - len(line))  # _first is empty
        return line

    def readlines(self, hint: int | None = None) -> list[bytes]:
        return list(self)

    def __iter__(self) -> Iterator[bytes]:
        while line := self.readline():
            yield line


class ForwardedBody:
    """The upstream's body as the WSGI response iterable. The server calls ``close()`` when it
    is done, including when the client went away, which releases the upstream connection.

    ``first`` is the body's first chunk, read before ``start_response`` (a failure then is
    still our 502, not the server's 500); ``rest`` the stream it came from."""

    def __init__(self, response: Incoming, first: bytes, rest: Iterator[bytes]):
        self._response = response
        self._first = first
        self._rest = rest

    def __iter__(self) -> Iterator[bytes]:
        if self._first:
            yield self._first
        yield from self._rest

    def close(self) -> None:
        self._response.close()


def _status_line(code: int, reason: str | None = None) -> str:
    if not reason:
        try:
            reason = HTTPStatus(code).phrase
        except ValueError:
            reason = "Unknown"
    return f"{code} {reason}"


def _reply(start_response: StartResponse, reply: ErrorReply, tag: RawHeaders) -> list[bytes]:
    start_response(_status_line(reply.status), _native(reply.headers(tag)))
    return [reply.body]


def _native(headers: RawHeaders) -> list[tuple[str, str]]:
    return [(name.decode("latin-1"), value.decode("latin-1")) for name, value in headers]


class SyncHTTPForwarder(ForwarderBase):
    """Sends each request straight to an ``httpx.BaseTransport`` (see AsyncHTTPForwarder)."""

    def __init__(
        self,
        policy: ForwardPolicy,
        observer: ForwardObserver,
        transport: httpx.BaseTransport | None = None,
    ):
        super().__init__(policy, observer)
        # PEP 3333 servers refuse every hop-by-hop header from an app, and wsgiref's list
        # (util.is_hop_by_hop) also has "Trailers": dropped with the others, in one pass.
        self._response_drop |= _WSGI_HOP_BY_HOP
        self._bodiless_drop |= _WSGI_HOP_BY_HOP
        self._given = transport
        self._own: httpx.BaseTransport | None = None
        self._own_pid = 0
        self._lock = threading.Lock()

    def transport(self) -> httpx.BaseTransport:
        """The transport: the one passed in, else this process's own (a forked worker gets a
        fresh one: sockets must not be shared across processes)."""
        if self._given is not None:
            return self._given
        own = self._own
        if own is None or self._own_pid != os.getpid():
            with self._lock:
                if self._own is None or self._own_pid != os.getpid():
                    self._own = make_sync_transport(self.policy.limits)
                    self._own_pid = os.getpid()
                own = self._own
        return own

    @property
    def owns_a_transport(self) -> bool:
        """Whether a transport of ours exists (none until the first forwarded request)."""
        return self._own is not None

    def close(self) -> None:
        """Close our transport (a passed one is its owner's to close). Safe to repeat."""
        own, self._own = self._own, None
        if own is not None:
            own.close()

    def forward(
        self,
        environ: Environ,
        start_response: StartResponse,
        upstream: Upstream,
        tag: RawHeaders,
        *,
        fallback: bool,
    ) -> Iterable[bytes] | None:
        """The response iterable, or None when the caller should serve stable instead."""
        raw = environ_headers(environ)
        length = single_content_length(raw)
        if length is None:
            # RFC 9112 §6.3: a request without Content-Length or Transfer-Encoding has no body,
            # whatever wsgi.input_terminated says (gunicorn sets it on every request); one
            # without a length can only be read (PEP 3333) from an input the server terminates.
            has_body = "HTTP_TRANSFER_ENCODING" in environ and bool(
                environ.get("wsgi.input_terminated")
            )
        else:
            has_body = length > 0
        if self.declared_too_large(length):
            return _reply(start_response, PAYLOAD_TOO_LARGE, tag)
        body = _Input(environ["wsgi.input"], length, self.max_body_size) if has_body else None
        if body is not None:
            try:
                body.prime()
            except BodyTooLargeError:
                return _reply(start_response, PAYLOAD_TOO_LARGE, tag)
        request = self.outgoing(
            method=environ.get("REQUEST_METHOD", "GET"), upstream=upstream,
            target=request_target(environ), headers=raw, peer=environ.get("REMOTE_ADDR"),
            scheme=environ.get("wsgi.url_scheme", "http"), body=body, length=length,
        )  # fmt: skip
        try:
            transport = self.transport()
            if isinstance(transport, HTTP11SyncTransport):
                response = transport.forward(request)
            else:
                answer = transport.handle_request(request.httpx_request())
                response = incoming_from_response(answer, asynchronous=False)
        except BodyTooLargeError:
            return _reply(start_response, PAYLOAD_TOO_LARGE, tag)
        except httpx.HTTPError as exc:
            # Only the chunk prime() read and still holds can be given to stable: once the
            # transport took it, bytes may have gone out and the request is the upstream's.
            body_read = body is not None and body.first is None
            reply = self.failed(exc, upstream, request, body_read=body_read, fallback=fallback)
            if reply is None:
                if body is not None and body.first:
                    environ["wsgi.input"] = _Replayed(body.first, body.stream)
                return None
            return _reply(start_response, reply, tag)
        try:
            headers, _ = self.answered(upstream, response, tag)
            status_line = _status_line(response.status, response.reason.decode("ascii", "ignore"))
            native = _native(headers)
        except BaseException:
            response.close()  # never hold a pooled connection past a failure of ours
            raise
        iterable: Iterable[bytes] = response.stream
        if not response.complete:
            # The first body bytes are read before start_response: once it is called, a
            # failure can only be the server's own 500 page (gunicorn) instead of our 502.
            # (An answer that came whole with its head has nothing left that can fail.)
            rest = iter(response.stream)
            try:
                first = next(rest, b"")
            except httpx.HTTPError as exc:
                response.close()
                # The upstream got the request and answered: never stable's to serve again.
                reply = self.failed(exc, upstream, request, body_read=True, fallback=False)
                return _reply(start_response, reply or classify(exc), tag)
            except BaseException:
                response.close()
                raise
            iterable = ForwardedBody(response, first, rest)
        try:
            start_response(status_line, native)
        except BaseException:
            # The server refused the status or a header: the body is never read, and a
            # response left open would hold its pooled connection for the worker's life.
            response.close()
            raise
        return iterable
