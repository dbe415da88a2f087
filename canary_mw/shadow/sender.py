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

import httpx

from ..forward.asgi_http import AsyncHTTPForwarder
from ..forward.common import ForwarderBase, ForwardPolicy
from ..forward.wsgi_http import SyncHTTPForwarder
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


def shadow_policy(policy: ForwardPolicy, max_connections: int = 256) -> ForwardPolicy:
    """The forwarding policy with the shadow header added (and a client's own dropped), on
    a pool of the copies' own."""
    return dataclasses.replace(
        policy,
        request_extra=[*policy.request_extra, SHADOW_HEADER],
        request_drop=policy.request_drop | {SHADOW_HEADER[0]},
        limits=httpx.Limits(max_connections=max_connections),
    )


class _Body:
    """A copy's answer body as it is read, kept up to ANSWER_LIMIT."""

    __slots__ = ("parts", "size")

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.size = 0

    def keep(self, chunk: bytes) -> bool:
        """Keep ``chunk``; False once past the limit (read no more)."""
        self.size += len(chunk)
        if self.size > ANSWER_LIMIT:
            return False
        self.parts.append(chunk)
        return True

    def answer(self, response: httpx.Response) -> Answer:
        truncated = self.size > ANSWER_LIMIT
        return Answer(response.status_code, response.headers.raw, b"".join(self.parts), truncated)


class _Core:
    # The router's own forwarder classes (header hygiene, and a transport per loop or per
    # process, made on first use), on a pool of the copies' own.
    _requests: ForwarderBase

    def __init__(self, report: ShadowReport):
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

    def __init__(self, policy: ForwardPolicy, report: ShadowReport):
        super().__init__(report)
        policy = shadow_policy(policy)
        self._requests: AsyncHTTPForwarder = AsyncHTTPForwarder(policy, _NoObserver())
        self._queue: asyncio.Queue[Job] = asyncio.Queue()
        self._workers: set[asyncio.Task[None]] = set()
        self._busy = 0

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
        response = await self._requests.transport().handle_async_request(self.request(job))
        body = _Body()
        try:
            async for chunk in response.aiter_raw():
                if not body.keep(chunk):
                    break
        finally:
            await response.aclose()
        return body.answer(response)

    async def aclose(self) -> None:
        for task in list(self._workers):
            task.cancel()
        for task in list(self._workers):
            with contextlib.suppress(BaseException):
                await task
        self._workers.clear()  # their done callbacks may not have run yet
        await self._requests.aclose()


class ThreadSender(_Core):
    """Copies on a few daemon threads per process (started lazily after a fork)."""

    def __init__(self, policy: ForwardPolicy, report: ShadowReport):
        super().__init__(report)
        policy = shadow_policy(policy, max_connections=64)
        self._requests: SyncHTTPForwarder = SyncHTTPForwarder(policy, _NoObserver())
        self._lock = threading.Lock()
        self._queue: queue.Queue[Job] = queue.Queue()
        self._threads = 0
        self._busy = 0
        self._pid = 0

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
        response = self._requests.transport().handle_request(self.request(job))
        body = _Body()
        try:
            for chunk in response.iter_raw():
                if not body.keep(chunk):
                    break
        finally:
            response.close()
        return body.answer(response)

    def close(self) -> None:
        self._requests.close()
