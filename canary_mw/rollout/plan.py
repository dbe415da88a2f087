"""A rollout: what the operator asked for (RolloutPlan) and where it stands (Rollout), and
the pure state machine that moves it on (``next_transition``). No I/O here: the controller
reads the record, asks the judge, and writes what this module decides.

The record is JSON in the config hash's ``rollout`` field, so every transition is a config
change: versioned, audited, announced to every instance (docs/rollouts.md).
"""

from __future__ import annotations

import json
import math
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from ..errors import ConfigurationError
from ..rules import valid_name
from .judge import FAIL, INSUFFICIENT, MARGINAL, PASS, Thresholds, Verdict

__all__ = [
    "ACTIVE",
    "DRIVEN",
    "ON_SUCCESS",
    "Rollout",
    "RolloutPlan",
    "Transition",
    "next_transition",
    "parse_duration",
    "parse_fraction",
]

#: States the controller moves on by itself, and every state that is not finished.
DRIVEN = frozenset({"scheduled", "running", "waiting"})
ACTIVE = DRIVEN | {"paused"}
ON_SUCCESS = ("promote", "hold")
#: The percentage rule a rollout drives (its own id, so an operator's rules are untouched).
RULE_ID = "rollout"

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: str | float, what: str = "duration", allow_zero: bool = False) -> float:
    """Seconds from ``90``, ``1.5s``, ``10m``, ``2h``, ``1d``."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise ConfigurationError(f"{what} must look like 30s, 10m or 2h; got {value!r}")
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if not math.isfinite(seconds) or seconds < 0 or (seconds == 0 and not allow_zero):
        raise ConfigurationError(f"{what} must be positive, got {value!r}")
    return seconds


def parse_fraction(value: str | float, what: str) -> float:
    """``0.5%`` → 0.005; a bare number is a fraction already (0.005)."""
    text = str(value).strip()
    try:
        number = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise ConfigurationError(f"{what} must be a percentage like 0.5% ; got {value!r}") from None
    return number


def _url(value: str | None, what: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not re.match(r"^https?://[^\s/]+", value):
        raise ConfigurationError(f"{what} must be an http(s):// URL, got {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class RolloutPlan:
    """What to do: raise ``upstream``'s sticky percentage (users keyed ``by``) through
    ``steps``, holding each for ``hold`` seconds and judging it against stable.

    >>> plan = RolloutPlan(upstream="canary", by="cookie:uid", steps=(1, 5, 25, 50, 100),
    ...                    hold=600)
    """

    upstream: str = "canary"
    by: str = "ip"
    steps: tuple[float, ...] = (1, 5, 25, 50, 100)
    hold: float = 600.0
    thresholds: Thresholds = field(default_factory=Thresholds)
    on_success: str = "promote"
    confirm_url: str | None = None
    notify_url: str | None = None
    #: Seconds of one telemetry window: every instance folds its counts once per interval.
    interval: float = 5.0
    #: How many times a marginal step is held again before the rollout pauses.
    max_extensions: int = 2

    def __post_init__(self) -> None:
        if not valid_name(self.upstream) or self.upstream == "stable":
            raise ConfigurationError(
                f"upstream must name a canary upstream such as 'canary', got {self.upstream!r}"
            )
        source, _, name = self.by.partition(":")
        if not (self.by == "ip" or (source in ("cookie", "header", "query") and name)):
            raise ConfigurationError(
                f"by must be 'ip', 'cookie:NAME', 'header:NAME' or 'query:NAME'; got {self.by!r}"
            )
        steps = tuple(float(step) for step in self.steps)
        if not steps or any(not 0 < s <= 100 for s in steps) or list(steps) != sorted(set(steps)):
            raise ConfigurationError(
                "steps must be rising percentages in (0, 100], e.g. 1,5,25,50,100; "
                f"got {self.steps!r}"
            )
        object.__setattr__(self, "steps", steps)
        object.__setattr__(self, "hold", parse_duration(self.hold, "hold"))
        object.__setattr__(self, "interval", parse_duration(self.interval, "interval"))
        if self.interval > self.hold:
            raise ConfigurationError(
                f"the telemetry interval ({self.interval:g}s) must not exceed the hold "
                f"({self.hold:g}s): pass a shorter interval"
            )
        if self.on_success not in ON_SUCCESS:
            raise ConfigurationError(
                f"on_success must be one of {ON_SUCCESS}, got {self.on_success!r}"
            )
        if not isinstance(self.thresholds, Thresholds):
            raise ConfigurationError("thresholds must be a Thresholds(...)")
        _url(self.confirm_url, "confirm_url")
        _url(self.notify_url, "notify_url")
        if not isinstance(self.max_extensions, int) or self.max_extensions < 0:
            raise ConfigurationError(f"max_extensions must be >= 0, got {self.max_extensions!r}")

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["steps"] = list(self.steps)
        data["thresholds"] = self.thresholds.to_json()
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RolloutPlan:
        values = dict(data)
        values["thresholds"] = Thresholds(**values.get("thresholds", {}))
        values["steps"] = tuple(values.get("steps", ()))
        return cls(**values)


@dataclass(frozen=True, slots=True)
class Rollout:
    """A rollout's record: its plan and where it stands. ``generation`` grows with every
    transition, so a transition decided on an old record is refused."""

    plan: RolloutPlan
    id: str = field(default_factory=lambda: secrets.token_hex(4))
    status: str = "scheduled"
    step: int = -1
    step_started: float = 0.0
    #: When the step's hold ends (grows when a marginal step is held again).
    hold_until: float = 0.0
    start_at: float = 0.0
    extensions: int = 0
    generation: int = 0
    #: What was in force before: the mode and the rollout rule's spec (None: there was none).
    prior: Mapping[str, Any] = field(default_factory=dict)
    verdict: Mapping[str, Any] | None = None
    reason: str = ""

    @property
    def percent(self) -> float:
        return self.plan.steps[self.step] if self.step >= 0 else 0.0

    @property
    def active(self) -> bool:
        return self.status in ACTIVE

    def to_json(self) -> dict[str, Any]:
        data = {name: getattr(self, name) for name in self.__dataclass_fields__}
        data["plan"] = self.plan.to_json()
        data["prior"] = dict(self.prior)
        return data

    def dumps(self) -> str:
        return json.dumps(self.to_json(), separators=(",", ":"), sort_keys=True)

    @classmethod
    def loads(cls, raw: str | bytes) -> Rollout:
        """Parse the stored record; raises ConfigurationError when it is not one."""
        try:
            data = json.loads(raw)
            return cls(**{**data, "plan": RolloutPlan.from_json(data["plan"])})
        except (ValueError, TypeError, KeyError) as exc:
            raise ConfigurationError(f"the stored rollout is invalid: {exc}") from None


@dataclass(frozen=True, slots=True)
class Transition:
    """A decided move: the record after it, the audit action, and what to do to the
    routing config: ``"percent"`` (the step's percentage), ``"restore"`` (what was in force
    before), ``"promote"`` (mode all), or None (the record alone changes)."""

    after: Rollout
    action: str
    config: str | None
    detail: Mapping[str, Any]


def _moved(rollout: Rollout, **changes: Any) -> Rollout:
    return replace(rollout, generation=rollout.generation + 1, **changes)


def enter_step(rollout: Rollout, step: int, now: float, action: str) -> Transition:
    plan = rollout.plan
    after = _moved(
        rollout, status="running", step=step, step_started=now, hold_until=now + plan.hold,
        extensions=0, reason="",
    )  # fmt: skip
    detail: dict[str, Any] = {
        "step": step + 1, "steps": len(plan.steps), "percent": plan.steps[step]
    }  # fmt: skip
    if rollout.verdict is not None:
        detail["verdict"] = dict(rollout.verdict)
    return Transition(after, action, "percent", detail)


def _finish(rollout: Rollout, verdict: Mapping[str, Any]) -> Transition:
    with_verdict = replace(rollout, verdict=verdict)
    if rollout.plan.on_success == "promote":
        after = _moved(with_verdict, status="promoted", reason="every step passed")
        return Transition(after, "rollout promote", "promote", {"verdict": verdict})
    after = _moved(with_verdict, status="succeeded", reason="every step passed; holding")
    return Transition(after, "rollout succeed", None, {"verdict": verdict})


def next_transition(
    rollout: Rollout, now: float, verdict: Verdict | None = None, confirmed: bool | None = None
) -> Transition | None:
    """What the controller does next, given the latest ``verdict`` on the current step
    (None when not judged) and the confirm gate's answer (None when not asked)."""
    plan = rollout.plan
    if rollout.status == "scheduled":
        return enter_step(rollout, 0, now, "rollout step") if now >= rollout.start_at else None
    if rollout.status not in ("running", "waiting") or verdict is None:
        return None
    numbers = verdict.to_json()
    judged = replace(rollout, verdict=numbers)
    if verdict.outcome == FAIL:
        failed = [name for name, m in verdict.metrics.items() if m.get("result") == FAIL]
        after = _moved(judged, status="rolled_back", reason=f"{', '.join(failed)} failed")
        return Transition(after, "rollout rollback", "restore", {"verdict": numbers})
    if now < rollout.hold_until:
        return None  # only a failure acts before the hold is over
    if verdict.outcome == INSUFFICIENT:
        return None  # keep holding until both sides have enough requests
    if verdict.outcome == MARGINAL:
        if rollout.extensions >= plan.max_extensions:
            after = _moved(
                judged, status="paused",
                reason=f"still marginal after {rollout.extensions} extensions: decide by hand",
            )  # fmt: skip
            return Transition(after, "rollout pause", None, {"verdict": numbers})
        after = _moved(
            judged, hold_until=now + plan.hold, extensions=rollout.extensions + 1,
            reason="marginal: holding the step again",
        )  # fmt: skip
        return Transition(after, "rollout extend", None, {"verdict": numbers})
    assert verdict.outcome == PASS
    last = rollout.step + 1 >= len(plan.steps)
    if last:
        return _finish(judged, numbers)
    if plan.confirm_url and not confirmed:
        if rollout.status == "waiting":
            return None
        after = _moved(judged, status="waiting", reason=f"waiting for {plan.confirm_url}")
        return Transition(after, "rollout wait", None, {"verdict": numbers})
    return enter_step(judged, rollout.step + 1, now, "rollout step")


