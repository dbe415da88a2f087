"""The core's response framing against an independent strict parser (h11), on generated
near-valid response streams with the framing oddities real and hostile servers send.

Two HTTP/1.1 parsers that frame one stream differently are how response desync happens.
``canary_mw/forward/http11.py`` parses with llhttp, which is lenient in places: it passed
status 000-099 as an interim answer, read a body for a 1xx, let keep-alive win over close
in HTTP/1.0 and skipped CR/LF before a status line. A differential fuzz against h11 found
those; this test keeps looking. Refusing (an error: the connection is closed) is always
safe, so the property only constrains what the core accepts:

- a response the core takes whole before EOF, and h11 takes whole too, has the same status
  and body in both;
- a connection the core would reuse is one h11 would reuse after the same bytes, with the
  same status and body; for HTTP/1.0 answers, which h11 never keeps alive, the head must ask
  for keep-alive, say no close and carry no Transfer-Encoding (RFC 9112 §6.1, §9.3).

One disagreement is allowed: h11 supports no transfer coding but ``chunked`` alone, and
RFC 9112 lets ``gzip, chunked`` be framed by its final ``chunked``; such streams are left out.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import h11
import httpx
import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st

from canary_mw.forward.http11 import Exchange
from tests.support.invariant import settings_for

pytestmark = pytest.mark.slow


@dataclass
class Parsed:
    error: str = ""
    status: int = 0
    body: bytes = b""
    whole: bool = False  # the response ended before EOF
    reusable: bool = False
    headers: tuple[tuple[bytes, bytes], ...] = ()
    version: bytes = b""


def ours(data: bytes, method: str, cuts: list[int]) -> Parsed:
    exchange = Exchange(method, b"/", [(b"host", b"x")])
    exchange.end_body()
    body = bytearray()
    try:
        for start, end in pairwise([0, *cuts, len(data)]):
            exchange.feed(data[start:end])
            while (chunk := exchange.take()) is not None:
                body += chunk
    except httpx.RemoteProtocolError as exc:
        return Parsed(error=str(exc))
    return Parsed("", exchange.status, bytes(body), exchange.complete, exchange.reusable)


def theirs(data: bytes, method: str) -> Parsed:
    connection = h11.Connection(h11.CLIENT)
    connection.send(h11.Request(method=method, target="/", headers=[("Host", "x")]))
    connection.send(h11.EndOfMessage())
    parsed = Parsed()
    body = bytearray()
    try:
        connection.receive_data(data)
        while True:
            event = connection.next_event()
            if isinstance(event, h11.Response):
                parsed.status = event.status_code
                parsed.headers = tuple(event.headers)
                parsed.version = event.http_version
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                parsed.whole = True
                parsed.reusable = (
                    connection.their_state is h11.DONE and not connection.trailing_data[0]
                )
                break
            elif not isinstance(event, h11.InformationalResponse):
                break  # NEED_DATA, PAUSED, ConnectionClosed (an interim answer: go on)
    except h11.RemoteProtocolError as exc:
        parsed.error = str(exc) or "invalid"
    parsed.body = bytes(body)
    return parsed


# -- near-valid response streams -------------------------------------------------------------
# A valid response (framed by length, by chunks or by nothing), then up to three oddities,
# each one spelling real or hostile servers use: most examples stay close to what a parser
# might accept, where the disagreements that matter are.
@dataclass
class Draft:
    prefix: bytes = b""
    interim: list[bytes] | None = None
    version: bytes = b"HTTP/1.1"
    code: bytes = b"200"
    reason: bytes = b" OK"
    fields: list[bytes] | None = None
    body: bytes = b"hello"
    after: bytes = b""

    def render(self) -> bytes:
        head = self.version + b" " + self.code + self.reason + b"\r\n"
        head += b"".join(field + b"\r\n" for field in self.fields or [])
        return self.prefix + b"".join(self.interim or []) + head + b"\r\n" + self.body + self.after


CHUNKED_HELLO = b"5\r\nhello\r\n0\r\n\r\n"
ODDITIES = [
    "prefix", "interim", "interim_body", "status", "version", "reason", "length",
    "coding", "connection", "fold", "chunk", "trailer", "after", "space_before_colon",
]  # fmt: skip


@st.composite
def streams(draw: st.DrawFn) -> bytes:
    framing = draw(st.sampled_from(["length", "length", "chunked", "none"]))
    draft = Draft()
    if framing == "length":
        draft.fields = [b"Content-Length: 5"]
    elif framing == "chunked":
        draft.fields, draft.body = [b"Transfer-Encoding: chunked"], CHUNKED_HELLO
    else:
        draft.fields = []
    fields = draft.fields
    for oddity in draw(st.lists(st.sampled_from(ODDITIES), min_size=1, max_size=3, unique=True)):
        if oddity == "prefix":
            draft.prefix = draw(st.sampled_from([b"\r\n", b"\n", b"\r"]))
        elif oddity in ("interim", "interim_body"):
            code = draw(st.sampled_from([b"100", b"102", b"103", b"150", b"199", b"000", b"099"]))
            framed = b""
            if oddity == "interim_body":
                framed = draw(st.sampled_from([b"Content-Length: 5\r\n\r\nhello",
                    b"Content-Length: 0\r\n\r\n", b"Transfer-Encoding: chunked\r\n\r\n" + CHUNKED_HELLO]))  # fmt: skip
            draft.interim = [b"HTTP/1.1 " + code + b" Info\r\n" + (framed or b"\r\n")]
            if draw(st.booleans()):
                draft.interim.append(draw(st.sampled_from([b"\r\n", b"\n"])))
        elif oddity == "status":
            draft.code = draw(st.sampled_from([b"000", b"099", b"100", b"101", b"150", b"204",
                b"304", b"599", b"600", b"0200", b"20", b"+200", b"2000"]))  # fmt: skip
        elif oddity == "version":
            draft.version = draw(st.sampled_from([b"HTTP/1.0", b"HTTP/1.0", b"HTTP/1.2",
                b"HTTP/2.0", b"http/1.1", b"HTTP/1.01"]))  # fmt: skip
        elif oddity == "reason":
            draft.reason = draw(st.sampled_from([b"", b" ", b"  OK", b"\tOK", b" O\x00K"]))
        elif oddity == "length":
            fields.append(b"Content-Length: " + draw(st.sampled_from(
                [b"5", b"05", b"+5", b" 5 ", b"5, 5", b"5,6", b"-1", b"", b"0", b"4", b"6"])))  # fmt: skip
        elif oddity == "coding":
            fields.append(b"Transfer-Encoding: " + draw(st.sampled_from([b"chunked", b"Chunked",
                b"chunked, chunked", b"identity", b"chunked;q=1", b",chunked", b"chunked,", b"chunked ,", b""])))  # fmt: skip
        elif oddity == "connection":
            fields.append(b"Connection: " + draw(st.sampled_from([b"close", b"keep-alive",
                b"close, keep-alive", b"keep-alive, close", b"upgrade", b"te, close", b""])))  # fmt: skip
            if draw(st.booleans()):
                fields.append(b"Connection: " + draw(st.sampled_from([b"close", b"keep-alive"])))
        elif oddity == "fold" and fields:
            fields[-1] += b"\r\n " + draw(st.sampled_from([b"chunked", b"5", b"close", b"x"]))
        elif oddity == "space_before_colon" and fields:
            fields[-1] = fields[-1].replace(b":", draw(st.sampled_from([b" :", b"\t:"])), 1)
        elif oddity == "chunk" and framing == "chunked":
            draft.body = draw(st.sampled_from([b"05\r\nhello\r\n0\r\n\r\n", b"5;a=b\r\nhello\r\n0\r\n\r\n",
                b"5 \r\nhello\r\n0\r\n\r\n", b"4\r\nhello\r\n0\r\n\r\n", b"6\r\nhello\r\n0\r\n\r\n",
                b"5\r\nhello0\r\n\r\n", b"0x5\r\nhello\r\n0\r\n\r\n", b"5\r\nhello\r\n0\r\n\n"]))  # fmt: skip
        elif oddity == "trailer" and framing == "chunked":
            draft.body = CHUNKED_HELLO[:-2] + draw(st.sampled_from([b"X-T: 1\r\n",
                b"Set-Cookie: a=b\r\n", b"Content-Length: 5\r\n", b"bad\r\n", b" fold\r\n"])) + b"\r\n"  # fmt: skip
        elif oddity == "after":
            draft.after = draw(st.sampled_from([b"\r\n", b"X", b"0\r\n\r\n",
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nZ"]))  # fmt: skip
    return draft.render()


def _tokens(headers: tuple[tuple[bytes, bytes], ...], name: bytes) -> set[bytes]:
    return {t.strip() for n, v in headers if n == name for t in v.lower().split(b",")}


#: What the first differential fuzz found (each a two-parser disagreement, now closed).
FOUND = [
    b"\r\nHTTP/1.1 000 X\r\nContent-Length: 0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
    b"HTTP/1.1 099 X\r\nContent-Length: 0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
    b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"HTTP/1.0 200 OK\r\nConnection: close, keep-alive\r\nContent-Length: 5\r\n\r\nhello",
    b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nConnection: close\r\nContent-Length: 5\r\n\r\nhello",
    b"\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
    b"\nHTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 5\r\n\r\nhello",
    b"HTTP/1.1 100 Continue\r\n\r\n\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
    b"HTTP/1.1 199 X\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nSet-Cookie: a=b\r\n\r\n"
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
]  # fmt: skip


def _found(test: Any) -> Any:
    for data in FOUND:
        test = example(data=data, method="GET", cuts=[37])(test)
    return test


@_found
@settings_for(3000)
@given(data=streams(), method=st.sampled_from(["GET", "GET", "HEAD"]),
       cuts=st.lists(st.integers(1, 400), max_size=3))  # fmt: skip
def test_the_core_frames_a_response_as_a_strict_parser_does(
    data: bytes, method: str, cuts: list[int]
) -> None:
    mine = ours(data, method, [])
    split = ours(data, method, sorted({cut for cut in cuts if cut < len(data)}))
    assert (split.error == "") == (mine.error == ""), (mine, split)
    if not mine.error:
        assert (split.status, split.body, split.whole, split.reusable) == (
            mine.status, mine.body, mine.whole, mine.reusable,
        )  # fmt: skip
    if mine.error or not mine.whole:
        return  # refusing, or reading to EOF (never reused), is always safe
    strict = theirs(data, method)
    codings = _tokens(strict.headers, b"transfer-encoding") if not strict.error else set()
    assume(codings <= {b"chunked"})  # h11 knows no other transfer coding (module docstring)
    if strict.whole and not strict.error:
        assert (mine.status, mine.body) == (strict.status, strict.body), (mine, strict)
    if not mine.reusable:
        return
    assert not strict.error, (mine, strict)
    assert strict.whole, (mine, strict)
    assert (mine.status, mine.body) == (strict.status, strict.body), (mine, strict)
    if strict.reusable:
        return
    # h11 keeps no HTTP/1.0 connection alive: the head must ask for it, plainly.
    assert strict.version == b"1.0", (mine, strict)
    tokens = _tokens(strict.headers, b"connection")
    assert b"keep-alive" in tokens, (mine, strict)
    assert b"close" not in tokens, (mine, strict)
    assert not codings, (mine, strict)
