"""The sticky-percentage hash: which of 10,000 buckets a user falls into.

``bucket(salt, key)`` is the first 8 bytes of BLAKE2b over ``salt + b"\\0" + key`` (UTF-8),
read big-endian, modulo 10,000. It is stable across processes, machines and Python versions
(unlike the built-in ``hash()``, which is salted per process), and reproducible in any language
with BLAKE2b. A rule at ``p`` percent admits the buckets below ``round(p * 100)``, so raising
``p`` only adds buckets: nobody who was in is ever moved out.
"""

from __future__ import annotations

from hashlib import blake2b

__all__ = ["BUCKETS", "bucket", "threshold"]

BUCKETS = 10_000


def bucket(salt: str, key: str) -> int:
    """The bucket (0..9999) of ``key`` under ``salt``."""
    digest = blake2b(salt.encode() + b"\0" + key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % BUCKETS


def threshold(percent: float) -> int:
    """Number of admitted buckets for a percentage (0-100, resolution 0.01)."""
    return round(percent * 100)