def start(plan: RolloutPlan, prior: Mapping[str, Any], now: float, at: float | None) -> Rollout:
    """A new rollout's record, scheduled for ``at`` (None: now)."""
    return Rollout(plan, start_at=now if at is None else at, prior=dict(prior))


def operator_transition(rollout: Rollout, command: str, now: float) -> Transition:
    """pause / resume / abort / promote, as asked from the CLI, the API or Python."""
    if not rollout.active:
        raise ConfigurationError(f"the rollout is {rollout.status}: nothing to {command}")
    if command == "pause":
        if rollout.status == "paused":
            raise ConfigurationError("the rollout is already paused")
        after = _moved(rollout, status="paused", reason="paused by hand")
        return Transition(after, "rollout pause", None, {})
    if command == "resume":
        if rollout.status != "paused":
            raise ConfigurationError(f"the rollout is {rollout.status}, not paused")
        if rollout.step < 0:
            after = _moved(rollout, status="scheduled", reason="")
            return Transition(after, "rollout resume", None, {})
        # The step's hold starts over: what was measured before the pause is old news.
        after = _moved(
            rollout, status="running", step_started=now, hold_until=now + rollout.plan.hold,
            extensions=0, reason="",
        )  # fmt: skip
        return Transition(after, "rollout resume", None, {"step": rollout.step + 1})
    if command == "abort":
        after = _moved(rollout, status="aborted", reason="aborted by hand")
        return Transition(after, "rollout abort", "restore", {})
    if command == "promote":
        after = _moved(rollout, status="promoted", reason="promoted by hand")
        return Transition(after, "rollout promote", "promote", {})
    raise ConfigurationError(f"unknown rollout command {command!r}")


def kill_switch_pause(rollout: Rollout) -> Transition:
    """The mode is ``off``: the rollout pauses (it never turns the kill switch off itself)."""
    after = _moved(rollout, status="paused", reason="the kill switch is on (mode off)")
    return Transition(after, "rollout pause", None, {})


def step_of(steps: Sequence[float], index: int) -> str:
    return f"{index + 1}/{len(steps)} ({steps[index]:g}%)" if index >= 0 else "not started"
