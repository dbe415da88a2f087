"""Request facts: what a routing decision may look at, read from an ASGI scope or WSGI environ.

Every field is parsed on first use and kept for the rest of the request, so a rule set that
only looks at the client address never parses cookies or the query string.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Hashable, Iterable, Mapping, MutableMapping
from typing import Any
from urllib.parse import parse_qsl

from .clientip import ClientIPResolver
from .ipmatch import IPAddress

__all__ = ["ASGIFacts", "RequestFacts", "WSGIFacts", "parse_cookie_header"]

_UNSET: Any = object()
_NO_PROXIES = ClientIPResolver()


def parse_cookie_header(value: str) -> dict[str, str]:
    """Parse a ``Cookie`` header into ``{name: value}``.

    Lenient like browsers and Starlette (a malformed pair is skipped, not fatal), with two
    choices that matter for routing: when a name repeats, the *first* value wins (browsers
    send the most specific path first), and one pair of surrounding double quotes is removed.
    """
    cookies: dict[str, str] = {}
    for pair in value.split(";"):
        name, sep, raw = pair.partition("=")
        name = name.strip()
        if not sep or not name:
            continue
        raw = raw.strip()
        if len(raw) >= 2 and raw[0] == '"' and raw[-1] == '"':
            raw = raw[1:-1]
        cookies.setdefault(name, raw)
    return cookies


@functools.lru_cache(maxsize=256)
def _cookie_pattern(name: str) -> re.Pattern[str]:
    # Same rules as parse_cookie_header, for one name: the first pair whose name matches.
    return re.compile(r"(?:^|;)[ \t]*" + re.escape(name) + r"[ \t]*=([^;]*)")


def cookie_value(header: str, name: str) -> str | None:
    """The value of cookie ``name`` in a Cookie header (as ``parse_cookie_header`` would give
    it), found without parsing the other cookies: browsers send dozens of them."""
    match = _cookie_pattern(name).search(header)
    if match is None:
        return None
    value = match.group(1).strip()
    if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        value = value[1:-1]
    return value


@functools.lru_cache(maxsize=256)
def _header_key(name: str) -> bytes:
    return name.lower().encode("latin-1")


@functools.lru_cache(maxsize=256)
def _environ_key(name: str) -> str:
    """The PEP 3333 environ key of header ``name`` (the names rules read: a bounded set)."""
    lowered = name.lower()
    if lowered == "content-type":
        return "CONTENT_TYPE"
    if lowered == "content-length":
        return "CONTENT_LENGTH"
    return "HTTP_" + name.upper().replace("-", "_")


def _host_without_port(host: str) -> str:
    host = host.strip().lower()
    if host.startswith("["):  # [2001:db8::1]:8080
        return host[1 : host.find("]")] if "]" in host else host
    return host.partition(":")[0]


def _joined(pairs: Iterable[tuple[bytes, bytes]]) -> dict[bytes, bytes]:
    """Join the values of repeated names (``"; "`` for Cookie, ``", "`` for the rest). Values
    are collected first and joined once: joining as they come copies the growing value again
    for every repeat, and 100,000 repeats of one name then hold the event loop for seconds."""
    values: dict[bytes, list[bytes]] = {}
    for key, value in pairs:
        found = values.get(key)
        if found is None:
            values[key] = [value]
        else:
            found.append(value)
    return {
        key: found[0] if len(found) == 1 else (b"; " if key == b"cookie" else b", ").join(found)
        for key, found in values.items()
    }


def _absolute_form_authority(target: bytes) -> bytes | None:
    """The authority of an absolute-form request target (``http://Host:80/x`` → ``host:80``),
    lower-cased; None when the target is not absolute-form."""
    scheme, separator, rest = target.partition(b"://")
    if not separator or not scheme.isalpha():
        return None
    end = len(rest)
    for delimiter in (b"/", b"?", b"#"):
        found = rest.find(delimiter)
        if found >= 0:
            end = min(end, found)
    return rest[:end].lower()


def has_dot_segment(path: bytes) -> bool:
    """Whether a raw request path has a ``.`` or ``..`` segment, reading ``%2e`` as ``.`` and
    ``%2f``, ``%5c`` and ``\\`` as ``/`` (what some hop behind us may do before normalising).
    Such a target is refused: the rules would match one path and a normalising canary (or
    anything in front of it) serve another, outside an upstream's path prefix
    (``/app1/../admin``). Browsers and HTTP libraries never send one."""
    if b"." not in path and b"%" not in path:
        return False  # the common case, decided without copying the path
    lowered = path.lower().replace(b"%2e", b".")
    if b"." not in lowered:
        return False
    for separator in (b"%2f", b"%5c", b"\\"):
        lowered = lowered.replace(separator, b"/")
    return any(segment in (b".", b"..") for segment in lowered.split(b"/"))


class RequestFacts:
    """The request as the decision sees it. Subclasses read one server interface.

    ``header(name)`` takes a lower-case name and returns the value, several occurrences
    joined with ``", "`` (``"; "`` for Cookie), or None. ``cookie`` and ``query`` return the
    first value of a name or None. ``client_ip`` applies the trusted-proxy policy.
    """

    __slots__ = ("_client_ip", "_query", "_resolver", "pin")

    def __init__(self, resolver: ClientIPResolver = _NO_PROXIES) -> None:
        self._resolver = resolver
        self._client_ip: IPAddress | None = _UNSET
        self._query: dict[str, str] = _UNSET
        #: A sticky cookie's verdict for one percentage node, set by ``decide`` (the node,
        #: in or out); None when the request carries no valid one (stickycookie.py).
        self.pin: tuple[object, bool] | None = None

    # -- provided by each server interface ---------------------------------------------
    @property
    def method(self) -> str:
        raise NotImplementedError

    @property
    def path(self) -> str:
        raise NotImplementedError

    @property
    def host(self) -> str:
        """Lower-case host name without the port, from the Host header or the server name."""
        raise NotImplementedError

    def header(self, name: str) -> str | None:
        raise NotImplementedError

    @property
    def authority_conflict(self) -> bool:
        """True when the request names two authorities (two Host lines, or an absolute-form
        target naming another than Host), its target is neither a path, a URL nor ``*``, or
        its path has a dot segment (``has_dot_segment``): the router refuses it with 400
        rather than route by one path or authority and forward another."""
        raise NotImplementedError

    @property
    def is_https(self) -> bool:
        """Whether the request came over TLS, as the server says (``scheme``)."""
        raise NotImplementedError

    def _peer(self) -> str | None:
        raise NotImplementedError

    def _raw_query(self) -> str:
        raise NotImplementedError

    # -- shared, lazily parsed ---------------------------------------------------------
    @property
    def client_ip(self) -> IPAddress | None:
        address = self._client_ip
        if address is _UNSET:
            address = self._client_ip = self._resolver.resolve(self._peer(), self.header)
        return address

    def client_ip_key(self) -> Hashable:
        """Everything ``client_ip`` is computed from, unparsed: the peer, and the proxy
        headers when a proxy is trusted (what the decision memo keys an address rule by)."""
        resolver = self._resolver
        if not resolver.trusts_any_proxy:
            return self._peer()
        return (self._peer(), *[self.header(name) for name in resolver.header_names])

    def cookie(self, name: str) -> str | None:
        header = self.header("cookie")
        return cookie_value(header, name) if header else None

    def query(self, name: str) -> str | None:
        args = self._query
        if args is _UNSET:
            args = {}
            for key, value in parse_qsl(self._raw_query(), keep_blank_values=True):
                args.setdefault(key, value)
            self._query = args
        return args.get(name)


class ASGIFacts(RequestFacts):
    """Facts from an ASGI ``http`` or ``websocket`` scope."""

    __slots__ = ("_headers", "_scope")

    def __init__(self, scope: Mapping[str, Any], resolver: ClientIPResolver = _NO_PROXIES):
        # Set the slots directly: this runs for every request.
        self._resolver = resolver
        self._client_ip = _UNSET
        self._query = _UNSET
        self._scope = scope
        self.pin = None
        self._headers: dict[bytes, bytes] = _UNSET

    @property
    def method(self) -> str:
        method: str = self._scope.get("method", "GET")  # websocket scopes carry no method
        return method

    @property
    def is_https(self) -> bool:
        return self._scope.get("scheme") in ("https", "wss")

    @property
    def path(self) -> str:
        path: str = self._scope.get("path", "/")
        return path

    @property
    def host(self) -> str:
        host = self.header("host")
        if host:
            return _host_without_port(host)
        server = self._scope.get("server")
        return str(server[0]).lower() if server else ""

    def raw_headers(self) -> dict[bytes, bytes]:
        """Lower-case name → value, as bytes; repeated headers joined. Built once, in C
        (``dict(pairs)``) unless a name repeats. ASGI servers send lower-case names."""
        headers = self._headers
        if headers is _UNSET:
            pairs = self._scope.get("headers", ())
            headers = dict(pairs)
            if len(headers) != len(pairs):  # a repeated header: join, as HTTP defines
                headers = _joined(pairs)
            self._headers = headers
        return headers

    @property
    def authority_conflict(self) -> bool:
        """More than one Host line (RFC 9112 §3.2 makes that a 400), an absolute-form target
        (``GET http://a/ HTTP/1.1``, passed on by uvicorn's h11 parser) whose authority is not
        the Host header's, or a target that is neither (``@127.0.0.1:6379/``, also h11's)."""
        scope = self._scope
        pairs = scope.get("headers", ())
        target: bytes | None = scope.get("raw_path")
        if target:
            if has_dot_segment(target.partition(b"?")[0]):
                return True
        else:  # ASGI lets a server leave raw_path out: what the forwarder sends is the path
            target = scope.get("path", "/").encode("utf-8", "replace")
            if has_dot_segment(target):
                return True
        # The asterisk form is OPTIONS's alone, and has no query (RFC 9112 §3.2.4): any other
        # use of it names no target, below.
        if target[:1] == b"/" or (
            target == b"*" and scope.get("method") == "OPTIONS" and not scope.get("query_string")
        ):
            if len(self.raw_headers()) == len(pairs):  # no name repeats: the common case
                return False
            return sum(1 for name, _ in pairs if name == b"host") > 1
        authority = _absolute_form_authority(target)
        if authority is None:  # neither a path nor a URL (``@127.0.0.1:6379/``): no target
            return True
        hosts = [value for name, value in pairs if name == b"host"]
        return len(hosts) > 1 or authority != (hosts[0].lower() if hosts else None)

    def header(self, name: str) -> str | None:
        value = self.raw_headers().get(_header_key(name))
        return None if value is None else value.decode("latin-1")

    def cookie(self, name: str) -> str | None:
        headers = self._headers
        if headers is _UNSET:
            headers = self.raw_headers()
        header = headers.get(b"cookie")
        return cookie_value(header.decode("latin-1"), name) if header else None

    def _peer(self) -> str | None:
        client = self._scope.get("client")
        return str(client[0]) if client else None

    def _raw_query(self) -> str:
        raw: bytes = self._scope.get("query_string", b"")
        return raw.decode("latin-1")


class WSGIFacts(RequestFacts):
    """Facts from a PEP 3333 ``environ``."""

    __slots__ = ("_environ",)

    def __init__(self, environ: MutableMapping[str, Any], resolver: ClientIPResolver = _NO_PROXIES):
        # Set the slots directly: this runs for every request.
        self._resolver = resolver
        self._client_ip = _UNSET
        self._query = _UNSET
        self._environ = environ
        self.pin = None

    @property
    def method(self) -> str:
        method: str = self._environ.get("REQUEST_METHOD", "GET")
        return method

    @property
    def is_https(self) -> bool:
        return self._environ.get("wsgi.url_scheme") == "https"

    @property
    def path(self) -> str:
        # PEP 3333 strings are bytes decoded as latin-1; decode them as the UTF-8 they are.
        raw = self._environ.get("SCRIPT_NAME", "") + self._environ.get("PATH_INFO", "")
        return raw.encode("latin-1").decode("utf-8", "replace") or "/"

    @property
    def host(self) -> str:
        host = self._environ.get("HTTP_HOST")
        if host:
            return _host_without_port(host)
        return str(self._environ.get("SERVER_NAME", "")).lower()

    def header(self, name: str) -> str | None:
        value: str | None = self._environ.get(_environ_key(name))
        return value

    @property
    def authority_conflict(self) -> bool:
        host: str | None = self._environ.get("HTTP_HOST")
        if host is not None and "," in host:  # servers join repeated lines with a comma
            return True
        target: str | None = self._environ.get("RAW_URI") or self._environ.get("REQUEST_URI")
        path = target or self._environ.get("SCRIPT_NAME", "") + self._environ.get("PATH_INFO", "")
        if has_dot_segment(path.partition("?")[0].encode("latin-1")):
            return True
        # The asterisk form is OPTIONS's alone, and has no query (RFC 9112 §3.2.4); a server
        # without RAW_URI / REQUEST_URI (wsgiref) leaves it in PATH_INFO.
        if (target or path) == "*":
            return self._environ.get("REQUEST_METHOD") != "OPTIONS" or bool(
                self._environ.get("QUERY_STRING")
            )
        if not target or target[:1] == "/":
            return False
        authority = _absolute_form_authority(target.encode("latin-1"))
        return authority is None or authority != (
            host.lower().encode("latin-1") if host is not None else None
        )

    def _peer(self) -> str | None:
        peer: str | None = self._environ.get("REMOTE_ADDR")
        return peer

    def _raw_query(self) -> str:
        query: str = self._environ.get("QUERY_STRING", "")
        return query
