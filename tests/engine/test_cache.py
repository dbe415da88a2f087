"""The membership cache: fresh, stale-while-revalidate, expired; bounded; generations."""

from __future__ import annotations

import pytest

from canary_mw.engine.cache import MembershipCache
from canary_mw.keys import SetRef

VIP = (SetRef("vip"), "u1")
OTHER = (SetRef("vip"), "u2")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("age", "answer", "noted_stale"),
    [(0.0, True, False), (0.49, True, False), (0.5, True, True), (0.89, True, True),
     (0.9, None, False), (5.0, None, False)],
    ids=["new", "fresh", "ttl-reached", "stale", "stale-window-over", "long-gone"],
)  # fmt: skip
def test_answers_by_age(age: float, answer: bool | None, noted_stale: bool) -> None:
    clock = Clock()
    cache = MembershipCache(ttl=0.5, stale=0.4, clock=clock)
    cache.put_many({VIP: True}, cache.generation)
    clock.now += age
    assert cache.get(VIP) is answer
    assert (VIP in cache.stale) is noted_stale


def test_without_a_stale_window_an_expired_answer_is_gone() -> None:
    clock = Clock()
    cache = MembershipCache(ttl=0.5, stale=0.0, clock=clock)
    cache.put_many({VIP: False}, cache.generation)
    clock.now += 0.5
    assert cache.get(VIP) is None
    assert not cache.stale


def test_take_stale_hands_each_probe_out_once_up_to_the_limit() -> None:
    clock = Clock()
    cache = MembershipCache(ttl=0.5, stale=1.0, clock=clock)
    cache.put_many({VIP: True, OTHER: False}, cache.generation)
    clock.now += 0.6
    assert (cache.get(VIP), cache.get(OTHER)) == (True, False)
    first = cache.take_stale(1)
    second = cache.take_stale(10)
    assert len(first) == 1
    assert sorted(first + second) == sorted([VIP, OTHER])
    assert cache.take_stale(10) == []
    cache.put_many({VIP: False}, cache.generation)  # read again: fresh, not stale
    assert cache.get(VIP) is False
    assert not cache.stale


def test_a_fresh_answer_takes_its_probe_off_the_stale_list() -> None:
    clock = Clock()
    cache = MembershipCache(ttl=0.5, stale=1.0, clock=clock)
    cache.put_many({VIP: True}, cache.generation)
    clock.now += 0.6
    cache.get(VIP)
    taken = cache.take_stale(10)
    cache.get(VIP)  # another request sees it stale while the re-read is in flight
    cache.put_many(dict.fromkeys(taken, True), cache.generation)
    assert not cache.stale  # read once, not twice


def test_clear_forgets_answers_and_stale_probes_and_refuses_older_lookups() -> None:
    clock = Clock()
    cache = MembershipCache(ttl=0.5, stale=1.0, clock=clock)
    before = cache.generation
    cache.put_many({VIP: True}, before)
    clock.now += 0.6
    cache.get(VIP)
    cache.clear()
    assert cache.get(VIP) is None
    assert not cache.stale
    cache.put_many({VIP: True}, before)  # fetched before the change notification
    assert cache.get(VIP) is None


def test_bounded_oldest_first() -> None:
    cache = MembershipCache(maxsize=3, ttl=10)
    for n in range(5):
        cache.put_many({(SetRef("s"), str(n)): True}, cache.generation)
    assert len(cache) == 3
    assert [cache.get((SetRef("s"), str(n))) for n in range(5)] == [None, None, True, True, True]
