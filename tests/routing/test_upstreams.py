"""Upstream URLs: the target URL keeps the client's path and query byte for byte (bytes
outside printable ASCII percent-encoded), on top of the upstream's scheme, host and prefix."""

from __future__ import annotations

import random

import httpx
import pytest

from canary_mw.upstreams import escape_unprintable, fast_url, parse_upstreams

BASES = ["http://canary:8000", "http://canary:8000/v2/", "https://[::1]:8443/prefix", "http://c"]
PATHS = [b"/", b"/a/b", b"/a%2Fb", b"/caf%C3%A9", b"/a;b=c", b"/~user/", b"//double", b"*",
         b"/a+b", b"/%25", b"/x:y@z", b'/<a>"{|}^`\\', b"/a#frag"]  # fmt: skip
QUERIES = [b"", b"q=1", b"a=1&b=2", b"q=a%20b", b"q=?&r=/", b"x", b"a=%ZZ", b"=&=", b"q=<>#f"]


def expected_raw_path(prefix: bytes, path: bytes, query: bytes) -> bytes:
    if path == b"*" and not query:  # OPTIONS *: about the server, whatever the prefix
        return b"*"
    return prefix + path + (b"?" + query if query else b"")


def test_httpx_internals_are_the_ones_the_fast_path_expects() -> None:
    """If httpx changes its URL internals, the fast path returns None and every forwarded
    request takes copy_with's slower, re-quoting path: this test says so first."""
    base = httpx.URL("http://canary:8000")
    assert fast_url(base, b"/a", b"q=1") == httpx.URL("http://canary:8000/a?q=1")


@pytest.mark.parametrize("base", BASES)
def test_target_keeps_path_and_query_byte_for_byte(base: str) -> None:
    upstream = parse_upstreams(base, None)["canary"]
    parsed = httpx.URL(base)
    for path in PATHS:
        for query in QUERIES:
            url = upstream.target(path, query)
            assert url.raw_path == expected_raw_path(upstream.prefix, path, query)
            assert (url.scheme, url.host, url.port) == (parsed.scheme, parsed.host, parsed.port)
            assert url.netloc == parsed.netloc


@pytest.mark.parametrize("base", BASES)
def test_target_agrees_with_httpx_where_httpx_does_not_requote(base: str) -> None:
    upstream = parse_upstreams(base, None)["canary"]
    for path in PATHS[:-2]:
        if path == b"*":  # OPTIONS *: forwarded as is; httpx refuses it with a host
            continue
        for query in QUERIES[:-1]:
            raw = expected_raw_path(upstream.prefix, path, query)
            assert upstream.target(path, query) == upstream.url.copy_with(raw_path=raw)


def test_random_bytes_are_kept_or_percent_encoded() -> None:
    rng = random.Random(7)
    upstream = parse_upstreams("http://canary:8000/base", None)["canary"]
    for _ in range(3000):
        path = b"/" + rng.randbytes(rng.randint(0, 30)).replace(b"?", b"")
        query = rng.randbytes(rng.randint(0, 20)).replace(b"?", b"")
        url = upstream.target(path, query)
        sent_path, _, sent_query = url.raw_path.partition(b"?")
        assert sent_path == b"/base" + escape_unprintable(path)
        assert sent_query == escape_unprintable(query)
        assert all(0x21 <= byte < 0x7F for byte in url.raw_path)


@pytest.mark.parametrize(
    ("raw", "escaped"),
    [(b"/caf\xc3\xa9", b"/caf%C3%A9"), (b"/a b", b"/a%20b"), (b"q=\xff", b"q=%FF"),
     (b"/\x00\x7f", b"/%00%7F"), (b"/100%", b"/100%"), (b"", b"")],
)  # fmt: skip
def test_escape_unprintable(raw: bytes, escaped: bytes) -> None:
    assert escape_unprintable(raw) == escaped
