"""Header hygiene for forwarding, on raw ``(name, value)`` byte pairs (never a merged dict:
``Set-Cookie`` must stay one header per cookie). HTTP and WebSocket forwarding both use
``request_headers``.

Hop-by-hop headers (RFC 9110 §7.6.1) describe one connection, not the message, so they are
dropped in both directions, together with every header the ``Connection`` header names.
The client's framing headers (``Content-Length``, ``Transfer-Encoding``) are never passed on
as they came: the forwarding client frames the body it actually sends.

Security note: some headers tell an application who the client is or what the original
request was, and applications (and the canary's own proxy-header middleware) believe them.
From a peer that is not a trusted proxy, every one of these is removed, and we add our own:

``Forwarded``, ``X-Forwarded-For``, ``X-Forwarded-Proto``, ``X-Forwarded-Host``,
``X-Forwarded-Port``, ``X-Forwarded-Prefix``, ``X-Forwarded-Scheme``, ``X-Forwarded-Ssl``,
``X-Forwarded-Server``, ``X-Forwarded-By``, ``X-Forwarded``, ``Forwarded-For``,
``X-Real-IP``, ``X-Client-IP``, ``Client-IP``, ``True-Client-IP``, ``CF-Connecting-IP``,
``X-Cluster-Client-IP``, ``Fastly-Client-IP``, ``X-ProxyUser-IP``,
``X-Original-Forwarded-For``, ``X-Original-Host``, ``X-Original-URL``, ``X-Original-URI``,
``X-Rewrite-URL``, ``X-Host``, ``X-Scheme``, ``X-URL-Scheme``, ``Front-End-Https``.

Their *underscore twins* (``X_Forwarded_For``: any name that matches one of these once ``_``
is read as ``-``) are removed from every peer, trusted or not: WSGI servers (and nginx with
``underscores_in_headers on``) fold ``_`` and ``-`` into one ``HTTP_X_FORWARDED_FOR`` key,
so a twin would be merged into the real header behind us, and no proxy writes one.

What we add: one ``X-Forwarded-For`` ending with our peer (a trusted proxy's chain kept in
front of it), ``X-Forwarded-Proto`` and ``X-Forwarded-Host`` (a trusted proxy's values, else
what we saw), and our peer appended to a trusted proxy's ``Forwarded``.

From a trusted proxy, of the headers naming the client's address (``Forwarded``,
``X-Forwarded-For``, ``X-Real-IP``, ``True-Client-IP``, ``X-Client-IP``, ``Client-IP``,
``CF-Connecting-IP``, ``X-Cluster-Client-IP``, ``Fastly-Client-IP``, ``X-ProxyUser-IP``,
``Forwarded-For``, ``X-Original-Forwarded-For``) only the kinds the router reads
(``client_ip_headers``) are passed on: those are the ones the proxy writes; any other kind
came from the client through it. The rest of the list is passed on unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

__all__ = [
    "CLIENT_ADDRESS_HEADERS",
    "CLIENT_FACT_HEADERS",
    "DEFAULT_ADDRESS_HEADERS",
    "HOP_BY_HOP",
    "RawHeaders",
    "connection_tokens",
    "request_headers",
    "response_headers",
    "single_content_length",
]

RawHeaders = list[tuple[bytes, bytes]]

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
_FRAMING = frozenset({b"content-length", b"transfer-encoding"})
#: Never passed on as they came, whatever the Connection header says.
_ALWAYS_DROPPED = HOP_BY_HOP | _FRAMING
#: Headers naming the client or the original request (see the module docstring), lower-case.
CLIENT_FACT_HEADERS = frozenset(
    {
        b"forwarded", b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host",
        b"x-forwarded-port", b"x-forwarded-prefix", b"x-forwarded-scheme", b"x-forwarded-ssl",
        b"x-forwarded-server", b"x-forwarded-by", b"x-forwarded", b"forwarded-for",
        b"x-real-ip", b"x-client-ip", b"client-ip", b"true-client-ip", b"cf-connecting-ip",
        b"x-cluster-client-ip", b"fastly-client-ip", b"x-proxyuser-ip",
        b"x-original-forwarded-for", b"x-original-host", b"x-original-url", b"x-original-uri",
        b"x-rewrite-url", b"x-host", b"x-scheme", b"x-url-scheme", b"front-end-https",
    }
)  # fmt: skip
#: The ones among them that name the client's address.
CLIENT_ADDRESS_HEADERS = frozenset(
    {
        b"forwarded", b"x-forwarded-for", b"x-real-ip", b"true-client-ip", b"x-client-ip",
        b"client-ip", b"cf-connecting-ip", b"x-cluster-client-ip", b"fastly-client-ip",
        b"x-proxyuser-ip", b"forwarded-for", b"x-original-forwarded-for",
    }
)  # fmt: skip
#: The kinds a trusted proxy's request is read from by default (client_ip_headers).
DEFAULT_ADDRESS_HEADERS = frozenset({b"forwarded", b"x-forwarded-for", b"x-real-ip"})


def connection_tokens(headers: Iterable[tuple[bytes, bytes]]) -> frozenset[bytes]:
    """Lower-case header names listed in every ``Connection`` header."""
    names: set[bytes] = set()
    for name, value in headers:
        if name.lower() == b"connection":
            names.update(token.strip().lower() for token in value.split(b",") if token.strip())
    return frozenset(names)


def single_content_length(headers: Iterable[tuple[bytes, bytes]]) -> int | None:
    """The request body length when the client gave exactly one valid Content-Length (and no
    Transfer-Encoding); None otherwise, and the body is then sent chunked."""
    lengths = []
    for name, value in headers:
        lowered = name.lower()
        if lowered == b"transfer-encoding":
            return None
        if lowered == b"content-length":
            lengths.append(value.strip())
    if len(lengths) != 1 or not lengths[0].isdigit():
        return None
    return int(lengths[0])


def request_headers(
    raw: Sequence[tuple[bytes, bytes]],
    *,
    client: bytes | None,
    scheme: bytes,
    host: bytes | None,
    default_host: bytes,
    trusted_peer: bool,
    extra: Sequence[tuple[bytes, bytes]] = (),
    drop: frozenset[bytes] = frozenset(),
    address_headers: frozenset[bytes] = DEFAULT_ADDRESS_HEADERS,
) -> RawHeaders:
    """Headers for the upstream request, Host first (see the module docstring).

    ``client``: our peer's address. ``scheme``: ``http`` or ``https`` as we received it.
    ``host``: the Host to send (None: the client's, or ``default_host`` when it sent none).
    ``trusted_peer``: whether our peer is a trusted proxy. ``drop``: names (lower-case) to
    remove, e.g. a loop-guard header the client sent. ``address_headers``: the client-address
    kinds (lower-case) a trusted proxy writes; its other CLIENT_ADDRESS_HEADERS are removed.
    """
    arguments = (client, scheme, host, default_host, trusted_peer, extra, drop, address_headers)
    # One pass over the headers, unless a Connection header names one that is not always
    # dropped anyway (browsers send "Connection: keep-alive"): then, knowing the names, again.
    headers = _clean(raw, None, *arguments)
    if headers is None:
        headers = _clean(raw, connection_tokens(raw), *arguments)
    assert headers is not None  # a pass told the names never gives up
    return headers


def _clean(
    raw: Sequence[tuple[bytes, bytes]],
    named: frozenset[bytes] | None,
    client: bytes | None,
    scheme: bytes,
    host: bytes | None,
    default_host: bytes,
    trusted_peer: bool,
    extra: Sequence[tuple[bytes, bytes]],
    drop: frozenset[bytes],
    address_headers: frozenset[bytes],
) -> RawHeaders | None:
    """request_headers's pass; ``named``: the names Connection headers list (None: not
    read yet, and None is returned on meeting a Connection header that lists any other
    than _ALWAYS_DROPPED)."""
    headers: RawHeaders = []
    forwarded_for: list[bytes] = []
    forwarded: list[bytes] = []
    proto = forwarded_host = None
    client_host = None
    for name, value in raw:
        lowered = name.lower()
        if lowered in _ALWAYS_DROPPED:
            if named is None and lowered == b"connection" and _lists_more(value, _ALWAYS_DROPPED):
                return None
            continue
        if lowered in drop or (named is not None and lowered in named):
            continue
        if lowered == b"host":
            client_host = value
        elif lowered not in CLIENT_FACT_HEADERS:
            if b"_" in lowered and lowered.replace(b"_", b"-") in CLIENT_FACT_HEADERS:
                continue  # an underscore twin, from anyone
            headers.append((name, value))
        elif not trusted_peer:
            continue
        elif lowered in CLIENT_ADDRESS_HEADERS and lowered not in address_headers:
            continue  # the proxy does not write this kind: the client did
        elif lowered == b"x-forwarded-for":
            forwarded_for.append(value)
        elif lowered == b"forwarded":
            forwarded.append(value)
        elif lowered == b"x-forwarded-proto":
            proto = value
        elif lowered == b"x-forwarded-host":
            forwarded_host = value
        else:
            headers.append((name, value))
    if client is not None:
        forwarded_for.append(client)
        if forwarded:
            forwarded.append(b'for="[' + client + b']"' if b":" in client else b"for=" + client)
    outgoing_host = host if host is not None else client_host
    headers.insert(0, (b"host", outgoing_host or default_host))
    if forwarded_for:
        headers.append((b"x-forwarded-for", b", ".join(forwarded_for)))
    if forwarded:
        headers.append((b"forwarded", b", ".join(forwarded)))
    headers.append((b"x-forwarded-proto", proto or scheme))
    if forwarded_host or client_host:
        headers.append((b"x-forwarded-host", forwarded_host or client_host or b""))
    headers.extend(extra)
    return headers


def response_headers(
    raw: Sequence[tuple[bytes, bytes]], *, drop: frozenset[bytes] = frozenset()
) -> tuple[RawHeaders, int | None]:
    """The upstream response's headers minus hop-by-hop ones and ``drop`` (lower-case), and
    its Content-Length when it gave exactly one valid value (None otherwise)."""
    if not drop >= HOP_BY_HOP:  # (the forwarders pass sets that hold them: no new set)
        drop = drop | HOP_BY_HOP
    # One pass, as in request_headers, unless a Connection header names more than these.
    kept = _kept(raw, None, drop)
    if kept is None:
        kept = _kept(raw, connection_tokens(raw), drop)
    assert kept is not None  # a pass told the names never gives up
    headers, lengths = kept
    length = int(lengths[0]) if len(lengths) == 1 and lengths[0].strip().isdigit() else None
    return headers, length


def _kept(
    raw: Sequence[tuple[bytes, bytes]], named: frozenset[bytes] | None, drop: frozenset[bytes]
) -> tuple[RawHeaders, list[bytes]] | None:
    """response_headers's pass; ``drop`` holds HOP_BY_HOP."""
    kept: RawHeaders = []
    lengths = []
    for name, value in raw:
        lowered = name.lower()
        if lowered in drop:
            if named is None and lowered == b"connection" and _lists_more(value, drop):
                return None
            continue
        if named is not None and lowered in named:
            continue
        if lowered == b"content-length":
            lengths.append(value)
        kept.append((name, value))
    return kept, lengths


def _lists_more(connection: bytes, dropped: frozenset[bytes]) -> bool:
    """Whether a Connection header's value names a header beyond ``dropped`` (those a pass
    drops anyway)."""
    return bool(connection_tokens(((b"connection", connection),)).difference(dropped))
