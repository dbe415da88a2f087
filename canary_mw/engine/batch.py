"""Request-time membership lookups for the asyncio engine: batched, shared, never abandoned.

A request whose decision waits on a membership answer (a user id in a Redis set it has not
seen recently) asks for it here and waits up to its budget. The lookup itself is not tied
to that request:

- at most one round trip is in flight; probes asked for meanwhile go out together in the
  next one, and a probe already asked for is never asked again, so Redis sees one pipeline
  per round trip however many requests wait, on one connection;
- a request that stops waiting (its budget is 50 ms and the event loop may be busy) does
  not cancel the lookup: the answer still lands in the cache for the next request;
- only the round trip's own outcome, under the store's normal timeout, counts as a Redis
  success or failure. A request-side timeout is no evidence that Redis is down, and
  counting it as one tripped the circuit breaker on a healthy Redis whenever the router
  was busy (routing VIP users to stable under load);
- except for a stall: a round trip still unanswered after ``STALL_AFTER`` seconds is a
  hung Redis, not a busy router (replies queue for milliseconds behind other callbacks, not
  for a quarter of a second). ``stalled()`` is called then, so the breaker opens long
  before the store's timeout ends the round trip, and requests stop waiting on it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence

from ..keys import Probe

__all__ = ["LookupBatcher"]

logger = logging.getLogger("canary_mw.engine")

Lookup = Callable[[Sequence[Probe]], Awaitable[Mapping[Probe, bool]]]

#: Seconds a round trip may stay unanswered before Redis is taken for hung.
STALL_AFTER = 0.25


class LookupBatcher:
    """``await batcher.answers(probes, budget)``: the answers that came within ``budget``.

    ``lookup`` does one round trip for a list of probes. ``generation()`` is read before
    each round trip and handed to ``landed(answers, generation)`` with its answers (the
    cache drops answers older than its last invalidation); ``failed(exc)`` gets a round
    trip's error. ``max_batch`` bounds the probes of one round trip.
    """

    def __init__(
        self,
        lookup: Lookup,
        *,
        generation: Callable[[], int],
        landed: Callable[[Mapping[Probe, bool], int], None],
        failed: Callable[[BaseException], None],
        stalled: Callable[[BaseException], None],
        max_batch: int = 1000,
    ):
        self._lookup = lookup
        self._generation = generation
        self._landed = landed
        self._failed = failed
        self._stalled = stalled
        self._max_batch = max_batch
        self._flying_since = 0.0
        self._asked: dict[Probe, asyncio.Future[bool]] = {}  # waiting for a round trip
        self._flying: dict[Probe, asyncio.Future[bool]] = {}  # in the round trip now
        self._runner: asyncio.Task[None] | None = None

    def ask(self, probes: Iterable[Probe]) -> dict[Probe, asyncio.Future[bool]]:
        """Futures for the answers, asking for the probes nobody has asked for yet."""
        futures = {}
        for probe in probes:
            future = self._flying.get(probe) or self._asked.get(probe)
            if future is None:
                future = self._asked[probe] = asyncio.get_running_loop().create_future()
            futures[probe] = future
        if self._asked and self._runner is None:
            self._runner = asyncio.ensure_future(self._run())
        return futures

    async def answers(self, probes: Iterable[Probe], budget: float) -> dict[Probe, bool]:
        futures = self.ask(probes)
        waiting = [future for future in futures.values() if not future.done()]
        if waiting:
            # asyncio.wait: the futures are not cancelled when the budget runs out.
            await asyncio.wait(waiting, timeout=budget)
            if self._flying:
                age = asyncio.get_running_loop().time() - self._flying_since
                if age > STALL_AFTER:
                    self._stalled(TimeoutError(f"Redis has not answered for {age * 1000:.0f} ms"))
        return {
            probe: future.result()
            for probe, future in futures.items()
            if future.done() and not future.cancelled() and future.exception() is None
        }

    async def _run(self) -> None:
        try:
            while self._asked:
                batch = dict(list(self._asked.items())[: self._max_batch])
                for probe in batch:
                    del self._asked[probe]
                self._flying = batch
                self._flying_since = asyncio.get_running_loop().time()
                generation = self._generation()
                try:
                    answers = await self._lookup(list(batch))
                except asyncio.CancelledError:
                    # The engine is closing: its waiters must not wait for an answer that
                    # will never come (the finally below no longer sees this batch).
                    for future in batch.values():
                        future.cancel()
                    raise
                except Exception as exc:
                    self._failed(exc)
                    # Everyone waiting gets the failure now; the circuit breaker decides
                    # when requests may ask again.
                    batch.update(self._asked)
                    self._asked = {}
                    for future in batch.values():
                        if not future.done():
                            future.set_exception(exc)
                            future.exception()  # retrieved: the waiters may have left
                    return
                finally:
                    self._flying = {}
                self._landed(answers, generation)
                for probe, future in batch.items():
                    if not future.done():
                        if probe in answers:
                            future.set_result(answers[probe])
                        else:  # the store answered for fewer probes than asked
                            future.set_exception(LookupError(probe))
                            future.exception()
        finally:
            self._runner = None
            for future in (*self._asked.values(), *self._flying.values()):
                future.cancel()  # only reached when cancelled: the engine is closing
            self._asked, self._flying = {}, {}

    async def aclose(self) -> None:
        runner = self._runner
        if runner is not None:
            runner.cancel()
            await asyncio.wait((runner,))
