"""Named upstreams: where each canary target is served."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import httpx

from .errors import ConfigurationError
from .outcome import CANARY, STABLE
from .rules import valid_name

__all__ = [
    "Upstream",
    "UpstreamRoute",
    "escape_unprintable",
    "fast_url",
    "parse_upstream_document",
    "parse_upstreams",
]


_PRINTABLE_ASCII = bytes(range(0x21, 0x7F))


def escape_unprintable(raw: bytes) -> bytes:
    """``raw`` with every byte outside printable ASCII percent-encoded (``/café`` sent as raw
    UTF-8 goes out as ``/caf%C3%A9``, which the upstream decodes to the same path); all
    other bytes, ``%`` included, are kept as they came."""
    if not raw.translate(None, _PRINTABLE_ASCII):
        return raw
    return b"".join(bytes((byte,)) if 0x21 <= byte < 0x7F else b"%%%02X" % byte for byte in raw)


def fast_url(base: httpx.URL, path: bytes, query: bytes) -> httpx.URL | None:
    """``base`` with another path and query (printable ASCII), without re-parsing and
    re-validating the whole URL: httpx's ``copy_with(raw_path=...)`` costs ~50 µs per call,
    as much as everything else we do per forwarded request, and it re-quotes characters such
    as ``<`` or ``"`` that a proxy should pass on as the client sent them. The upstream's
    scheme, host and port were validated when the router was built. Returns None if httpx's
    internals are not the ones this was written against (tests/routing/test_upstreams.py
    fails then)."""
    reference = getattr(base, "_uri_reference", None)
    replace = getattr(reference, "_replace", None)
    if replace is None:
        return None
    url = httpx.URL.__new__(httpx.URL)
    url._uri_reference = replace(path=path.decode("ascii"), query=query.decode("ascii") or None)
    return url


@dataclass(frozen=True, slots=True)
class Upstream:
    name: str
    url: httpx.URL  # scheme, host, port and an optional path prefix
    host_header: bytes  # the upstream's own host[:port], for preserve_host=False
    ws_base: str  # ws:// or wss:// equivalent, for WebSockets
    prefix: bytes  # the URL's path without its trailing slash, put before every request path
    #: The backend's identity for health: scheme, host[:port] and prefix, spelled the same
    #: whichever name or host it is configured under (``http://canary:8000``).
    key: str = ""
    #: Where connections go, in the form the transports use (derived from ``url``):
    #: ``b"http"``, the host as connected to (an IPv6 address without brackets) and the
    #: port (the scheme's default filled in).
    raw_scheme: bytes = field(init=False)
    raw_host: bytes = field(init=False)
    port: int = field(init=False)

    def __post_init__(self) -> None:
        url = self.url
        default = 443 if url.raw_scheme == b"https" else 80
        for name, value in (("raw_scheme", url.raw_scheme), ("raw_host", url.raw_host),
                            ("port", url.port or default)):  # fmt: skip
            object.__setattr__(self, name, value)  # frozen: set once, here

    def target(self, raw_path: bytes, query: bytes) -> httpx.URL:
        """The upstream URL for a request (what :meth:`request_target` sends, as a URL)."""
        path, _, query = self.request_target(raw_path, query).partition(b"?")
        return self.url_for(path, query)

    def request_target(self, raw_path: bytes, query: bytes) -> bytes:
        """The origin-form target sent to the upstream: the prefix, then the raw path and
        query kept byte for byte, but for bytes outside printable ASCII, which are
        percent-encoded. (``raw_path`` holds no ``?``: the target was split there.)
        ``OPTIONS *`` asks about the server, not a path: it goes as ``*``, whatever the
        prefix."""
        if raw_path == b"*" and not query:
            return b"*"
        path = self.prefix + escape_unprintable(raw_path) or b"/"
        query = escape_unprintable(query)
        return path + b"?" + query if query else path

    def url_for(self, path: bytes, query: bytes) -> httpx.URL:
        """This upstream's URL with an already escaped path (prefix included) and query."""
        return fast_url(self.url, path, query) or self.url.copy_with(
            raw_path=path + (b"?" + query if query else b"")
        )


