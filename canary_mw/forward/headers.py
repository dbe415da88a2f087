"""Header hygiene for forwarding, on raw ``(name, value)`` byte pairs (never a merged dict:
``Set-Cookie`` must stay one header per cookie).

Hop-by-hop headers (RFC 9110 §7.6.1) describe one connection, not the message, so they are
dropped in both directions, together with every header the ``Connection`` header names.
The client's framing headers (``Content-Length``, ``Transfer-Encoding``) are never passed on
as they came: the forwarding client frames the body it actually sends.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

__all__ = [
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
_FORWARDED = frozenset({b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host"})


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
) -> RawHeaders:
    """Headers for the upstream request.

    ``X-Forwarded-For`` gets the client appended (as every proxy does). ``X-Forwarded-Proto``
    and ``-Host`` are passed on only from a trusted proxy, else replaced by what this server
    saw. ``host``: the Host to send (None: the client's, or ``default_host`` when it sent
    none). ``drop``: names (lower-case) to remove, e.g. a loop-guard header the client sent.
    """
    named = connection_tokens(raw)
    headers: RawHeaders = []
    forwarded_for: list[bytes] = []
    proto = forwarded_host = None
    client_host = None
    for name, value in raw:
        lowered = name.lower()
        if lowered in HOP_BY_HOP or lowered in _FRAMING or lowered in named or lowered in drop:
            continue
        if lowered == b"host":
            client_host = value
            continue
        if lowered in _FORWARDED:
            if lowered == b"x-forwarded-for":
                forwarded_for.append(value)
            elif trusted_peer and lowered == b"x-forwarded-proto":
                proto = value
            elif trusted_peer and lowered == b"x-forwarded-host":
                forwarded_host = value
            continue
        headers.append((name, value))
    if client is not None:
        forwarded_for.append(client)
    if forwarded_for:
        headers.append((b"x-forwarded-for", b", ".join(forwarded_for)))
    headers.append((b"x-forwarded-proto", proto or scheme))
    if forwarded_host or client_host:
        headers.append((b"x-forwarded-host", forwarded_host or client_host or b""))
    outgoing_host = host if host is not None else client_host
    headers.insert(0, (b"host", outgoing_host or default_host))
    headers.extend(extra)
    return headers


def response_headers(
    raw: Sequence[tuple[bytes, bytes]], *, drop: frozenset[bytes] = frozenset()
) -> tuple[RawHeaders, int | None]:
    """The upstream response's headers minus hop-by-hop ones and ``drop`` (lower-case), and
    its Content-Length when it gave exactly one valid value (None otherwise)."""
    named = connection_tokens(raw)
    kept: RawHeaders = []
    lengths = []
    for name, value in raw:
        lowered = name.lower()
        if lowered in HOP_BY_HOP or lowered in named or lowered in drop:
            continue
        if lowered == b"content-length":
            lengths.append(value)
        kept.append((name, value))
    length = int(lengths[0]) if len(lengths) == 1 and lengths[0].strip().isdigit() else None
    return kept, length
