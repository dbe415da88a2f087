"""The HTTP/1.1 client side of one request/response exchange, without I/O.

Both forwarding drivers (``pool.py``: asyncio, ``sync_pool.py``: blocking sockets) run
every exchange through an :class:`Exchange`; the decisions that keep one user's bytes out
of another user's response live here, once:

- the request head is checked (no CR, LF or NUL; header names are tokens) and framed by
  our own rule (one numeric Content-Length, or ``Transfer-Encoding: chunked``, or none);
- the response is parsed by llhttp (httptools) with every limit counted on bytes as they
  arrive: the head is buffered here until its blank line and refused past
  ``MAX_HEAD_BYTES`` (llhttp itself never sees a partial head line, so it never grows one);
- :attr:`Exchange.reusable` is the only answer to "may this connection carry another
  request": the request went out whole, the response was read whole with exact framing,
  nothing came after it, and neither side asked to close;
- :func:`may_retry` is the only answer to "may this request be sent again".

API (also what a fuzz target drives)::

    exchange = Exchange("GET", b"/path?q", [(b"host", b"example")])
    wire = exchange.head                       # bytes to send first
    wire = exchange.frame(chunk)               # for each body chunk (has_body only)
    wire = exchange.end_body()                 # after the last one (also when no body)
    exchange.feed(data)                        # bytes from the upstream; raises
                                               # httpx.RemoteProtocolError
    exchange.head_done                         # status, reason, headers are final
    exchange.take()                            # all body bytes in so far, or None
    exchange.complete                          # the response is over
    exchange.feed_eof()                        # the upstream closed (raises when early)
    exchange.reusable                          # the verdict, once complete

``feed`` may be called with any split of the bytes: the events and the verdict do not
depend on where reads end (``tests/forward/test_http11_core.py`` splits at every byte). After a
``RemoteProtocolError`` the exchange is dead and the connection must be closed.
"""

from __future__ import annotations

import operator
import re
import select
from collections import deque

import httptools
import httpx

from .headers import connection_tokens

__all__ = [
    "IDEMPOTENT",
    "MAX_HEADERS",
    "MAX_HEAD_BYTES",
    "MAX_REASON_BYTES",
    "MAX_STALL_BYTES",
    "STALL_BLOCK",
    "Exchange",
    "RetryableError",
    "may_retry",
    "readable_now",
]

#: Bytes of response head accepted, interim (1xx) heads included; llhttp sets no limit.
MAX_HEAD_BYTES = 64 * 1024
#: Response header fields accepted (real responses carry a few dozen; nginx's 8 KiB default
#: buffers hold fewer than this many).
MAX_HEADERS = 256
#: Bytes of reason phrase accepted: it is informational, and RFC 9112 lets clients ignore it.
MAX_REASON_BYTES = 1024
#: Bytes fed after the head without yielding body (chunk framing, extensions, trailers):
#: past this the upstream is spending our memory or time on nothing we pass on. Counted in
#: blocks of STALL_BLOCK bytes at fixed offsets of the stream (not per read), so the verdict
#: does not depend on how reads split the bytes: a run of fewer than MAX_STALL_BYTES bytes
#: without body always passes, one of MAX_STALL_BYTES + STALL_BLOCK never does.
MAX_STALL_BYTES = 64 * 1024
STALL_BLOCK = 4 * 1024
#: Body pieces llhttp hands over smaller than this are joined as they come: a response of
#: one-byte chunks is held as bytes, not as one Python object per chunk.
_SMALL_PIECE = 1024
#: RFC 9110 §9.2.2.
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})

_NAME_BAD = re.compile(rb"[^!#$%&'*+\-.^_`|~0-9A-Za-z]")
_DIGITS = re.compile(rb"[0-9]{1,18}")
#: Bytes RFC 9112 §4 does not allow in a reason phrase (it allows HTAB, SP, VCHAR, obs-text);
#: llhttp lets them through, and a WSGI server refuses such a status line from its app.
_REASON_BAD = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_HEAD_END = b"\r\n\r\n"
_LINE_ENDS = (b"\r", b"\n")
_header_line = b": ".join
_name = operator.itemgetter(0)
#: Header names already found to be tokens: most requests send only names seen before, and
#: one set lookup each replaces the scan. Bounded (a client inventing names fills it once;
#: names past the bound are checked every time, as before).
_VALID_NAMES: set[bytes] = set()
_MAX_VALID_NAMES = 4096


