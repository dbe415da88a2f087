"""Copies taken while the stable app works: the request body as the app reads it (the
client's bytes are read once, by the app), and the stable answer as it goes out. Both are
bounded: past the limit the body copy is given up (the request is not mirrored) and the
answer's body is kept truncated (its body is then not compared)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Iterator, MutableMapping
from typing import Any

from .compare import Answer

__all__ = ["AnswerCapture", "BodyTee", "InputTee", "IterableCapture"]

Message = MutableMapping[str, Any]
#: The most of an answer's body kept for comparison (each side).
ANSWER_LIMIT = 1024 * 1024


class BodyTee:
    """The ``receive`` the stable app gets: passes every message through, keeping a copy of
    the body up to ``limit`` bytes. ``body`` is the whole body once the app has read it all,
    else None (too big, not read to the end, or the client went away)."""

    __slots__ = ("_parts", "_receive", "_size", "complete", "limit", "overflow")

    def __init__(self, receive: Callable[[], Awaitable[Message]], limit: int):
        self._receive = receive
        self.limit = limit
        self._parts: list[bytes] = []
        self._size = 0
        self.overflow = False
        self.complete = False

    async def __call__(self) -> Message:
        message = await self._receive()
        if message["type"] == "http.request" and not self.overflow and not self.complete:
            chunk = message.get("body", b"")
            self._size += len(chunk)
            if self._size > self.limit:
                self.overflow, self._parts = True, []  # never held beyond the limit
            elif chunk:
                self._parts.append(chunk)
            if not message.get("more_body", False):
                self.complete = True
        return message

    @property
    def body(self) -> bytes | None:
        if self.overflow or not self.complete:
            return None
        return b"".join(self._parts)


class AnswerCapture:
    """The ``send`` the stable app gets: passes every message through at once, noting the
    status, headers and up to ANSWER_LIMIT bytes of the body."""

    __slots__ = ("_parts", "_send", "_size", "done", "headers", "status", "truncated")

    def __init__(self, send: Callable[[Message], Awaitable[None]]):
        self._send = send
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self._parts: list[bytes] = []
        self._size = 0
        self.truncated = False
        self.done = False

    def __call__(self, message: Message) -> Awaitable[None]:
        kind = message["type"]
        if kind == "http.response.start":
            self.status = message["status"]
            self.headers = list(message.get("headers", ()))
        elif kind == "http.response.body":
            self._keep(message.get("body", b""))
            if not message.get("more_body", False):
                self.done = True
        return self._send(message)

    def _keep(self, chunk: bytes) -> None:
        if self.truncated or not chunk:
            return
        self._size += len(chunk)
        if self._size > ANSWER_LIMIT:
            self.truncated, self._parts = True, []
        else:
            self._parts.append(chunk)

    def answer(self) -> Answer:
        return Answer(self.status, self.headers, b"".join(self._parts), self.truncated)


class InputTee:
    """``wsgi.input`` for the stable app: every read passes through, the bytes are copied up
    to ``limit``; ``body`` is the whole body once ``length`` bytes (CONTENT_LENGTH) were read."""

    def __init__(self, stream: Any, length: int, limit: int):
        self._stream = stream
        self._length = length
        self._parts: list[bytes] = []
        self._size = 0
        self.overflow = length > limit

    def _keep(self, data: bytes) -> bytes:
        kept = self._size
        self._size += len(data)
        if not self.overflow and data and kept < self._length:
            # A server may pass on bytes past CONTENT_LENGTH: they are not the body, and
            # holding them would let a client grow the copy past the limit.
            self._parts.append(data[: self._length - kept])
        return data

    def read(self, size: int | None = -1) -> bytes:
        return self._keep(self._stream.read() if size is None else self._stream.read(size))

    def readline(self, size: int | None = -1) -> bytes:
        return self._keep(self._stream.readline() if size is None else self._stream.readline(size))

    def readlines(self, hint: int = -1) -> list[bytes]:
        return [self._keep(line) for line in self._stream.readlines(hint)]

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        line = self.readline()
        if not line:
            raise StopIteration
        return line

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)

    @property
    def body(self) -> bytes | None:
        if self.overflow or self._size < self._length:
            return None
        return b"".join(self._parts)


class IterableCapture:
    """The stable app's response iterable: chunks pass through as the server asks for them,
    copied up to ANSWER_LIMIT; ``done`` is called once from ``close()`` (PEP 3333: the
    server always calls it), after the server has sent the whole answer."""

    def __init__(self, body: Iterable[bytes], done: Callable[[Answer], None], head: Any):
        self._body = body
        self._done = done
        self._head = head  # [status, headers] filled in by start_response
        self._parts: list[bytes] = []
        self._size = 0
        self._truncated = False

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._body:
            if not self._truncated and chunk:
                self._size += len(chunk)
                if self._size > ANSWER_LIMIT:
                    self._truncated, self._parts = True, []
                else:
                    self._parts.append(chunk)
            yield chunk

    def close(self) -> None:
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                close()
        finally:
            status, headers = self._head
            self._done(Answer(status, headers, b"".join(self._parts), self._truncated))
