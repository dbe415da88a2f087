"""The sticky-percentage hash: which of 10,000 buckets a user falls into.

``bucket(salt, key)`` is the first 8 bytes of SHA-256 over ``salt + b"\\0" + key`` (both
UTF-8), read as a big-endian unsigned integer, modulo 10,000. SHA-256 is in the standard
library of every mainstream language (Java's MessageDigest, Go's crypto/sha256, .NET, Node's
crypto, PHP's hash(), SQL engines), so another service, a front end or a data job can put a
user in the same bucket as the routers do; docs/rules.md publishes test vectors. The value is
stable across processes, machines and Python versions (unlike the built-in ``hash()``, which
is salted per process). A rule at ``p`` percent admits the buckets below ``round(p * 100)``,
so raising ``p`` only adds buckets: nobody who was in is ever moved out.
"""

from __future__ import annotations

from hashlib import sha256

__all__ = ["BUCKETS", "bucket", "threshold"]

BUCKETS = 10_000


def bucket(salt: str, key: str) -> int:
    """The bucket (0..9999) of ``key`` under ``salt``."""
    digest = sha256(salt.encode() + b"\0" + key.encode()).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


def threshold(percent: float) -> int:
    """Number of admitted buckets for a percentage (0-100, resolution 0.01)."""
    return round(percent * 100)
