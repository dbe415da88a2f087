"""The sans-I/O HTTP/1.1 exchange (canary_mw/forward/http11.py): request framing out,
response bytes in → head, body, end, and the reuse verdict; the verdict never depends on
where the reads were split."""

from __future__ import annotations

from dataclasses import dataclass, replace
from itertools import pairwise

import httpx
import pytest

from canary_mw.forward.http11 import (
    MAX_HEAD_BYTES,
    MAX_STALL_BYTES,
    Exchange,
    may_retry,
)


@dataclass(frozen=True)
class Outcome:
    status: int = 0
    headers: tuple[tuple[bytes, bytes], ...] = ()
    body: bytes = b""
    complete: bool = False
    reusable: bool = False
    error: str = ""


def run(data: bytes, *, method: str = "GET", cuts: list[int] | None = None, eof: bool = False):
    """Feed ``data`` cut at ``cuts`` (offsets), then EOF if asked; the outcome."""
    exchange = Exchange(method, b"/", [(b"host", b"x")])
    exchange.end_body()
    body = bytearray()
    bounds = [0, *(cuts or []), len(data)]
    try:
        for start, end in pairwise(bounds):
            exchange.feed(data[start:end])
            while (chunk := exchange.take()) is not None:
                body += chunk
        if eof:
            exchange.feed_eof()
            while (chunk := exchange.take()) is not None:
                body += chunk
    except httpx.RemoteProtocolError as exc:
        return Outcome(error=str(exc))
    return Outcome(
        exchange.status, tuple(exchange.headers), bytes(body), exchange.complete,
        exchange.reusable,
    )  # fmt: skip


def same(actual: Outcome, expected: Outcome) -> bool:
    """Equal, an expected error matching by a fragment of its message."""
    if expected.error and expected.error in actual.error:
        actual = replace(actual, error=expected.error)
    return actual == expected


OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nab"
CHUNKED = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nab\r\n1\r\nc\r\n0\r\n\r\n"
LENGTH = ((b"content-length", b"2"),)
TE = ((b"transfer-encoding", b"chunked"),)

