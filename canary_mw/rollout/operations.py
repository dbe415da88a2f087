"""What operators do to rollouts (start, pause, resume, abort, promote, status), as store
plans: ``AsyncStore`` / ``Store`` run them (``start_rollout``, ``rollout_command``,
``rollout_status``). Each is one versioned, audited config change, like every other."""

from __future__ import annotations

import time
from typing import Any

from ..errors import ConfigurationError
from ..metrics import BUCKETS
from ..stores.layout import Layout
from ..stores.plans import Plan
from .judge import Window
from .plan import RolloutPlan, Transition, enter_step, operator_transition, start
from .storage import StaleRecordError, prior_of, read_rollout, step_windows, write_transition

__all__ = ["begin", "command", "status"]

#: Tries at an operator command while the controller moves the record under it.
ATTEMPTS = 20


def begin(
    layout: Layout, actor: str, plan: RolloutPlan, at: float | None, now: float | None = None
) -> Plan[Transition]:
    """Start a rollout: record what is in force, and enter the first step at once unless
    ``at`` (epoch seconds) is later. Refused while another rollout is active."""
    if not isinstance(plan, RolloutPlan):
        raise ConfigurationError("start_rollout needs a RolloutPlan(upstream=..., steps=...)")
    now = time.time() if now is None else now
    config, current = yield from read_rollout(layout)
    if current is not None and current.active:
        raise ConfigurationError(
            f"rollout {current.id} is {current.status}: abort or finish it first"
        )
    if config.mode == "all":
        raise ConfigurationError(
            "the mode is 'all' (everyone gets the canary already): set 'canary-mw mode rules' "
            "before a rollout"
        )
    record = start(plan, prior_of(config), now, at)
    if record.start_at <= now:
        transition = enter_step(record, 0, now, "rollout start")
    else:
        transition = Transition(record, "rollout schedule", None, {"at": record.start_at})
    yield from write_transition(layout, actor, transition, expected=None)
    return transition


def command(layout: Layout, actor: str, name: str, now: float | None = None) -> Plan[Transition]:
    """pause / resume / abort / promote the active rollout."""
    for _ in range(ATTEMPTS):
        _, current = yield from read_rollout(layout)
        if current is None:
            raise ConfigurationError("no rollout has been started")
        transition = operator_transition(current, name, time.time() if now is None else now)
        try:
            yield from write_transition(layout, actor, transition, expected=current)
        except StaleRecordError:
            continue  # the controller moved it meanwhile: decide again on the new record
        return transition
    raise ConfigurationError("the rollout kept moving while the command tried to apply")


def status(layout: Layout, now: float | None = None) -> Plan[dict[str, Any]]:
    """The record and, for the current step, canary and stable side by side."""
    _, rollout = yield from read_rollout(layout)
    if rollout is None:
        return {"rollout": None, "windows": {}, "baseline": "step"}
    windows: dict[str, Window] = {}
    baseline = "step"
    if rollout.step >= 0:
        now = time.time() if now is None else now
        windows, baseline = yield from step_windows(layout, rollout, now, len(BUCKETS) + 1)
    return {"rollout": rollout, "windows": windows, "baseline": baseline}