def _sink() -> list[tuple[bytes, bytes]]:
    """Where header fields go once the final head is in (trailers): nowhere. Only ever
    appended to, which a deque that keeps nothing does in C."""
    return deque(maxlen=0)  # type: ignore[return-value]


class _ExtraBytesError(Exception):
    """Raised into llhttp when a byte follows the complete response: parsing stops there."""


class Exchange:
    """One request and its response on one connection (see the module docstring)."""

    __slots__ = (
        "_after_head", "_block_body", "_block_fill", "_body_bytes", "_chunked_response",
        "_crlf_run", "_fields", "_head_buf", "_head_seen", "_interim", "_length",
        "_must_close", "_parser", "_sent",
        "_stall", "_stall_mark", "buffered", "chunks",
        "complete", "has_body", "head", "head_done", "head_only", "headers", "keep_alive",
        "method", "reason", "received", "request_done", "status", "trailing", "until_eof",
    )  # fmt: skip
    # Set by _start_chunked, read only for a chunked body.
    _stall: int
    _block_fill: int
    _block_body: bool
    _stall_mark: int
    _crlf_run: int

    def __init__(self, method: str, target: bytes, headers: list[tuple[bytes, bytes]]):
        self.method = method
        self.head_only = method == "HEAD"
        length: int | None = None
        chunked = False
        names = list(map(_name, headers))
        # The framing headers are looked for in C first: one join of the names, lowered.
        # Only when one may be there (a name containing it) are the headers read one by one.
        lowered_names = b"\n".join(names).lower()
        framed = b"content-length" in lowered_names or b"transfer-encoding" in lowered_names
        for name, value in headers if framed else ():
            lowered = name.lower()
            if lowered == b"content-length":
                if length is not None or not _DIGITS.fullmatch(value):
                    raise httpx.LocalProtocolError("one numeric Content-Length, or none")
                length = int(value)
            elif lowered == b"transfer-encoding":
                if chunked or value.lower() != b"chunked":
                    raise httpx.LocalProtocolError("Transfer-Encoding may only be 'chunked'")
                chunked = True
        if chunked and length is not None:
            raise httpx.LocalProtocolError("both Content-Length and Transfer-Encoding")
        request_line = b"%s %s HTTP/1.1" % (method.encode("ascii"), target)
        self.head = b"\r\n".join([request_line, *map(_header_line, headers), b"\r\n"])
        _check_head(self.head, request_line, names)
        self.has_body = chunked or bool(length)
        self._length = -1 if chunked else (length or 0)  # -1: chunked
        self._sent = 0
        self.request_done = False  # the whole body (or none) went out with our framing
        # -- the response
        self._parser = httptools.HttpResponseParser(self)
        self._head_buf = bytearray()
        self._head_seen = 0  # head bytes fed so far, interim heads included
        self._interim = False
        self._after_head = 0  # bytes fed after the final head
        self._body_bytes = 0  # of which body
        # A chunked body's counts (_stall, _block_fill, _block_body, _stall_mark, _crlf_run)
        # are set when the head says chunked (_start_chunked): no other body reads them.
        self._chunked_response = False
        self._must_close = False  # whatever llhttp says of keep-alive (on_headers_complete)
        self.received = 0  # any byte of a response: from then on, never sent again
        self.status = 0
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self._fields: list[tuple[bytes, bytes]] = []  # the fields of the head being parsed
        self.head_done = False
        self.chunks: list[bytes | bytearray] = []  # body not taken yet, in order
        self.buffered = 0
        self.complete = False
        self.keep_alive = False
        self.until_eof = False  # no length, not chunked: the body ends with the connection
        self.trailing = False  # bytes came after the complete response

    # -- the request -----------------------------------------------------------------------
    def frame(self, chunk: bytes) -> bytes:
        """``chunk`` of the body as it goes on the wire; counts it against the length."""
        self._sent += len(chunk)
        if self._length < 0:
            return b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunk else b""
        if self._sent > self._length:
            raise httpx.LocalProtocolError("the request body is longer than its length")
        return chunk

    @property
    def length_sent(self) -> bool:
        """Every byte a Content-Length declared is on the wire: what is left of the body is
        its end, not data the upstream waits for (always False for a chunked body)."""
        return self._sent == self._length

    def end_body(self) -> bytes:
        """The end of the body on the wire (the last chunk); raises when it is short."""
        if self._length < 0:
            self.request_done = True
            return b"0\r\n\r\n"
        if self._sent < self._length:
            raise httpx.LocalProtocolError("the request body is shorter than its length")
        self.request_done = True
        return b""

    # -- the response ----------------------------------------------------------------------
    def feed(self, data: bytes) -> None:
        """Bytes from the upstream, as they came."""
        if not data:
            return
        self.received += len(data)
        if self.complete:
            self.trailing = True  # never parsed: the connection is done
            return
        if not self.head_done:
            self._feed_head(data)
            return
        self._after_head += len(data)
        if self._chunked_response:
            self._note_crlf(data)
        self._parse_counted(data)
        if self.complete:
            self._check_tail()

    def feed_eof(self) -> None:
        """The upstream closed its side: the end of a read-to-EOF body, else an error."""
        if self.complete:
            return
        if self.head_done and self.until_eof:
            self.complete = True
            self.keep_alive = False
            return
        if not self.head_done:
            what = "unanswered" if not self.received else "mid-head"
            raise httpx.RemoteProtocolError(f"the upstream closed the connection {what}")
        raise httpx.RemoteProtocolError("the upstream closed the connection mid-body")

    def take(self) -> bytes | None:
        """Every body byte received and not yet taken, as one piece: a driver passes on one
        piece per read however many chunks the upstream cut it into (one ASGI message, not
        one per chunk)."""
        chunks = self.chunks
        if not chunks:
            return None
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self.buffered = 0
        return bytes(body)

    @property
    def reusable(self) -> bool:
        """May the connection carry another exchange? Only after a clean, whole one."""
        return (
            self.complete
            and self.request_done
            and self.keep_alive
            and not self.trailing
            and not self.until_eof
            and not self.head_only
        )

    def _feed_head(self, data: bytes) -> None:
        # The head is held here until its blank line, so llhttp never receives half a header
        # line (it would grow it with ``+=`` on every read) and the limit counts raw bytes.
        # A head that arrives in one read (the usual case) is never copied.
        buf = self._head_buf
        if data[:1] in _LINE_ENDS and not buf:
            # llhttp skips CR and LF before a status line. Here they can only be the end of
            # an answer we already took (it came after the pool's check): the connection
            # has carried more than its responses, so it carries no further exchange.
            self._must_close = True
        if buf:
            start = len(buf) - 3  # the blank line may straddle the two reads
            buf += data
            end = buf.find(_HEAD_END, max(0, start))
            if end < 0:
                self._check_head_size(len(buf))
                return
            data = bytes(buf)
            buf.clear()
        else:
            end = data.find(_HEAD_END)
        while True:
            if end < 0:
                self._check_head_size(len(data))
                buf += data
                return
            seen = self._head_seen + end + 4
            if seen > MAX_HEAD_BYTES:
                raise httpx.RemoteProtocolError("the upstream's response head is too large")
            self._head_seen = seen
            if data[9:10] != b"1" and data[:5] == b"HTTP/":  # final: head and body in one parse
                rest_size = len(data) - end - 4
                self._after_head += rest_size
                if rest_size <= STALL_BLOCK:  # the body's part lies in its first block
                    self._parse(data)
                    if self._chunked_response:
                        self._count(rest_size)
                else:
                    whole = memoryview(data)
                    self._parse(whole[: end + 4])
                    if self.head_done:
                        self._parse_counted(whole[end + 4 :])
                if not self.head_done:  # "HTTP/1.1 " was not where the status code is
                    raise httpx.RemoteProtocolError("invalid response: no final status")
                if self._chunked_response:  # (only a chunked body's end is CR/LF counted)
                    self._note_crlf(data)
                if self.complete:
                    self._check_tail()
                return
            if end + 4 == len(data):
                head, rest = data, b""
            else:
                head, rest = data[: end + 4], data[end + 4 :]
            self._parse(head)  # on_headers_complete: a final head, or an interim one
            if self.head_done:
                break
            data = rest
            if data[:1] in _LINE_ENDS:  # (blank lines between an interim head and the next)
                self._must_close = True
            end = data.find(_HEAD_END)
        if rest:
            self._after_head += len(rest)
            self._parse_counted(rest)
            if self._chunked_response:
                self._note_crlf(rest)
        if self.complete:
            self._check_tail()

    def _check_head_size(self, pending: int) -> None:
        if self._head_seen + pending > MAX_HEAD_BYTES:
            raise httpx.RemoteProtocolError("the upstream's response head is too large")

    def _parse_counted(self, data: bytes | memoryview) -> None:
        """Parse bytes after the final head, counting the stall by fixed blocks of the
        stream. Only a chunked body has bytes that are not body before its end (a length or
        read-to-EOF body is body to the last byte), so only one is cut at block edges."""
        if not self._chunked_response or self.complete:
            self._parse(data)
            return
        size = len(data)
        room = STALL_BLOCK - self._block_fill
        if size <= room:
            self._parse(data)
            self._count(size)
            return
        view = memoryview(data)
        start = 0
        while start < size:
            piece = view[start : start + room]
            self._parse(piece)
            self._count(len(piece))
            start += len(piece)
            room = STALL_BLOCK
            if self.complete:
                if start < size:
                    self._parse(view[start:])  # after the end: trailing, whatever it is
                return

    def _count(self, size: int) -> None:
        """``size`` bytes of the current block were just parsed."""
        if self._body_bytes != self._stall_mark:
            self._stall_mark = self._body_bytes
            self._block_body = True
        self._block_fill += size
        if self._block_fill < STALL_BLOCK:
            return
        self._block_fill = 0
        if self._block_body or self.complete:
            self._stall = 0
        else:
            self._stall += 1
            if self._stall * STALL_BLOCK >= MAX_STALL_BYTES:
                raise httpx.RemoteProtocolError("the upstream sent too much without a body")
        self._block_body = False

    def _parse(self, data: bytes | memoryview) -> None:
        if self.complete:
            self.trailing = True
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            raise httpx.RemoteProtocolError("the upstream switched protocols unasked") from None
        except httptools.HttpParserError as exc:
            ours = exc.__context__
            if isinstance(ours, _ExtraBytesError):
                self.trailing = True
                return
            if self.complete:  # a whole response came, then bytes that belong to none
                self.trailing = True
                return
            if isinstance(ours, httpx.RemoteProtocolError):
                raise ours from None
            raise httpx.RemoteProtocolError(f"invalid response: {exc}") from None

    def _note_crlf(self, data: bytes) -> None:
        stripped = len(data.rstrip(b"\r\n"))
        self._crlf_run = self._crlf_run + len(data) if stripped == 0 else len(data) - stripped

    def _check_tail(self) -> None:
        # llhttp skips CR and LF between messages without a callback: count them ourselves.
        # A length-framed or empty body has no framing bytes, so every byte after the head
        # that was not body came after the response; a chunked one ends with exactly one
        # "\r\n\r\n" (after the last chunk or the last trailer).
        if self._chunked_response:
            if self._crlf_run > 4:
                self.trailing = True
        elif self._after_head > self._body_bytes:
            self.trailing = True

    # -- httptools callbacks ---------------------------------------------------------------
    def on_message_begin(self) -> None:
        if self.status:  # a byte after the final response: stop parsing it
            raise _ExtraBytesError

    def on_status(self, reason: bytes) -> None:
        # The head arrives whole, so this is called once per head.
        if len(reason) > MAX_REASON_BYTES:
            raise httpx.RemoteProtocolError("the upstream's reason phrase is too long")
        if _REASON_BAD.search(reason):
            raise httpx.RemoteProtocolError("a control byte in the upstream's reason phrase")
        self.reason = reason

    def on_header(self, name: bytes, value: bytes) -> None:
        # Counted when the head is complete: a head is whole before llhttp sees it, and at
        # most MAX_HEAD_BYTES long. After the final head, _fields is a sink: a trailer is
        # never promoted to a header, whenever it arrives.
        self._fields.append((name, value))

    def on_headers_complete(self) -> None:
        if self.head_done:
            return  # the end of the trailers
        fields = self._fields
        if len(fields) > MAX_HEADERS:
            raise httpx.RemoteProtocolError("the upstream sent too many response headers")
        status = self._parser.get_status_code()
        if status == 101:
            raise httpx.RemoteProtocolError("the upstream switched protocols unasked")
        if status > 599 or status < 100:
            # RFC 9110 §15: three digits, 1xx-5xx; servers in front refuse others. llhttp
            # passes 000-099, which would otherwise pass for an interim answer: the next
            # response would be taken for this request's.
            raise httpx.RemoteProtocolError(f"the upstream answered status {status}")
        # The framing headers, found in C: names cannot hold a line feed (llhttp refuses
        # one), so "\nname\n" in the joined names is an exact match of a whole name.
        names = b"\n%s\n" % b"\n".join(map(_name, fields)).lower()
        if status < 200:  # 100 Continue, 103 Early Hints: the final answer follows
            _check_interim(fields, names)
            self._fields, self.reason = [], b""
            self._interim = True
            return
        self.headers = fields
        self._fields = _sink()
        self.status = status
        self.head_done = True
        if self.head_only:
            # llhttp cannot be told that a response has no body because the request was
            # HEAD: take the head, and let the connection go rather than misread the rest.
            self.complete = True
            self.keep_alive = False
            return
        if (
            b"\nconnection\n" in names
            and self._parser.get_http_version() != "1.1"
            and b"close" in connection_tokens(fields)
        ):
            # llhttp lets keep-alive win over close in HTTP/1.0 ("close, keep-alive");
            # close wins (RFC 9112 §9.3), as llhttp already has it for HTTP/1.1. (Only ever
            # set here: a CR/LF before the status line may have set it already.)
            self._must_close = True
        if status in (204, 304):
            return
        if b"\ntransfer-encoding\n" in names:
            codings = b",".join([v for n, v in fields if n.lower() == b"transfer-encoding"])
            tokens = [token.strip(b" \t") for token in codings.lower().split(b",")]
            # llhttp frames by the last element alone, an empty one included ("chunked ,"
            # is not chunked to it): that one must be chunked, and no other element may be
            # anything but empty (",chunked" is chunked to both).
            if tokens[-1] != b"chunked" or [token for token in tokens if token] != [b"chunked"]:
                # Only chunked, once (as nginx has it). Any other coding would reach the
                # client still coded (Transfer-Encoding is hop-by-hop: it is not passed on),
                # and chunked twice (RFC 9112 §7) would be undone once by llhttp.
                raise httpx.RemoteProtocolError(
                    f"the upstream used a transfer coding other than chunked once: {codings[:64]!r}"
                )
            if self._parser.get_http_version() != "1.1":
                # RFC 9112 §6.1: HTTP/1.0 has no Transfer-Encoding. Read the message as
                # framed, then close: the sender may not frame the next one the same way.
                self._must_close = True
            self._start_chunked()
        else:
            self.until_eof = b"\ncontent-length\n" not in names

    def _start_chunked(self) -> None:
        self._chunked_response = True
        self._stall = 0  # whole blocks (STALL_BLOCK) without body since body last came
        self._block_fill = 0  # bytes of the current block fed so far
        self._block_body = False  # whether body came in the current block
        self._stall_mark = 0  # _body_bytes when the count last looked
        self._crlf_run = 0  # CR/LF bytes at the end of what was fed

    def on_body(self, body: bytes) -> None:
        if self.complete:  # after the head of a HEAD response: bytes that belong to none
            self.trailing = True
            return
        if self._interim:  # (_check_interim refuses the heads that frame one)
            raise httpx.RemoteProtocolError("the upstream sent an interim (1xx) response a body")
        size = len(body)
        self._body_bytes += size
        self.buffered += size
        chunks = self.chunks
        if size < _SMALL_PIECE and chunks:  # joined to a small piece before it
            last = chunks[-1]
            if type(last) is not bytearray:
                if len(last) >= _SMALL_PIECE:
                    chunks.append(bytearray(body))
                    return
                chunks[-1] = last = bytearray(last)
            last += body
        else:  # kept as llhttp gave it (a small body in one piece is never copied)
            chunks.append(body)

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        if not self.status or self.complete:
            return
        self.complete = True
        self.keep_alive = not self._must_close and self._parser.should_keep_alive()


