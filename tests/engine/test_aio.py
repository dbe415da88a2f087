"""Timed waits must never swallow a cancellation that races their result."""

from __future__ import annotations

import asyncio

import pytest

from canary_mw._aio import run_within, wait_event
from canary_mw.engine import AsyncEngine
from canary_mw.stores import async_store_from_url

pytestmark = pytest.mark.anyio


async def test_cancel_racing_a_set_event_is_not_lost() -> None:
    event = asyncio.Event()

    async def waiter() -> None:
        while True:  # a loop like the engine's poll loop: a lost cancel would spin forever
            await wait_event(event, 10)
            event.clear()

    task = asyncio.get_running_loop().create_task(waiter())
    await asyncio.sleep(0)
    event.set()
    task.cancel()  # same loop iteration as the wake-up
    done, _ = await asyncio.wait((task,), timeout=2)
    assert done, "the cancellation was swallowed"
    assert task.cancelled()


async def test_wait_event_times_out_and_reports() -> None:
    event = asyncio.Event()
    assert await wait_event(event, 0.01) is False
    event.set()
    assert await wait_event(event, 0.01) is True


async def test_run_within() -> None:
    assert await run_within(asyncio.sleep(0, result=5), 1) == 5
    with pytest.raises(TimeoutError):
        await run_within(asyncio.sleep(10), 0.01)


async def test_engine_closes_promptly_even_when_woken_at_the_same_moment() -> None:
    for round_ in range(20):
        store = async_store_from_url(f"memory://close-race-{round_}")
        engine = AsyncEngine(store, poll_interval=5)
        await engine.start(wait=1)
        await store.set_mode("off")  # a notification wakes the poll loop...
        done, _ = await asyncio.wait(
            (asyncio.ensure_future(engine.aclose()),), timeout=2
        )  # ...while we shut it down
        assert done, f"aclose hung in round {round_}"
