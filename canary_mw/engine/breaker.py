"""A circuit breaker so a dead or hung Redis costs requests nothing once detected."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

__all__ = ["CircuitBreaker"]

logger = logging.getLogger("canary_mw.store")


class CircuitBreaker:
    """Closed until ``threshold`` consecutive failures (or one ``trip()``), then open.

    While open, ``allow()`` refuses request-time lookups, except one trial per
    ``reset_timeout`` seconds. Any success (a trial, or the background refresher reading the
    store) closes it again.
    """

    __slots__ = ("_clock", "_failures", "_open_until", "reset_timeout", "threshold")

    def __init__(
        self,
        *,
        threshold: int = 3,
        reset_timeout: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.threshold = threshold
        self.reset_timeout = reset_timeout
        self._clock = clock
        self._failures = 0
        self._open_until = 0.0

    @property
    def is_open(self) -> bool:
        return self._open_until > 0

    def allow(self) -> bool:
        if not self._open_until:
            return True
        now = self._clock()
        if now < self._open_until:
            return False
        self._open_until = now + self.reset_timeout  # let exactly one trial through
        return True

    def success(self) -> None:
        self._failures = 0
        if self._open_until:
            self._open_until = 0.0
            logger.warning("canary_mw: store reachable again; membership lookups resumed")

    def failure(self, reason: object = None) -> None:
        self._failures += 1
        if self._failures >= self.threshold:
            self.trip(reason)

    def trip(self, reason: object = None) -> None:
        if not self._open_until:
            logger.error(
                "canary_mw: store unavailable (%s); routing on the last snapshot, "
                "unknown memberships go to stable",
                reason,
            )
        self._open_until = self._clock() + self.reset_timeout
