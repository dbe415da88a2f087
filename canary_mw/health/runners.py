"""The two runners of the check loop: a thread for CanaryWSGI, a task for CanaryRouter.

Each runs :func:`~canary_mw.health.loop.check_round` every ``interval`` (sooner when a
forwarded request changed a verdict, so the fleet hears of it at once), doing the requests
and store writes the plan asks for in its own way. Check requests open a new connection
each time: a check is about whether the backend takes connections now, and a pooled one
could hide that (or fail only because the backend closed it while idle).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import httpx

from .._aio import wait_event
from ..errors import StoreError
from .loop import Backends, Plan, Probe, check_round, failure, judge
from .state import SharedState
from .tracker import BackendHealth

__all__ = ["AsyncChecker", "BlockingChecker"]

logger = logging.getLogger("canary_mw.health")

#: ``share(records, lapsed, announce)``: write records (URL → JSON), delete lapsed fields,
#: announce the change when asked (see loop.Share).
SyncShare = Callable[[Mapping[str, str], Sequence[str], bool], None]
AsyncShare = Callable[[Mapping[str, str], Sequence[str], bool], Awaitable[None]]
#: Called after each round (metrics): the table is current then.
AfterRound = Callable[[BackendHealth], None]

_NO_KEEPALIVE = httpx.Limits(max_keepalive_connections=0)


def _client_options(
    health: BackendHealth, headers: Sequence[tuple[bytes, bytes]]
) -> dict[str, Any]:
    return {
        "timeout": health.policy.timeout, "trust_env": False, "follow_redirects": False,
        "limits": _NO_KEEPALIVE, "headers": list(headers),
    }  # fmt: skip


class _Runner:
    """What both runners share: their inputs, and how a round begins, writes and ends."""

    def __init__(
        self,
        health: BackendHealth,
        backends: Callable[[], Backends],
        *,
        headers: Sequence[tuple[bytes, bytes]] = (),
        after_round: AfterRound | None = None,
    ):
        self.health = health
        self._backends = backends
        self._client_options = _client_options(health, headers)
        self._after_round = after_round
        # Said once when the store cannot take records, once when it can again: a round
        # runs every interval, and a Redis outage is already reported by the engine.
        self._share_failing = False

    def _plan(self) -> Plan:
        return check_round(self.health, self._backends())

    def _written(self, error: StoreError | None) -> bool:
        """What the plan is told about a write (False: kept here, tried again next round)."""
        if error is not None and not self._share_failing:
            logger.warning("canary_mw: cannot share backend health (kept in this router, "
                           "retried every round): %s", error)  # fmt: skip
        elif error is None and self._share_failing:
            logger.warning("canary_mw: backend health is shared again")
        self._share_failing = error is not None
        return error is None

    def _done(self, done: StopIteration) -> dict[str, SharedState]:
        if self._after_round is not None:
            self._after_round(self.health)
        return done.value  # type: ignore[no-any-return]


class BlockingChecker(_Runner):
    """The check loop in a daemon thread (one per process)."""

    def __init__(self, health: BackendHealth, backends: Callable[[], Backends], share: SyncShare,
                 **options: Any):  # fmt: skip
        super().__init__(health, backends, **options)
        self._share = share
        self._wake = threading.Event()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stopped.clear()
        self.health.wake = self._wake.set
        self._thread = threading.Thread(target=self._run, name="canary_mw-health", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stopped.set()
        self._wake.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def _run(self) -> None:
        with httpx.Client(**self._client_options) as client:
            while not self._stopped.is_set():
                try:
                    self.run_round(client)
                except Exception:  # the loop must outlive any one bad round
                    logger.exception("canary_mw: health check round failed")
                self._wake.wait(self.health.policy.interval)
                self._wake.clear()

    def run_round(self, client: httpx.Client) -> dict[str, SharedState]:
        plan, error = self._plan(), None
        try:
            step = next(plan)
            while True:
                if isinstance(step, Probe):
                    step = plan.send([self._check(client, url) for url in step.urls])
                    continue
                try:
                    self._share(step.records, step.lapsed, step.announce)
                except StoreError as exc:
                    error = exc
                step = plan.send(self._written(error))
        except StopIteration as done:
            return self._done(done)

    @staticmethod
    def _check(client: httpx.Client, url: httpx.URL) -> tuple[bool, str]:
        try:
            return judge(client.get(url).status_code)
        except httpx.HTTPError as exc:
            return failure(exc)


class AsyncChecker(_Runner):
    """The check loop as a task on the router's event loop."""

    def __init__(self, health: BackendHealth, backends: Callable[[], Backends], share: AsyncShare,
                 **options: Any):  # fmt: skip
        super().__init__(health, backends, **options)
        self._share = share
        self._wake = asyncio.Event()
        self._stopped = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start in the running loop. A task left on another loop (a router reused by a new
        loop, as test clients do) is left to that loop; events bind to one loop, so the new
        task gets its own."""
        loop = asyncio.get_running_loop()
        if self._task is not None and not self._task.done() and self._task.get_loop() is loop:
            return
        self._wake, self._stopped = asyncio.Event(), asyncio.Event()
        self.health.wake = self._wake.set  # request reports run on this loop's thread
        self._task = loop.create_task(self._run(), name="canary_mw-health")

    async def stop(self, timeout: float = 5.0) -> None:
        self._stopped.set()
        self._wake.set()
        task, self._task = self._task, None
        if task is not None and task.get_loop() is asyncio.get_running_loop():
            await asyncio.wait((task,), timeout=timeout)
            task.cancel()

    async def _run(self) -> None:
        async with httpx.AsyncClient(**self._client_options) as client:
            while not self._stopped.is_set():
                try:
                    await self.run_round(client)
                except Exception:  # the loop must outlive any one bad round
                    logger.exception("canary_mw: health check round failed")
                await wait_event(self._wake, self.health.policy.interval)
                self._wake.clear()

    async def run_round(self, client: httpx.AsyncClient) -> dict[str, SharedState]:
        plan, error = self._plan(), None
        try:
            step = next(plan)
            while True:
                if isinstance(step, Probe):
                    results = await asyncio.gather(*(self._check(client, u) for u in step.urls))
                    step = plan.send(list(results))
                    continue
                try:
                    await self._share(step.records, step.lapsed, step.announce)
                except StoreError as exc:
                    error = exc
                step = plan.send(self._written(error))
        except StopIteration as done:
            return self._done(done)

    @staticmethod
    async def _check(client: httpx.AsyncClient, url: httpx.URL) -> tuple[bool, str]:
        try:
            return judge((await client.get(url)).status_code)
        except httpx.HTTPError as exc:
            return failure(exc)
