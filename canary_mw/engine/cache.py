"""A bounded, expiring cache of store membership answers (positive and negative)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping

from ..conditions import Probe

__all__ = ["MembershipCache"]


class MembershipCache:
    """``probe -> bool`` with a TTL, at most ``maxsize`` entries (oldest evicted first).

    Reads take no lock (a dict lookup is atomic under the GIL). ``clear()`` bumps a generation
    number; an answer fetched before a clear is dropped by ``put_many`` instead of being
    cached, so a change notification can never be undone by a lookup that was in flight.
    """

    __slots__ = ("_clock", "_data", "_lock", "generation", "maxsize", "ttl")

    def __init__(
        self,
        *,
        maxsize: int = 100_000,
        ttl: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.maxsize = maxsize
        self.ttl = ttl
        self._clock = clock
        self._data: dict[Probe, tuple[bool, float]] = {}
        self._lock = threading.Lock()
        self.generation = 0

    def get(self, probe: Probe) -> bool | None:
        entry = self._data.get(probe)
        if entry is None or entry[1] < self._clock():
            return None
        return entry[0]

    def put_many(self, answers: Mapping[Probe, bool], generation: int) -> None:
        if self.ttl <= 0 or self.maxsize <= 0:
            return
        expires = self._clock() + self.ttl
        with self._lock:
            if generation != self.generation:
                return
            data = self._data
            for probe, value in answers.items():
                data.pop(probe, None)  # re-inserting moves it to the young end
                while len(data) >= self.maxsize:
                    del data[next(iter(data))]
                data[probe] = (value, expires)

    def clear(self) -> None:
        with self._lock:
            self.generation += 1
            self._data = {}

    def __len__(self) -> int:
        return len(self._data)
