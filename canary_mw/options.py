"""Options shared by CanaryRouter (ASGI) and CanaryWSGI: parsed and validated once."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from .clientip import DEFAULT_CLIENT_IP_HEADERS, ClientIPResolver
from .decide import Overrides
from .errors import ConfigurationError
from .health import HealthCheck
from .ipmatch import parse_ip
from .metrics import Metrics, default_metrics
from .rules import RuleSet, parse_rules
from .upstreams import Upstream, parse_upstreams

__all__ = ["ENGINE_OPTIONS", "RouterOptions", "engine_for", "metrics_for", "store_for"]

#: Engine settings that engine_options may change (docs/configuration.md, engine options).
ENGINE_OPTIONS = frozenset(
    {"poll_interval", "cache_ttl", "cache_stale", "cache_size", "breaker_threshold",
     "breaker_reset", "first_load_wait"}
)  # fmt: skip


_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 field-name


def _header_name(option: str, value: object) -> bytes:
    if not isinstance(value, str) or not _TOKEN.fullmatch(value):
        raise ConfigurationError(
            f"{option} must be a header name such as 'X-Canary-Version', got {value!r}"
        )
    return value.lower().encode("ascii")


@dataclass(frozen=True)
class RouterOptions:
    """Everything about a router except its I/O, validated at construction."""

    upstreams: dict[str, Upstream]
    resolver: ClientIPResolver
    overrides: Overrides
    default_rules: RuleSet
    tag_header: bytes | None
    loop_header: bytes
    fallback: bool
    preserve_host: bool
    health: HealthCheck | None = None

    @property
    def response_drop(self) -> frozenset[bytes]:
        """Upstream response headers never passed on: an upstream's own tag, and the ones the
        server in front adds itself (uvicorn, hypercorn and gunicorn always write ``Date`` and
        ``Server``; passing the canary's on would send each twice). nginx drops the same two."""
        tag = {self.tag_header} if self.tag_header else set()
        return frozenset({*tag, b"date", b"server"})

    @classmethod
    def build(
        cls,
        *,
        canary_url: str | None,
        upstreams: Mapping[str, str] | None,
        trusted_proxies: Sequence[str],
        client_ip_headers: Sequence[str] = DEFAULT_CLIENT_IP_HEADERS,
        force_header: str | None,
        force_cookie: str | None,
        default_rules: RuleSet | Mapping[str, Any] | Sequence[Any] | str,
        tag_header: str | None,
        loop_header: str,
        fallback: bool,
        preserve_host: bool,
        health: HealthCheck | None = None,
    ) -> RouterOptions:
        parsed = parse_upstreams(canary_url, upstreams)
        if not parsed:
            raise ConfigurationError(
                "no upstream to send canary traffic to: pass canary_url='http://canary:8000' "
                "or upstreams={'canary': ..., 'v3': ...}"
            )
        if not isinstance(default_rules, RuleSet):
            default_rules = parse_rules(
                default_rules
                if not isinstance(default_rules, Mapping)
                else json.dumps(default_rules)
            )
        if health is not None and not isinstance(health, HealthCheck):
            raise ConfigurationError("health must be a HealthCheck(path=..., interval=...) or None")
        for name, value in (("fallback", fallback), ("preserve_host", preserve_host)):
            if not isinstance(value, bool):
                raise ConfigurationError(f"{name} must be True or False, got {value!r}")
        return cls(
            upstreams=parsed,
            resolver=ClientIPResolver(trusted_proxies, headers=client_ip_headers),
            overrides=Overrides(header=force_header, cookie=force_cookie),
            default_rules=default_rules,
            tag_header=None if tag_header is None else _header_name("tag_header", tag_header),
            loop_header=_header_name("loop_header", loop_header),
            fallback=fallback,
            preserve_host=preserve_host,
            health=health,
        )

    def is_trusted_peer(self, peer: str | None) -> bool:
        address = parse_ip(peer) if peer else None
        return address is not None and self.resolver.is_trusted(address)


StoreT = TypeVar("StoreT")
EngineT = TypeVar("EngineT")


def store_for(
    store: object, kind: type[StoreT], from_url: Callable[[str], StoreT]
) -> tuple[StoreT, bool]:
    """The router's store and whether the router owns it (and must close it)."""
    if isinstance(store, str):
        return from_url(store), True
    if isinstance(store, kind):
        return store, False
    function = "store_from_url" if kind.__name__ == "Store" else "async_store_from_url"
    raise ConfigurationError(
        "store must be a URL ('memory://', 'redis://host:6379/0', ...) or a "
        f"{kind.__name__} from {function}(); got {store!r}"
    )


def engine_for(
    kind: Callable[..., EngineT],
    store: object,
    options: RouterOptions,
    engine_options: Mapping[str, Any] | None,
) -> EngineT:
    extra = dict(engine_options or {})
    unknown = sorted(set(extra) - ENGINE_OPTIONS)
    if unknown:
        raise ConfigurationError(
            f"unknown engine_options {unknown}; choose from {sorted(ENGINE_OPTIONS)}"
        )
    return kind(store, overrides=options.overrides, default_rules=options.default_rules, **extra)


def metrics_for(metrics: bool | Metrics) -> Metrics | None:
    if isinstance(metrics, Metrics):
        return metrics
    if not isinstance(metrics, bool):
        raise ConfigurationError("metrics must be True, False or a Metrics()")
    return default_metrics() if metrics else None
