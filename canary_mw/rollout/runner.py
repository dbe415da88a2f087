"""The drivers of RolloutAgent.tick(): a task on the router's event loop (AsyncRolloutRunner),
a daemon thread (ThreadRolloutRunner, for WSGI and ``canary-mw rollout run``), and
``run_tick`` / ``run_tick_async`` for one tick. They run the store plans the tick yields
with the store's own runner and POST notifications with httpx."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Generator, Mapping
from typing import Any

import httpx

from .._aio import wait_event
from .controller import Post, RolloutAgent
from .plan import Rollout
from .render import event_for

__all__ = [
    "AsyncRolloutRunner", "ThreadRolloutRunner", "notify", "post", "post_async", "run_tick",
    "run_tick_async",
]  # fmt: skip

logger = logging.getLogger("canary_mw.rollout")

#: Seconds a notification or confirmation request may take.
HTTP_TIMEOUT = 5.0
_CLIENT_OPTIONS: Mapping[str, Any] = {
    "timeout": HTTP_TIMEOUT, "trust_env": False, "follow_redirects": False,
}  # fmt: skip


def post(url: str, payload: Mapping[str, Any], client: httpx.Client | None = None) -> int | None:
    """POST JSON; the status, or None when there was no answer (logged, never raised)."""
    try:
        if client is None:
            with httpx.Client(**_CLIENT_OPTIONS) as own:
                return own.post(url, json=dict(payload)).status_code
        return client.post(url, json=dict(payload)).status_code
    except httpx.HTTPError as exc:
        logger.warning("canary_mw: rollout: POST %s failed: %s", url, exc)
        return None


def notify(rollout: Rollout, action: str, actor: str) -> None:
    """POST an operator's move to the rollout's ``notify_url``, as the controller POSTs its own."""
    if rollout.plan.notify_url:
        post(rollout.plan.notify_url, event_for(rollout, action, actor))


async def post_async(url: str, payload: Mapping[str, Any], client: httpx.AsyncClient) -> int | None:
    try:
        return (await client.post(url, json=dict(payload))).status_code
    except httpx.HTTPError as exc:
        logger.warning("canary_mw: rollout: POST %s failed: %s", url, exc)
        return None


def run_tick(store: Any, tick: Generator[Any, Any, float], client: httpx.Client) -> float:
    """Drive one tick with a blocking Store."""
    result: Any = None
    error: BaseException | None = None
    while True:
        try:
            op = tick.send(result) if error is None else tick.throw(error)
        except StopIteration as done:
            return float(done.value)
        result, error = None, None
        try:
            result = post(op.url, op.payload, client) if isinstance(op, Post) else store._run(op)
        except Exception as exc:  # handed to the tick, which decides what it means
            error = exc


async def run_tick_async(
    store: Any, tick: Generator[Any, Any, float], client: httpx.AsyncClient
) -> float:
    """Drive one tick with an AsyncStore."""
    result: Any = None
    error: BaseException | None = None
    while True:
        try:
            op = tick.send(result) if error is None else tick.throw(error)
        except StopIteration as done:
            return float(done.value)
        result, error = None, None
        try:
            if isinstance(op, Post):
                result = await post_async(op.url, op.payload, client)
            else:
                result = await store._run(op)
        except Exception as exc:
            error = exc


class AsyncRolloutRunner:
    """The agent as a task on the router's event loop (start() in the loop, await stop())."""

    def __init__(self, store: Any, agent: RolloutAgent):
        self.store = store
        self.agent = agent
        self._task: asyncio.Task[None] | None = None
        self._stopped = asyncio.Event()

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self._task is not None and not self._task.done() and self._task.get_loop() is loop:
            return
        self._stopped = asyncio.Event()
        self._task = loop.create_task(self._run(), name="canary_mw-rollout")

    async def stop(self, timeout: float = 5.0) -> None:
        self._stopped.set()
        task, self._task = self._task, None
        if task is not None and task.get_loop() is asyncio.get_running_loop():
            await asyncio.wait((task,), timeout=timeout)
            task.cancel()

    async def _run(self) -> None:
        async with httpx.AsyncClient(**_CLIENT_OPTIONS) as client:
            while not self._stopped.is_set():
                delay = 1.0
                try:
                    delay = await run_tick_async(self.store, self.agent.tick(), client)
                except Exception as exc:  # the loop must outlive any one bad tick
                    logger.debug("canary_mw: rollout tick failed: %s", exc)
                await wait_event(self._stopped, delay)


class ThreadRolloutRunner:
    """The agent in a daemon thread (CanaryWSGI, and the standalone ``rollout run``)."""

    def __init__(self, store: Any, agent: RolloutAgent):
        self.store = store
        self.agent = agent
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stopped.clear()
        self._thread = threading.Thread(target=self.run, name="canary_mw-rollout", daemon=True)
        self._thread.start()

    def request_stop(self) -> None:
        """End :meth:`run` after the tick in progress (safe from a signal handler)."""
        self._stopped.set()

    def stop(self, timeout: float = 5.0) -> None:
        self._stopped.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def run(self) -> None:
        """Tick until stopped (in the calling thread: ``rollout run`` uses it directly)."""
        with httpx.Client(**_CLIENT_OPTIONS) as client:
            while not self._stopped.is_set():
                delay = 1.0
                try:
                    delay = run_tick(self.store, self.agent.tick(), client)
                except Exception as exc:
                    logger.debug("canary_mw: rollout tick failed: %s", exc)
                self._stopped.wait(delay)


class Background:
    """Several background runners started and stopped as one (a router's ``checker``:
    health checks and the rollout agent)."""

    def __init__(self, *runners: Any):
        self.runners = runners

    def start(self) -> None:
        for runner in self.runners:
            runner.start()

    def stop(self, timeout: float = 5.0) -> Any:
        results = [runner.stop(timeout) for runner in self.runners]
        if any(asyncio.iscoroutine(result) for result in results):
            return asyncio.gather(*results)
        return None