CASES = {
    "length": (OK, False, Outcome(200, LENGTH, b"ab", True, True)),
    "chunked": (CHUNKED, False, Outcome(200, TE, b"abc", True, True)),
    "chunked-with-trailers": (
        CHUNKED[:-2] + b"x-trailer: 1\r\nset-cookie: stolen\r\n\r\n", False,
        Outcome(200, TE, b"abc", True, True)),
    "interim-then-final": (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Hints\r\nlink: </a>\r\n\r\n"
                           + OK, False, Outcome(200, LENGTH, b"ab", True, True)),
    # A 1xx has no body and no trailers (RFC 9110 §15.2): llhttp reads one for 104-199 when
    # the head frames it, and its bytes and trailer fields joined the final answer's.
    "interim-with-chunked-body": (
        b"HTTP/1.1 199 X\r\ntransfer-encoding: chunked\r\n\r\n5\r\nEVIL!\r\n0\r\n"
        b"set-cookie: session=attacker\r\n\r\n" + OK, False, Outcome(error="interim")),
    "interim-with-length-body": (b"HTTP/1.1 150 X\r\ncontent-length: 5\r\n\r\nEVIL!" + OK, False,
                                 Outcome(error="interim")),
    "interim-103-with-length": (b"HTTP/1.1 103 Hints\r\ncontent-length: 5\r\n\r\nEVIL!" + OK,
                                False, Outcome(error="interim")),
    "interim-with-zero-length": (b"HTTP/1.1 100 Continue\r\ncontent-length: 0\r\n\r\n" + OK,
                                 False, Outcome(200, LENGTH, b"ab", True, True)),
    # Found by a differential fuzz against h11: llhttp passes status 000-099, which read as
    # an interim answer, so the next response was taken for this request's, reusably.
    "status-000-then-final": (b"\r\nHTTP/1.1 000 X\r\ncontent-length: 0\r\n\r\n" + OK, False,
                              Outcome(error="status 0")),
    "status-099-then-final": (b"HTTP/1.1 099 X\r\ncontent-length: 0\r\n\r\n" + OK, False,
                              Outcome(error="status 99")),
    # HTTP/1.0 has no Transfer-Encoding (RFC 9112 §6.1): read as framed, then closed.
    "http-1.0-chunked-keep-alive": (
        b"HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ntransfer-encoding: chunked\r\n\r\n"
        b"2\r\nab\r\n0\r\n\r\n", False,
        Outcome(200, ((b"connection", b"keep-alive"), *TE), b"ab", True)),
    # close wins over keep-alive (RFC 9112 §9.3); llhttp let keep-alive win in HTTP/1.0.
    "http-1.0-close-and-keep-alive": (
        b"HTTP/1.0 200 OK\r\nconnection: close, keep-alive\r\ncontent-length: 2\r\n\r\nab",
        False, Outcome(200, ((b"connection", b"close, keep-alive"), *LENGTH), b"ab", True)),
    "http-1.0-keep-alive-then-close": (
        b"HTTP/1.0 200 OK\r\nconnection: keep-alive\r\nconnection: close\r\n"
        b"content-length: 2\r\n\r\nab", False,
        Outcome(200, ((b"connection", b"keep-alive"), (b"connection", b"close"), *LENGTH), b"ab",
                True)),
    # CR/LF before a status line can only be the end of an answer taken already.
    "crlf-before-the-status-line": (b"\r\n" + OK, False, Outcome(200, LENGTH, b"ab", True)),
    "lf-before-an-http-1.0-keep-alive": (
        b"\nHTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 2\r\n\r\nab", False,
        Outcome(200, ((b"connection", b"keep-alive"), *LENGTH), b"ab", True)),
    "lf-between-interim-and-final": (b"HTTP/1.1 100 Continue\r\n\r\n\n" + OK, False,
                                     Outcome(200, LENGTH, b"ab", True)),
    "chunked-twice": (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n"
                      b"transfer-encoding: chunked\r\n\r\n2\r\nab\r\n0\r\n\r\n", False,
                      Outcome(error="other than chunked")),
    "chunked-twice-in-one-header": (
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, chunked\r\n\r\n2\r\nab\r\n0\r\n\r\n",
        False, Outcome(error="other than chunked")),
    "204": (b"HTTP/1.1 204 No Content\r\n\r\n", False, Outcome(204, (), b"", True, True)),
    "304-with-length": (b"HTTP/1.1 304 Not Modified\r\ncontent-length: 9\r\n\r\n", False,
                        Outcome(304, ((b"content-length", b"9"),), b"", True, True)),
    "connection-close": (b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nab",
                         False, Outcome(200, ((b"connection", b"close"), *LENGTH), b"ab", True)),
    "http-1.0": (b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nab", False,
                 Outcome(200, LENGTH, b"ab", True)),
    "http-1.0-keep-alive": (b"HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 2\r\n\r\nab",
                            False, Outcome(200, ((b"connection", b"keep-alive"), *LENGTH), b"ab", True, True)),
    "until-eof": (b"HTTP/1.1 200 OK\r\n\r\nto the end", True, Outcome(200, (), b"to the end", True)),
    # Only chunked (as nginx has it): another coding would reach the client still coded,
    # since Transfer-Encoding, hop-by-hop, is not passed on.
    "other-coding": (b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\nzz", True,
                     Outcome(error="other than chunked")),
    "gzip-then-chunked": (b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
                          False, Outcome(error="other than chunked")),
    # llhttp frames by the last element, empty or not: "chunked ," is not chunked to it.
    "chunked-then-an-empty-element": (
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked ,\r\n\r\n2\r\nab\r\n0\r\n\r\n", False,
        Outcome(error="other than chunked")),
    "chunked-then-an-empty-header": (
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntransfer-encoding: \r\n\r\n"
        b"2\r\nab\r\n0\r\n\r\n", False, Outcome(error="invalid response")),  # (llhttp's own)
    "an-empty-list-element": (b"HTTP/1.1 200 OK\r\ntransfer-encoding: ,chunked\r\n\r\n2\r\nab\r\n0\r\n\r\n",
                              False, Outcome(200, ((b"transfer-encoding", b",chunked"),), b"ab", True, True)),
    # Anything after a complete response poisons the connection (finding 4).
    "response-twice": (OK + OK, False, Outcome(200, LENGTH, b"ab", True)),
    "longer-than-length": (OK + b"cd", False, Outcome(200, LENGTH, b"ab", True)),
    "crlf-after-length": (OK + b"\r\n", False, Outcome(200, LENGTH, b"ab", True)),
    "crlf-after-chunked": (CHUNKED + b"\r\n", False, Outcome(200, TE, b"abc", True)),
    "204-with-body": (b"HTTP/1.1 204 No Content\r\n\r\nab", False, Outcome(204, (), b"", True)),
    # Errors.
    "101": (b"HTTP/1.1 101 Switching\r\nupgrade: h2c\r\nconnection: upgrade\r\n\r\n", False,
            Outcome(error="switched protocols")),
    "not-http": (b"garbage\r\n\r\n", False, Outcome(error="invalid response")),
    # uvicorn raised KeyError on 600 and the client got an empty reply instead of a 502.
    "status-600": (b"HTTP/1.1 600 Odd\r\ncontent-length: 2\r\n\r\nab", False,
                   Outcome(error="status 600")),
    "length-and-chunked": (b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ntransfer-encoding: chunked\r\n\r\n",
                           False, Outcome(error="invalid response")),
    "closed-unanswered": (b"", True, Outcome(error="unanswered")),
    "closed-mid-head": (b"HTTP/1.1 200 OK\r\n", True, Outcome(error="mid-head")),
    "closed-mid-body": (OK[:-1], True, Outcome(error="mid-body")),
    "reason-too-long": (b"HTTP/1.1 200 " + b"r" * 2000 + b"\r\n\r\n", False,
                        Outcome(error="reason phrase")),
    "too-many-headers": (b"HTTP/1.1 200 OK\r\n" + b"a: b\r\n" * 300 + b"\r\n", False,
                         Outcome(error="too many")),
    # RFC 9112 §4: HTAB, SP, VCHAR and obs-text only (a WSGI server refuses the rest).
    "reason-with-a-control-byte": (b"HTTP/1.1 200 O\x01K\r\ncontent-length: 2\r\n\r\nab", False,
                                   Outcome(error="control byte")),
    "reason-with-del": (b"HTTP/1.1 200 O\x7fK\r\ncontent-length: 2\r\n\r\nab", False,
                        Outcome(error="control byte")),
    "reason-with-tab-and-obs-text": (b"HTTP/1.1 200 O\tK\xe9\r\ncontent-length: 2\r\n\r\nab", False,
                                     Outcome(200, LENGTH, b"ab", True, True)),
}  # fmt: skip


