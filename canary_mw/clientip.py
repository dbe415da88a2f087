"""Which address is the client? The socket peer, unless a trusted proxy says otherwise.

Security note: ``X-Forwarded-For``, ``X-Real-IP`` and ``Forwarded`` are ordinary request
headers that any client can send. They are only read when the direct peer is one of the
configured ``trusted_proxies``; otherwise the socket peer is the client, whatever the headers
say. A chain is walked from the right (the entry the nearest proxy appended) and the first
address that is not a trusted proxy wins, as uvicorn's ProxyHeadersMiddleware does, so a
client cannot push a spoofed address past a proxy that appends to the header.

A proxy usually writes one of the three kinds and passes the others through untouched (AWS
ALB and nginx's defaults write only ``X-Forwarded-For``), so the client can add the others
itself. Believing whichever kind comes first would let it choose its address. So every
configured kind that is present is read, and they must agree: when two kinds name different
clients, or one is present but names no address we can parse (``unknown``, an obfuscated
``_hidden`` node, garbage), the client address is *unknown* (``None``: address rules do not
match, the request goes where unknown clients go) and a warning is logged, at most once a
minute. An operator whose proxy writes exactly one kind names just that one in
``client_ip_headers`` and the others are then ignored.

Addresses are compared as ``ipaddress`` objects. ``Forwarded`` values may be quoted, carry a
port (``1.2.3.4:80``, ``"[2001:db8::1]:443"``), use any case (``FOR=``); IPv4-mapped IPv6
addresses become IPv4, and an IPv6 zone id (``fe80::1%eth0``) is dropped (zones are local to
a host, and no routing rule can name one).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence

from .errors import ConfigurationError
from .ipmatch import IPAddress, IPMatcher, parse_ip, parse_network

__all__ = ["DEFAULT_CLIENT_IP_HEADERS", "ClientIPResolver"]

logger = logging.getLogger("canary_mw")

#: Header names consulted (lower-case) when the peer is a trusted proxy; all that are present
#: must agree.
DEFAULT_CLIENT_IP_HEADERS = ("forwarded", "x-forwarded-for", "x-real-ip")
_KNOWN_HEADERS = frozenset(DEFAULT_CLIENT_IP_HEADERS)
#: At most one disagreement warning per this many seconds (per resolver), with a count.
WARNING_INTERVAL = 60.0


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


class _Throttle:
    """Lets one warning through per interval and counts the ones it held back. Thread-safe
    (WSGI servers call the resolver from many threads)."""

    __slots__ = ("_held", "_interval", "_lock", "_next")

    def __init__(self, interval: float):
        self._interval = interval
        self._next = 0.0
        self._held = 0
        self._lock = threading.Lock()

    def allow(self) -> int | None:
        """None to stay quiet; else how many warnings were held back since the last one."""
        now = time.monotonic()
        with self._lock:
            if now < self._next:
                self._held += 1
                return None
            held, self._held = self._held, 0
            self._next = now + self._interval
            return held


class ClientIPResolver:
    """Resolve the client address from the socket peer and, for trusted peers, proxy headers.

    >>> resolver = ClientIPResolver(trusted_proxies=["10.0.0.0/8"])
    >>> headers = {"x-forwarded-for": "203.0.113.9, 10.0.0.2"}
    >>> str(resolver.resolve("10.0.0.1", headers.get))
    '203.0.113.9'
    >>> str(resolver.resolve("198.51.100.1", headers.get))  # untrusted peer: header ignored
    '198.51.100.1'
    >>> headers["x-real-ip"] = "10.1.2.3"  # a second kind that disagrees: unknown
    >>> print(resolver.resolve("10.0.0.1", headers.get))
    None
    """

    __slots__ = ("_any", "_headers", "_throttle", "_trust_all", "_trusted")

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
        names = tuple(dict.fromkeys(name.lower() for name in headers))
        unknown = [name for name in names if name not in _KNOWN_HEADERS]
        if unknown:
            raise ConfigurationError(
                f"client IP headers {unknown} are not supported; choose from "
                f"{list(DEFAULT_CLIENT_IP_HEADERS)}"
            )
        self._headers = names
        self._any = self._trust_all or len(self._trusted) > 0
        self._throttle = _Throttle(WARNING_INTERVAL)

    @property
    def trusts_any_proxy(self) -> bool:
        return self._any

    @property
    def header_names(self) -> tuple[str, ...]:
        """The client-address headers read when the peer is a trusted proxy."""
        return self._headers

    def is_trusted(self, address: IPAddress) -> bool:
        return self._trust_all or address in self._trusted

    def resolve(self, peer: str | None, header: Callable[[str], str | None]) -> IPAddress | None:
        """The client address, or None when unknown; ``header(name)`` returns a lower-case
        header's value (repeated lines joined with ``", "``) or None."""
        peer_ip = parse_ip(peer) if peer else None
        if not self._any or peer_ip is None or not self.is_trusted(peer_ip):
            return peer_ip
        answers: dict[str, IPAddress | None] = {}
        for name in self._headers:
            value = header(name)
            if value is not None:
                answers[name] = self._walk(_split_hops(name, value), peer_ip)
        if not answers:
            return peer_ip
        first = next(iter(answers.values()))
        if first is not None and all(answer == first for answer in answers.values()):
            return first
        self._warn(peer_ip, answers)
        return None

    def _walk(self, hops: list[str], nearest: IPAddress) -> IPAddress | None:
        # Walk right to left; each step moves one proxy further from us. A hop we cannot
        # parse was not written by a proxy we trust, and skipping it would let a client
        # steer us, so the client is then unknown.
        for raw in reversed(hops):
            address = parse_ip(raw)
            if address is None:
                return None
            if not self.is_trusted(address):
                return address
            nearest = address
        return nearest  # every hop trusted: the client is itself one of our proxies

    def _warn(self, peer: IPAddress, answers: dict[str, IPAddress | None]) -> None:
        held = self._throttle.allow()
        if held is None:
            return
        found = ", ".join(f"{name}: {answer or 'no address'}" for name, answer in answers.items())
        logger.warning(
            "canary_mw: client address unknown for a request from trusted proxy %s: its "
            "client-address headers do not name one client (%s); routed as an unknown "
            "client. If the proxy writes only one of them, pass client_ip_headers=[that one].%s",
            peer, found, f" ({held} more since the last warning)" if held else "",
        )  # fmt: skip
