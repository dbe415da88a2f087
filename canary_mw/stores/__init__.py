"""Rule stores: ``store_from_url`` (blocking) and ``async_store_from_url`` (asyncio).

>>> store = store_from_url("memory://")                  # embedded, one process
>>> store = store_from_url("redis://localhost:6379/0")    # shared by every instance
"""

from __future__ import annotations

import re
from typing import Any

from ..errors import ConfigurationError
from .blocking import Store
from .layout import Layout, StoreState
from .memory import AsyncMemoryExecutor, MemoryBackend, MemoryExecutor, backend_named
from .plans import AuditEntry, Change, StoredConfig
from .redis_async import AsyncRedisExecutor
from .redis_sync import RedisExecutor
from .store import DEFAULT_ACTOR, DEFAULT_LOOKUP_TIMEOUT, AsyncStore
from .urls import StoreURL, parse_store_url

__all__ = [
    "DEFAULT_ACTOR",
    "DEFAULT_LOOKUP_TIMEOUT",
    "DEFAULT_TIMEOUT",
    "AsyncStore",
    "AuditEntry",
    "Change",
    "Layout",
    "MemoryBackend",
    "Store",
    "StoreState",
    "StoredConfig",
    "async_store_from_url",
    "check_store_url",
    "store_from_url",
]

#: Timeout for background snapshot reads, writes and pub/sub, in seconds.
DEFAULT_TIMEOUT = 1.0


def _check_timeouts(lookup_timeout: float, timeout: float) -> None:
    for name, value in (("lookup_timeout", lookup_timeout), ("timeout", timeout)):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value <= 60:
            raise ConfigurationError(f"{name} is in seconds, 0 < {name} <= 60, got {value!r}")


def _prefix(parsed: Any, prefix: str | None) -> str:
    chosen: str = parsed.prefix if prefix is None else prefix
    if parsed.kind == "cluster" and not re.search(r"\{[^}]+\}", chosen):
        tagged = "{" + chosen.rstrip(":") + "}:"
        raise ConfigurationError(
            "in Redis Cluster the prefix needs a hash tag so that the config, the audit log "
            f"and the sets share a slot (changes are atomic): use {tagged!r}, not {chosen!r}"
        )
    return chosen


def check_store_url(
    url: str,
    *,
    prefix: str | None = None,
    lookup_timeout: float = DEFAULT_LOOKUP_TIMEOUT,
    timeout: float = DEFAULT_TIMEOUT,
) -> tuple[StoreURL, str]:
    """Validate a store URL and its options without building anything (ConfigurationError
    says what to fix): the URL parsed, and the key prefix it gives."""
    _check_timeouts(lookup_timeout, timeout)
    parsed = parse_store_url(url)
    return parsed, _prefix(parsed, prefix)


def store_from_url(
    url: str,
    *,
    prefix: str | None = None,
    lookup_timeout: float = DEFAULT_LOOKUP_TIMEOUT,
    timeout: float = DEFAULT_TIMEOUT,
) -> Store:
    """A blocking store for ``memory://[name]``, ``redis://``, ``rediss://``,
    ``redis+unix://``, ``redis+sentinel://`` or ``redis+cluster://`` URLs.

    Nothing connects here: clients are created on first use, in the process that uses them.
    ``memory://NAME`` stores with the same name share data within one process.
    """
    parsed, key_prefix = check_store_url(
        url, prefix=prefix, lookup_timeout=lookup_timeout, timeout=timeout
    )
    if parsed.kind == "memory":
        executor: Any = MemoryExecutor(backend_named(parsed.memory_name))
    else:
        executor = RedisExecutor(parsed.target, lookup_timeout=lookup_timeout, timeout=timeout)
    return Store(executor, prefix=key_prefix, url=url, lookup_timeout=lookup_timeout)


def async_store_from_url(
    url: str,
    *,
    prefix: str | None = None,
    lookup_timeout: float = DEFAULT_LOOKUP_TIMEOUT,
    timeout: float = DEFAULT_TIMEOUT,
) -> AsyncStore:
    """The asyncio twin of :func:`store_from_url`."""
    parsed, key_prefix = check_store_url(
        url, prefix=prefix, lookup_timeout=lookup_timeout, timeout=timeout
    )
    if parsed.kind == "memory":
        executor: Any = AsyncMemoryExecutor(backend_named(parsed.memory_name))
    else:
        executor = AsyncRedisExecutor(parsed.target, lookup_timeout=lookup_timeout, timeout=timeout)
    return AsyncStore(executor, prefix=key_prefix, url=url, lookup_timeout=lookup_timeout)
