"""The public store API: AsyncStore, written here, and what it shares with the blocking
Store, which is generated from it (``python -m canary_mw.stores.unasync`` writes blocking.py).

Both run the same plans (``plans.py``) and differ only in how they execute commands, so a
test suite written against one checks the other.
"""

from __future__ import annotations

import getpass
import socket
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol, TypeVar

from ..errors import ConfigurationError
from ..keys import IPListRef, Probe
from ..rollout import operations as rollouts
from ..rollout.plan import Rollout, RolloutPlan
from ..rules import RuleSet, parse_rules
from . import plans
from .layout import Command, Layout, StoreState
from .memory import Notice
from .plans import AuditEntry, Change, Plan, StoredConfig

__all__ = ["DEFAULT_ACTOR", "DEFAULT_LOOKUP_TIMEOUT", "AsyncStore"]

#: Budget for one request-time membership lookup (connect included), in seconds.
DEFAULT_LOOKUP_TIMEOUT = 0.05

T = TypeVar("T")
RulesInput = RuleSet | str | bytes | Mapping[str, Any] | Sequence[Any]


def _default_actor() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


#: Who a change is recorded as when the caller does not say: ``user@host``.
DEFAULT_ACTOR = _default_actor()


class SyncSubscription(Protocol):
    def get(self, timeout: float) -> Notice | None: ...
    def close(self) -> None: ...


class AsyncSubscription(Protocol):
    async def get(self, timeout: float) -> Notice | None: ...
    async def close(self) -> None: ...


class SyncExecutor(Protocol):
    def run(self, commands: Sequence[Command], *, fast: bool = False) -> list[object]: ...
    def subscribe(self, channel: str) -> SyncSubscription: ...
    def warm(self, dbs: Iterable[int | None] = (None,)) -> None: ...
    def close(self) -> None: ...


class AsyncExecutor(Protocol):
    async def run(self, commands: Sequence[Command], *, fast: bool = False) -> list[object]: ...
    async def subscribe(self, channel: str) -> AsyncSubscription: ...
    async def warm(self, dbs: Iterable[int | None] = (None,)) -> None: ...
    async def close(self) -> None: ...


def _text(value: object) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _read(commands: list[Command]) -> Plan[list[object]]:
    results = yield commands
    return [plans._checked(result) for result in results]


def _rules_or_none(config: StoredConfig) -> RuleSet | None:
    return None if config.rules is None else parse_rules(config.rules)


class _Plans:
    """Plans for every store method, shared by both flavours; never does I/O."""

    def __init__(self, *, prefix: str, url: str, lookup_timeout: float):
        if not isinstance(prefix, str):
            raise ConfigurationError(f"prefix must be a string, got {prefix!r}")
        self.layout = Layout(prefix)
        self.url = url
        #: The budget of one request-time membership lookup, in seconds.
        self.lookup_timeout = lookup_timeout

    @property
    def prefix(self) -> str:
        return self.layout.prefix

    def _read_state(self, sets: Iterable[str], lists: Iterable[IPListRef]) -> Plan[StoreState]:
        commands, names, refs = self.layout.read_state(sets, lists)
        results = yield commands
        return Layout.parse_state(results, names, refs)

    def _get_config(self) -> Plan[StoredConfig]:
        (result,) = yield self.layout.get_config()
        return StoredConfig.parse(result)

    def _members(self, name: str) -> Plan[set[str]]:
        try:
            commands = self.layout.members(name)
        except ValueError as exc:
            raise ConfigurationError(str(exc)) from None
        (result,) = yield from _read(commands)
        return {_text(member) for member in result}  # type: ignore[attr-defined]

    def _set_sizes(self, names: Iterable[str]) -> Plan[dict[str, int]]:
        ordered = sorted(names)
        results = yield from _read([(None, ("SCARD", self.layout.set_key(n))) for n in ordered])
        return {name: int(size) for name, size in zip(ordered, results, strict=True)}  # type: ignore[call-overload]

    def _hash(self, key: str) -> Plan[dict[str, str]]:
        (result,) = yield from _read([(None, ("HGETALL", key))])
        return {_text(k): _text(v) for k, v in result.items()}  # type: ignore[attr-defined]

    def _plain(self, commands: list[Command]) -> Plan[None]:
        yield from _read(commands)

    def _shadow_report(self) -> Plan[tuple[dict[str, int], list[str]]]:
        counts, samples = yield from _read(self.layout.shadow_report())
        parsed = {}
        for name, value in counts.items():  # type: ignore[attr-defined]
            try:
                parsed[_text(name)] = int(value)
            except ValueError:
                continue  # garbage written by hand: left out, never fatal
        return parsed, [_text(sample) for sample in samples]  # type: ignore[attr-defined]

    def _begin_rollout(self, plan: RolloutPlan, at: float | None, actor: str) -> Plan[Rollout]:
        return (yield from rollouts.begin(self.layout, actor, plan, at)).after

    def _rollout_command(self, command: str, actor: str) -> Plan[Rollout]:
        return (yield from rollouts.command(self.layout, actor, command)).after

    def _rollout_status(self) -> Plan[dict[str, Any]]:
        return rollouts.status(self.layout)

    def _rules(self, rules: RulesInput) -> RuleSet:
        return rules if isinstance(rules, RuleSet) else parse_rules(rules)


