from __future__ import annotations

from ipaddress import ip_address

import pytest

from canary_mw import ConfigurationError
from canary_mw.clientip import ClientIPResolver
from canary_mw.ipmatch import IPMatcher, parse_ip, parse_network


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1.2.3.4", "1.2.3.4"),
        (" 1.2.3.4 ", "1.2.3.4"),
        ("1.2.3.4:5678", "1.2.3.4"),
        ("2001:db8::1", "2001:db8::1"),
        ("2001:DB8:0:0::1", "2001:db8::1"),
        ("[2001:db8::1]", "2001:db8::1"),
        ("[2001:db8::1]:443", "2001:db8::1"),
        ('"[2001:db8::1]:4711"', "2001:db8::1"),
        ("::ffff:192.0.2.1", "192.0.2.1"),
        ("[::ffff:192.0.2.1]:80", "192.0.2.1"),
        ("fe80::1%eth0", "fe80::1"),
        ("unknown", None),
        ("_hidden", None),
        ("", None),
        ("1.2.3", None),
        ("999.1.1.1", None),
        ("[2001:db8::1", None),
        ("1.2.3.4\r\nX-Evil: 1", None),
        ("1.2.3.4, 5.6.7.8", None),
    ],
    ids=repr,
)
def test_parse_ip(text: str, expected: str | None) -> None:
    result = parse_ip(text)
    assert (str(result) if result else None) == expected


@pytest.mark.parametrize(
    ("entries", "inside", "outside"),
    [
        (["10.0.0.0/8"], ["10.0.0.1", "10.255.255.255"], ["11.0.0.0", "9.255.255.255"]),
        (["192.0.2.7"], ["192.0.2.7"], ["192.0.2.8"]),
        (["2001:db8::/32"], ["2001:db8::1", "2001:db8:ffff::1"], ["2001:db9::1", "10.0.0.1"]),
        (["::ffff:10.0.0.0/104"], ["10.1.2.3", "::ffff:10.1.2.3"], ["11.1.2.3"]),
        (["0.0.0.0/0"], ["1.2.3.4"], ["::1"]),
        (
            ["10.1.0.0/16", "10.2.3.4", "fd00::/8"],
            ["10.1.9.9", "10.2.3.4", "fd12::1"],
            ["10.2.3.5"],
        ),
    ],
)
def test_matcher(entries: list[str], inside: list[str], outside: list[str]) -> None:
    matcher = IPMatcher.from_strings(entries)
    for address in inside:
        assert parse_ip(address) in matcher, address
    for address in outside:
        assert parse_ip(address) not in matcher, address
    assert None not in matcher


def test_matcher_with_many_entries_is_exact() -> None:
    entries = [f"10.{i // 256}.{i % 256}.0/24" for i in range(5000)]
    matcher = IPMatcher.from_strings(entries)
    assert ip_address("10.19.135.200") in matcher  # 19*256+135 = 4999
    assert ip_address("10.19.136.1") not in matcher
    assert len(matcher) == 5000


def test_strict_network_names_the_fix() -> None:
    with pytest.raises(ValueError, match=r"did you mean 10\.0\.0\.0/8"):
        parse_network("10.0.0.1/8")
    assert str(parse_network("10.0.0.1/8", strict=False)) == "10.0.0.0/8"


TRUSTED = ["10.0.0.0/8", "2001:db8:ffff::/48"]
UNKNOWN = None  # the client address is unknown: no address rule matches


