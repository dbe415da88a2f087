"""Fuzz targets (hypothesis): the response parser and the request facts.

The response side: byte streams an upstream might send, random or mutated from well-formed
responses (tests/support/scripted_upstream.py renders those), go (a) straight into the sans-I/O core
``canary_mw/forward/http11.py`` in arbitrary splits, where the verdict must not depend on
the split and the only error is httpx's; (b) through both transports from a real socket,
where the only outcome is a response or an httpx error, within a bounded time.

The request side: ASGIFacts, WSGIFacts and ClientIPResolver with generated headers, cookies,
paths and peers: no exception, a peer that is not a trusted proxy is always the client
whatever the headers say, both interfaces read the same request the same way, and cost
stays linear on big hostile inputs.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from canary_mw.clientip import ClientIPResolver
from canary_mw.facts import ASGIFacts, WSGIFacts
from canary_mw.forward.http11 import MAX_STALL_BYTES, Exchange
from canary_mw.forward.pool import HTTP11Transport
from canary_mw.forward.sync_pool import HTTP11SyncTransport
from canary_mw.ipmatch import parse_ip
from tests.support.invariant import scripts, settings_for
from tests.support.scripted_upstream import Script, ScriptedUpstream, Sent, render

pytestmark = pytest.mark.slow

LIMITS = httpx.Limits(max_connections=2, max_keepalive_connections=2)
TIMEOUTS = {"connect": 2.0, "read": 0.5, "write": 2.0, "pool": 2.0}
HANG = 10.0  # seconds: far above every timeout the transports were given
INTERESTING = [
    b"\r",
    b"\n",
    b"\r\n",
    b"\0",
    b" ",
    b":",
    b";",
    b"0",
    b"-1",
    b"ff",
    b"\x80",
    b"HTTP/1.1 ",
]


# -- response streams ------------------------------------------------------------------------
@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A well-formed response (any script), then up to five edits: flip, insert, delete,
    duplicate a slice, or cut."""
    script = draw(scripts())
    data = bytearray(render(script, "fz", draw(st.sampled_from(["GET", "HEAD"]))).data)
    for _ in range(draw(st.integers(0, 5))):
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        edit = draw(st.sampled_from(["flip", "insert", "delete", "duplicate", "cut"]))
        if edit == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif edit == "insert":
            data[at:at] = draw(st.sampled_from(INTERESTING))
        elif edit == "delete":
            del data[at : at + draw(st.integers(1, 8))]
        elif edit == "duplicate":
            data[at:at] = data[at : at + draw(st.integers(1, 40))]
        else:
            del data[at:]
    return bytes(data)


streams = st.one_of(
    mutated(),
    st.binary(max_size=600),
    st.builds(bytes.__add__, st.just(b"HTTP/1.1 "), st.binary(max_size=300)),
)


