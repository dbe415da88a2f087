"""The rollout agent's tick, sans I/O: fold this instance's telemetry, and, when a rollout
needs driving, hold the lease and make the next transition (fenced by the lease).

``RolloutAgent.tick()`` is a generator: it yields store plans (run them with the store's
``_run`` and send the result back) and ``Post`` requests (send back the HTTP status, or
None when the request failed), and returns how long to wait before the next tick. The
drivers (runner.py) are a task on the router's loop, a thread, or the ``rollout run``
command; the unit tests drive it with a fake clock.
"""

from __future__ import annotations

import logging
import math
import os
import secrets
import socket
import time
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigurationError
from ..metrics import BUCKETS, Metrics
from ..outcome import STABLE
from ..stores.layout import Layout
from ..stores.plans import Plan, _checked
from .judge import PASS, Verdict, Window, judge
from .plan import DRIVEN, Rollout, Transition, kill_switch_pause, next_transition
from .render import event_for
from .storage import (
    LeaseLostError,
    StaleRecordError,
    fold_windows,
    lease,
    read_rollout,
    step_windows,
    write_transition,
)
from .telemetry import take_windows

__all__ = ["IDLE_TICK", "Post", "RolloutAgent", "event"]

logger = logging.getLogger("canary_mw.rollout")

#: Seconds between looks at the store while no rollout is active.
IDLE_TICK = 1.0
#: The lease lasts this many telemetry intervals (at least LEASE_MIN seconds): a dead
#: leader is replaced within it.
LEASE_INTERVALS = 3
LEASE_MIN = 2.0

Op = Any  # a store plan, or a Post


@dataclass(frozen=True, slots=True)
class Post:
    """POST ``payload`` (JSON) to ``url``; the driver sends back the status or None."""

    url: str
    payload: Mapping[str, Any]


def event(transition: Transition, actor: str) -> dict[str, Any]:
    """The notification for a transition (what ``--notify-url`` receives)."""
    return event_for(transition.after, transition.action, actor)


def default_holder() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


def verdict_for(rollout: Rollout, windows: Mapping[str, Window]) -> Verdict:
    size = len(BUCKETS) + 1
    empty = Window(buckets=(0,) * size)
    canary = windows.get(rollout.plan.upstream, empty)
    return judge(canary, windows.get(STABLE, empty), rollout.plan.thresholds)


class RolloutAgent:
    """One instance's part in rollouts: telemetry folding (when ``metrics`` is given) and,
    when ``drive``, competing for the lease and moving the rollout on.

    >>> agent = RolloutAgent(store.layout, metrics=default_metrics())
    >>> delay = run_tick(store, agent.tick())   # see runner.py for the drivers
    """

    def __init__(
        self,
        layout: Layout,
        *,
        metrics: Metrics | None = None,
        drive: bool = True,
        holder: str | None = None,
        actor: str | None = None,
        clock: Callable[[], float] = time.time,
    ):
        self.layout = layout
        self.metrics = metrics
        self.drive = drive
        self.holder = holder or default_holder()
        self.actor = actor or f"rollout@{self.holder}"
        self.clock = clock
        # A process forked after this agent was built (a gunicorn worker of a --preload app)
        # is another instance: it needs a holder of its own, or every worker would take the
        # lease value for its own and all of them would drive (and pass the fencing check).
        self._named = (holder is not None, actor is not None)
        self._pid = os.getpid()
        #: The lease value while this agent holds the lease, else "".
        self.lease = ""
        #: Transitions this agent wrote (for tests and logs).
        self.transitions: list[Transition] = []
        self._problem = ""

    @property
    def leading(self) -> bool:
        return bool(self.lease)

    def _forked(self) -> None:
        if self._pid == os.getpid():
            return
        self._pid = os.getpid()
        self.lease = ""
        if not self._named[0]:
            self.holder = default_holder()
            if not self._named[1]:
                self.actor = f"rollout@{self.holder}"

    def tick(self) -> Generator[Op, Any, float]:
        self._forked()
        now = self.clock()
        windows = take_windows(self.metrics) if self.metrics is not None else {}
        rollout: Rollout | None
        try:
            config, rollout = yield read_rollout(self.layout)
        except ConfigurationError as exc:
            self._report(str(exc))
            return IDLE_TICK
        if rollout is None or not rollout.active:
            self.lease = ""
            return IDLE_TICK
        interval = rollout.plan.interval
        if windows:
            index = math.floor(now / interval)
            yield fold_windows_plan(self.layout, windows, index)
        if not self.drive or rollout.status not in DRIVEN:
            return interval
        ttl = max(LEASE_MIN, LEASE_INTERVALS * interval)
        value = yield lease(self.layout, self.lease, self.holder, ttl)
        self.lease = value if value.partition(":")[2] == self.holder else ""
        if not self.lease:
            return interval
        if config.mode == "off" and rollout.status != "scheduled":
            # Someone pulled the kill switch: nothing is judged while nobody gets the canary,
            # and no step may turn it off again. A person resumes once it is back on.
            transition: Transition | None = kill_switch_pause(rollout)
        else:
            transition = yield from self._decide(rollout, now)
        if transition is None:
            return interval
        try:
            yield write_transition(
                self.layout, self.actor, transition, expected=rollout, fence=self.lease
            )
        except LeaseLostError:
            logger.warning("canary_mw: lost the rollout lease; another instance drives it now")
            self.lease = ""
            return interval
        except StaleRecordError:
            return 0.0  # someone else moved it: look again at once
        self.transitions.append(transition)
        logger.info("canary_mw: rollout %s: %s (%s)", transition.after.id, transition.action,
                    transition.after.reason or transition.after.status)  # fmt: skip
        notify = rollout.plan.notify_url
        if notify:
            yield Post(notify, event(transition, self.actor))
        return 0.0 if transition.after.status == "running" and transition.config else interval

    def _decide(self, rollout: Rollout, now: float) -> Generator[Op, Any, Transition | None]:
        verdict, confirmed = None, None
        if rollout.status in ("running", "waiting"):
            windows, _ = yield step_windows(self.layout, rollout, now, len(BUCKETS) + 1)
            verdict = verdict_for(rollout, windows)
            if rollout.status == "waiting" and verdict.outcome == PASS:
                payload = {"event": "rollout confirm", "rollout": rollout.id,
                           "next_percent": rollout.plan.steps[rollout.step + 1]}  # fmt: skip
                status = yield Post(str(rollout.plan.confirm_url), payload)
                confirmed = status is not None and 200 <= status < 300
        return next_transition(rollout, now, verdict, confirmed)

    def _report(self, problem: str) -> None:
        if problem != self._problem:
            logger.warning("canary_mw: rollout: %s", problem)
        self._problem = problem


def fold_windows_plan(layout: Layout, windows: Mapping[str, Window], index: int) -> Plan[None]:
    commands = fold_windows(layout, windows, index)
    if commands:
        for result in (yield commands):
            _checked(result)
