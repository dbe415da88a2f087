"""A scripted HTTP/1.1 upstream that parses requests strictly and answers as told, per request.

Used by the forwarding invariant tests (tests/test_invariant_*.py). The test registers each
request before sending it: ``upstream.expect(rid, Sent(...), Script(...))``. The upstream
finds the id in the request (``/r/<rid>`` and ``x-req-id``), checks that what arrived is what
that client sent, and answers with the bytes ``render(script, rid, method)`` gives; the
test computes the same ``render`` to know the one response the client may receive besides
an error.

Requests are parsed with h11 (strict: one framing, no bare LF, no junk between requests),
so a transport that desynchronises shows up here as a request without a valid id, a body
that is not the client's, or bytes that are not a request at all. Every such sighting is
recorded in ``violations`` the moment it is seen. Responses are written by hand, byte for
byte, because the point is to send what a well-behaved server never would (bytes after the
response, a length that lies, a body on a 204...).

Connections are served one thread each; a connection the upstream closes is closed
gracefully (FIN, then the rest of the client's bytes read and dropped for a moment), so a
client is never reset before it could read the answer.
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import h11

__all__ = ["Produced", "Rendered", "Script", "ScriptedUpstream", "Sent", "render"]

FORGED = b"HTTP/1.1 200 OK\r\nx-req-id: forged\r\ncontent-length: 6\r\n\r\nforged"
JUNK = b"\r\nHTTP/1.1 junk that is no response\r\n\r\n"
_NO_BODY_STATUS = (204, 304)
_LINGER = 1.0  # seconds a closing connection keeps reading what the client still sends


@dataclass(frozen=True)
class Sent:
    """What one client sends: the upstream must see exactly this, or a prefix of its body
    when the exchange was cut short."""

    method: str
    user: str
    body: bytes


@dataclass(frozen=True)
class Script:
    """How the upstream answers one request (defaults: a plain 200 with a length).

    ``framing``: ``length`` (Content-Length), ``chunked``, or ``eof`` (no length, the body
    ends when the connection closes). ``misdeclare``: Content-Length minus the real body size
    (> 0: the body is cut short and the connection closed; < 0: bytes follow the response).
    ``chunks``: sizes the chunked body is cut into (the rest goes in one chunk);
    ``chunk_style``: ``lower``, ``upper`` (hex digits), ``zeros`` (leading zeros) or ``ext``
    (chunk extensions). ``interim``: 1xx responses sent first. ``interim_body``: each of
    them frames a body all the same (``chunked``, with a trailer, or ``length``), which a
    1xx never has: only an error is right then. ``early``: answer after this
    many body bytes instead of after the whole body (the rest is still read afterwards,
    as most servers do when they keep the connection). ``close``: say Connection: close and
    close. ``hang_up``: close after a keep-alive response without saying so. ``cut``: close
    after this many bytes of the response (taken modulo its length). ``extra``: ``junk`` or
    ``forged`` (a whole response tagged with no request's id) right after the response.
    ``raw``: write these bytes, whatever they are, and close (for fuzzing).
    ``body_anyway``: a HEAD, 204 or 304 answer carries its body all the same. ``drip``: write
    in pieces of this many bytes with a short pause between them (0: one write).
    """

    status: int = 200
    version: str = "1.1"
    framing: str = "length"
    body_size: int = 16
    misdeclare: int = 0
    chunks: tuple[int, ...] = ()
    chunk_style: str = "lower"
    trailers: tuple[tuple[bytes, bytes], ...] = ()
    interim: tuple[int, ...] = ()
    interim_body: str = ""
    early: int | None = None
    close: bool = False
    hang_up: bool = False
    cut: int | None = None
    extra: str = ""
    body_anyway: bool = False
    drip: int = 0
    raw: bytes | None = None  # these bytes instead of a response, then close (fuzzing)

    def __repr__(self) -> str:  # only what differs from a plain answer: failures read short
        changed = [
            f"{name}={getattr(self, name)!r}"
            for name, default in _SCRIPT_DEFAULTS.items()
            if getattr(self, name) != default
        ]
        return f"Script({', '.join(changed)})"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:  # hypothesis's printer
        printer.text(repr(self))


_SCRIPT_DEFAULTS = {name: value.default for name, value in Script.__dataclass_fields__.items()}


@dataclass(frozen=True)
class Produced:
    """The response a correct client delivers for one request; ``body`` None: no complete
    response was sent, so an error is the only right outcome."""

    status: int
    body: bytes | None


@dataclass(frozen=True)
class Rendered:
    data: bytes  # everything written, the response and what follows it
    close: bool  # the upstream closes the connection after writing
    produced: Produced


#: Body filler shaped to be misread: parsers skip CR and LF before a response, so a client
#: that takes the rest of someone's body for the next response lands, from most offsets,
#: on a whole response tagged with no request's id (an error would hide the leak).
BAIT = b"\r\n" * 24 + b"HTTP/1.1 200 OK\r\nx-req-id: forged\r\ncontent-length: 0\r\n\r\n"


def response_body(rid: str, size: int) -> bytes:
    """The body the upstream means to send for ``rid``: the id first, then BAIT."""
    marker = f"id={rid};".encode()
    return (marker + BAIT * (size // len(BAIT) + 1))[:size]


def _chunked(body: bytes, script: Script) -> bytes:
    pieces, rest = [], body
    for size in script.chunks:
        if not rest:
            break
        pieces.append(rest[:size])
        rest = rest[size:]
    if rest:
        pieces.append(rest)
    out = bytearray()
    for piece in [*[p for p in pieces if p], b""]:
        digits = b"%x" % len(piece)
        if script.chunk_style == "upper":
            digits = digits.upper()
        elif script.chunk_style == "zeros":
            digits = b"000" + digits
        elif script.chunk_style == "ext":
            digits += b';name="v";flag'
        out += digits + b"\r\n" + piece + (b"\r\n" if piece else b"")
    for name, value in script.trailers:
        out += name + b": " + value + b"\r\n"
    return bytes(out + b"\r\n")


#: What follows an interim status line: its end, or a body framed all the same.
_INTERIM_BODIES = {
    "": b"\r\n",
    "chunked": b"transfer-encoding: chunked\r\n\r\n5\r\nEVIL!\r\n0\r\nset-cookie: forged=1\r\n\r\n",
    "length": b"content-length: 5\r\n\r\nEVIL!",
}


def render(script: Script, rid: str, method: str) -> Rendered:
    """The bytes the upstream writes for request ``rid`` and what a client should get."""
    if script.raw is not None:
        return Rendered(script.raw, True, Produced(0, None))
    status, version = script.status, script.version
    framing = "length" if version == "1.0" and script.framing == "chunked" else script.framing
    bodiless = method == "HEAD" or status in _NO_BODY_STATUS
    body = response_body(rid, script.body_size)
    close = script.close or script.hang_up or version == "1.0" or framing == "eof"
    head = [b"HTTP/%s %d Scripted" % (version.encode(), status), b"x-req-id: " + rid.encode()]
    if script.close:  # (an HTTP/1.0 answer closes without saying so)
        head.append(b"connection: close")
    wire = b""
    declared = len(body)
    if framing == "length":
        declared = max(0, len(body) + script.misdeclare)
        if status not in _NO_BODY_STATUS or script.body_anyway:
            head.append(b"content-length: %d" % declared)
        wire = body
    elif framing == "chunked":
        head.append(b"transfer-encoding: chunked")
        wire = _chunked(body, script)
    else:
        wire = body
    head_bytes = b"\r\n".join(head) + b"\r\n\r\n"
    interim = b"".join(
        b"HTTP/1.1 %d Interim\r\n%s" % (code, _INTERIM_BODIES[script.interim_body])
        for code in script.interim
    )
    if version == "1.0":
        interim = b""
    produced_body: bytes | None = body
    if bodiless:
        produced_body = b""
        if not script.body_anyway:
            wire = b""
    elif framing == "length" and script.misdeclare:
        if script.misdeclare > 0:
            produced_body, close = None, True  # shorter than declared: cut, then closed
        else:
            produced_body = body[:declared]
    response = interim + head_bytes + (b"" if bodiless else wire)
    trailing = wire if bodiless else b""  # a body nobody may read as one
    after = {"": b"", "junk": JUNK, "forged": FORGED}[script.extra]
    if (framing == "eof" or script.misdeclare > 0) and not bodiless:
        after = b""  # anything more would be (the missing part of the) body
    if script.cut is not None and response:
        cut = script.cut % len(response)
        sent_head = len(interim) + len(head_bytes)
        if cut < sent_head:
            produced_body = None
        elif framing == "eof" and not bodiless:
            produced_body = body[: cut - sent_head]
        elif framing == "length" and not bodiless and cut - sent_head >= declared:
            pass  # only bytes past the declared length were cut: the response is whole
        elif not bodiless:
            produced_body = None
        if interim and script.interim_body:
            produced_body = None
        return Rendered(response[:cut], True, Produced(status, produced_body))
    if interim and script.interim_body:
        produced_body = None  # (its bytes, or its trailer's cookie, are in no right answer)
    return Rendered(response + trailing + after, close, Produced(status, produced_body))


@dataclass
class Seen:
    """One request as the upstream parsed it."""

    connection: int
    method: str
    target: bytes
    headers: list[tuple[bytes, bytes]]
    rid: str | None = None
    body: bytearray = field(default_factory=bytearray)
    complete: bool = False


class ScriptedUpstream:
    """A loopback server answering each request as its script says, in threads.

    >>> upstream = ScriptedUpstream()
    >>> upstream.expect("a1", Sent("POST", "user-a1", b"hello"), Script(framing="chunked"))
    >>> # send POST /r/a1 with x-req-id: a1, x-user: user-a1 and the body b"hello"
    >>> upstream.wait_quiet(5); assert upstream.violations == []
    """

    def __init__(self) -> None:
        self.sent: dict[str, Sent] = {}
        self.scripts: dict[str, Script] = {}
        self.seen: list[Seen] = []
        self.violations: list[str] = []
        self.accepted = 0
        self._lock = threading.Lock()
        self._busy: set[int] = set()  # connections reading or writing a request
        self._open: set[int] = set()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def expect(self, rid: str, sent: Sent, script: Script) -> None:
        """Register a request before it is sent: who sends what, and how to answer."""
        with self._lock:
            self.sent[rid] = sent
            self.scripts[rid] = script

    def quiet(self) -> bool:
        """No connection is in the middle of a request (all idle between requests, or closed)."""
        with self._lock:
            return not self._busy

    def wait_quiet(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not self.quiet():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.002)
        return True

    def seen_for(self, rid: str) -> list[Seen]:
        with self._lock:
            return [seen for seen in self.seen if seen.rid == rid]

    def close(self) -> None:
        self._listener.close()

    # -- serving ---------------------------------------------------------------------------
    def _serve(self) -> None:
        while True:
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self.accepted += 1
                number = self.accepted
                self._open.add(number)
            threading.Thread(target=self._run, args=(sock, number), daemon=True).start()

    def _violation(self, text: str) -> None:
        with self._lock:
            self.violations.append(text)

    def _run(self, sock: socket.socket, number: int) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            with sock:
                self._connection(sock, number)
        except OSError:
            pass  # the client reset the connection: nothing more can be seen on it
        finally:
            with self._lock:
                self._busy.discard(number)
                self._open.discard(number)

    def _connection(self, sock: socket.socket, number: int) -> None:
        parser = h11.Connection(h11.SERVER)
        current: Seen | None = None
        answered = False
        script = Script()
        while True:
            try:
                event = parser.next_event()
            except h11.RemoteProtocolError as exc:
                if not _closed_early(exc):
                    self._violation(f"connection {number}: bytes that are no request: {exc}")
                return
            if event is h11.NEED_DATA:
                if parser.their_state is h11.IDLE and not parser.trailing_data[0]:
                    with self._lock:
                        self._busy.discard(number)
                try:
                    data = sock.recv(65536)
                except OSError:
                    data = b""
                if data:
                    with self._lock:
                        self._busy.add(number)
                parser.receive_data(data)
                continue
            if isinstance(event, h11.Request):
                current = self._begin(event, number)
                answered = False
                script = self.scripts.get(current.rid or "", Script())
                if current.rid is None:
                    self._write(sock, b"HTTP/1.1 500 No id\r\ncontent-length: 0\r\n\r\n", 0)
                    with self._lock:
                        self._busy.discard(number)
                    _linger(sock)
                    return
                if script.early is not None and script.early <= 0:
                    answered = True
                    if not self._answer(sock, parser, current, script):
                        return
            elif isinstance(event, h11.Data):
                assert current is not None
                current.body += event.data
                self._check_body(current, complete=False)
                if not answered and script.early is not None and len(current.body) >= script.early:
                    answered = True
                    if not self._answer(sock, parser, current, script):
                        return
            elif isinstance(event, h11.EndOfMessage):
                assert current is not None
                current.complete = True
                self._check_body(current, complete=True)
                if not answered and not self._answer(sock, parser, current, script):
                    return
                if parser.our_state is h11.DONE and parser.their_state is h11.DONE:
                    parser.start_next_cycle()
                else:
                    return
            elif isinstance(event, h11.ConnectionClosed):
                return

    def _begin(self, event: h11.Request, number: int) -> Seen:
        headers = [(bytes(name), bytes(value)) for name, value in event.headers.raw_items()]
        seen = Seen(number, event.method.decode("latin-1"), bytes(event.target), headers)
        ids = [value for name, value in headers if name.lower() == b"x-req-id"]
        with self._lock:
            self.seen.append(seen)
        if len(ids) != 1:
            self._violation(f"a request with {len(ids)} ids: {event.method!r} {event.target!r}")
            return seen
        rid = ids[0].decode("latin-1")
        sent = self.sent.get(rid)
        if sent is None:
            self._violation(f"a request with an id nobody sent: {rid!r}")
            return seen
        seen.rid = rid
        users = [value for name, value in headers if name.lower() == b"x-user"]
        if seen.method != sent.method or seen.target != f"/r/{rid}".encode():
            self._violation(f"{rid}: request line {seen.method} {seen.target!r} was not sent")
        if users != [sent.user.encode()]:
            self._violation(f"{rid}: x-user {users!r}, sent {sent.user!r}")
        return seen

    def _check_body(self, seen: Seen, *, complete: bool) -> None:
        if seen.rid is None:
            return
        sent = self.sent[seen.rid].body
        ok = bytes(seen.body) == sent if complete else sent.startswith(bytes(seen.body))
        if not ok:
            self._violation(
                f"{seen.rid}: body {bytes(seen.body[:80])!r}... ({len(seen.body)} bytes, "
                f"{'complete' if complete else 'so far'}) is not what its client sent "
                f"({len(sent)} bytes)"
            )

    def _answer(
        self, sock: socket.socket, parser: h11.Connection, seen: Seen, script: Script
    ) -> bool:
        """Write the scripted answer; False when the connection is over."""
        assert seen.rid is not None
        rendered = render(script, seen.rid, seen.method)
        # h11 only parses here; tell it a response went out so it moves to the next request.
        parser.send(h11.Response(status_code=200, headers=[("content-length", "0")]))
        parser.send(h11.EndOfMessage())
        self._write(sock, rendered.data, script.drip)
        if rendered.close:
            with self._lock:
                self._busy.discard(seen.connection)
            _linger(sock)
            return False
        return True

    @staticmethod
    def _write(sock: socket.socket, data: bytes, drip: int) -> None:
        if not drip:
            sock.sendall(data)
            return
        size = max(drip, len(data) // 20 + 1)  # at most about 20 pauses per response
        for start in range(0, len(data), size):
            sock.sendall(data[start : start + size])
            time.sleep(0.0005)


def _closed_early(exc: h11.RemoteProtocolError) -> bool:
    """h11's verdict on a connection closed mid-request (a client may give up on a body)."""
    return "peer closed connection" in str(exc) or "incomplete" in str(exc)


def _linger(sock: socket.socket) -> None:
    """Close our side, then read and drop what the client still sends for a moment, so the
    kernel does not reset the connection (which could discard the answer unread)."""
    try:
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(_LINGER)
        deadline = time.monotonic() + _LINGER
        while time.monotonic() < deadline and sock.recv(65536):
            pass
    except OSError:
        pass