def _parse(name: str, url: object) -> Upstream:
    if not valid_name(name) or name == STABLE:
        raise ConfigurationError(
            f"upstream name {name!r} is invalid: use 1-64 of [A-Za-z0-9_.:-], not 'stable'"
        )
    if not isinstance(url, str):
        raise ConfigurationError(f"upstream {name!r}: the URL must be a string, got {url!r}")
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise ConfigurationError(f"upstream {name!r}: invalid URL {url!r}: {exc}") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ConfigurationError(
            f"upstream {name!r}: expected an http:// or https:// URL with a host, got {url!r}"
        )
    if parsed.query or parsed.fragment:
        raise ConfigurationError(f"upstream {name!r}: the URL must not have a query or fragment")
    default_port = 443 if parsed.scheme == "https" else 80
    host = parsed.host if ":" not in parsed.host else f"[{parsed.host}]"
    netloc = host if parsed.port in (None, default_port) else f"{host}:{parsed.port}"
    ws_scheme = "wss" if parsed.scheme == "https" else "ws"
    prefix = parsed.raw_path.rstrip(b"/")
    ws_base = f"{ws_scheme}://{netloc}{prefix.decode('ascii')}"
    key = f"{parsed.scheme}://{netloc}{prefix.decode('ascii')}"
    return Upstream(name, parsed, netloc.encode("ascii"), ws_base, prefix, key)


def parse_upstreams(
    canary_url: str | None, upstreams: Mapping[str, str] | None
) -> dict[str, Upstream]:
    """``canary_url`` is shorthand for ``upstreams={"canary": canary_url}``."""
    merged: dict[str, str] = {}
    if upstreams is not None:
        if not isinstance(upstreams, Mapping):
            raise ConfigurationError(
                "upstreams must map names to URLs, e.g. {'canary': 'http://canary:8000'}"
            )
        merged.update(upstreams)
    if canary_url is not None:
        if CANARY in merged and merged[CANARY] != canary_url:
            raise ConfigurationError(
                "canary_url and upstreams['canary'] disagree; give the canary URL once"
            )
        merged[CANARY] = canary_url
    return {name: _parse(name, url) for name, url in merged.items()}


@dataclass(frozen=True, slots=True)
class UpstreamRoute:
    """Where a name points according to the store: a default URL and per-host URLs."""

    default: Upstream | None
    hosts: Mapping[str, Upstream]

    def pick(self, host: str) -> Upstream | None:
        return self.hosts.get(host, self.default)

    def all(self) -> list[Upstream]:
        """Every upstream this name can resolve to: the default, then each host's."""
        return ([self.default] if self.default is not None else []) + list(self.hosts.values())


def parse_upstream_document(document: object) -> dict[str, UpstreamRoute]:
    """Validate the store's ``upstreams`` document::

        {"canary": {"url": "http://canary-b:8000",
                    "hosts": {"shop.example.com": "http://canary-shop:8000"}}}

    A name may have a default ``url``, per-host URLs, or both. Raises ConfigurationError.
    """
    if not isinstance(document, Mapping):
        raise ConfigurationError('upstreams must be {"name": {"url": ..., "hosts": {...}}}')
    routes = {}
    for name, spec in document.items():
        if not isinstance(spec, Mapping) or set(spec) - {"url", "hosts"} or not spec:
            raise ConfigurationError(
                f'upstream {name!r}: expected {{"url": URL}} and/or {{"hosts": {{HOST: URL}}}}'
            )
        default = _parse(name, spec["url"]) if "url" in spec else None
        hosts = spec.get("hosts", {})
        if not isinstance(hosts, Mapping):
            raise ConfigurationError(f"upstream {name!r}: hosts must map host names to URLs")
        routes[name] = UpstreamRoute(
            default, {str(host).lower(): _parse(name, url) for host, url in hosts.items()}
        )
    return routes
