"""RouterParts: what CanaryRouter (ASGI) and CanaryWSGI are made of (built by
:func:`canary_mw.config.compose`), and the bookkeeping both do per request: counting,
metrics, the decision log, and what the forwarder and the health checker report."""

from __future__ import annotations

import logging
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from logging import DEBUG
from time import perf_counter
from typing import Any

from .facts import RequestFacts
from .health import BackendHealth, Backends, HealthCheck
from .metrics import BUCKETS, Metrics, new_cell
from .outcome import Decision
from .snapshot import Snapshot
from .targets import Targets
from .upstreams import Upstream

__all__ = ["RouterParts", "decision_log"]

decision_log = logging.getLogger("canary_mw.decision")
Record = Callable[[Decision, int, float, RequestFacts], None]


def _recorder(traffic: Counter[str], metrics: Metrics | None) -> Record:
    """What a router calls once per finished request: traffic per target (the engine
    empties ``traffic`` in place when it flushes it), metrics, the debug decision log.

    A closure over what it touches, with ``Metrics.request`` written out in it: this runs
    for every request of every app, and inside a server each call and attribute read costs
    several times what it does in a loop (bench/inproc.py)."""
    counts = metrics.counts if metrics is not None else None
    # isEnabledFor's own answer cache (emptied by logging whenever a level changes), read
    # without the call; isEnabledFor fills it.
    levels: dict[int, bool] = getattr(decision_log, "_cache", {})

    def record(decision: Decision, status: int, started: float, facts: RequestFacts) -> None:
        target = decision.target
        traffic[target] += 1
        if counts is not None:
            seconds = perf_counter() - started
            cells = counts.cells
            key = (target, decision.reason, status)
            cell = cells.get(key)
            if cell is None:
                cell = cells[key] = new_cell()
            cell[bisect_left(BUCKETS, seconds)] += 1
            cell[-1] += seconds
        debug = levels.get(DEBUG)
        if debug is None:
            debug = decision_log.isEnabledFor(DEBUG)
        if debug:
            decision_log.debug(
                "%s %s -> %s (%s %s)", facts.method, facts.path, decision.target,
                decision.reason, decision.rule_id or "",
                extra={"canary_target": decision.target, "canary_reason": decision.reason,
                       "canary_rule": decision.rule_id, "canary_status": status},
            )  # fmt: skip

    return record


class RouterParts:
    """A router's store, engine, metrics, health and forwarder, and the observer its
    forwarder reports to (:class:`~canary_mw.forward.common.ForwardObserver`)."""

    #: Set by compose once the parts exist (the forwarder reports to them).
    forwarder: Any = None
    #: The health checker (a thread or a task), when ``health=`` is set.
    checker: Any = None

    def __init__(
        self,
        *,
        check: HealthCheck | None,
        store: Any,
        owns_store: bool,
        engine: Any,
        metrics: Metrics | None,
        targets: Targets,
        health: BackendHealth | None,
    ):
        self.check = check
        self.store = store
        self.owns_store = owns_store
        self.engine = engine
        self.metrics = metrics
        self.targets = targets
        self.health = health
        #: Count a finished request: ``record(decision, status, started, facts)``.
        self.record = _recorder(engine.traffic, metrics)

    # -- the forwarder's observer -------------------------------------------------------
    def forwarded(self, upstream: Upstream, error: str | None) -> None:
        """How a forwarded request went: feeds error metrics (by upstream name) and passive
        health (by the backend URL the request went to)."""
        if error is not None and self.metrics:
            self.metrics.upstream_error(upstream.name, error)
        if self.health is not None:
            self.health.request_result(upstream.key, refused=error == "refused")

    def fell_back(self, upstream: Upstream) -> None:
        if self.metrics:
            self.metrics.fallback(upstream.name)

    # -- health -------------------------------------------------------------------------
    def ejected(self, snapshot: Snapshot) -> AbstractSet[str]:
        """Backend URLs out of service: the store's, and this instance's own (per canary
        decision, so the common case, nothing ejected here, is attribute reads only)."""
        health = self.health
        if health is None or not health.local:
            return snapshot.ejected
        return health.ejected(snapshot.ejected)

    def backends(self) -> Backends:
        """What the next check round works on (every backend URL, the store's records)."""
        check = self.check
        if check is None:
            raise RuntimeError("backends() is for the health checker, which needs health=")
        snapshot = self.engine.snapshot
        path = check.path.encode()
        checks = {key: up.target(path, b"") for key, up in self.targets.backends(snapshot).items()}
        return Backends(checks, snapshot.health, snapshot.health_lapsed)

    def share_health(
        self, records: Mapping[str, str], lapsed: Sequence[str], announce: bool
    ) -> Any:
        """Write the health records (a coroutine for an AsyncStore, for the task to await)."""
        return self.store.set_health(records, lapsed=lapsed, announce=announce)

    def after_round(self, health: BackendHealth) -> None:
        if self.metrics is not None:
            ejected = self.ejected(self.engine.snapshot)
            for url in health.states():
                self.metrics.set_ejected(url, url in ejected)
