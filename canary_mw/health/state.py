"""The health of one backend URL as pure values and transitions (no I/O, no clock).

Each instance keeps a :class:`BackendState` per backend URL: consecutive results of active
checks and of forwarded requests, and its *verdict* (healthy, ejected, or none yet) with
hysteresis: ``unhealthy_after`` failed checks (or ``passive_after`` refused requests) turn
it to ejected, ``healthy_after`` good checks back to healthy. Every transition takes the
time as an argument, so tests drive them with a table and a fake clock.

Verdicts are shared through the store as :class:`SharedState` records (one per URL, JSON,
with an expiry ``until``). An instance writes one when its own verdict changes, when the
store has no valid record of the URL, or to renew a record that agrees with it before it
lapses: never to contradict another instance's verdict that it has no new evidence against,
so two instances that disagree do not overwrite each other every round.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, replace

from .policy import HealthCheck

__all__ = [
    "BackendState",
    "SharedState",
    "after_check",
    "after_request",
    "is_ejected",
    "read_shared",
    "to_share",
]


@dataclass(frozen=True, slots=True)
class SharedState:
    """A backend's health as the store holds it. ``until``: the record is ignored after it
    (infinite for a record written by hand without one)."""

    healthy: bool
    since: float
    until: float
    reason: str = ""
    by: str = ""

    def encode(self) -> str:
        return json.dumps(
            {"healthy": self.healthy, "since": round(self.since, 3),
             "until": round(self.until, 3), "reason": self.reason, "by": self.by},
            separators=(",", ":"),
        )  # fmt: skip

    @classmethod
    def decode(cls, raw: bytes | str) -> SharedState | None:
        """The record, or None when it is unreadable (which ejects nothing)."""
        try:
            data = json.loads(raw)
            healthy = data["healthy"]
            since = float(data.get("since", 0.0))
            until = float(data.get("until", math.inf))
        except (ValueError, TypeError, KeyError, AttributeError):
            return None
        if not isinstance(healthy, bool) or math.isnan(until):
            return None
        return cls(healthy, since, until, str(data.get("reason", "")), str(data.get("by", "")))


def read_shared(
    raw: Mapping[bytes, bytes], now: float
) -> tuple[dict[str, SharedState], frozenset[str]]:
    """The store's health hash → the valid records by URL, and the fields that have lapsed
    (writers delete those when they write anyway)."""
    records: dict[str, SharedState] = {}
    lapsed = set()
    for field, value in raw.items():
        url = field.decode("utf-8", "replace")
        record = SharedState.decode(value)
        if record is None:
            continue
        if record.until <= now:
            lapsed.add(url)
        else:
            records[url] = record
    return records, frozenset(lapsed)


@dataclass(frozen=True, slots=True)
class BackendState:
    """One instance's view of one backend URL."""

    #: The verdict: True healthy, False ejected, None not reached yet.
    healthy: bool | None = None
    #: When the verdict began, and why.
    since: float = 0.0
    reason: str = ""
    #: Until when an ejection holds here; every failed check pushes it on.
    until: float = 0.0
    failures: int = 0  # active checks in a row that failed
    successes: int = 0  # active checks in a row that passed
    refused: int = 0  # forwarded requests in a row that could not connect
    #: False while a verdict change has not been written to the store.
    shared: bool = True
    #: The last active check: passed, what it saw, when.
    last_ok: bool | None = None
    last_reason: str = ""
    last_at: float = 0.0


def _turn(state: BackendState, healthy: bool, reason: str, now: float, ttl: float) -> BackendState:
    return replace(
        state, healthy=healthy, since=now, reason=reason,
        until=now + ttl if not healthy else 0.0, shared=False,
        # Evidence for the old verdict does not count towards the next change.
        successes=0 if not healthy else state.successes,
        failures=0 if healthy else state.failures, refused=0,
    )  # fmt: skip


def after_check(
    state: BackendState, ok: bool, reason: str, now: float, policy: HealthCheck
) -> BackendState:
    """An active check finished."""
    state = replace(state, last_ok=ok, last_reason=reason, last_at=now)
    if ok:
        state = replace(state, successes=state.successes + 1, failures=0)
        if state.healthy is not True and state.successes >= policy.healthy_after:
            return _turn(state, True, reason, now, policy.ttl)
        return state
    state = replace(state, failures=state.failures + 1, successes=0)
    if state.healthy is False:  # still failing: the ejection holds on
        return replace(state, until=now + policy.ttl)
    if state.failures >= policy.unhealthy_after:
        return _turn(state, False, f"{state.failures} checks failed: {reason}", now, policy.ttl)
    return state


def after_request(
    state: BackendState, refused: bool, now: float, policy: HealthCheck
) -> BackendState:
    """A forwarded request reached the backend (refused False) or could not connect."""
    after = policy.passive_after
    if after is None:
        return state
    if not refused:
        return state if not state.refused else replace(state, refused=0)
    state = replace(state, refused=state.refused + 1)
    if state.healthy is not False and state.refused >= after:
        return _turn(state, False, f"{after} requests in a row could not connect", now, policy.ttl)
    return state


def is_ejected(state: BackendState, now: float) -> bool:
    """Whether this instance's own verdict keeps the backend out of service right now."""
    return state.healthy is False and state.until > now


def to_share(
    state: BackendState, record: SharedState | None, now: float, policy: HealthCheck, by: str
) -> SharedState | None:
    """The record to write for this backend, or None: a verdict change of ours, a verdict
    the store has no valid record of, or a renewal of the store's agreeing record in the
    second half of its life. A verdict that differs from another instance's record without
    a change of ours is kept to ourselves (see the module docstring), and a record without
    an expiry (an operator's) is never overwritten."""
    if state.healthy is None or (record is not None and record.until == math.inf):
        return None  # (a record without an expiry was written by hand: the operator's call)
    until = now + policy.ttl
    if not state.shared or record is None:
        return SharedState(state.healthy, state.since, until, state.reason, by)
    if record.healthy == state.healthy and record.until - now < policy.ttl / 2:
        return replace(record, until=until, by=by)
    return None