def splits(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(data), *(cut % (len(data) + 1) for cut in cuts)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


def verdict(method: str, pieces: list[bytes], eof: bool) -> tuple[Any, ...]:
    """Everything the core decided about one response, fed as ``pieces``."""
    exchange = Exchange(method, b"/fz", [(b"host", b"upstream")])
    exchange.end_body()
    body = bytearray()
    error = None
    try:
        for piece in pieces:
            exchange.feed(piece)
            while (chunk := exchange.take()) is not None:
                body += chunk
            # Memory: nothing is held that did not arrive.
            assert exchange.buffered == 0
            assert len(body) <= exchange.received
        if eof:
            exchange.feed_eof()
            while (chunk := exchange.take()) is not None:
                body += chunk
    except httpx.RemoteProtocolError as exc:  # any other exception fails the test
        error = str(exc)
    if error is not None:
        return ("error", error)
    return (
        exchange.head_done, exchange.status, exchange.reason, exchange.headers, bytes(body),
        exchange.complete, exchange.reusable, exchange.trailing, exchange.until_eof,
    )  # fmt: skip


@settings_for(1500)
@given(
    method=st.sampled_from(["GET", "HEAD", "POST"]),
    data=streams,
    cuts=st.lists(st.integers(min_value=0), max_size=12),
    eof=st.booleans(),
)
def test_the_core_verdict_does_not_depend_on_the_split(
    method: str, data: bytes, cuts: list[int], eof: bool
) -> None:
    assume(len(data) <= MAX_STALL_BYTES)  # past that, see the stall test below
    whole = verdict(method, [data], eof)
    assert verdict(method, splits(data, cuts), eof) == whole
    if len(data) <= 4096:  # every byte its own read (cheap enough up to a few KiB)
        assert verdict(method, [bytes([byte]) for byte in data], eof) == whole


def test_the_stall_limit_does_not_depend_on_reads() -> None:
    data = (
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1;"
        + b"a" * (MAX_STALL_BYTES + 5000)
        + b"\r\nx\r\n0\r\n\r\n"
    )
    assert verdict("GET", [data], True) == verdict(
        "GET", splits(data, list(range(0, len(data), 1000))), True
    )


@pytest.mark.parametrize("extension", [MAX_STALL_BYTES - 4100, MAX_STALL_BYTES + 10, 80_000])
@pytest.mark.parametrize("stride", [1000, 4096, 4097, 65536])
def test_long_chunk_framing_gets_one_verdict_whatever_the_reads(
    extension: int, stride: int
) -> None:
    """Either side of the stall limit, and across its blocks' edges."""
    data = (
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nabcde\r\n1;"
        + b"e" * extension
        + b"\r\nx\r\n0\r\n\r\n"
    )
    whole = verdict("GET", [data], False)
    assert verdict("GET", splits(data, list(range(0, len(data), stride))), False) == whole
    assert verdict("GET", splits(data, list(range(7, len(data), stride))), False) == whole


# -- the same streams through both transports, from a socket ---------------------------------
@pytest.fixture(scope="module")
def upstream() -> Iterator[ScriptedUpstream]:
    server = ScriptedUpstream()
    yield server
    server.close()


_fuzz_ids = iter(range(10**9))


def raw_request(upstream: ScriptedUpstream, data: bytes, method: str) -> httpx.Request:
    rid = f"fz{next(_fuzz_ids)}"
    upstream.expect(rid, Sent(method, "fuzzer", b""), Script(raw=data))
    headers = [(b"host", b"upstream"), (b"x-req-id", rid.encode()), (b"x-user", b"fuzzer")]
    return httpx.Request(
        method, f"{upstream.url}/r/{rid}", headers=headers, extensions={"timeout": TIMEOUTS}
    )


@settings_for(250)
@given(method=st.sampled_from(["GET", "HEAD"]), data=streams)
def test_the_async_transport_takes_any_response(
    method: str, data: bytes, upstream: ScriptedUpstream
) -> None:
    async def run() -> None:
        transport = HTTP11Transport(LIMITS)
        try:
            response = await transport.handle_async_request(raw_request(upstream, data, method))
            await response.aread()
        except httpx.HTTPError:
            pass  # the allowed failure; any other exception fails the test
        finally:
            await transport.aclose()

    async def bounded() -> None:
        await asyncio.wait_for(run(), HANG)  # a hang is a TimeoutError: not an httpx error

    asyncio.run(bounded())


@pytest.fixture(scope="module")
def threads() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=1) as pool:
        yield pool


@settings_for(250)
@given(method=st.sampled_from(["GET", "HEAD"]), data=streams)
def test_the_blocking_transport_takes_any_response(
    method: str, data: bytes, upstream: ScriptedUpstream, threads: ThreadPoolExecutor
) -> None:
    def run() -> None:
        with HTTP11SyncTransport(LIMITS) as transport:
            try:
                response = transport.handle_request(raw_request(upstream, data, method))
                response.read()
            except httpx.HTTPError:
                pass  # the allowed failure; any other exception fails the test

    threads.submit(run).result(timeout=HANG)  # a hang is a TimeoutError


# -- request facts ---------------------------------------------------------------------------
TRUSTED = ["10.0.0.0/8", "::1"]
RESOLVER = ClientIPResolver(TRUSTED)
PEERS = ["10.1.2.3", "::1", "203.0.113.9", "2001:db8::7", "not-an-ip", None]
NAMES = [
    "host",
    "cookie",
    "x-forwarded-for",
    "x-real-ip",
    "forwarded",
    "user-agent",
    "x-canary",
    "content-type",
    "content-length",
]
latin1 = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=80
)
address_ish = st.sampled_from(
    [
        "203.0.113.5",
        "10.0.0.2",
        "::1",
        "[2001:db8::1]:80",
        '"[::1]"',
        "unknown",
        "",
        " ",
        "300.1.1.1",
        "_hidden",
        "1.2.3.4:5",
    ]
)
list_value = st.lists(st.one_of(address_ish, latin1), max_size=6).map(", ".join)
forwarded_value = st.lists(
    st.lists(
        st.tuples(st.sampled_from(["for", "FOR", "by", "proto", "x"]), address_ish).map("=".join),
        max_size=3,
    ).map(";".join),
    max_size=4,
).map(", ".join)
cookie_value = st.lists(
    st.tuples(
        st.sampled_from(["uid", "vip", " uid", "uid ", "a", ""]),
        st.sampled_from(["=", " = ", ""]),
        latin1,
    ).map("".join),
    max_size=6,
).map("; ".join)


def header_value(name: str) -> st.SearchStrategy[str]:
    return {
        "forwarded": forwarded_value,
        "cookie": cookie_value,
        "x-forwarded-for": list_value,
        "x-real-ip": list_value,
    }.get(name, latin1)


@st.composite
def requests(draw: st.DrawFn) -> dict[str, Any]:
    """One request: unique header names (servers differ in how they join repeats)."""
    names = draw(st.lists(st.sampled_from(NAMES), unique=True, max_size=len(NAMES)))
    return {
        "method": draw(st.sampled_from(["GET", "POST", "HEAD", "PURGE"])),
        "path": "/" + draw(st.text(max_size=40)),
        "query": draw(st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=60)),
        "headers": [(name, draw(header_value(name))) for name in names],
        "peer": draw(st.sampled_from(PEERS)),
    }


