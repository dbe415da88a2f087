"""Address parsing and fast membership tests for lists of addresses and CIDR networks."""

from __future__ import annotations

import functools
from collections.abc import Iterable
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network

__all__ = ["IPAddress", "IPMatcher", "IPNetwork", "parse_ip", "parse_network"]

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network

_MAPPED_V4 = IPv6Network("::ffff:0:0/96")


@functools.lru_cache(maxsize=4096)
def parse_ip(text: str) -> IPAddress | None:
    """Parse one client address the way it appears in a socket peer or a proxy header.

    Accepts ``1.2.3.4``, ``1.2.3.4:5678``, ``2001:db8::1``, ``[2001:db8::1]``,
    ``[2001:db8::1]:443`` and zone ids (``fe80::1%eth0``, dropped). IPv4-mapped IPv6
    addresses (``::ffff:1.2.3.4``) become plain IPv4 so one rule matches both spellings.
    Anything else (``unknown``, obfuscated ``_hidden`` identifiers, garbage) gives ``None``.

    Cached (bounded) because the same few peers and proxies are parsed on every request.
    """
    text = text.strip().strip('"')
    if not text:
        return None
    if text[0] == "[":
        end = text.find("]")
        if end < 0:
            return None
        text = text[1:end]
    elif text.count(":") == 1:  # IPv4 with a port; a bare IPv6 address has at least two colons
        text = text.partition(":")[0]
    text = text.partition("%")[0]
    try:
        address = ip_address(text)
    except ValueError:
        return None
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def parse_network(text: str, *, strict: bool = True) -> IPNetwork:
    """Parse an address or CIDR network (``10.0.0.0/8``, ``2001:db8::/32``, ``192.0.2.7``).

    With ``strict``, a network with host bits set is refused with a hint instead of being
    silently widened, because ``10.0.0.1/8`` is more often a typo than an intent.
    Raises ``ValueError`` with a message fit for an operator.
    """
    raw = text.strip()
    try:
        network = ip_network(raw, strict=strict)
    except ValueError as exc:
        if strict and "host bits set" in str(exc):
            fixed = ip_network(raw, strict=False)
            raise ValueError(f"{raw!r} has host bits set; did you mean {fixed}?") from None
        raise ValueError(f"{raw!r} is not an IP address or CIDR network") from None
    if isinstance(network, IPv6Network) and network.subnet_of(_MAPPED_V4):
        v4 = network.network_address.ipv4_mapped
        assert v4 is not None  # guaranteed by subnet_of(::ffff:0:0/96)
        return IPv4Network((v4, network.prefixlen - 96))
    return network


class IPMatcher:
    """An immutable set of addresses and networks with a fast ``ip in matcher`` test.

    Networks are grouped by prefix length into sets of integers, so a test costs one
    shift and one set lookup per distinct prefix length, however many entries there are.

    >>> office = IPMatcher.from_strings(["10.1.0.0/16", "2001:db8::/32", "192.0.2.7"])
    >>> parse_ip("10.1.2.3") in office
    True
    """

    __slots__ = ("_v4", "_v6", "size")

    def __init__(self, networks: Iterable[IPNetwork]) -> None:
        v4: dict[int, set[int]] = {}
        v6: dict[int, set[int]] = {}
        size = 0
        for network in networks:
            size += 1
            table, bits = (v4, 32) if network.version == 4 else (v6, 128)
            shift = bits - network.prefixlen
            table.setdefault(shift, set()).add(int(network.network_address) >> shift)
        # Tuples of (shift, members): iteration over a tuple is the cheapest loop in CPython.
        self._v4 = tuple((shift, frozenset(m)) for shift, m in sorted(v4.items()))
        self._v6 = tuple((shift, frozenset(m)) for shift, m in sorted(v6.items()))
        self.size = size

    @classmethod
    def from_strings(cls, entries: Iterable[str], *, strict: bool = True) -> IPMatcher:
        """Build from address / CIDR strings; raises ``ValueError`` on the first bad one."""
        return cls(parse_network(entry, strict=strict) for entry in entries)

    def __contains__(self, address: object) -> bool:
        if isinstance(address, IPv4Address):
            table = self._v4
        elif isinstance(address, IPv6Address):
            table = self._v6
        else:
            return False
        value = int(address)
        for shift, members in table:  # noqa: SIM110 - a plain loop beats any() + genexpr here
            if value >> shift in members:
                return True
        return False

    def __len__(self) -> int:
        return self.size

    def __repr__(self) -> str:
        return f"<IPMatcher {self.size} entries>"


EMPTY_MATCHER = IPMatcher(())
