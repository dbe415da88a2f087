"""The idle-connection table both forwarding drivers share (canary_mw/forward/idle.py)."""

from __future__ import annotations

from dataclasses import dataclass, field

from canary_mw.forward.idle import IdleConnections


@dataclass(eq=False)  # hashed by identity, as the drivers' connections are
class Conn:
    name: str
    idle_since: float = 0.0
    open: bool = True
    closes: int = field(default=0)

    def still_open(self) -> bool:
        return self.open

    def close(self) -> None:
        self.closes += 1


def idle(table: IdleConnections[Conn], key: str, name: str, at: float) -> Conn:
    connection = Conn(name, idle_since=at)
    table.put(key, connection)
    return connection


def test_take_gives_the_most_recent_of_its_key_only() -> None:
    table: IdleConnections[Conn] = IdleConnections(None, None)
    idle(table, "alice", "a1", 1)
    a2 = idle(table, "alice", "a2", 2)
    idle(table, "bob", "b1", 3)
    assert table.take("alice", 10) == (a2, 0)
    assert table.take("carol", 10) == (None, 0)
    assert len(table) == 2


def test_expired_and_closed_connections_are_closed_and_counted() -> None:
    table: IdleConnections[Conn] = IdleConnections(None, expiry=5)
    fresh = idle(table, "k", "fresh", 8)
    expired = idle(table, "k", "expired", 1)
    closed = idle(table, "k", "closed", 9)
    closed.open = False
    # Most recent first: 'expired' was put after 'fresh', 'closed' last.
    assert table.take("k", 10) == (fresh, 2)
    assert (expired.closes, closed.closes, fresh.closes) == (1, 1, 0)
    assert len(table) == 0


def test_a_key_is_forgotten_with_its_last_connection() -> None:
    # One key per user: the table must not keep an entry per user ever seen.
    table: IdleConnections[Conn] = IdleConnections(None, None)
    for user in range(10_000):
        idle(table, f"user{user}", "c", 0)
        connection, _ = table.take(f"user{user}", 0)
        assert connection is not None
    stale = idle(table, "gone", "c", 0)
    stale.open = False
    assert table.take("gone", 0) == (None, 1)
    idle(table, "old", "c", 0)
    assert table.pop_oldest() is not None
    assert table._by_key == {}
    assert len(table) == 0


def test_pop_oldest_is_the_longest_idle_whatever_its_key() -> None:
    table: IdleConnections[Conn] = IdleConnections(None, None)
    first = idle(table, "bob", "b1", 1)
    second = idle(table, "alice", "a1", 2)
    third = idle(table, "bob", "b2", 3)
    assert [table.pop_oldest() for _ in range(4)] == [first, second, third, None]


def test_room_and_drain() -> None:
    table: IdleConnections[Conn] = IdleConnections(2, None)
    assert table.has_room()
    one, two = idle(table, "a", "1", 0), idle(table, "b", "2", 0)
    assert not table.has_room()
    assert table.drain() == [one, two]
    assert len(table) == 0
    assert table.has_room()
    assert table.take("a", 0) == (None, 0)


def test_pop_neither_asks_nor_closes_any_connection() -> None:
    # The blocking pool calls pop() under its lock, and asks still_open() (a poll) and
    # closes connections (system calls) after letting the lock go: pop() does neither.
    table: IdleConnections[Conn] = IdleConnections(None, expiry=5)
    fresh = idle(table, "k", "fresh", 8)
    closed = idle(table, "k", "closed", 9)
    closed.open = False
    expired = idle(table, "k", "expired", 1)
    asked: list[str] = []
    for connection in (fresh, closed):
        connection.still_open = lambda c=connection: asked.append(c.name) or c.open  # type: ignore[method-assign]

    # The expired one, most recent, is found on the way and handed over, not closed.
    def pop() -> tuple[Conn | None, list[Conn]]:
        connection, expired = table.pop("k", 10)
        return connection, list(expired)

    assert pop() == (closed, [expired])
    assert pop() == (fresh, [])
    assert pop() == (None, [])
    assert asked == []
    assert (fresh.closes, closed.closes, expired.closes) == (0, 0, 0)
    assert table._by_key == {}