@pytest.mark.parametrize(("data", "eof", "expected"), CASES.values(), ids=CASES.keys())
def test_bytes_become_a_response_and_a_verdict(data: bytes, eof: bool, expected: Outcome) -> None:
    outcome = run(data, eof=eof)
    assert same(outcome, expected), outcome


SPLIT = ["length", "chunked", "chunked-with-trailers", "interim-then-final", "204",
         "interim-with-chunked-body", "interim-with-length-body", "status-000-then-final",
         "status-099-then-final", "crlf-before-the-status-line", "lf-between-interim-and-final",
         "http-1.0-chunked-keep-alive",
         "response-twice", "crlf-after-length", "crlf-after-chunked", "204-with-body",
         "until-eof", "closed-mid-body"]  # fmt: skip


@pytest.mark.parametrize("name", SPLIT)
def test_the_outcome_does_not_depend_on_where_reads_end(name: str) -> None:
    data, eof, expected = CASES[name]
    for cut in range(1, len(data)):
        assert same(run(data, cuts=[cut], eof=eof), expected), f"cut at {cut}"
    assert same(run(data, cuts=list(range(1, len(data))), eof=eof), expected), "byte by byte"


def test_the_head_limit_counts_bytes_as_they_arrive() -> None:
    exchange = Exchange("GET", b"/", [])
    exchange.feed(b"HTTP/1.1 200 ")
    for _ in range(MAX_HEAD_BYTES // 1024 - 1):
        exchange.feed(b"r" * 1024)  # one reason phrase that never ends
    with pytest.raises(httpx.RemoteProtocolError, match="too large"):
        exchange.feed(b"r" * 1024)  # fed: past the limit, whatever the line has become
    fits = b"HTTP/1.1 200 OK\r\n" + b"x: " + b"v" * (MAX_HEAD_BYTES - 100) + b"\r\n\r\n"
    assert run(fits + b"", eof=True).status == 200


def test_interim_heads_count_towards_the_limit() -> None:
    interim = b"HTTP/1.1 103 Early Hints\r\nlink: " + b"l" * 1000 + b"\r\n\r\n"
    assert run(interim * 70 + OK).error == "the upstream's response head is too large"


def test_bytes_without_body_after_the_head_are_bounded() -> None:
    head = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1\r\na\r\n0\r\nx-t: "
    exchange = Exchange("GET", b"/", [])
    exchange.end_body()
    exchange.feed(head)
    for _ in range(MAX_STALL_BYTES // 4096):
        exchange.feed(b"t" * 4096)  # an endless trailer line
    with pytest.raises(httpx.RemoteProtocolError, match="without a body"):
        exchange.feed(b"t" * 4096)


def test_one_read_of_many_chunks_is_taken_as_one_piece() -> None:
    """A driver passes on one piece per read, not one per chunk (an ASGI message each)."""
    exchange = Exchange("GET", b"/", [])
    exchange.end_body()
    exchange.feed(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n" + b"1\r\nx\r\n" * 5000)
    assert exchange.take() == b"x" * 5000
    assert exchange.take() is None
    assert exchange.buffered == 0
    exchange.feed(b"1\r\ny\r\n" * 3 + b"2000\r\n" + b"z" * 0x2000 + b"\r\n0\r\n\r\n")
    assert exchange.take() == b"yyy" + b"z" * 0x2000
    assert exchange.complete
    assert exchange.reusable


def test_head_requests_take_the_head_and_never_reuse() -> None:
    outcome = run(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n", method="HEAD")
    assert outcome == Outcome(200, ((b"content-length", b"1000"),), b"", True, False)


# -- the request side ----------------------------------------------------------------------
def test_the_request_is_framed_by_its_own_headers() -> None:
    exchange = Exchange("POST", b"/p?q", [(b"host", b"x"), (b"content-length", b"5")])
    assert exchange.head == b"POST /p?q HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\n"
    assert exchange.has_body
    assert exchange.frame(b"abc") + exchange.frame(b"de") == b"abcde"
    assert exchange.end_body() == b""
    chunked = Exchange("PUT", b"/", [(b"transfer-encoding", b"chunked")])
    wire = chunked.frame(b"abc") + chunked.frame(b"") + chunked.end_body()
    assert wire == b"3\r\nabc\r\n0\r\n\r\n"


def test_a_response_before_the_whole_body_went_out_is_never_reusable() -> None:
    """Finding 1: the upstream answered before reading the body; the rest stays unsent."""
    exchange = Exchange("POST", b"/", [(b"content-length", b"1000")])
    exchange.frame(b"x" * 20)
    exchange.feed(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
    assert (exchange.complete, exchange.reusable) == (True, False)


def test_a_body_of_the_wrong_length_is_refused() -> None:
    exchange = Exchange("POST", b"/", [(b"content-length", b"3")])
    with pytest.raises(httpx.LocalProtocolError, match="longer"):
        exchange.frame(b"abcd")
    short = Exchange("POST", b"/", [(b"content-length", b"3")])
    short.frame(b"ab")
    with pytest.raises(httpx.LocalProtocolError, match="shorter"):
        short.end_body()


@pytest.mark.parametrize(
    ("method", "headers", "reused", "received", "retry"),
    [
        ("GET", [], True, b"", True),
        ("DELETE", [], True, b"", True),
        ("GET", [], False, b"", False),  # a fresh connection: the upstream is the problem
        ("GET", [], True, b"H", False),  # some answer came: the request was seen
        ("POST", [], True, b"", False),  # not idempotent
        ("PUT", [(b"content-length", b"1")], True, b"", False),  # a body cannot be replayed
        ("PUT", [(b"transfer-encoding", b"chunked")], True, b"", False),
    ],
    ids=["get", "delete", "fresh", "answered", "post", "body", "chunked-body"],
)
def test_a_request_is_retried_only_when_it_is_safe(method, headers, reused, received, retry):
    exchange = Exchange(method, b"/", headers)
    exchange.feed(received)
    assert may_retry(method, exchange, reused=reused) is retry
