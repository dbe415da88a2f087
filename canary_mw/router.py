"""What CanaryRouter (ASGI) and CanaryWSGI share: configuration, bookkeeping, reporting."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from collections.abc import Set as AbstractSet
from typing import Any

import httpx

from .decision import Decision
from .errors import ConfigurationError
from .facts import RequestFacts
from .forward.client import checked_body_limit, checked_limits, checked_timeout
from .health import BackendHealth, Backends
from .metrics import Metrics
from .options import RouterOptions, engine_for, metrics_for, store_for
from .snapshot import Snapshot
from .targets import Targets
from .upstreams import Upstream

__all__ = ["RouterBase", "decision_log"]

decision_log = logging.getLogger("canary_mw.decision")


class RouterBase:
    """Validated configuration and the per-request bookkeeping of a router."""

    store: Any
    engine: Any

    def _configure(
        self,
        *,
        store: object,
        store_kind: type,
        store_from_url: Callable[[str], Any],
        engine_kind: Callable[..., Any],
        transport: object,
        transport_kind: type,
        timeout: object,
        limits: object,
        max_body_size: object,
        metrics: bool | Metrics,
        engine_options: Mapping[str, Any] | None,
        **options: Any,
    ) -> None:
        """Validate every option and build the router's parts; raises ConfigurationError.
        Nothing here does I/O: connections and threads start on first use."""
        self.options = RouterOptions.build(**options)
        self._timeout = checked_timeout(timeout)
        self._limits = checked_limits(limits)
        self._max_body_size = checked_body_limit(max_body_size)
        if transport is not None and not isinstance(transport, transport_kind):
            raise ConfigurationError(f"transport must be an httpx.{transport_kind.__name__}")
        self._transport: Any = transport
        self.store, self._owns_store = store_for(store, store_kind, store_from_url)
        self.engine = engine_for(engine_kind, self.store, self.options, engine_options)
        self.metrics = metrics_for(metrics)
        if self.metrics is not None:
            self.metrics.watch(self.engine)
        self.targets = Targets(self.options.upstreams, self.options.tag_header)
        self.health = BackendHealth(self.options.health) if self.options.health else None
        self._loop_guard = (self.options.loop_header, b"1")

    def _forwarding_policy(self) -> dict[str, Any]:
        """Keyword arguments for the forwarder (see forward.common.ForwarderBase)."""
        return {
            "preserve_host": self.options.preserve_host,
            "is_trusted_peer": self.options.is_trusted_peer,
            "request_extra": [self._loop_guard],
            "request_drop": frozenset({self.options.loop_header}),
            "response_drop": self.options.response_drop,
            "report": self._upstream_report,
            "timeout": self._timeout,
            "max_body_size": self._max_body_size,
        }

    @property
    def timeout(self) -> httpx.Timeout:
        return self._timeout

    def _record(self, decision: Decision, status: int, started: float, facts: RequestFacts) -> None:
        """Count a finished request: traffic per target, metrics, the debug decision log."""
        self.engine.traffic[decision.target] += 1
        if self.metrics is not None:
            self.metrics.request(
                decision.target, decision.reason, status, time.perf_counter() - started
            )
        if decision_log.isEnabledFor(logging.DEBUG):
            decision_log.debug(
                "%s %s -> %s (%s %s)", facts.method, facts.path, decision.target,
                decision.reason, decision.rule_id or "",
                extra={"canary_target": decision.target, "canary_reason": decision.reason,
                       "canary_rule": decision.rule_id, "canary_status": status},
            )  # fmt: skip

    def _upstream_report(self, upstream: Upstream, error: str | None) -> None:
        """How a forwarded request went: feeds error metrics (by upstream name) and passive
        health (by the backend URL the request went to)."""
        if error is not None and self.metrics:
            self.metrics.upstream_error(upstream.name, error)
        if self.health is not None:
            self.health.request_result(upstream.key, refused=error == "refused")

    # -- health -----------------------------------------------------------------------
    def _ejected(self, snapshot: Snapshot) -> AbstractSet[str]:
        """Backend URLs out of service: the store's, and this instance's own (per canary
        decision, so the common case, nothing ejected here, is attribute reads only)."""
        health = self.health
        if health is None or not health.local:
            return snapshot.ejected
        return health.ejected(snapshot.ejected)

    def _backends(self) -> Backends:
        """What the next check round works on (every backend URL, the store's records)."""
        assert self.options.health is not None
        snapshot = self.engine.snapshot
        path = self.options.health.path.encode()
        checks = {key: up.target(path, b"") for key, up in self.targets.backends(snapshot).items()}
        return Backends(checks, snapshot.health, snapshot.health_lapsed)

    def _after_round(self, health: BackendHealth) -> None:
        if self.metrics is not None:
            ejected = self._ejected(self.engine.snapshot)
            for url in health.states():
                self.metrics.set_ejected(url, url in ejected)
