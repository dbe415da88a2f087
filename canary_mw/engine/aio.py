"""The asyncio engine, for ASGI apps: background tasks keep it current."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from .._aio import wait_event
from ..decide import decide_or_stable
from ..errors import StoreError
from ..facts import RequestFacts
from ..keys import Probe
from ..outcome import Decision
from ..stores.store import AsyncStore
from .batch import LookupBatcher
from .core import LISTEN_WAKEUP, MAX_ROUNDS, REVALIDATE_BATCH, EngineCore, LayeredAnswers

__all__ = ["AsyncEngine"]

logger = logging.getLogger("canary_mw.engine")


class AsyncEngine(EngineCore):
    """Decide requests against a store snapshot kept current by two background tasks.

    Tasks start on first use in the running event loop (or explicitly with ``start()``,
    e.g. from a lifespan handler) and stop with ``aclose()``.

    >>> engine = AsyncEngine(async_store_from_url("redis://localhost:6379/0"))
    >>> decision = await engine.decide(ASGIFacts(scope))
    """

    def __init__(self, store: AsyncStore, **options: Any) -> None:
        super().__init__(**options)
        if not isinstance(store, AsyncStore):
            raise TypeError("AsyncEngine needs an AsyncStore; use Engine for a blocking Store")
        self.store = store
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._wake: asyncio.Event | None = None
        self._attempted: asyncio.Event | None = None
        self._stopping = False
        #: How long a request waits for a membership answer (the store's lookup budget).
        self.lookup_budget = store.lookup_timeout
        # Requests that miss the cache share batched round trips (see batch.py), so Redis
        # load follows the number of distinct keys per cache TTL, not the request rate.
        self._batcher = LookupBatcher(
            lambda probes: self.store.lookup(probes, within_budget=False),
            generation=lambda: self.cache.generation,
            landed=self._revalidated,
            failed=self._lookup_failed,
            stalled=self.breaker.trip,
            max_batch=REVALIDATE_BATCH,
        )

    async def decide(self, facts: RequestFacts) -> Decision:
        if self._loop is not asyncio.get_running_loop():
            await self.start(wait=self.first_load_wait)
        decision = self.decide_cached(facts)
        if decision.pending:
            decision = await self.resolve(facts, decision)
        return decision

    def decide_cached(self, facts: RequestFacts) -> Decision:
        """The decision from memory alone, without awaiting: it may be ``unknown`` with
        ``pending`` probes for :meth:`resolve`. Call :meth:`start` in this loop first.
        (Awaiting ``decide`` costs a coroutine per request; the hot path avoids it.)"""
        decision = self.memo.decide(facts, self.builder.current)
        if self.cache.stale and not self.breaker.is_open:
            # Answers given out past their TTL: read them again, nobody waits for them.
            self._batcher.ask(self.cache.take_stale(REVALIDATE_BATCH))
        return decision

    async def resolve(self, facts: RequestFacts, decision: Decision) -> Decision:
        """Look up the probes an ``unknown`` decision is waiting for, within the budget, and
        decide again (against the current snapshot) with the answers."""
        return await self._resolve(facts, self.snapshot, decision)

    async def _resolve(self, facts: RequestFacts, snapshot: Any, decision: Decision) -> Decision:
        local: dict[Probe, bool] = {}
        for _ in range(MAX_ROUNDS):
            if not self.breaker.allow():
                return decision
            # Never raises: what did not come within the budget is unknown, hence stable.
            fetched = await self._batcher.answers(decision.pending, self.lookup_budget)
            news = {probe: value for probe, value in fetched.items() if probe not in local}
            if not news:
                return decision
            local.update(news)
            answers = LayeredAnswers(local, self.cache)
            decision = decide_or_stable(facts, snapshot, answers, self.overrides)
            if not decision.pending:
                return decision
        return decision

    # -- lifecycle ---------------------------------------------------------------------
    async def start(self, *, wait: float | None = None) -> bool:
        """Start the background tasks in this loop (idempotent) and wait up to ``wait``
        seconds (default 1) for the first store read. True once loaded."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._loop = loop
            self._stopping = False
            self._wake = asyncio.Event()
            self._attempted = asyncio.Event()
            self._tasks = [
                loop.create_task(self._poll_loop(), name="canary_mw-poll"),
                loop.create_task(self._listen_loop(), name="canary_mw-listen"),
            ]
        assert self._attempted is not None
        await wait_event(self._attempted, 1.0 if wait is None else wait)
        return self.snapshot.loaded

    async def refresh(self) -> None:
        """Read the store now (raises StoreError on failure)."""
        for _ in range(2):
            sets, lists = self.builder.wants()
            if self._apply(await self.store.read_state(sets, lists)):
                break
        self.breaker.success()
        cold = self._cold_dbs()
        if cold:
            await self.store.warm(cold)
            self._warm_dbs |= cold

    async def _poll_loop(self) -> None:
        assert self._wake is not None
        assert self._attempted is not None
        wake, attempted = self._wake, self._attempted
        while not self._stopping:
            wake.clear()
            try:
                await self.refresh()
            except StoreError as exc:
                self._refresh_failed(exc)
            except Exception:
                logger.exception("canary_mw: unexpected error while refreshing rules")
            self.refreshes += 1
            counts = self._traffic_due()
            if counts:
                with contextlib.suppress(StoreError):  # best effort: not worth a retry queue
                    await self.store.add_traffic(counts)
            attempted.set()
            await wait_event(wake, self.poll_interval)

    async def _listen_loop(self) -> None:
        assert self._wake is not None
        wake = self._wake
        backoff = 0.05
        while not self._stopping:
            try:
                subscription = await self.store.subscribe()
            except Exception as exc:
                logger.debug("canary_mw: subscribe failed: %s", exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            try:
                while not self._stopping:
                    if await subscription.get(LISTEN_WAKEUP) is not None:
                        self._notice()
                        wake.set()
                        backoff = 0.05
            except Exception as exc:
                logger.debug("canary_mw: subscription lost: %s", exc)
            finally:
                await subscription.close()
            await asyncio.sleep(backoff)

    async def aclose(self) -> None:
        """Stop the background tasks (the store is left open: close it if you own it).

        Safe to call twice. A single ``cancel()`` is not enough on Python <= 3.11: redis-py
        awaits ``asyncio.wait_for``, which can swallow a cancellation (CPython gh-86296), so
        the loops also watch a stop flag and we cancel again until they are gone.
        """
        self._stopping = True
        if self._wake is not None:
            self._wake.set()
        pending = set(self._tasks)
        self._tasks, self._loop = [], None
        await self._batcher.aclose()
        while pending:
            for task in pending:
                task.cancel()
            _, pending = await asyncio.wait(pending, timeout=0.1)
        self._stopping = False