def _check_interim(fields: list[tuple[bytes, bytes]], names: bytes) -> None:
    """Refuse an interim (1xx) head that frames a body. A 1xx ends with its head: no content,
    no trailers (RFC 9110 §15.2), and no Content-Length (§8.6). llhttp reads a body for a
    1xx other than 100, 102 and 103 when the head frames one, and that body's bytes and
    trailer fields would be taken for the final answer's body and header fields. A zero
    Content-Length frames nothing and is let through. ``names``: the fields' names, lower
    case, each between line feeds (on_headers_complete's)."""
    if b"\ntransfer-encoding\n" in names or (
        b"\ncontent-length\n" in names
        and any(n.lower() == b"content-length" and v.strip(b" \t0") for n, v in fields)
    ):
        raise httpx.RemoteProtocolError("the upstream framed a body in an interim (1xx) response")


def may_retry(method: str, exchange: Exchange, *, reused: bool) -> bool:
    """May a failed request be sent again on a new connection? Once at most (the caller's
    loop), only when the connection was a reused keep-alive one that the upstream may have
    closed while idle, nothing of a response came, the method is idempotent, and there was
    no body (a body streamed from the client cannot be replayed)."""
    return reused and not exchange.received and method in IDEMPOTENT and not exchange.has_body


class RetryableError(Exception):
    """Raised by a driver when ``may_retry`` allowed sending the failed request again; its
    pool does so once, on a new connection, and raises ``error`` if that fails too."""

    def __init__(self, error: httpx.HTTPError):
        super().__init__(str(error))
        self.error = error


