"""LookupBatcher (engine/batch.py): one round trip at a time, probes shared, answers landing
in the cache even when nobody waits any more. The store is a fake whose round trips the test
answers by hand, so every step is an event, not a sleep."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence

import pytest

from canary_mw.engine import batch as batch_module
from canary_mw.engine.batch import LookupBatcher
from canary_mw.keys import Probe, SetRef

pytestmark = pytest.mark.anyio

USERS = SetRef("users")


def probe(value: str) -> Probe:
    return (USERS, value)


class FakeStore:
    """Each round trip waits until the test answers (or fails) it."""

    def __init__(self) -> None:
        self.trips: list[list[Probe]] = []
        self._replies: list[asyncio.Future[Mapping[Probe, bool]]] = []
        self.started = asyncio.Event()

    async def lookup(self, probes: Sequence[Probe]) -> Mapping[Probe, bool]:
        reply: asyncio.Future[Mapping[Probe, bool]] = asyncio.get_running_loop().create_future()
        self.trips.append(list(probes))
        self._replies.append(reply)
        self.started.set()
        return await reply

    async def next_trip(self) -> None:
        await asyncio.wait_for(self.started.wait(), timeout=5)
        self.started.clear()

    def answer(self, trip: int, answers: Mapping[Probe, bool]) -> None:
        self._replies[trip].set_result(answers)

    def fail(self, trip: int, exc: Exception) -> None:
        self._replies[trip].set_exception(exc)


class Outcomes:
    def __init__(self) -> None:
        self.landed: list[tuple[dict[Probe, bool], int]] = []
        self.failed: list[BaseException] = []
        self.stalled: list[BaseException] = []
        self.generation = 7


def batcher(store: FakeStore, outcomes: Outcomes, max_batch: int = 1000) -> LookupBatcher:
    return LookupBatcher(
        store.lookup,
        generation=lambda: outcomes.generation,
        landed=lambda answers, gen: outcomes.landed.append((dict(answers), gen)),
        failed=outcomes.failed.append,
        stalled=outcomes.stalled.append,
        max_batch=max_batch,
    )


async def test_probes_asked_meanwhile_go_out_together_in_the_next_round_trip() -> None:
    store, outcomes = FakeStore(), Outcomes()
    lookups = batcher(store, outcomes)
    first = asyncio.ensure_future(lookups.answers([probe("a")], budget=5))
    await store.next_trip()
    # While "a" is in flight: "a" again (shared, not asked twice), "b" and "c".
    second = asyncio.ensure_future(lookups.answers([probe("a"), probe("b")], budget=5))
    third = asyncio.ensure_future(lookups.answers([probe("c")], budget=5))
    await asyncio.sleep(0)  # let both register (one loop turn, not a wait for time)
    store.answer(0, {probe("a"): True})
    await store.next_trip()
    assert store.trips == [[probe("a")], [probe("b"), probe("c")]]
    store.answer(1, {probe("b"): False, probe("c"): True})
    assert await first == {probe("a"): True}
    assert await second == {probe("a"): True, probe("b"): False}
    assert await third == {probe("c"): True}
    assert outcomes.landed == [({probe("a"): True}, 7), ({probe("b"): False, probe("c"): True}, 7)]


async def test_a_request_that_stops_waiting_does_not_cancel_the_lookup() -> None:
    store, outcomes = FakeStore(), Outcomes()
    lookups = batcher(store, outcomes)
    assert await lookups.answers([probe("late")], budget=0) == {}
    await store.next_trip()
    store.answer(0, {probe("late"): True})
    await lookups.answers([], budget=0)  # one more turn of the loop for the runner
    for _ in range(3):
        await asyncio.sleep(0)
    assert outcomes.landed == [({probe("late"): True}, 7)]
    assert outcomes.failed == []


async def test_the_generation_is_read_before_the_round_trip() -> None:
    store, outcomes = FakeStore(), Outcomes()
    lookups = batcher(store, outcomes)
    waiting = asyncio.ensure_future(lookups.answers([probe("a")], budget=5))
    await store.next_trip()
    outcomes.generation = 8  # the cache was emptied while the answer was on its way
    store.answer(0, {probe("a"): True})
    await waiting
    assert outcomes.landed == [({probe("a"): True}, 7)]  # so the cache can drop it


async def test_a_failed_round_trip_is_reported_once_and_every_waiter_gets_nothing() -> None:
    store, outcomes = FakeStore(), Outcomes()
    lookups = batcher(store, outcomes)
    first = asyncio.ensure_future(lookups.answers([probe("a")], budget=5))
    await store.next_trip()
    second = asyncio.ensure_future(lookups.answers([probe("b")], budget=5))
    await asyncio.sleep(0)
    error = ConnectionError("redis down")
    store.fail(0, error)
    assert await first == {}
    assert await second == {}
    assert outcomes.failed == [error]
    assert store.trips == [[probe("a")]]  # "b" was not sent: the breaker decides when


async def test_max_batch_bounds_a_round_trip() -> None:
    store, outcomes = FakeStore(), Outcomes()
    lookups = batcher(store, outcomes, max_batch=2)
    probes = [probe(str(n)) for n in range(5)]
    waiting = asyncio.ensure_future(lookups.answers(probes, budget=5))
    for trip in range(3):
        await store.next_trip()
        store.answer(trip, dict.fromkeys(store.trips[trip], True))
    assert await waiting == dict.fromkeys(probes, True)
    assert [len(trip) for trip in store.trips] == [2, 2, 1]


async def test_a_probe_the_store_did_not_answer_is_left_out() -> None:
    store, outcomes = FakeStore(), Outcomes()
    lookups = batcher(store, outcomes)
    waiting = asyncio.ensure_future(lookups.answers([probe("a"), probe("b")], budget=5))
    await store.next_trip()
    store.answer(0, {probe("a"): True})
    assert await waiting == {probe("a"): True}


async def test_a_round_trip_unanswered_past_stall_after_is_reported_as_stalled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store, outcomes = FakeStore(), Outcomes()
    lookups = batcher(store, outcomes)
    lookups.ask([probe("a")])
    await store.next_trip()  # in flight, never answered
    monkeypatch.setattr(batch_module, "STALL_AFTER", 3600.0)
    assert await lookups.answers([probe("a")], budget=0) == {}
    assert outcomes.stalled == []  # a young round trip is a busy loop, not a hung Redis
    monkeypatch.setattr(batch_module, "STALL_AFTER", -1.0)  # any age is past it
    assert await lookups.answers([probe("a")], budget=0) == {}
    assert len(outcomes.stalled) == 1
    assert isinstance(outcomes.stalled[0], TimeoutError)
    await lookups.aclose()


async def test_aclose_cancels_the_round_trip_and_the_waiters() -> None:
    store, outcomes = FakeStore(), Outcomes()
    lookups = batcher(store, outcomes)
    futures = lookups.ask([probe("a")])
    await store.next_trip()
    await lookups.aclose()
    assert futures[probe("a")].cancelled()  # nobody is left waiting on a closed engine
    assert outcomes.failed == []
    assert lookups.ask([]) == {}