@pytest.mark.parametrize(
    ("peer", "headers", "expected"),
    [
        # untrusted peer: every header ignored
        ("203.0.113.5", {"x-forwarded-for": "1.1.1.1"}, "203.0.113.5"),
        ("203.0.113.5", {"x-real-ip": "1.1.1.1"}, "203.0.113.5"),
        ("203.0.113.5", {"forwarded": "for=1.1.1.1"}, "203.0.113.5"),
        ("203.0.113.5", {"forwarded": "for=1.1.1.1", "x-real-ip": "1.1.1.1"}, "203.0.113.5"),
        # trusted peer, no header: the peer
        ("10.0.0.1", {}, "10.0.0.1"),
        # walk from the right, first untrusted wins
        ("10.0.0.1", {"x-forwarded-for": "198.51.100.1"}, "198.51.100.1"),
        ("10.0.0.1", {"x-forwarded-for": "6.6.6.6, 198.51.100.1"}, "198.51.100.1"),
        ("10.0.0.1", {"x-forwarded-for": "6.6.6.6, 198.51.100.1, 10.0.0.2"}, "198.51.100.1"),
        # every hop trusted: the leftmost
        ("10.0.0.1", {"x-forwarded-for": "10.9.9.9, 10.0.0.2"}, "10.9.9.9"),
        # a hop we cannot parse before an untrusted one: unknown (never the proxy's address)
        ("10.0.0.1", {"x-forwarded-for": "1.1.1.1, garbage"}, UNKNOWN),
        ("10.0.0.1", {"x-forwarded-for": "1.1.1.1, garbage, 10.0.0.7"}, UNKNOWN),
        ("10.0.0.1", {"x-forwarded-for": "garbage, 1.1.1.1"}, "1.1.1.1"),
        ("10.0.0.1", {"x-forwarded-for": ""}, UNKNOWN),
        ("10.0.0.1", {"x-forwarded-for": ",,,"}, UNKNOWN),
        # ports and IPv6 forms
        ("10.0.0.1", {"x-forwarded-for": "198.51.100.1:5555"}, "198.51.100.1"),
        ("10.0.0.1", {"x-forwarded-for": "[2001:db8::5]:443"}, "2001:db8::5"),
        ("10.0.0.1", {"x-forwarded-for": "::ffff:198.51.100.1"}, "198.51.100.1"),
        # X-Real-IP: a single value
        ("10.0.0.1", {"x-real-ip": "198.51.100.9"}, "198.51.100.9"),
        ("10.0.0.1", {"x-real-ip": "1.1.1.1, 2.2.2.2"}, UNKNOWN),
        ("10.0.0.1", {"x-real-ip": "nonsense"}, UNKNOWN),
        # RFC 7239 Forwarded, every spelling a proxy (or a client) may use
        ("10.0.0.1", {"forwarded": "for=198.51.100.17;proto=https"}, "198.51.100.17"),
        ("10.0.0.1", {"forwarded": 'for="[2001:db8::17]:4711"'}, "2001:db8::17"),
        ("10.0.0.1", {"forwarded": "for=6.6.6.6, for=198.51.100.2;by=10.0.0.1"}, "198.51.100.2"),
        ("10.0.0.1", {"forwarded": "FOR=198.51.100.3"}, "198.51.100.3"),
        ("10.0.0.1", {"forwarded": 'For="198.51.100.3:80"'}, "198.51.100.3"),
        ("10.0.0.1", {"forwarded": 'for="[::ffff:198.51.100.3]:80"'}, "198.51.100.3"),
        ("10.0.0.1", {"forwarded": 'for="[2001:db8::3%eth0]"'}, "2001:db8::3"),
        ("10.0.0.1", {"forwarded": "proto=https; for = 198.51.100.3 "}, "198.51.100.3"),
        ("10.0.0.1", {"forwarded": "for=unknown"}, UNKNOWN),
        ("10.0.0.1", {"forwarded": 'for="_hidden", for=10.0.0.3'}, UNKNOWN),
        ("10.0.0.1", {"forwarded": "proto=https"}, UNKNOWN),
        # a second kind of header: believed only when it names the same client
        ("10.0.0.1", {"forwarded": "for=1.1.1.1", "x-forwarded-for": "2.2.2.2"}, UNKNOWN),
        ("10.0.0.1", {"forwarded": "for=10.1.2.3", "x-forwarded-for": "2.2.2.2"}, UNKNOWN),
        ("10.0.0.1", {"forwarded": 'FOR="10.1.2.3"', "x-forwarded-for": "2.2.2.2"}, UNKNOWN),
        ("10.0.0.1", {"forwarded": 'for="[::ffff:10.1.2.3]:80"', "x-forwarded-for": "2.2.2.2"},
         UNKNOWN),
        ("10.0.0.1", {"forwarded": "for=2.2.2.2", "x-forwarded-for": "9.9.9.9, 2.2.2.2"},
         "2.2.2.2"),
        ("10.0.0.1", {"forwarded": 'for="[::ffff:2.2.2.2]:80"', "x-forwarded-for": "2.2.2.2"},
         "2.2.2.2"),
        ("10.0.0.1", {"x-real-ip": "2.2.2.2", "x-forwarded-for": "10.1.2.3"}, UNKNOWN),
        ("10.0.0.1", {"x-real-ip": "2.2.2.2", "x-forwarded-for": "10.1.2.3, 2.2.2.2"}, "2.2.2.2"),
        ("10.0.0.1", {"x-real-ip": "10.1.2.3", "x-forwarded-for": "2.2.2.2"}, UNKNOWN),
        ("10.0.0.1", {"x-real-ip": "garbage", "x-forwarded-for": "2.2.2.2"}, UNKNOWN),
        ("10.0.0.1", {"forwarded": "for=unknown", "x-forwarded-for": "2.2.2.2"}, UNKNOWN),
        ("10.0.0.1", {"forwarded": "for=2.2.2.2", "x-forwarded-for": "2.2.2.2",
                      "x-real-ip": "2.2.2.2"}, "2.2.2.2"),
        # IPv6 trusted proxy, IPv4-mapped peer
        ("2001:db8:ffff::1", {"x-forwarded-for": "198.51.100.4"}, "198.51.100.4"),
        ("::ffff:10.0.0.1", {"x-forwarded-for": "198.51.100.4"}, "198.51.100.4"),
        # no peer at all (unix socket)
        (None, {"x-forwarded-for": "1.1.1.1"}, None),
        ("garbage", {"x-forwarded-for": "1.1.1.1"}, None),
    ],
)  # fmt: skip
def test_resolve(peer: str | None, headers: dict[str, str], expected: str | None) -> None:
    resolver = ClientIPResolver(TRUSTED)
    result = resolver.resolve(peer, headers.get)
    assert (str(result) if result else None) == expected


