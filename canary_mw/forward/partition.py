"""Which pooled connections a forwarded request may use: only those of the same user.

The reuse rule (``http11.py``) closes a connection whenever a byte arrives that belongs to
no request. It cannot see bytes that arrive *after* the next request went out: a canary that
writes a response twice, the copy a few milliseconds late, has the copy read as the answer
to whatever request the connection carries next. No HTTP/1.1 client can tell those bytes
from a real answer (nginx's upstream keep-alive has the same blind spot). So idle
connections are kept per user: a late copy can only reach the user whose exchange it
belongs to, never another one.

A user is what the request says about who is asking: its ``Cookie`` and ``Authorization``
headers and the client chain in ``X-Forwarded-For`` (the peer, after the chain of trusted
proxies; untrusted peers' own values are removed before this runs). The key is a digest of
those, so the pool does not keep the secrets themselves. Requests that carry none of them
share one key (anonymous traffic from one address).

Transports read the key from ``request.extensions[PARTITION]``; a request without it (a
transport used directly) uses the shared key ``b""``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

__all__ = ["PARTITION", "partition_key"]

#: The httpx request extension holding the key.
PARTITION = "canary_mw.partition"
_IDENTITY = frozenset({b"cookie", b"authorization", b"x-forwarded-for"})


def partition_key(headers: Iterable[tuple[bytes, bytes]]) -> bytes:
    """A digest of the headers that say who is asking (see the module docstring)."""
    digest = hashlib.blake2b(digest_size=16)
    for name, value in headers:
        lowered = name.lower()
        if lowered in _IDENTITY:
            # Name and length first: no two different header lists hash the same bytes.
            digest.update(b"%s:%d:" % (lowered, len(value)))
            digest.update(value)
    return digest.digest()
