"""Timed waits that never swallow a cancellation.

``asyncio.wait_for`` on Python <= 3.11 (and a cancel scope, in our tests) can lose a
``task.cancel()`` that arrives in the same loop iteration as the awaited result: the task then
carries on as if nothing happened, and shutdown waits for it forever. ``asyncio.wait`` does
not catch the caller's cancellation at all, so these helpers are built on it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

__all__ = ["run_within", "wait_event"]

T = TypeVar("T")


async def wait_event(event: asyncio.Event, timeout: float) -> bool:
    """Wait until ``event`` is set or ``timeout`` seconds pass; True if it was set."""
    if event.is_set():
        return True
    waiter = asyncio.ensure_future(event.wait())
    try:
        done, _ = await asyncio.wait((waiter,), timeout=timeout)
    finally:
        waiter.cancel()
    return bool(done)


async def run_within(awaitable: Awaitable[T], timeout: float) -> T:
    """Await ``awaitable`` for at most ``timeout`` seconds; raises TimeoutError after that
    (the work is cancelled) and never outlives a cancellation of the caller."""
    task = asyncio.ensure_future(awaitable)
    try:
        done, _ = await asyncio.wait((task,), timeout=timeout)
    finally:
        if not task.done():
            task.cancel()
    if not done:
        raise TimeoutError
    return task.result()