@pytest.mark.parametrize(
    ("configured", "headers", "expected"),
    [
        # a proxy that writes only X-Forwarded-For: the client's own Forwarded is ignored
        (["X-Forwarded-For"], {"forwarded": "for=10.1.2.3", "x-forwarded-for": "2.2.2.2"},
         "2.2.2.2"),
        # a proxy that writes only X-Real-IP: the client's own X-Forwarded-For is ignored
        (["x-real-ip"], {"x-forwarded-for": "10.1.2.3", "x-real-ip": "2.2.2.2"}, "2.2.2.2"),
        (["forwarded"], {"forwarded": "for=2.2.2.2", "x-real-ip": "10.1.2.3"}, "2.2.2.2"),
        (["forwarded", "x-real-ip"], {"forwarded": "for=2.2.2.2", "x-real-ip": "10.1.2.3"},
         UNKNOWN),
    ],
)  # fmt: skip
def test_configured_headers_are_the_only_ones_read(
    configured: list[str], headers: dict[str, str], expected: str | None
) -> None:
    resolver = ClientIPResolver(TRUSTED, headers=configured)
    result = resolver.resolve("10.0.0.1", headers.get)
    assert (str(result) if result else None) == expected


SPOOFED = "10.1.2.3"  # inside an office range a rule might send to the canary


