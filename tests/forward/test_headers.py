"""canary_mw.forward.headers: what the upstream request carries, by table."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from canary_mw import CanaryConfig
from canary_mw.clientip import DEFAULT_CLIENT_IP_HEADERS
from canary_mw.forward.headers import (
    CLIENT_ADDRESS_HEADERS,
    CLIENT_FACT_HEADERS,
    DEFAULT_ADDRESS_HEADERS,
    request_headers,
    response_headers,
)

PEER = b"198.51.100.20"

# Every header the security note names, as the red team sent them (finding 12) and more.
NAMED = [
    b"Forwarded", b"X-Forwarded-For", b"X-Forwarded-Proto", b"X-Forwarded-Host",
    b"X-Forwarded-Port", b"X-Forwarded-Prefix", b"X-Real-IP", b"True-Client-IP",
    b"X-Client-IP", b"CF-Connecting-IP", b"X-Cluster-Client-IP", b"Fastly-Client-IP",
    b"X-Original-URL", b"X-Rewrite-URL",
]  # fmt: skip


def build(
    raw: list[tuple[bytes, bytes]],
    *,
    trusted: bool,
    client: bytes | None = PEER,
    address_headers: frozenset[bytes] = DEFAULT_ADDRESS_HEADERS,
) -> list[tuple[bytes, bytes]]:
    return request_headers(
        raw, client=client, scheme=b"http", host=None, default_host=b"canary:8000",
        trusted_peer=trusted, extra=[(b"x-canary-forwarded", b"1")],
        address_headers=address_headers,
    )  # fmt: skip


def values(headers: list[tuple[bytes, bytes]], name: bytes) -> list[bytes]:
    return [value for key, value in headers if key.lower() == name]


def test_the_documented_list_holds_every_named_header() -> None:
    assert {name.lower() for name in NAMED} <= CLIENT_FACT_HEADERS


@pytest.mark.parametrize("name", NAMED, ids=lambda name: name.decode())
@pytest.mark.parametrize("twin", [False, True], ids=["as named", "underscore twin"])
def test_an_untrusted_peers_forwarding_headers_are_removed(name: bytes, twin: bool) -> None:
    sent = name.replace(b"-", b"_") if twin else name
    headers = build([(b"Host", b"app.test"), (sent, b"10.1.2.3"), (b"X-Other", b"kept")],
                    trusted=False)  # fmt: skip
    assert not any(value == b"10.1.2.3" for _, value in headers), headers
    assert values(headers, b"x-forwarded-for") == [PEER]
    assert values(headers, b"x-forwarded-proto") == [b"http"]
    assert values(headers, b"x-forwarded-host") == [b"app.test"]
    assert values(headers, b"x-other") == [b"kept"]
    assert headers[0] == (b"host", b"app.test")


def test_a_trusted_proxys_headers_are_passed_on_and_extended() -> None:
    sent = [
        (b"Host", b"app.internal"),
        (b"X-Forwarded-For", b"203.0.113.7"),
        (b"X-Forwarded-For", b"10.0.0.2"),  # a second line: one list, in order
        (b"Forwarded", b"for=203.0.113.7;proto=https"),
        (b"X-Forwarded-Proto", b"https"),
        (b"X-Forwarded-Host", b"shop.example"),
        (b"X-Forwarded-Prefix", b"/shop"),
        (b"X-Real-IP", b"203.0.113.7"),
        (b"X_Forwarded_For", b"10.1.2.3"),  # a twin is removed from anyone
        (b"x_real_ip", b"10.1.2.3"),
        (b"True-Client-IP", b"10.1.2.3"),  # a kind the router does not read: the client's
    ]
    headers = build(sent, trusted=True)
    assert values(headers, b"x-forwarded-for") == [b"203.0.113.7, 10.0.0.2, " + PEER]
    assert values(headers, b"forwarded") == [b"for=203.0.113.7;proto=https, for=" + PEER]
    assert values(headers, b"x-forwarded-proto") == [b"https"]
    assert values(headers, b"x-forwarded-host") == [b"shop.example"]
    assert values(headers, b"x-forwarded-prefix") == [b"/shop"]
    assert values(headers, b"x-real-ip") == [b"203.0.113.7"]
    assert not any(value == b"10.1.2.3" for _, value in headers), headers


@pytest.mark.parametrize(
    ("client", "expected"),
    [(b"2001:db8::9", b'for="[2001:db8::9]"'), (b"192.0.2.1", b"for=192.0.2.1")],
)
def test_our_forwarded_element_quotes_ipv6(client: bytes, expected: bytes) -> None:
    headers = build([(b"Forwarded", b"for=203.0.113.7")], trusted=True, client=client)
    assert values(headers, b"forwarded") == [b"for=203.0.113.7, " + expected]


# Behind a proxy that writes only some kinds of client-address header (client_ip_headers),
# the other kinds can only be the client's: they are removed, and our hop is never appended
# to a Forwarded the proxy did not write (red team F6).
FORGED = [
    (b"Host", b"app.internal"),
    (b"X-Forwarded-For", b"203.0.113.9"),
    (b"Forwarded", b"for=198.51.100.7;proto=https"),
    (b"X-Real-IP", b"198.51.100.7"),
    (b"True-Client-IP", b"198.51.100.7"),
    (b"CF-Connecting-IP", b"198.51.100.7"),
    (b"X-Client-IP", b"198.51.100.7"),
    (b"X-Forwarded-Proto", b"https"),  # not an address: still the proxy's to pass on
]


@pytest.mark.parametrize(
    ("kinds", "expected"),
    [
        ({b"x-forwarded-for"}, {b"x-forwarded-for": [b"203.0.113.9, " + PEER]}),
        ({b"x-real-ip"}, {b"x-real-ip": [b"198.51.100.7"], b"x-forwarded-for": [PEER]}),
        (
            {b"forwarded"},
            {b"forwarded": [b"for=198.51.100.7;proto=https, for=" + PEER],
             b"x-forwarded-for": [PEER]},
        ),
        (
            DEFAULT_ADDRESS_HEADERS,
            {b"x-forwarded-for": [b"203.0.113.9, " + PEER], b"x-real-ip": [b"198.51.100.7"],
             b"forwarded": [b"for=198.51.100.7;proto=https, for=" + PEER]},
        ),
    ],
    ids=["x-forwarded-for", "x-real-ip", "forwarded", "default"],
)  # fmt: skip
def test_a_trusted_proxy_passes_on_only_the_address_kinds_it_writes(
    kinds: set[bytes], expected: dict[bytes, list[bytes]]
) -> None:
    headers = build(FORGED, trusted=True, address_headers=frozenset(kinds))
    for name in CLIENT_ADDRESS_HEADERS:
        assert values(headers, name) == expected.get(name, []), name
    assert values(headers, b"x-forwarded-proto") == [b"https"]


def test_the_address_kinds_follow_the_configuration() -> None:
    assert {name.encode() for name in DEFAULT_CLIENT_IP_HEADERS} == DEFAULT_ADDRESS_HEADERS
    assert DEFAULT_ADDRESS_HEADERS <= CLIENT_ADDRESS_HEADERS <= CLIENT_FACT_HEADERS
    canary = "http://canary:8000"
    policy = CanaryConfig(canary_url=canary, client_ip_headers=["X-Forwarded-For"]).forward_policy()
    assert policy.address_headers == {b"x-forwarded-for"}
    assert CanaryConfig(canary_url=canary).forward_policy().address_headers == (
        DEFAULT_ADDRESS_HEADERS
    )


def test_no_forwarded_header_is_made_up() -> None:
    assert values(build([], trusted=True), b"forwarded") == []


@pytest.mark.parametrize("trusted", [False, True])
def test_exactly_one_of_each_header_we_write(trusted: bool) -> None:
    sent = [(b"Host", b"a"), (b"X-Forwarded-For", b"1.1.1.1"), (b"x-forwarded-for", b"2.2.2.2"),
            (b"X-Forwarded-Proto", b"https"), (b"x-forwarded-proto", b"http"),
            (b"X-Forwarded-Host", b"x"), (b"x-forwarded-host", b"y")]  # fmt: skip
    headers = build(sent, trusted=trusted)
    names = [name.lower() for name, _ in headers]
    for name in (b"host", b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host"):
        assert names.count(name) == 1, (name, headers)
    assert values(headers, b"x-forwarded-for")[0].endswith(PEER)


def test_no_peer_address_no_invented_one() -> None:
    headers = build([(b"Host", b"app.test")], trusted=False, client=None)
    assert values(headers, b"x-forwarded-for") == []


_NAMES = st.sampled_from(
    [name.decode() for name in sorted(CLIENT_FACT_HEADERS)]
    + ["host", "cookie", "x-other", "connection", "te", "content-length", "x-a"]
).flatmap(
    lambda name: st.sampled_from(
        [name, name.upper(), name.replace("-", "_"), name.title().replace("-", "_")]
    )
)
_VALUES = st.sampled_from(["10.1.2.3", "for=10.1.2.3", "https", "evil.test", "x-other", ""])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(_NAMES, _VALUES), max_size=12))
def test_whatever_an_untrusted_peer_sends(sent: list[tuple[str, str]]) -> None:
    """One Host first, one X-Forwarded-For that is exactly our peer, and none of the listed
    headers (or a twin) but the ones we write, for any mix of names, cases and twins."""
    raw = [(name.encode(), value.encode()) for name, value in sent]
    headers = build(raw, trusted=False)
    names = [name.lower() for name, _ in headers]
    assert names[0] == b"host"
    assert names.count(b"host") == 1
    assert values(headers, b"x-forwarded-for") == [PEER]
    ours = {b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host"}
    for name in names:
        assert name.replace(b"_", b"-") not in CLIENT_FACT_HEADERS or name in ours, headers
    for name in ours:
        assert names.count(name) <= 1


# -- Connection: the headers it names are dropped, in both directions ---------------------
_HOP = {b"connection", b"keep-alive", b"proxy-connection", b"proxy-authenticate",
        b"proxy-authorization", b"te", b"trailer", b"transfer-encoding", b"upgrade"}  # fmt: skip
_CONNECTION_NAMES = st.sampled_from(
    ["connection", "keep-alive", "close", "te", "x-a", "x-b", "host", "cookie",
     "content-length", "x-forwarded-for", "upgrade", "X-A"]
)  # fmt: skip
_LISTED = st.lists(_CONNECTION_NAMES, max_size=3).map(", ".join)
_HEADERS = st.lists(
    st.one_of(
        st.tuples(st.sampled_from(["Connection", "connection"]), _LISTED),
        st.tuples(_CONNECTION_NAMES, st.sampled_from(["1", "a.test", "10.1.2.3"])),
    ),
    max_size=10,
)


def _named(raw: list[tuple[bytes, bytes]]) -> set[bytes]:
    """The reading of RFC 9110 §7.6.1 the functions keep, written out plainly."""
    return {
        token.strip().lower()
        for name, value in raw
        if name.lower() == b"connection"
        for token in value.split(b",")
        if token.strip()
    }


@settings(max_examples=400, deadline=None)
@given(_HEADERS)
def test_a_request_header_the_connection_header_names_never_goes_on(
    sent: list[tuple[str, str]],
) -> None:
    # (request_headers reads the headers once, and again only when a Connection header
    # names something beyond the hop-by-hop and framing ones: both paths are drawn here.)
    raw = [(name.encode(), value.encode()) for name, value in sent]
    named = _named(raw)
    headers = build(raw, trusted=True)
    ours = {b"host", b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host",
            b"x-canary-forwarded"}  # fmt: skip
    theirs = [(name.lower(), value) for name, value in headers if name.lower() not in ours]
    expected = [
        (name.lower(), value)
        for name, value in raw
        if name.lower() not in named | _HOP | {b"content-length"} | ours
    ]
    assert theirs == expected
    if b"host" in named:  # the client's Host is named: the default one goes
        assert headers[0] == (b"host", b"canary:8000")


@settings(max_examples=400, deadline=None)
@given(_HEADERS)
def test_a_response_header_the_connection_header_names_never_goes_on(
    sent: list[tuple[str, str]],
) -> None:
    raw = [(name.encode(), value.encode()) for name, value in sent]
    named = _named(raw)
    kept, length = response_headers(raw, drop=frozenset({b"x-b"}))
    expected = [(name, value) for name, value in raw if name.lower() not in named | _HOP | {b"x-b"}]
    assert kept == expected
    lengths = [value for name, value in expected if name.lower() == b"content-length"]
    valid = len(lengths) == 1 and lengths[0].isdigit()
    assert length == (int(lengths[0]) if valid else None)