class AsyncStore(_Plans):
    """asyncio access to the rule store. Build one with :func:`async_store_from_url`.

    Every write is atomic, bumps the version, is recorded in the audit log with ``actor``
    (default ``user@host``) and is announced to every running instance; a write that changes
    nothing does none of these (``Change.changed`` is False).

    >>> store = async_store_from_url("memory://")
    >>> (await store.add_ips("ips", ["203.0.113.7", "10.1.0.0/16"])).count
    2

    :class:`Store`, the blocking twin, is generated from this class (stores/unasync.py).
    """

    def __init__(
        self,
        executor: AsyncExecutor,
        *,
        prefix: str = "canary:",
        url: str = "",
        lookup_timeout: float = DEFAULT_LOOKUP_TIMEOUT,
    ):
        super().__init__(prefix=prefix, url=url, lookup_timeout=lookup_timeout)
        self._executor = executor

    async def _run(self, plan: Plan[T]) -> T:
        try:
            commands = next(plan)
            while True:
                commands = plan.send(await self._executor.run(commands))
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]

    async def read_state(self, ip_sets: Iterable[str], ip_lists: Iterable[IPListRef]) -> StoreState:
        return await self._run(self._read_state(ip_sets, ip_lists))

    async def lookup(
        self, probes: Sequence[Probe], *, within_budget: bool = True
    ) -> dict[Probe, bool]:
        """Membership answers; raises StoreError on failure. ``within_budget``: fail after
        ``lookup_timeout`` (a request is waiting); else the store's normal timeout applies
        (the engine's background and batched lookups, which no request waits for)."""
        results = await self._executor.run(self.layout.lookup(probes), fast=within_budget)
        return Layout.parse_lookup(probes, results)

    async def subscribe(self) -> AsyncSubscription:
        return await self._executor.subscribe(self.layout.channel)

    async def warm(self, dbs: Iterable[int | None] = (None,)) -> None:
        """Open the request-time connections (to the store's database, None, and any other
        numbered ``dbs``) ahead of the first request that needs them."""
        await self._executor.warm(dbs)

    async def set_health(
        self, records: Mapping[str, str], *, lapsed: Sequence[str] = (), announce: bool = True
    ) -> None:
        """Write backend health records (URL → JSON, see canary_mw.health) and delete the
        ``lapsed`` fields; ``announce``: every router re-reads them at once (else at its next
        poll)."""
        await self._run(self._plain(self.layout.set_health(records, lapsed, announce)))

    async def add_traffic(self, counts: Mapping[str, int]) -> None:
        if counts:
            await self._run(self._plain(self.layout.add_traffic(counts)))

    async def add_shadow(self, counts: Mapping[str, int], samples: Sequence[str] = ()) -> None:
        """Fold shadow-traffic counts and sample differences in (canary_mw.shadow.report)."""
        if counts or samples:
            await self._run(self._plain(self.layout.add_shadow(counts, samples)))

    async def shadow_report(self) -> tuple[dict[str, int], list[str]]:
        """The shadow counts (``<route> <counter>`` → n) and the sample differences (JSON
        text, newest first), summed over every instance."""
        return await self._run(self._shadow_report())

    async def clear_shadow_report(self) -> None:
        layout = self.layout
        await self._run(self._plain([(None, ("DEL", layout.shadow_counts, layout.shadow_samples))]))

    async def get_config(self) -> StoredConfig:
        return await self._run(self._get_config())

    async def get_rules(self) -> RuleSet | None:
        """The stored rules, or None when none are stored (defaults apply)."""
        return _rules_or_none(await self.get_config())

    async def members(self, name: str) -> set[str]:
        return await self._run(self._members(name))

    async def set_sizes(self, names: Iterable[str]) -> dict[str, int]:
        return await self._run(self._set_sizes(names))

    async def health(self) -> dict[str, str]:
        return await self._run(self._hash(self.layout.health))

    async def traffic(self) -> dict[str, str]:
        return await self._run(self._hash(self.layout.traffic))

    async def history(self, count: int = 20) -> list[AuditEntry]:
        """The latest changes, newest first."""
        return await self._run(plans.history(self.layout, count))

    async def set_mode(self, mode: str, *, actor: str = DEFAULT_ACTOR) -> Change:
        return await self._run(plans.set_mode(self.layout, actor, mode))

    async def set_rules(self, rules: RulesInput, *, actor: str = DEFAULT_ACTOR) -> Change:
        """Validate and store a rule document; raises RuleError and writes nothing if invalid."""
        return await self._run(plans.set_rules(self.layout, actor, self._rules(rules)))

    async def clear_rules(self, *, actor: str = DEFAULT_ACTOR) -> Change:
        return await self._run(plans.clear_rules(self.layout, actor))

    async def add_rule(
        self, rule: Mapping[str, Any], *, position: int | None = None, actor: str = DEFAULT_ACTOR
    ) -> Change:
        return await self._run(plans.add_rule(self.layout, actor, rule, position))

    async def remove_rule(self, rule_id: str, *, actor: str = DEFAULT_ACTOR) -> Change:
        return await self._run(plans.remove_rule(self.layout, actor, rule_id))

    async def set_percent(
        self, percent: float, *, actor: str = DEFAULT_ACTOR, **options: Any
    ) -> Change:
        return await self._run(plans.set_percent(self.layout, actor, percent, **options))

    async def set_upstream(
        self, name: str, url: str, *, host: str | None = None, actor: str = DEFAULT_ACTOR
    ) -> Change:
        return await self._run(plans.set_upstream(self.layout, actor, name, url, host))

    async def remove_upstream(
        self, name: str, *, host: str | None = None, actor: str = DEFAULT_ACTOR
    ) -> Change:
        return await self._run(plans.remove_upstream(self.layout, actor, name, host))

    async def set_mirror(
        self, document: Mapping[str, Any] | str, *, actor: str = DEFAULT_ACTOR
    ) -> Change:
        """Validate and store the mirror document (docs/shadow.md); raises
        ConfigurationError and writes nothing when it is invalid."""
        return await self._run(plans.set_mirror(self.layout, actor, document))

    async def clear_mirror(self, *, actor: str = DEFAULT_ACTOR) -> Change:
        """Stop mirroring (on every instance within a second)."""
        return await self._run(plans.clear_mirror(self.layout, actor))

    async def add_members(
        self, name: str, members: Iterable[str], *, actor: str = DEFAULT_ACTOR
    ) -> Change:
        plan = plans.change_members(self.layout, actor, "set add", name, "SADD", members)
        return await self._run(plan)

    async def remove_members(
        self, name: str, members: Iterable[str], *, actor: str = DEFAULT_ACTOR
    ) -> Change:
        plan = plans.change_members(self.layout, actor, "set remove", name, "SREM", members)
        return await self._run(plan)

    async def add_ips(self, name: str, ips: Iterable[str], *, actor: str = DEFAULT_ACTOR) -> Change:
        members = plans.normalize_ips(ips)
        plan = plans.change_members(self.layout, actor, "ip add", name, "SADD", members)
        return await self._run(plan)

    async def remove_ips(
        self, name: str, ips: Iterable[str], *, actor: str = DEFAULT_ACTOR
    ) -> Change:
        members = plans.normalize_ips(ips)
        plan = plans.change_members(self.layout, actor, "ip remove", name, "SREM", members)
        return await self._run(plan)

    async def rollback(self, version: int | None = None, *, actor: str = DEFAULT_ACTOR) -> Change:
        """Restore mode, rules and upstreams as they were after ``version`` (default: undo
        the latest config change). Atomic, and recorded in the history itself."""
        return await self._run(plans.rollback(self.layout, actor, version))

    async def start_rollout(
        self, plan: RolloutPlan, *, at: float | None = None, actor: str = DEFAULT_ACTOR
    ) -> Rollout:
        """Start a rollout (docs/rollouts.md): the first step at once, or at ``at`` (epoch
        seconds); the routers' controller drives the rest. Refused while one is active."""
        return await self._run(self._begin_rollout(plan, at, actor))

    async def rollout_command(self, command: str, *, actor: str = DEFAULT_ACTOR) -> Rollout:
        """``pause``, ``resume``, ``abort`` (restores what was in force before) or
        ``promote`` the active rollout; audited like every change."""
        return await self._run(self._rollout_command(command, actor))

    async def rollout_status(self) -> dict[str, Any]:
        """``{"rollout": Rollout | None, "windows": {target: Window}}``: the latest rollout
        and, for its current step, canary and stable side by side (every instance)."""
        return await self._run(self._rollout_status())

    async def aclose(self) -> None:
        await self._executor.close()

    def __repr__(self) -> str:
        return f"<AsyncStore {self.url or 'custom'} prefix={self.prefix!r}>"
