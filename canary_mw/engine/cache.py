"""A bounded, expiring cache of store membership answers (positive and negative)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping

from ..keys import Probe

__all__ = ["MembershipCache"]


class MembershipCache:
    """``probe -> bool`` with a TTL, at most ``maxsize`` entries (oldest evicted first).

    An answer is fresh for ``ttl`` seconds; for ``stale`` seconds more it is still given
    out, and the probe is noted in ``self.stale`` so the engine reads it again in the
    background (stale-while-revalidate): a request never waits on Redis for a key it has
    seen recently, and ``ttl + stale`` bounds how old an answer can be.

    Reads take no lock (a dict lookup is atomic under the GIL). ``clear()`` bumps a generation
    number; an answer fetched before a clear is dropped by ``put_many`` instead of being
    cached, so a change notification can never be undone by a lookup that was in flight.
    """

    __slots__ = (
        "_clock", "_data", "_lock", "epoch", "generation", "maxsize", "stale", "stale_for", "ttl",
    )  # fmt: skip

    def __init__(
        self,
        *,
        maxsize: int = 100_000,
        ttl: float = 0.5,
        stale: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.maxsize = maxsize
        self.ttl = ttl
        self.stale_for = stale
        self._clock = clock
        self._data: dict[Probe, tuple[bool, float]] = {}  # probe -> (answer, fresh until)
        self._lock = threading.Lock()
        self.generation = 0
        #: Bumped whenever an answer already given out may no longer be given: a clear, an
        #: eviction, a cached answer replaced by a different one. The decision memo
        #: (``memo.py``) drops what it remembered when it changes.
        self.epoch = 0
        #: Probes given out past their TTL since the last ``take_stale()``.
        self.stale: set[Probe] = set()

    def get(self, probe: Probe) -> bool | None:
        return self.get_fresh_until(probe)[0]

    def get_fresh_until(self, probe: Probe) -> tuple[bool | None, float]:
        """``get(probe)``, and until when that answer is given out as it is: 0.0 for an answer
        given out stale (it is being read again) or no answer."""
        entry = self._data.get(probe)
        if entry is None:
            return None, 0.0
        answer, fresh_until = entry
        now = self._clock()
        if now < fresh_until:
            return answer, fresh_until
        if now < fresh_until + self.stale_for:
            self.stale.add(probe)
            return answer, 0.0
        return None, 0.0

    def take_stale(self, limit: int) -> list[Probe]:
        """Up to ``limit`` of the probes to read again (they leave the stale set)."""
        taken: list[Probe] = []
        stale = self.stale
        while stale and len(taken) < limit:
            taken.append(stale.pop())
        return taken

    def put_many(self, answers: Mapping[Probe, bool], generation: int) -> None:
        if self.ttl <= 0 or self.maxsize <= 0:
            return
        expires = self._clock() + self.ttl
        with self._lock:
            if generation != self.generation:
                return
            # Fresh again: requests that saw them stale while this lookup was in flight
            # must not cause a second read.
            self.stale.difference_update(answers)
            data = self._data
            for probe, value in answers.items():
                old = data.pop(probe, None)  # re-inserting moves it to the young end
                if old is not None and old[0] != value:
                    self.epoch += 1
                while len(data) >= self.maxsize:
                    del data[next(iter(data))]
                    self.epoch += 1
                data[probe] = (value, expires)

    def clear(self) -> None:
        with self._lock:
            self.generation += 1
            self.epoch += 1
            self._data = {}
            self.stale = set()

    def __len__(self) -> int:
        return len(self._data)