def asgi_facts(request: dict[str, Any]) -> ASGIFacts:
    scope = {
        "type": "http", "method": request["method"], "path": request["path"],
        "query_string": request["query"].encode("latin-1"),
        "headers": [(n.encode("latin-1"), v.encode("latin-1")) for n, v in request["headers"]],
        "client": (request["peer"], 5000) if request["peer"] else None,
        "server": ("server.test", 80),
    }  # fmt: skip
    return ASGIFacts(scope, RESOLVER)


def wsgi_facts(request: dict[str, Any]) -> WSGIFacts:
    environ: dict[str, Any] = {
        "REQUEST_METHOD": request["method"],
        "PATH_INFO": request["path"].encode("utf-8").decode("latin-1"),  # PEP 3333 strings
        "QUERY_STRING": request["query"],
        "SERVER_NAME": "server.test",
    }
    if request["peer"]:
        environ["REMOTE_ADDR"] = request["peer"]
    for name, value in request["headers"]:
        key = name.upper().replace("-", "_")
        environ[key if key in ("CONTENT_TYPE", "CONTENT_LENGTH") else "HTTP_" + key] = value
    return WSGIFacts(environ, RESOLVER)


def everything(
    facts: ASGIFacts | WSGIFacts, cookies: list[str], params: list[str]
) -> tuple[Any, ...]:
    return (
        facts.method, facts.path, facts.host, facts.client_ip,
        [facts.header(name) for name in NAMES],
        [facts.cookie(name) for name in cookies],
        [facts.query(name) for name in params],
    )  # fmt: skip


@settings_for(600)
@given(
    request=requests(),
    cookies=st.lists(st.sampled_from(["uid", "vip", "a", "missing"]), max_size=3),
    params=st.lists(st.text(max_size=5), max_size=3),
)
def test_facts_read_any_request_the_same_way_from_asgi_and_wsgi(
    request: dict[str, Any], cookies: list[str], params: list[str]
) -> None:
    asgi = everything(asgi_facts(request), cookies, params)
    assert everything(wsgi_facts(request), cookies, params) == asgi
    peer = parse_ip(request["peer"]) if request["peer"] else None
    if peer is None or not RESOLVER.is_trusted(peer):
        # Whatever the headers say, an untrusted peer is the client.
        assert asgi[3] == peer


@settings_for(500)
@given(
    peer=st.sampled_from(PEERS),
    values=st.fixed_dictionaries(
        {},
        optional={
            "forwarded": forwarded_value,
            "x-forwarded-for": list_value,
            "x-real-ip": list_value,
        },
    ),
)
def test_the_client_address_is_the_peer_or_named_by_a_header(
    peer: str | None, values: dict[str, str]
) -> None:
    address = RESOLVER.resolve(peer, values.get)
    peer_ip = parse_ip(peer) if peer else None
    if address == peer_ip:
        return
    # Only a trusted proxy may name someone else, or leave the client unknown (None: its
    # headers disagree or hold a hop that is no address).
    assert peer_ip is not None
    assert RESOLVER.is_trusted(peer_ip)
    if address is not None:  # then every client-address header present names it
        for value in values.values():
            assert address in addresses_in(value), (address, value)


def addresses_in(value: str) -> set[Any]:
    """Every address written anywhere in a header value, in any of its forms."""
    parts = value.replace(";", ",").replace("=", ",").split(",")
    return {parse_ip(part.strip().strip('"').removeprefix("[").split("]")[0]) for part in parts}


BIG = 1 << 19  # 512 KiB: a quadratic walk over this takes minutes, a linear one milliseconds


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("x-forwarded-for", "10.0.0.1," * (BIG // 9)),
        ("x-forwarded-for", " " * BIG),
        ("forwarded", "for=10.0.0.1;" * (BIG // 13)),
        ("forwarded", ";" * BIG),
        ("cookie", ";" * BIG + "uid=1"),
        ("cookie", " \t" * (BIG // 2) + "=x"),
        ("cookie", "uid" * (BIG // 3)),
        ("host", "[" * BIG),
        ("host", ":" * BIG),
    ],
    ids=["xff-hops", "xff-spaces", "forwarded-hops", "forwarded-semicolons", "cookie-semicolons",
         "cookie-whitespace", "cookie-name-repeated", "host-brackets", "host-colons"],
)  # fmt: skip
def test_facts_cost_stays_linear_on_big_hostile_headers(name: str, value: str) -> None:
    request = {"method": "GET", "path": "/" + "a/" * 1000, "query": "a=1&" * (BIG // 4),
               "headers": [(name, value)], "peer": "10.1.2.3"}  # fmt: skip
    started = time.perf_counter()
    for facts in (asgi_facts(request), wsgi_facts(request)):
        everything(facts, ["uid", "zz"], ["a", "zz"])
    assert time.perf_counter() - started < 10.0  # generous: the machine is shared