ADDED_BY_THE_CLIENT = [
    ("forwarded", f"for={SPOOFED}"),
    ("forwarded", f'FOR="{SPOOFED}:80"'),
    ("forwarded", f'for="[::ffff:{SPOOFED}]:80"'),
    ("forwarded", "for=unknown"),
    ("x-forwarded-for", SPOOFED),
    ("x-forwarded-for", f"::ffff:{SPOOFED}"),
    ("x-real-ip", SPOOFED),
    ("x-real-ip", f"[::ffff:{SPOOFED}]:80"),
]
PROXY_WROTE = {
    "forwarded": "for=203.0.113.7",
    "x-forwarded-for": "203.0.113.7",
    "x-real-ip": "203.0.113.7",
}


@pytest.mark.parametrize(
    ("written", "added"),
    [(written, added) for written in PROXY_WROTE for added in ADDED_BY_THE_CLIENT
     if added[0] != written],
    ids=repr,
)  # fmt: skip
def test_a_client_cannot_choose_its_address_by_adding_another_kind(
    written: str, added: tuple[str, str]
) -> None:
    """Default configuration, a trusted proxy that writes one kind (naming the client
    203.0.113.7): whatever other kind the client adds, the answer is that client or unknown."""
    name, value = added
    resolver = ClientIPResolver(TRUSTED)
    result = resolver.resolve("10.0.0.1", {written: PROXY_WROTE[written], name: value}.get)
    assert result is None
    alone = resolver.resolve("10.0.0.1", {written: PROXY_WROTE[written]}.get)
    assert str(alone) == "203.0.113.7"


def test_disagreement_warns_once_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    resolver = ClientIPResolver(TRUSTED)
    headers = {"forwarded": "for=1.1.1.1", "x-forwarded-for": "2.2.2.2"}
    with caplog.at_level("WARNING", logger="canary_mw"):
        for _ in range(1000):
            assert resolver.resolve("10.0.0.1", headers.get) is None
    warnings = [r for r in caplog.records if "do not name one client" in r.getMessage()]
    assert len(warnings) == 1
    assert "forwarded: 1.1.1.1" in warnings[0].getMessage()
    assert "x-forwarded-for: 2.2.2.2" in warnings[0].getMessage()


def test_no_trusted_proxies_by_default() -> None:
    resolver = ClientIPResolver()
    headers = {"x-forwarded-for": "1.1.1.1", "x-real-ip": "1.1.1.1", "forwarded": "for=1.1.1.1"}
    assert str(resolver.resolve("127.0.0.1", headers.get)) == "127.0.0.1"
    assert not resolver.trusts_any_proxy


def test_one_configured_header_is_the_only_one_read() -> None:
    resolver = ClientIPResolver(TRUSTED, headers=["X-Real-IP"])
    headers = {"x-forwarded-for": "1.1.1.1", "x-real-ip": "2.2.2.2"}
    assert str(resolver.resolve("10.0.0.1", headers.get)) == "2.2.2.2"


def test_trust_everyone_takes_the_leftmost() -> None:
    resolver = ClientIPResolver(["*"])
    assert (
        str(resolver.resolve("8.8.8.8", {"x-forwarded-for": "1.1.1.1, 2.2.2.2"}.get)) == "1.1.1.1"
    )


@pytest.mark.parametrize(
    ("proxies", "headers", "message"),
    [
        ("10.0.0.0/8", None, "must be a list"),
        (["10.0.0.1/8"], None, "did you mean 10.0.0.0/8"),
        (["proxy.local"], None, "not an IP address"),
        ([], ["X-Client-IP"], "not supported"),
    ],
)
def test_bad_configuration(proxies: object, headers: list[str] | None, message: str) -> None:
    kwargs = {} if headers is None else {"headers": headers}
    with pytest.raises(ConfigurationError, match=message):
        ClientIPResolver(proxies, **kwargs)  # type: ignore[arg-type]
