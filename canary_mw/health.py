"""Canary health: active checks and passive ejection, shared by every instance via the store.

Each instance counts consecutive results per upstream name. When its counts cross a
threshold in the direction opposite to the shared state, it writes the new state to the
store's health hash and announces it, so every instance ejects (or restores) the upstream
together. An ejected upstream's traffic is served by stable until it is healthy again.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass

from .errors import ConfigurationError

__all__ = ["HealthCheck", "HealthMonitor"]

logger = logging.getLogger("canary_mw.health")


@dataclass(frozen=True, slots=True)
class HealthCheck:
    """How to check canary upstreams.

    ``path`` is requested every ``interval`` seconds with a ``timeout``; a status below 500
    counts as healthy. ``unhealthy_after`` failed checks in a row eject the upstream,
    ``healthy_after`` good ones restore it. ``passive_after`` real requests in a row that
    could not connect eject it too (None: only active checks).

    >>> CanaryRouter(app, canary_url=..., health=HealthCheck(path="/healthz", interval=1))
    """

    path: str = "/"
    interval: float = 2.0
    timeout: float = 1.0
    unhealthy_after: int = 2
    healthy_after: int = 2
    passive_after: int | None = 3

    def __post_init__(self) -> None:
        if not isinstance(self.path, str) or not self.path.startswith("/"):
            raise ConfigurationError(f"health path must start with '/', got {self.path!r}")
        for name in ("interval", "timeout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ConfigurationError(f"health {name} must be a positive number of seconds")
        for name in ("unhealthy_after", "healthy_after", "passive_after"):
            value = getattr(self, name)
            if value is None and name == "passive_after":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigurationError(f"health {name} must be a positive integer")


INSTANCE = f"{socket.gethostname()}:{os.getpid()}"


def _state(healthy: bool, reason: str) -> str:
    return json.dumps(
        {"healthy": healthy, "since": time.time(), "reason": reason, "by": INSTANCE},
        separators=(",", ":"),
    )


class HealthMonitor:
    """Counts results per upstream and says when the shared state should change."""

    def __init__(self, policy: HealthCheck):
        self.policy = policy
        self._failures: dict[str, int] = {}
        self._successes: dict[str, int] = {}
        self._refused: dict[str, int] = {}
        #: Ejected by this instance, before the store has confirmed it.
        self.local_ejections: set[str] = set()
        self._pending: dict[str, str] = {}

    def check_result(self, name: str, ok: bool, reason: str, ejected: bool) -> None:
        """An active check finished; ``ejected`` is the shared state right now."""
        if ok:
            self._failures[name] = 0
            self._successes[name] = self._successes.get(name, 0) + 1
            if (ejected or name in self.local_ejections) and (
                self._successes[name] >= self.policy.healthy_after
            ):
                self._transition(name, True, reason)
        else:
            self._successes[name] = 0
            self._failures[name] = self._failures.get(name, 0) + 1
            if not ejected and self._failures[name] >= self.policy.unhealthy_after:
                self._transition(name, False, reason)

    def request_result(self, name: str, refused: bool) -> None:
        """A forwarded request reached the upstream (False) or could not connect (True)."""
        after = self.policy.passive_after
        if after is None:
            return
        if not refused:
            if self._refused.get(name):
                self._refused[name] = 0
            return
        self._refused[name] = self._refused.get(name, 0) + 1
        if self._refused[name] >= after and name not in self.local_ejections:
            self._transition(name, False, f"{after} requests in a row could not connect")

    def _transition(self, name: str, healthy: bool, reason: str) -> None:
        if healthy:
            self.local_ejections.discard(name)
        else:
            self.local_ejections.add(name)
        self._failures[name] = self._successes[name] = self._refused[name] = 0
        self._pending[name] = _state(healthy, reason)
        logger.warning("canary_mw: upstream %r is %s: %s", name,
                       "healthy again" if healthy else "ejected", reason)  # fmt: skip

    def take_pending(self) -> dict[str, str]:
        """Health states to write to the store (each write is announced to all instances)."""
        pending, self._pending = self._pending, {}
        return pending

    def forget(self, names: Iterable[str]) -> None:
        """Drop counters for upstreams that no longer exist."""
        for table in (self._failures, self._successes, self._refused):
            for name in list(table):
                if name not in names:
                    del table[name]
