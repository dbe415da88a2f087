"""The transports a router forwards through, and the checks of its client options.

The routers send requests straight to a transport: there is no httpx Client, hence no
cookie jar that could carry one user's cookies to another user's request (the pitfall of
fastapi-proxy-lib, GHSA-7vwr-g6pm-9hc8), no environment proxies, no redirects followed.
"""

from __future__ import annotations

import httpx

from ..errors import ConfigurationError

__all__ = [
    "DEFAULT_LIMITS",
    "DEFAULT_TIMEOUT",
    "checked_limits",
    "checked_timeout",
    "make_async_transport",
    "make_sync_transport",
]

#: connect 2 s (an unreachable canary fails fast), read/write 30 s between two chunks,
#: 1 s to get a pooled connection (then 503 rather than a queue that grows without bound).
DEFAULT_TIMEOUT = httpx.Timeout(connect=2.0, read=30.0, write=30.0, pool=1.0)
#: Every connection may stay open between requests: a router forwards many requests at once
#: to one origin, and with fewer kept alive than in use (httpx's default keeps 20) each burst
#: above that opens and closes connections (a third less throughput at 50 concurrent).
DEFAULT_LIMITS = httpx.Limits(
    max_connections=100, max_keepalive_connections=100, keepalive_expiry=5
)


def checked_timeout(timeout: object) -> httpx.Timeout:
    if isinstance(timeout, (int, float)) and not isinstance(timeout, bool) and timeout > 0:
        return httpx.Timeout(timeout)
    if isinstance(timeout, dict):  # e.g. from a JSON or TOML configuration file
        try:
            return httpx.Timeout(**{"timeout": None, **timeout})
        except TypeError as exc:
            raise ConfigurationError(
                f"timeout keys are connect, read, write and pool (seconds): {exc}"
            ) from None
    if not isinstance(timeout, httpx.Timeout):
        raise ConfigurationError(
            "timeout must be a number of seconds or an httpx.Timeout, e.g. "
            f"httpx.Timeout(connect=2, read=30, write=30, pool=1); got {timeout!r}"
        )
    return timeout


def checked_limits(limits: object) -> httpx.Limits:
    if not isinstance(limits, httpx.Limits):
        raise ConfigurationError(
            "limits must be an httpx.Limits, e.g. httpx.Limits(max_connections=100); "
            f"got {limits!r}"
        )
    return limits


def checked_body_limit(size: object) -> int | None:
    """None (no limit) or a positive number of bytes."""
    if size is None:
        return None
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
        raise ConfigurationError(
            "max_body_size must be None (no limit) or a positive number of bytes, "
            f"e.g. 10 * 1024 * 1024; got {size!r}"
        )
    return size


def make_async_transport(limits: httpx.Limits) -> httpx.AsyncBaseTransport:
    """The default transport for forwarding: ours (see pool.py, bench/ and docs/forwarding.md)."""
    from .pool import HTTP11Transport  # noqa: PLC0415 - imports httptools only when used

    return HTTP11Transport(limits)


def make_sync_transport(limits: httpx.Limits) -> httpx.BaseTransport:
    """The default blocking transport (CanaryWSGI): ours, over the same HTTP/1.1 core as the
    async one. httpx's ``HTTPTransport`` read bytes left after a response as the next
    response (see sync_pool.py); it can still be passed as ``CanaryWSGI(transport=...)``."""
    from .sync_pool import HTTP11SyncTransport  # noqa: PLC0415 - imports httptools only when used

    return HTTP11SyncTransport(limits)
