"""Which address is the client? The socket peer, unless a trusted proxy says otherwise.

Security note: ``X-Forwarded-For``, ``X-Real-IP`` and ``Forwarded`` are ordinary request
headers that any client can send. They are only read when the direct peer is one of the
configured ``trusted_proxies``; otherwise the socket peer is the client, whatever the headers
say. A chain is walked from the right (the entry the nearest proxy appended) and the first
address that is not a trusted proxy wins, as uvicorn's ProxyHeadersMiddleware does, so a
client cannot push a spoofed address past a proxy that appends to the header.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from .errors import ConfigurationError
from .ipmatch import IPAddress, IPMatcher, parse_ip, parse_network

__all__ = ["DEFAULT_CLIENT_IP_HEADERS", "ClientIPResolver"]

#: Header names consulted (lower-case, in order) when the peer is a trusted proxy.
DEFAULT_CLIENT_IP_HEADERS = ("forwarded", "x-forwarded-for", "x-real-ip")
_KNOWN_HEADERS = frozenset(DEFAULT_CLIENT_IP_HEADERS)


def _forwarded_for_hops(value: str) -> list[str]:
    """The ``for=`` value of each element of an RFC 7239 ``Forwarded`` header.

    An element without ``for=`` still stands for a hop; it becomes "" so the walk stops there.
    Quoted strings containing commas or semicolons are not legal for ``for=`` values (they
    hold a node name, which has neither), so a plain split is exact for valid input and
    harmlessly produces garbage hops for invalid input.
    """
    hops = []
    for element in value.split(","):
        node = ""
        for pair in element.split(";"):
            name, _, param = pair.partition("=")
            if name.strip().lower() == "for":
                node = param.strip()
                break
        hops.append(node)
    return hops


def _split_hops(header: str, value: str) -> list[str]:
    if header == "forwarded":
        return _forwarded_for_hops(value)
    if header == "x-real-ip":
        # One address by definition; a list here is not something a proxy wrote.
        return [value] if "," not in value else [""]
    return value.split(",")


class ClientIPResolver:
    """Resolve the client address from the socket peer and, for trusted peers, proxy headers.

    >>> resolver = ClientIPResolver(trusted_proxies=["10.0.0.0/8"])
    >>> headers = {"x-forwarded-for": "203.0.113.9, 10.0.0.2"}
    >>> str(resolver.resolve("10.0.0.1", headers.get))
    '203.0.113.9'
    >>> str(resolver.resolve("198.51.100.1", headers.get))  # untrusted peer: header ignored
    '198.51.100.1'
    """

    __slots__ = ("_any", "_headers", "_trust_all", "_trusted")

    def __init__(
        self,
        trusted_proxies: Iterable[str] = (),
        *,
        headers: Sequence[str] = DEFAULT_CLIENT_IP_HEADERS,
    ) -> None:
        if isinstance(trusted_proxies, str):
            raise ConfigurationError(
                "trusted_proxies must be a list of addresses or CIDRs, e.g. ['10.0.0.0/8'], "
                f"not the string {trusted_proxies!r}"
            )
        entries = [entry.strip() for entry in trusted_proxies]
        self._trust_all = "*" in entries
        networks = []
        for entry in entries:
            if entry == "*":
                continue
            try:
                networks.append(parse_network(entry))
            except ValueError as exc:
                raise ConfigurationError(f"trusted_proxies: {exc}") from None
        self._trusted = IPMatcher(networks)
        names = tuple(name.lower() for name in headers)
        unknown = [name for name in names if name not in _KNOWN_HEADERS]
        if unknown:
            raise ConfigurationError(
                f"client IP headers {unknown} are not supported; choose from "
                f"{list(DEFAULT_CLIENT_IP_HEADERS)}"
            )
        self._headers = names
        self._any = self._trust_all or len(self._trusted) > 0

    @property
    def trusts_any_proxy(self) -> bool:
        return self._any

    def is_trusted(self, address: IPAddress) -> bool:
        return self._trust_all or address in self._trusted

    def resolve(self, peer: str | None, header: Callable[[str], str | None]) -> IPAddress | None:
        """The client address; ``header(name)`` returns a lower-case header's value or None."""
        peer_ip = parse_ip(peer) if peer else None
        if not self._any or peer_ip is None or not self.is_trusted(peer_ip):
            return peer_ip
        for name in self._headers:
            value = header(name)
            if value is not None:
                return self._walk(_split_hops(name, value), peer_ip)
        return peer_ip

    def _walk(self, hops: list[str], nearest: IPAddress) -> IPAddress:
        # Walk right to left; each step moves one proxy further from us. A hop we cannot
        # parse was not written by a proxy we trust, so we stop at the last address we
        # could verify rather than skip over it (skipping would let a client steer us).
        for raw in reversed(hops):
            address = parse_ip(raw)
            if address is None:
                return nearest
            if not self.is_trusted(address):
                return address
            nearest = address
        return nearest  # every hop trusted: the client is itself one of our proxies
