"""Which pooled connections a forwarded request may use: only those of the same user.

The reuse rule (``http11.py``) closes a connection whenever a byte arrives that belongs to
no request. It cannot see bytes that arrive *after* the next request went out: a canary that
writes a response twice, the copy a few milliseconds late, has the copy read as the answer
to whatever request the connection carries next. No HTTP/1.1 client can tell those bytes
from a real answer (nginx's upstream keep-alive has the same blind spot). So idle
connections are kept per user: a late copy can only reach the user whose exchange it
belongs to, never another one.

A user is what the forwarded request says about who is asking: its credentials (``Cookie``,
``Authorization``, ``X-Api-Key``) and every client-address header that reaches the canary
(``X-Forwarded-For`` ending with our peer, and whichever of ``X-Real-IP``, ``Forwarded``,
``True-Client-IP``... a trusted proxy wrote: header hygiene has already removed the ones
nobody trusted). The key is a digest of those, so the pool does not keep the secrets
themselves. Requests that carry no credentials share one key per client address.

An application whose users are told apart by another header (``X-Session-Token``, say) names
it in the ``identity_headers`` option, and it counts too. Credentials in the query string
count the same way: the parameters in ``IDENTITY_QUERY`` (``access_token``, ``api_key``,
``token``...), and any the ``identity_query`` option adds. Reading them is one split of the
query per forwarded request that has one (linear in its length).

Transports read the key from ``request.extensions[PARTITION]``; a request without it (a
transport used directly) uses the shared key ``b""``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any
from urllib.parse import unquote_to_bytes

from .headers import CLIENT_ADDRESS_HEADERS

__all__ = ["IDENTITY_HEADERS", "IDENTITY_QUERY", "PARTITION", "partition_key"]

#: The httpx request extension holding the key.
PARTITION = "canary_mw.partition"
#: The headers that always say who is asking (lower-case); ``identity_headers`` adds to them.
IDENTITY_HEADERS = frozenset({b"cookie", b"authorization", b"x-api-key"}) | CLIENT_ADDRESS_HEADERS
#: Query parameters that carry a credential in the wild (lower-case); ``identity_query`` adds.
IDENTITY_QUERY = frozenset({
    b"access_token", b"api_key", b"apikey", b"auth", b"auth_token", b"jwt", b"key",
    b"session", b"session_id", b"sessionid", b"sid", b"signature", b"token",
})  # fmt: skip


def partition_key(
    headers: Iterable[tuple[bytes, bytes]],
    identity: frozenset[bytes] = IDENTITY_HEADERS,
    query: bytes = b"",
    query_identity: frozenset[bytes] = IDENTITY_QUERY,
) -> bytes:
    """A digest of the headers named in ``identity`` and of the query parameters named in
    ``query_identity`` (names percent-decoded and compared in lower case): who is asking."""
    digest = hashlib.blake2b(digest_size=16)
    for name, value in headers:
        lowered = name.lower()
        if lowered in identity:
            # Name and length first: no two different header lists hash the same bytes.
            digest.update(b"%s:%d:" % (lowered, len(value)))
            digest.update(value)
    if query and query_identity and _may_name(query, query_identity):
        for part in query.split(b"&"):
            _hash_parameter(digest, b"?", part, query_identity)
            if b";" in part:
                # Some canaries (Rack 2, Go before 1.17) also split at ";": hash what they
                # would read too. Both readings count, so neither can merge two users.
                for piece in part.split(b";"):
                    _hash_parameter(digest, b";", piece, query_identity)
    return digest.digest()


def _may_name(query: bytes, names: frozenset[bytes]) -> bool:
    """Whether the query can hold one of ``names``: a quick look in C before the split."""
    if b"%" in query:
        return True  # a name may be percent-encoded ("%74oken" is "token" to the canary)
    lowered = query.lower()
    return any(name in lowered for name in names)


def _hash_parameter(digest: Any, reading: bytes, part: bytes, names: frozenset[bytes]) -> None:
    """Hash ``name=value`` when the name (percent-decoded, lower case) is in ``names``.
    ``reading`` (``?`` for "&"-separated, ``;`` for ";") starts no header name (a token),
    so a parameter never hashes as a header, nor one reading as the other."""
    name, _, value = part.partition(b"=")
    if b"%" in name:
        name = unquote_to_bytes(name)  # "%74oken" is "token" to the canary
    name = name.lower()
    if name in names:
        digest.update(b"%s%s:%d:" % (reading, name, len(value)))
        digest.update(value)
