"""The idle keep-alive connections of a pool, by key: bookkeeping only, shared by both drivers.

``pool.py`` (asyncio) and ``sync_pool.py`` (blocking, under its own lock) keep their idle
connections here. A key is an origin plus ``partition.py``'s user key, so there are as many
keys as users: a key whose last connection is taken is forgotten at once (the table never
holds more entries than idle connections), and the connection idle the longest, whatever its
key, is found without walking the keys.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Hashable, Sequence
from typing import Generic, Protocol, TypeVar

__all__ = ["IdleConnections"]


class Pooled(Protocol):
    idle_since: float

    @property
    def origin(self) -> Hashable: ...

    def still_open(self) -> bool: ...

    def close(self) -> None: ...


C = TypeVar("C", bound=Pooled)


class IdleConnections(Generic[C]):
    """At most ``max_idle`` idle connections (None: no limit), each reused for at most
    ``expiry`` seconds after it went idle (None: no limit)."""

    __slots__ = ("_by_key", "_expiry", "_max", "_oldest_first")

    def __init__(self, max_idle: int | None, expiry: float | None):
        self._max = max_idle
        self._expiry = expiry
        self._by_key: dict[Hashable, deque[C]] = {}
        self._oldest_first: OrderedDict[C, Hashable] = OrderedDict()

    def __len__(self) -> int:
        return len(self._oldest_first)

    def has_room(self) -> bool:
        return self._max is None or len(self._oldest_first) < self._max

    def offer(self, connection: C, now: float) -> bool:
        """Keep ``connection`` idle (under its ``origin``) from ``now``, if there is room."""
        if not self.has_room():
            return False
        connection.idle_since = now
        self.put(connection.origin, connection)
        return True

    def put(self, key: Hashable, connection: C) -> None:
        """``connection`` (its ``idle_since`` set) is idle, for requests under ``key``."""
        self._by_key.setdefault(key, deque()).append(connection)
        self._oldest_first[connection] = key

    def take(self, key: Hashable, now: float) -> tuple[C | None, int]:
        """The most recently idle connection under ``key`` that is neither expired nor
        closed by the upstream (the least likely to be stale), and how many were found
        stale on the way: those are closed here, and no longer idle."""
        stale = 0
        while True:
            connection, expired = self.pop(key, now)
            for old in expired:
                old.close()
            stale += len(expired)
            if connection is None or connection.still_open():
                return connection, stale
            connection.close()
            stale += 1

    def pop(self, key: Hashable, now: float) -> tuple[C | None, Sequence[C]]:
        """Like :meth:`take`, but nothing is asked of or done to a connection (a system
        call: the blocking pool makes none under its lock): the most recent one that has not
        expired, unasked whether the upstream closed it, and the expired ones found on the
        way, no longer idle, for the caller to close."""
        idle = self._by_key.get(key)
        if idle is None:
            return None, ()
        expired: list[C] = []
        found = None
        while idle:
            connection = idle.pop()
            del self._oldest_first[connection]
            if self._expiry is None or now - connection.idle_since <= self._expiry:
                found = connection
                break
            expired.append(connection)
        if not idle:
            del self._by_key[key]
        return found, expired

    def pop_oldest(self) -> C | None:
        """The connection idle the longest, whatever its key (the caller closes it)."""
        if not self._oldest_first:
            return None
        connection, key = self._oldest_first.popitem(last=False)
        idle = self._by_key[key]
        idle.popleft()  # the oldest of its key too: both are in the order they went idle
        if not idle:
            del self._by_key[key]
        return connection

    def drain(self) -> list[C]:
        """Every idle connection, forgotten (the caller closes them)."""
        connections = list(self._oldest_first)
        self._oldest_first.clear()
        self._by_key.clear()
        return connections
