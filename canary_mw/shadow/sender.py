"""Sending the copies: a job per mirrored request, a bounded queue, a few workers.

The sans-I/O part (building the request, judging the answer) is shared; the asyncio driver
runs workers as tasks on the router's loop, the blocking one as threads in each process.
A full queue drops the copy (counted): the stable response never waits for a copy, and
memory and tasks stay bounded whatever the canary does.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import queue
import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from ..forward.common import ForwarderBase, ForwardPolicy
from ..upstreams import Upstream
from .compare import Answer, compare, noise
from .config import MirrorConfig
from .report import ShadowReport
from .tee import ANSWER_LIMIT

__all__ = ["SHADOW_HEADER", "AsyncSender", "Job", "ThreadSender", "shadow_policy"]

logger = logging.getLogger("canary_mw.shadow")

#: Every copy carries it, so the canary's logs and metrics can tell shadow traffic apart.
SHADOW_HEADER = (b"x-canary-shadow", b"1")
#: Seconds a whole copy (connect, send, read) may take before it counts as an error.
COPY_DEADLINE = 30.0
#: Routes whose noise is learned (each keeps at most MAX_NOISE fields) in one process.
MAX_LEARNING_ROUTES, MAX_NOISE = 200, 100


@dataclass(frozen=True, slots=True)
class Job:
    """One copy to send: the request as received and the stable answer it is compared with."""

    config: MirrorConfig
    route: str
    method: str
    target: tuple[bytes, bytes]  # raw path, query
    headers: Sequence[tuple[bytes, bytes]]
    peer: str | None
    scheme: str
    body: bytes
    stable: Answer

    @property
    def request_line(self) -> str:
        path, query = self.target
        return f"{self.method} {(path + (b'?' + query if query else b'')).decode('latin-1')}"


class _NoObserver:
    """Copies never feed passive health or the forwarding metrics: they are not traffic."""

    def forwarded(self, upstream: Upstream, error: str | None) -> None:
        pass

    def fell_back(self, upstream: Upstream) -> None:
        pass


def shadow_policy(policy: ForwardPolicy) -> ForwardPolicy:
    """The forwarding policy with the shadow header added (and a client's own dropped)."""
    return dataclasses.replace(
        policy,
        request_extra=[*policy.request_extra, SHADOW_HEADER],
        request_drop=policy.request_drop | {SHADOW_HEADER[0]},
    )


class _Core:
    def __init__(self, policy: ForwardPolicy, report: ShadowReport):
        self._requests = ForwarderBase(shadow_policy(policy), _NoObserver())
        self.report = report
        self._noise: dict[str, set[str]] = {}
        self._learned: Counter[str] = Counter()

    def wants_twin(self, job: Job) -> bool:
        """Whether to send this copy twice and learn the noise from the two answers (only
        safe methods: a copy with side effects is never sent twice)."""
        learn = job.config.compare.learn
        return (
            learn > 0 and job.method in ("GET", "HEAD") and self._learned[job.route] < learn
            and (job.route in self._learned or len(self._learned) < MAX_LEARNING_ROUTES)
        )  # fmt: skip

    def learn(self, job: Job, first: Answer | None, second: Answer | None) -> None:
        self._learned[job.route] += 1
        if first is None or second is None or first.status != second.status:
            return
        known = self._noise.setdefault(job.route, set())
        for field in sorted(noise(first, second, job.config.compare)):
            if len(known) >= MAX_NOISE:
                break
            known.add(field)

    def request(self, job: Job) -> httpx.Request:
        body = job.body
        return self._requests.upstream_request(
            method=job.method, upstream=job.config.upstream, target=job.target,
            headers=job.headers, peer=job.peer, scheme=job.scheme,
            body=httpx.ByteStream(body) if body or job.method not in ("GET", "HEAD") else None,
            length=len(body),
        )  # fmt: skip

    def judge(self, job: Job, answer: Answer | None) -> None:
        """Count the outcome of one copy; keep a sample when it differs."""
        report, route = self.report, job.route
        report.count(route, "sent")
        if answer is None or (answer.status >= 500 > job.stable.status):
            report.count(route, "errors")
            return
        learned = frozenset(self._noise.get(route, ()))  # a copy: threads may be learning
        differences = compare(job.stable, answer, job.config.compare, learned)
        if not differences:
            report.count(route, "matches")
            return
        for kind in sorted({d.kind for d in differences}):
            report.count(route, f"mismatch:{kind}")
        report.sample(route, job.request_line, job.stable.status, answer.status, differences)


class AsyncSender(_Core):
    """Copies as tasks on the router's loop: at most ``config.concurrency`` in flight and
    ``config.queue`` waiting (both read per offer, so a new mirror document applies at once)."""

    def __init__(self, policy: ForwardPolicy, report: ShadowReport, transport: Any = None):
        super().__init__(policy, report)
        self._transport = transport
        self._queue: asyncio.Queue[Job] = asyncio.Queue()
        self._workers: set[asyncio.Task[None]] = set()
        self._busy = 0

    def _transport_for(self, config: MirrorConfig) -> Any:
        if self._transport is None:
            from ..forward.pool import HTTP11Transport  # noqa: PLC0415 - httptools on use

            self._transport = HTTP11Transport(httpx.Limits(max_connections=256))
        return self._transport

    def offer(self, job: Job) -> bool:
        """Queue a copy, or drop it (counted) when the queue is full. Never waits."""
        config = job.config
        if self._queue.qsize() >= config.queue:
            self.report.count(job.route, "dropped")
            return False
        self._queue.put_nowait(job)
        if len(self._workers) < config.concurrency and self._busy >= len(self._workers):
            task = asyncio.get_running_loop().create_task(self._work())
            self._workers.add(task)
            task.add_done_callback(self._workers.discard)
        return True

    @property
    def pending(self) -> int:
        """Copies waiting or in flight (tests assert this stays bounded)."""
        return self._queue.qsize() + self._busy

    async def _work(self) -> None:
        while True:
            try:
                job = await asyncio.wait_for(self._queue.get(), 5.0)
            except asyncio.TimeoutError:
                if not self._queue.empty():
                    continue  # a copy came in as the wait ended: it must not wait for the next
                return  # idle: let the task go; offer starts another when needed
            if len(self._workers) > job.config.concurrency:
                self._queue.put_nowait(job)  # concurrency was lowered: this worker retires
                return
            self._busy += 1
            try:
                answer = await self._answer(job)
                if answer is not None and self.wants_twin(job):
                    self.learn(job, answer, await self._answer(job))
            finally:
                self._busy -= 1
            self.judge(job, answer)

    async def _answer(self, job: Job) -> Answer | None:
        try:
            return await asyncio.wait_for(self._send(job), COPY_DEADLINE)
        except (httpx.HTTPError, OSError, asyncio.TimeoutError) as exc:
            logger.debug("canary_mw: shadow copy of %s failed: %r", job.request_line, exc)
        except Exception:  # a bug must not kill the worker and silently stop the copies
            logger.exception("canary_mw: shadow copy of %s failed", job.request_line)
        return None

    async def _send(self, job: Job) -> Answer:
        response = await self._transport_for(job.config).handle_async_request(self.request(job))
        parts, size, truncated = [], 0, False
        try:
            async for chunk in response.stream:
                size += len(chunk)
                if size > ANSWER_LIMIT:
                    truncated = True
                    break
                parts.append(chunk)
        finally:
            await response.aclose()
        return Answer(response.status_code, response.headers.raw, b"".join(parts), truncated)

    async def aclose(self) -> None:
        for task in list(self._workers):
            task.cancel()
        for task in list(self._workers):
            with contextlib.suppress(BaseException):
                await task
        self._workers.clear()  # their done callbacks may not have run yet
        if self._transport is not None:
            await self._transport.aclose()


class ThreadSender(_Core):
    """Copies on a few daemon threads per process (started lazily after a fork)."""

    def __init__(self, policy: ForwardPolicy, report: ShadowReport, transport: Any = None):
        super().__init__(policy, report)
        self._transport = transport
        self._lock = threading.Lock()
        self._queue: queue.Queue[Job] = queue.Queue()
        self._threads = 0
        self._busy = 0
        self._pid = 0

    def _transport_for(self) -> Any:
        if self._transport is None:
            from ..forward.sync_pool import HTTP11SyncTransport  # noqa: PLC0415

            self._transport = HTTP11SyncTransport(httpx.Limits(max_connections=64))
        return self._transport

    @property
    def pending(self) -> int:
        return self._queue.qsize() + self._busy

    def offer(self, job: Job) -> bool:
        config = job.config
        with self._lock:
            if self._pid != os.getpid():  # a forked worker inherits no thread
                self._pid, self._threads, self._busy = os.getpid(), 0, 0
                self._queue = queue.Queue()
            if self._queue.qsize() >= config.queue:
                dropped = True
            else:
                dropped = False
                self._queue.put_nowait(job)
                if self._threads < config.concurrency and self._busy >= self._threads:
                    self._threads += 1
                    threading.Thread(
                        target=self._work, args=(self._queue,), name="canary-mw-shadow",
                        daemon=True,
                    ).start()  # fmt: skip
        if dropped:
            self.report.count(job.route, "dropped")
        return not dropped

    def _work(self, jobs: queue.Queue[Job]) -> None:
        while True:
            try:
                job = jobs.get(timeout=5.0)
            except queue.Empty:
                with self._lock:  # offer puts under this lock: no copy can slip in unseen
                    if jobs.qsize():
                        continue
                    self._threads -= 1
                return
            with self._lock:
                self._busy += 1
            try:
                answer = self._answer(job)
                if answer is not None and self.wants_twin(job):
                    self.learn(job, answer, self._answer(job))
            finally:
                with self._lock:
                    self._busy -= 1
            self.judge(job, answer)

    def _answer(self, job: Job) -> Answer | None:
        try:
            return self._send(job)
        except (httpx.HTTPError, OSError) as exc:
            logger.debug("canary_mw: shadow copy of %s failed: %r", job.request_line, exc)
        except Exception:  # a bug must not kill the thread and silently stop the copies
            logger.exception("canary_mw: shadow copy of %s failed", job.request_line)
        return None

    def _send(self, job: Job) -> Answer:
        response = self._transport_for().handle_request(self.request(job))
        parts, size, truncated = [], 0, False
        try:
            for chunk in response.stream:
                size += len(chunk)
                if size > ANSWER_LIMIT:
                    truncated = True
                    break
                parts.append(chunk)
        finally:
            response.close()
        return Answer(response.status_code, response.headers.raw, b"".join(parts), truncated)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