def readable_now(fd: int) -> bool:
    """Has the peer sent something (or closed, or failed) on this socket? One zero-timeout
    poll; it is what both drivers ask of an idle connection before reusing it, and of one
    they are sending a body on. ``poll``, not ``select``: select cannot take a descriptor
    above 1023, and a busy server has those (a failed check would close every idle
    connection)."""
    if fd < 0:  # closed already
        return True
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


def _check_head(head: bytes, request_line: bytes, names: list[bytes]) -> None:
    """Refuse to write a head that a CR, LF or NUL could split in two (request smuggling),
    or a header name that is not an HTTP token: a few scans of the bytes, in C.

    ``head`` is the request line and each header line, each ended by CRLF, then CRLF: our
    own line ends are exactly one CR and one LF per line plus the blank line's, so any other
    CR or LF (in the method, target, a name or a value) makes a count come out higher."""
    ends = len(names) + 2
    if head.count(b"\r") != ends or head.count(b"\n") != ends or b"\0" in head:
        raise httpx.LocalProtocolError("CR, LF or NUL in the request line or a header")
    if not _VALID_NAMES.issuperset(names):
        if b"" in names or _NAME_BAD.search(b"".join(names)):
            raise httpx.LocalProtocolError(f"invalid header name among {names!r}")
        if len(_VALID_NAMES) < _MAX_VALID_NAMES:
            _VALID_NAMES.update(names)
    if request_line.count(b" ") != 2:
        raise httpx.LocalProtocolError("a space in the request method or target")
