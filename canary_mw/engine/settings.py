"""EngineSettings: an engine's tuning, typed and validated once.

The routers take it as ``engine_options`` (an ``EngineSettings`` or a dict of its fields, e.g.
from a configuration file); ``Engine`` / ``AsyncEngine`` take it as ``settings=`` or as keyword
arguments. The names are the dataclass's fields: nothing else lists them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from ..errors import ConfigurationError

__all__ = ["ENGINE_OPTIONS", "EngineSettings"]


def _seconds(name: str, value: object, *, allow_zero: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigurationError(f"{name} must be a number of seconds, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigurationError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value}")


def _whole(name: str, value: object, least: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ConfigurationError(f"{name} must be an integer >= {least}, got {value!r}")


@dataclass(frozen=True, kw_only=True)
class EngineSettings:
    """How an engine keeps its snapshot and membership answers current (docs/configuration.md,
    Engine options).

    >>> CanaryRouter(app, canary_url="http://canary:8000",
    ...              engine_options=EngineSettings(poll_interval=1.0))
    """

    #: Seconds between background reads of the store.
    poll_interval: float = 0.5
    #: Seconds a set-membership answer is reused as it is.
    cache_ttl: float = 0.5
    #: Seconds more it is still used while it is read again in the background.
    cache_stale: float = 0.4
    #: Most membership answers kept.
    cache_size: int = 100_000
    #: Consecutive lookup failures that open the circuit breaker.
    breaker_threshold: int = 3
    #: Seconds between trial lookups while the breaker is open.
    breaker_reset: float = 1.0
    #: How long the first request in a process waits for the first store read.
    first_load_wait: float = 0.2

    def __post_init__(self) -> None:
        _seconds("poll_interval", self.poll_interval)
        _seconds("cache_ttl", self.cache_ttl, allow_zero=True)
        _seconds("cache_stale", self.cache_stale, allow_zero=True)
        _whole("cache_size", self.cache_size, 0)
        _whole("breaker_threshold", self.breaker_threshold, 1)
        _seconds("breaker_reset", self.breaker_reset)
        _seconds("first_load_wait", self.first_load_wait, allow_zero=True)

    @classmethod
    def coerce(cls, value: object, *, option: str = "engine_options") -> EngineSettings:
        """``value`` as settings: settings as they are, a mapping of field names (None: the
        defaults)."""
        if isinstance(value, EngineSettings):
            return value
        if value is None:
            return cls()
        if not isinstance(value, Mapping):
            raise ConfigurationError(
                f"{option} must be an EngineSettings(...) or a dict of its fields, got {value!r}"
            )
        unknown = sorted(set(value) - ENGINE_OPTIONS)
        if unknown:
            raise ConfigurationError(
                f"unknown {option} {unknown}; choose from {sorted(ENGINE_OPTIONS)}"
            )
        options: dict[str, Any] = dict(value)
        return cls(**options)


#: The names EngineSettings has (what ``engine_options`` may set).
ENGINE_OPTIONS = frozenset(field.name for field in fields(EngineSettings))
