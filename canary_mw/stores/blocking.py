"""The blocking Store. GENERATED from AsyncStore in store.py by
``python -m canary_mw.stores.unasync``: edit AsyncStore and run that, never this file."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ..keys import IPListRef, Probe
from ..rollout.plan import Rollout, RolloutPlan
from ..rules import RuleSet
from . import plans
from .layout import Layout, StoreState
from .plans import AuditEntry, Change, Plan, StoredConfig
from .store import (
    DEFAULT_ACTOR,
    DEFAULT_LOOKUP_TIMEOUT,
    RulesInput,
    SyncExecutor,
    SyncSubscription,
    T,
    _Plans,
    _rules_or_none,
)

__all__ = ["Store"]


class Store(_Plans):
    """Blocking access to the rule store. Build one with :func:`store_from_url`.

    Every write is atomic, bumps the version, is recorded in the audit log with ``actor``
    (default ``user@host``) and is announced to every running instance; a write that changes
    nothing does none of these (``Change.changed`` is False).

    >>> store = store_from_url("memory://")
    >>> store.add_ips("ips", ["203.0.113.7", "10.1.0.0/16"]).count
    2
    >>> store.set_mode("off").version  # the kill switch
    2
    """

    def __init__(
        self,
        executor: SyncExecutor,
        *,
        prefix: str = "canary:",
        url: str = "",
        lookup_timeout: float = DEFAULT_LOOKUP_TIMEOUT,
    ):
        super().__init__(prefix=prefix, url=url, lookup_timeout=lookup_timeout)
        self._executor = executor

    def _run(self, plan: Plan[T]) -> T:
        try:
            commands = next(plan)
            while True:
                commands = plan.send(self._executor.run(commands))
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]

    def read_state(self, ip_sets: Iterable[str], ip_lists: Iterable[IPListRef]) -> StoreState:
        return self._run(self._read_state(ip_sets, ip_lists))

    def lookup(self, probes: Sequence[Probe], *, within_budget: bool = True) -> dict[Probe, bool]:
        """Membership answers; raises StoreError on failure. ``within_budget``: fail after
        ``lookup_timeout`` (a request is waiting); else the store's normal timeout applies
        (the engine's background and batched lookups, which no request waits for)."""
        results = self._executor.run(self.layout.lookup(probes), fast=within_budget)
        return Layout.parse_lookup(probes, results)

    def subscribe(self) -> SyncSubscription:
        return self._executor.subscribe(self.layout.channel)

    def warm(self, dbs: Iterable[int | None] = (None,)) -> None:
        """Open the request-time connections (to the store's database, None, and any other
        numbered ``dbs``) ahead of the first request that needs them."""
        self._executor.warm(dbs)

    def set_health(
        self, records: Mapping[str, str], *, lapsed: Sequence[str] = (), announce: bool = True
    ) -> None:
        """Write backend health records (URL → JSON, see canary_mw.health) and delete the
        ``lapsed`` fields; ``announce``: every router re-reads them at once (else at its next
        poll)."""
        self._run(self._plain(self.layout.set_health(records, lapsed, announce)))

    def add_traffic(self, counts: Mapping[str, int]) -> None:
        if counts:
            self._run(self._plain(self.layout.add_traffic(counts)))

    def add_shadow(self, counts: Mapping[str, int], samples: Sequence[str] = ()) -> None:
        """Fold shadow-traffic counts and sample differences in (canary_mw.shadow.report)."""
        if counts or samples:
            self._run(self._plain(self.layout.add_shadow(counts, samples)))

    def shadow_report(self) -> tuple[dict[str, int], list[str]]:
        """The shadow counts (``<route> <counter>`` → n) and the sample differences (JSON
        text, newest first), summed over every instance."""
        return self._run(self._shadow_report())

    def clear_shadow_report(self) -> None:
        layout = self.layout
        self._run(self._plain([(None, ("DEL", layout.shadow_counts, layout.shadow_samples))]))

    def get_config(self) -> StoredConfig:
        return self._run(self._get_config())

    def get_rules(self) -> RuleSet | None:
        """The stored rules, or None when none are stored (defaults apply)."""
        return _rules_or_none(self.get_config())

    def members(self, name: str) -> set[str]:
        return self._run(self._members(name))

    def set_sizes(self, names: Iterable[str]) -> dict[str, int]:
        return self._run(self._set_sizes(names))

    def health(self) -> dict[str, str]:
        return self._run(self._hash(self.layout.health))

    def traffic(self) -> dict[str, str]:
        return self._run(self._hash(self.layout.traffic))

    def history(self, count: int = 20) -> list[AuditEntry]:
        """The latest changes, newest first."""
        return self._run(plans.history(self.layout, count))

    def set_mode(self, mode: str, *, actor: str = DEFAULT_ACTOR) -> Change:
        return self._run(plans.set_mode(self.layout, actor, mode))

    def set_rules(self, rules: RulesInput, *, actor: str = DEFAULT_ACTOR) -> Change:
        """Validate and store a rule document; raises RuleError and writes nothing if invalid."""
        return self._run(plans.set_rules(self.layout, actor, self._rules(rules)))

    def clear_rules(self, *, actor: str = DEFAULT_ACTOR) -> Change:
        return self._run(plans.clear_rules(self.layout, actor))

    def add_rule(
        self, rule: Mapping[str, Any], *, position: int | None = None, actor: str = DEFAULT_ACTOR
    ) -> Change:
        return self._run(plans.add_rule(self.layout, actor, rule, position))

    def remove_rule(self, rule_id: str, *, actor: str = DEFAULT_ACTOR) -> Change:
        return self._run(plans.remove_rule(self.layout, actor, rule_id))

    def set_percent(self, percent: float, *, actor: str = DEFAULT_ACTOR, **options: Any) -> Change:
        return self._run(plans.set_percent(self.layout, actor, percent, **options))

    def set_upstream(
        self, name: str, url: str, *, host: str | None = None, actor: str = DEFAULT_ACTOR
    ) -> Change:
        return self._run(plans.set_upstream(self.layout, actor, name, url, host))

    def remove_upstream(
        self, name: str, *, host: str | None = None, actor: str = DEFAULT_ACTOR
    ) -> Change:
        return self._run(plans.remove_upstream(self.layout, actor, name, host))

    def set_mirror(
        self, document: Mapping[str, Any] | str, *, actor: str = DEFAULT_ACTOR
    ) -> Change:
        """Validate and store the mirror document (docs/shadow.md); raises
        ConfigurationError and writes nothing when it is invalid."""
        return self._run(plans.set_mirror(self.layout, actor, document))

    def clear_mirror(self, *, actor: str = DEFAULT_ACTOR) -> Change:
        """Stop mirroring (on every instance within a second)."""
        return self._run(plans.clear_mirror(self.layout, actor))

    def add_members(
        self, name: str, members: Iterable[str], *, actor: str = DEFAULT_ACTOR
    ) -> Change:
        plan = plans.change_members(self.layout, actor, "set add", name, "SADD", members)
        return self._run(plan)

    def remove_members(
        self, name: str, members: Iterable[str], *, actor: str = DEFAULT_ACTOR
    ) -> Change:
        plan = plans.change_members(self.layout, actor, "set remove", name, "SREM", members)
        return self._run(plan)

    def add_ips(self, name: str, ips: Iterable[str], *, actor: str = DEFAULT_ACTOR) -> Change:
        members = plans.normalize_ips(ips)
        plan = plans.change_members(self.layout, actor, "ip add", name, "SADD", members)
        return self._run(plan)

    def remove_ips(self, name: str, ips: Iterable[str], *, actor: str = DEFAULT_ACTOR) -> Change:
        members = plans.normalize_ips(ips)
        plan = plans.change_members(self.layout, actor, "ip remove", name, "SREM", members)
        return self._run(plan)

    def rollback(self, version: int | None = None, *, actor: str = DEFAULT_ACTOR) -> Change:
        """Restore mode, rules and upstreams as they were after ``version`` (default: undo
        the latest config change). Atomic, and recorded in the history itself."""
        return self._run(plans.rollback(self.layout, actor, version))

    def start_rollout(
        self, plan: RolloutPlan, *, at: float | None = None, actor: str = DEFAULT_ACTOR
    ) -> Rollout:
        """Start a rollout (docs/rollouts.md): the first step at once, or at ``at`` (epoch
        seconds); the routers' controller drives the rest. Refused while one is active."""
        return self._run(self._begin_rollout(plan, at, actor))

    def rollout_command(self, command: str, *, actor: str = DEFAULT_ACTOR) -> Rollout:
        """``pause``, ``resume``, ``abort`` (restores what was in force before) or
        ``promote`` the active rollout; audited like every change."""
        return self._run(self._rollout_command(command, actor))

    def rollout_status(self) -> dict[str, Any]:
        """``{"rollout": Rollout | None, "windows": {target: Window}}``: the latest rollout
        and, for its current step, canary and stable side by side (every instance)."""
        return self._run(self._rollout_status())

    def close(self) -> None:
        self._executor.close()

    def __repr__(self) -> str:
        return f"<Store {self.url or 'custom'} prefix={self.prefix!r}>"
