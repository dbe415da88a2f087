"""What the blocking and the asyncio engines share: configuration, snapshot, cache, breaker."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Mapping
from typing import Any

from ..decide import NO_OVERRIDES, Overrides, decide_or_stable
from ..errors import ConfigurationError
from ..facts import RequestFacts
from ..keys import Probe
from ..outcome import Decision
from ..rules import DEFAULT_RULES, RuleSet
from ..snapshot import Snapshot
from ..stores.layout import StoreState
from .breaker import CircuitBreaker
from .builder import SnapshotBuilder
from .cache import MembershipCache
from .memo import DecisionMemo
from .settings import EngineSettings

__all__ = ["EngineCore"]

logger = logging.getLogger("canary_mw.engine")

#: Lookup rounds per request at most: each round settles at least one more rule.
MAX_ROUNDS = 4
#: How often the pub/sub listener wakes up to notice a shutdown, in seconds.
LISTEN_WAKEUP = 1.0
#: How often request counts per target are added to the store's traffic hash, in seconds.
TRAFFIC_FLUSH = 5.0
#: Most stale membership answers read again in one round trip.
REVALIDATE_BATCH = 1000


class LayeredAnswers:
    """Answers fetched for this request first, then the shared cache."""

    __slots__ = ("cache", "local")

    def __init__(self, local: Mapping[Probe, bool], cache: MembershipCache):
        self.local = local
        self.cache = cache

    def get(self, probe: Probe, /) -> bool | None:
        answer = self.local.get(probe)
        return self.cache.get(probe) if answer is None else answer


class EngineCore:
    """State and policy of an engine; subclasses add the I/O loops."""

    def __init__(
        self,
        *,
        overrides: Overrides = NO_OVERRIDES,
        default_rules: RuleSet = DEFAULT_RULES,
        settings: EngineSettings | None = None,
        **options: Any,
    ) -> None:
        """``settings``, or its fields as keyword arguments (``poll_interval=1.0``)."""
        if not isinstance(overrides, Overrides):
            raise ConfigurationError("overrides must be an Overrides(header=..., cookie=...)")
        if not isinstance(default_rules, RuleSet):
            raise ConfigurationError("default_rules must be a RuleSet (see parse_rules)")
        if settings is not None and options:
            raise ConfigurationError(
                f"pass settings=EngineSettings(...) or keyword options, not both: {sorted(options)}"
            )
        self.settings = settings = EngineSettings.coerce(
            settings if settings is not None else options, option="engine options"
        )
        self.overrides = overrides
        self.poll_interval = settings.poll_interval
        self.first_load_wait = settings.first_load_wait
        self.cache = MembershipCache(
            maxsize=settings.cache_size, ttl=settings.cache_ttl, stale=settings.cache_stale
        )
        self.breaker = CircuitBreaker(
            threshold=settings.breaker_threshold, reset_timeout=settings.breaker_reset
        )
        self.builder = SnapshotBuilder(default_rules)
        #: Decisions remembered per snapshot by the inputs its rules read (memo.py).
        self.memo = DecisionMemo(self.cache, overrides)
        #: Completed background refresh attempts (successful or not), for status and tests.
        self.refreshes = 0
        #: Failed request-time lookups and background refreshes, for metrics.
        self.lookup_failures = 0
        self.refresh_failures = 0
        #: Change notifications and (re)subscriptions heard; each one empties the cache.
        self.notices = 0
        #: Requests per target since the last flush to the store's traffic hash.
        self.traffic: Counter[str] = Counter()
        self._traffic_flushed = time.monotonic()
        # Databases whose request-time connection is warm; emptied after failures.
        self._warm_dbs: frozenset[int | None] = frozenset()

    @property
    def snapshot(self) -> Snapshot:
        return self.builder.current

    def _first_pass(self, facts: RequestFacts) -> tuple[Decision, Snapshot]:
        snapshot = self.builder.current
        return self.memo.decide(facts, snapshot), snapshot

    def _next_pass(
        self,
        facts: RequestFacts,
        snapshot: Snapshot,
        local: dict[Probe, bool],
        fetched: Mapping[Probe, bool],
        generation: int,
    ) -> Decision | None:
        """Fold one round of lookups in; None when the new answers settle nothing more."""
        self.breaker.success()
        self.cache.put_many(fetched, generation)
        news = {probe: value for probe, value in fetched.items() if probe not in local}
        if not news:
            return None
        local.update(news)
        return decide_or_stable(facts, snapshot, LayeredAnswers(local, self.cache), self.overrides)

    def _revalidated(self, fetched: Mapping[Probe, bool], generation: int) -> None:
        self.breaker.success()
        self.cache.put_many(fetched, generation)

    def _lookup_failed(self, exc: BaseException) -> None:
        self.lookup_failures += 1
        self.breaker.failure(exc)
        logger.debug("canary_mw: membership lookup failed: %s", exc)

    def _apply(self, state: StoreState) -> bool:
        """Fold a store read into the snapshot; False when the rules now need more sets."""
        self.builder.update(state)
        return self.builder.covers(state)

    def _refresh_failed(self, exc: BaseException) -> None:
        # The refresher's timeout is generous; if even it fails the store is down, so stop
        # paying for request-time lookups at once rather than after `threshold` requests.
        self.refresh_failures += 1
        self.breaker.trip(exc)
        self._warm_dbs = frozenset()

    def _cold_dbs(self) -> frozenset[int | None]:
        """Databases the current rules look up in whose connection is not warm yet."""
        return (self.builder.current.ruleset.lookup_dbs | {None}) - self._warm_dbs

    def count(self, target: str) -> None:
        """One request served by ``target`` (summed across instances in the store)."""
        self.traffic[target] += 1

    def _traffic_due(self) -> dict[str, int] | None:
        """The counts to flush, every TRAFFIC_FLUSH seconds (none while idle)."""
        if time.monotonic() - self._traffic_flushed < TRAFFIC_FLUSH or not self.traffic:
            return None
        # Emptied in place: the routers hold this Counter (RouterParts.record).
        counts = dict(self.traffic)
        self.traffic.clear()
        self._traffic_flushed = time.monotonic()
        return counts

    def _notice(self) -> None:
        """A change notification or a (re)subscription: cached answers may be stale."""
        self.notices += 1
        self.cache.clear()
