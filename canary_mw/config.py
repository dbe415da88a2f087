"""CanaryConfig: every router option, declared once and validated once; and ``compose``,
which builds a router's parts (store, engine, forwarder, health) from it.

CanaryRouter and CanaryWSGI take their keyword arguments whole into a CanaryConfig (or a
CanaryConfig itself as ``config=``), so an option is added here and nowhere else.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Literal

import httpx

from .clientip import DEFAULT_CLIENT_IP_HEADERS, ClientIPResolver
from .decide import Overrides
from .engine import AsyncEngine, Engine, EngineSettings
from .errors import ConfigurationError
from .forward.asgi_http import AsyncHTTPForwarder
from .forward.client import (
    DEFAULT_LIMITS,
    DEFAULT_TIMEOUT,
    checked_body_limit,
    checked_limits,
    checked_timeout,
)
from .forward.common import ForwardPolicy
from .forward.headers import HOP_BY_HOP
from .forward.partition import IDENTITY_HEADERS, IDENTITY_QUERY
from .forward.wsgi_http import SyncHTTPForwarder
from .health import AsyncChecker, BackendHealth, BlockingChecker, HealthCheck
from .ipmatch import parse_ip
from .metrics import Metrics, default_metrics
from .parts import RouterParts
from .rollout.controller import RolloutAgent
from .rollout.runner import AsyncRolloutRunner, Background, ThreadRolloutRunner
from .rules import DEFAULT_RULES, RuleSet, parse_rules
from .stickycookie import DEFAULT_MAX_AGE, StickyCookie
from .stores import (
    DEFAULT_LOOKUP_TIMEOUT,
    AsyncStore,
    Store,
    async_store_from_url,
    check_store_url,
    store_from_url,
)
from .targets import Targets
from .upstreams import Upstream, parse_upstreams

__all__ = ["ASYNC", "BLOCKING", "CONFIG_OPTIONS", "CanaryConfig", "Side", "compose"]

logger = logging.getLogger("canary_mw")

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 field-name


def _header_name(option: str, value: object) -> bytes:
    if not isinstance(value, str) or not _TOKEN.fullmatch(value):
        raise ConfigurationError(
            f"{option} must be a header name such as 'X-Canary-Version', got {value!r}"
        )
    return value.lower().encode("ascii")


#: Names a header of ours may not have: hop-by-hop ones (RFC 9110 §7.6.1; wsgiref's list
#: adds "Trailers") are dropped by every proxy on the way, and the framing ones and Host
#: describe the message itself.
_NOT_OURS = HOP_BY_HOP | {b"trailers", b"content-length", b"host"}


def _own_header(option: str, value: object) -> bytes:
    """A header the routers write (the tag, the loop guard): a token, and not one that a
    proxy drops or that frames the message."""
    name = _header_name(option, value)
    if name in _NOT_OURS:
        raise ConfigurationError(
            f"{option} {value!r} is a hop-by-hop or framing header, which proxies drop or "
            f"rewrite: choose another name, such as 'X-Canary-Version'"
        )
    return name


def _name_list(option: str, names: object, what: str) -> Sequence[Any]:
    if isinstance(names, (str, bytes)) or not isinstance(names, Sequence):
        raise ConfigurationError(f"{option} must be a list of {what}, got {names!r}")
    return names


@dataclass(frozen=True, kw_only=True)
class CanaryConfig:
    """Every option of CanaryRouter and CanaryWSGI (docs/configuration.md), validated when
    it is made: a ``ConfigurationError`` says what to fix. Nothing here does I/O.

    >>> config = CanaryConfig(store="redis://localhost:6379/0", canary_url="http://canary:8000")
    >>> app.add_middleware(CanaryRouter, config=config)         # ASGI
    >>> flask_app.wsgi_app = CanaryWSGI(flask_app.wsgi_app, config=config)  # WSGI

    The routers' keyword arguments are these fields: ``CanaryRouter(app, canary_url=...)``
    is ``CanaryRouter(app, config=CanaryConfig(canary_url=...))``.
    """

    store: str | AsyncStore | Store = "memory://"
    canary_url: str | None = None
    upstreams: Mapping[str, str] | None = None
    trusted_proxies: Sequence[str] = ()
    client_ip_headers: Sequence[str] = DEFAULT_CLIENT_IP_HEADERS
    #: Headers that tell users apart besides Cookie, Authorization and X-Api-Key (pooled
    #: canary connections are kept per user: docs/security.md).
    identity_headers: Sequence[str] = ()
    #: Query parameters that do the same, besides access_token, api_key, token... (IDENTITY_QUERY).
    identity_query: Sequence[str] = ()
    force_header: str | None = None
    force_cookie: str | None = None
    #: A cookie that keeps each user where a sticky percentage placed them, signed with
    #: ``sticky_secret`` (docs/rollouts.md#sticky-assignment); None: off.
    sticky_cookie: str | None = None
    sticky_secret: str | bytes | None = field(default=None, repr=False)
    sticky_max_age: int = DEFAULT_MAX_AGE
    default_rules: RuleSet | Mapping[str, Any] | Sequence[Any] | str = DEFAULT_RULES
    tag_header: str | None = "X-Canary-Version"
    fallback: bool = False
    preserve_host: bool = True
    # httpx's Timeout and Limits have no hash, so dataclasses take them for mutable defaults;
    # neither is ever changed, so the one shared default is handed out.
    timeout: float | httpx.Timeout | Mapping[str, float | None] = field(
        default_factory=lambda: DEFAULT_TIMEOUT
    )
    limits: httpx.Limits = field(default_factory=lambda: DEFAULT_LIMITS)
    max_body_size: int | None = None
    transport: httpx.AsyncBaseTransport | httpx.BaseTransport | None = None
    loop_header: str = "X-Canary-Forwarded"
    #: Only with a store URL (a store object has its own); None: DEFAULT_LOOKUP_TIMEOUT.
    lookup_timeout: float | None = None
    health: HealthCheck | None = None
    metrics: bool | Metrics = True
    #: Take part in rollouts (docs/rollouts.md): fold telemetry and drive them under a lease;
    #: "telemetry": fold only (the controller runs elsewhere, e.g. `canary-mw rollout run`).
    rollouts: bool | Literal["telemetry"] = True
    engine_options: EngineSettings | Mapping[str, Any] | None = None

    # What the parts are built from, computed once from the options above (not options).
    parsed_upstreams: dict[str, Upstream] = field(init=False, repr=False, compare=False)
    resolver: ClientIPResolver = field(init=False, repr=False, compare=False)
    overrides: Overrides = field(init=False, repr=False, compare=False)
    rules: RuleSet = field(init=False, repr=False, compare=False)
    tag: bytes | None = field(init=False, repr=False, compare=False)
    loop: bytes = field(init=False, repr=False, compare=False)
    identity: frozenset[bytes] = field(init=False, repr=False, compare=False)
    query_identity: frozenset[bytes] = field(init=False, repr=False, compare=False)
    http_timeout: httpx.Timeout = field(init=False, repr=False, compare=False)
    engine_settings: EngineSettings = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        derived: dict[str, Any] = {
            "parsed_upstreams": self._upstreams(),
            "resolver": ClientIPResolver(self.trusted_proxies, headers=self.client_ip_headers),
            "overrides": Overrides(
                header=self.force_header, cookie=self.force_cookie, sticky=self._sticky()
            ),
            "rules": self._rules(),
            "tag": None if self.tag_header is None else _own_header("tag_header", self.tag_header),
            "loop": _own_header("loop_header", self.loop_header),
            "identity": self._identity(),
            "query_identity": self._query_identity(),
            "http_timeout": checked_timeout(self.timeout),
            "engine_settings": EngineSettings.coerce(self.engine_options),
        }
        checked_limits(self.limits)
        checked_body_limit(self.max_body_size)
        self._check_store()
        self._check_kinds()
        for name, value in derived.items():
            object.__setattr__(self, name, value)  # frozen: set once, here

    def _sticky(self) -> StickyCookie | None:
        if self.sticky_cookie is None:
            if self.sticky_secret is not None:
                raise ConfigurationError(
                    "sticky_secret is set but sticky_cookie is not: name the cookie, e.g. "
                    "sticky_cookie='canary_mw_version', or drop sticky_secret"
                )
            return None
        return StickyCookie(self.sticky_cookie, self.sticky_secret or b"", self.sticky_max_age)

    def _identity(self) -> frozenset[bytes]:
        names = _name_list(
            "identity_headers", self.identity_headers, "header names such as ['X-Session-Token']"
        )
        return IDENTITY_HEADERS | {_header_name("identity_headers", name) for name in names}

    def _query_identity(self) -> frozenset[bytes]:
        names = _name_list(
            "identity_query", self.identity_query, "query parameter names such as ['ticket']"
        )
        for name in names:
            if not isinstance(name, str) or not name or any(c in name for c in "&=#? "):
                raise ConfigurationError(
                    f"identity_query must name query parameters such as 'ticket', got {name!r}"
                )
        # UTF-8, as a query's percent-encoded name reads once decoded (partition.py).
        return IDENTITY_QUERY | {name.lower().encode("utf-8") for name in names}

    def _upstreams(self) -> dict[str, Upstream]:
        parsed = parse_upstreams(self.canary_url, self.upstreams)
        if not parsed:
            raise ConfigurationError(
                "no upstream to send canary traffic to: pass canary_url='http://canary:8000' "
                "or upstreams={'canary': ..., 'v3': ...}"
            )
        return parsed

    def _rules(self) -> RuleSet:
        rules = self.default_rules
        if isinstance(rules, RuleSet):
            return rules
        return parse_rules(rules if not isinstance(rules, Mapping) else json.dumps(rules))

    def _check_store(self) -> None:
        if isinstance(self.store, str):
            check_store_url(self.store, lookup_timeout=self.store_lookup_timeout)
        elif not isinstance(self.store, (AsyncStore, Store)):
            raise ConfigurationError(
                "store must be a URL ('memory://', 'redis://host:6379/0', ...) or a store "
                f"from async_store_from_url() / store_from_url(); got {self.store!r}"
            )
        elif self.lookup_timeout is not None:
            raise ConfigurationError(
                "lookup_timeout is a setting of the store, and this store object already has "
                "its own: pass it where the store is made, e.g. "
                "async_store_from_url(url, lookup_timeout=0.05), or pass store as a URL"
            )

    def _check_kinds(self) -> None:
        if self.health is not None and not isinstance(self.health, HealthCheck):
            raise ConfigurationError("health must be a HealthCheck(path=..., interval=...) or None")
        if self.rollouts not in (True, False, "telemetry"):
            raise ConfigurationError(
                f"rollouts must be True, False or 'telemetry', got {self.rollouts!r}"
            )
        if self.rollouts == "telemetry" and self.metrics is False:
            raise ConfigurationError(
                "rollouts='telemetry' folds the router's metrics, and metrics=False turns them "
                "off: keep metrics on, or pass rollouts=False"
            )
        for name in ("fallback", "preserve_host"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigurationError(
                    f"{name} must be True or False, got {getattr(self, name)!r}"
                )
        if not isinstance(self.metrics, (bool, Metrics)):
            raise ConfigurationError("metrics must be True, False or a Metrics()")
        if self.transport is not None and not isinstance(
            self.transport, (httpx.AsyncBaseTransport, httpx.BaseTransport)
        ):
            raise ConfigurationError(
                "transport must be an httpx.AsyncBaseTransport (CanaryRouter) or an "
                f"httpx.BaseTransport (CanaryWSGI); got {self.transport!r}"
            )

    @classmethod
    def from_options(cls, config: CanaryConfig | None, options: Mapping[str, Any]) -> CanaryConfig:
        """What a router was given: ``config=`` or keyword options (not both)."""
        if config is not None:
            if options:
                raise ConfigurationError(
                    f"pass config=CanaryConfig(...) or keyword options, not both: {sorted(options)}"
                )
            if not isinstance(config, CanaryConfig):
                raise ConfigurationError(f"config must be a CanaryConfig(...), got {config!r}")
            return config
        unknown = sorted(set(options) - CONFIG_OPTIONS)
        if unknown:
            raise ConfigurationError(
                f"unknown option(s) {unknown}; the options are {sorted(CONFIG_OPTIONS)} "
                "(docs/configuration.md)"
            )
        return cls(**options)

    @property
    def response_drop(self) -> frozenset[bytes]:
        """Upstream response headers never passed on: an upstream's own tag, and the ones the
        server in front adds itself (uvicorn, hypercorn and gunicorn always write ``Date`` and
        ``Server``; passing the canary's on would send each twice). nginx drops the same two."""
        tag = {self.tag} if self.tag else set()
        return frozenset({*tag, b"date", b"server"})

    @property
    def store_lookup_timeout(self) -> float:
        """The lookup budget a store built from the URL gets."""
        return DEFAULT_LOOKUP_TIMEOUT if self.lookup_timeout is None else self.lookup_timeout

    @property
    def loop_guard(self) -> tuple[bytes, bytes]:
        """The header a forwarded request carries, so that a router behind us serves it."""
        return (self.loop, b"1")

    def is_trusted_peer(self, peer: str | None) -> bool:
        if not self.resolver.trusts_any_proxy:
            return False  # the usual case: no address to parse per forwarded request
        address = parse_ip(peer) if peer else None
        return address is not None and self.resolver.is_trusted(address)

    @property
    def address_headers(self) -> frozenset[bytes]:
        """The client-address headers a trusted proxy writes: only these are passed on."""
        return frozenset(name.lower().encode("latin-1") for name in self.client_ip_headers)

    def forward_policy(self) -> ForwardPolicy:
        return ForwardPolicy(
            preserve_host=self.preserve_host,
            is_trusted_peer=self.is_trusted_peer,
            request_extra=[self.loop_guard],
            request_drop=frozenset({self.loop}),
            response_drop=self.response_drop,
            timeout=self.http_timeout,
            limits=self.limits,
            max_body_size=self.max_body_size,
            address_headers=self.address_headers,
            identity_headers=self.identity,
            identity_query=self.query_identity,
        )


#: The option names (what the routers' keyword arguments may be).
CONFIG_OPTIONS = frozenset(f.name for f in fields(CanaryConfig) if f.init)


@dataclass(frozen=True)
class Side:
    """What differs between the asyncio parts (CanaryRouter) and the blocking ones
    (CanaryWSGI): only which classes are built."""

    router: str
    store_kind: type[AsyncStore] | type[Store]
    store_from_url: Callable[..., AsyncStore | Store]
    transport_kind: type[httpx.AsyncBaseTransport] | type[httpx.BaseTransport]
    engine_kind: Callable[..., AsyncEngine | Engine]
    forwarder_kind: Callable[..., AsyncHTTPForwarder | SyncHTTPForwarder]
    checker_kind: Callable[..., AsyncChecker | BlockingChecker]


ASYNC = Side(
    "CanaryRouter", AsyncStore, async_store_from_url, httpx.AsyncBaseTransport,
    AsyncEngine, AsyncHTTPForwarder, AsyncChecker,
)  # fmt: skip
BLOCKING = Side(
    "CanaryWSGI", Store, store_from_url, httpx.BaseTransport,
    Engine, SyncHTTPForwarder, BlockingChecker,
)  # fmt: skip


def _store(config: CanaryConfig, side: Side) -> tuple[Any, bool]:
    """The side's store and whether the router owns it (and must close it)."""
    store = config.store
    if isinstance(store, str):
        return side.store_from_url(store, lookup_timeout=config.store_lookup_timeout), True
    if isinstance(store, side.store_kind):
        return store, False
    function = "store_from_url" if side.store_kind is Store else "async_store_from_url"
    raise ConfigurationError(
        f"store must be a URL ('memory://', 'redis://host:6379/0', ...) or a "
        f"{side.store_kind.__name__} from {function}() for {side.router}; got {store!r}"
    )


def compose(config: CanaryConfig, side: Side) -> RouterParts:
    """A router's parts, built from ``config``: store, engine, metrics, health and the
    forwarder (which owns its transport and reports to the parts). No I/O: connections,
    threads and tasks start on first use."""
    if config.transport is not None and not isinstance(config.transport, side.transport_kind):
        raise ConfigurationError(
            f"transport must be an httpx.{side.transport_kind.__name__} for {side.router}"
        )
    store, owns_store = _store(config, side)
    engine = side.engine_kind(
        store,
        overrides=config.overrides,
        default_rules=config.rules,
        settings=config.engine_settings,
    )
    metrics = config.metrics if isinstance(config.metrics, Metrics) else None
    if config.metrics is True:
        metrics = default_metrics()
    if metrics is not None:
        metrics.watch(engine)
    health = None if config.health is None else BackendHealth(config.health)
    parts = RouterParts(
        check=config.health,
        store=store,
        owns_store=owns_store,
        engine=engine,
        metrics=metrics,
        targets=Targets(config.parsed_upstreams, config.tag),
        health=health,
    )
    parts.forwarder = side.forwarder_kind(config.forward_policy(), parts, config.transport)
    if health is not None:
        parts.checker = side.checker_kind(
            health, parts.backends, parts.share_health, headers=[config.loop_guard],
            after_round=parts.after_round,
        )  # fmt: skip
    if config.rollouts and metrics is None:
        logger.warning(
            "canary_mw: %s(metrics=False) takes no part in rollouts (no telemetry, never drives "
            "one); pass rollouts=False to say so, or keep metrics on",
            side.router,
        )
    if config.rollouts and metrics is not None:
        # Telemetry comes from the metrics the router keeps: without them, no rollout agent.
        agent = RolloutAgent(store.layout, metrics=metrics, drive=config.rollouts is True)
        runner_kind = AsyncRolloutRunner if side is ASYNC else ThreadRolloutRunner
        runner = runner_kind(store, agent)
        parts.checker = runner if parts.checker is None else Background(parts.checker, runner)
    return parts
