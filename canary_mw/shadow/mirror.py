"""What a router does for a request it mirrors, on each side: tap the stable exchange (the
body as the app reads it, the answer as it goes out), then hand a job to the sender; and
fold the counts into the store in the background.

The routers keep the mirror document in force in one attribute (set by the snapshot
builder's watcher), so with mirroring off a request pays one None check and nothing here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

from ..facts import RequestFacts
from ..forward.asgi_http import raw_path_of  # the target exactly as forwarding builds it
from ..forward.common import ForwardPolicy
from ..forward.wsgi_http import environ_headers, request_target
from .compare import Answer
from .config import MirrorConfig
from .report import FLUSH, ShadowReport, route_of
from .sender import AsyncSender, Job, ThreadSender
from .tee import AnswerCapture, BodyTee, InputTee, IterableCapture

__all__ = ["AsyncMirror", "ThreadMirror"]

logger = logging.getLogger("canary_mw.shadow")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
#: A flusher with nothing to fold for this long stops (the next copy starts it again).
IDLE_STOP = 30.0


def _declares_body(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    for name, value in headers:
        lowered = name.lower()
        if lowered == b"transfer-encoding" or (lowered == b"content-length" and value != b"0"):
            return True
    return False


def _template(scope: Scope) -> str | None:
    route = scope.get("route")  # FastAPI puts the route it matched in the (shared) scope
    path = getattr(route, "path", None) or getattr(route, "path_format", None)
    return path if isinstance(path, str) else None


class AsyncMirror:
    """The asyncio side: copies are tasks on the router's loop (AsyncSender)."""

    def __init__(self, policy: ForwardPolicy, store: Any):
        self.report = ShadowReport()
        self.sender = AsyncSender(policy, self.report)
        self._store = store
        self._flusher: asyncio.Task[None] | None = None

    async def serve(
        self,
        config: MirrorConfig,
        scope: Scope,
        receive: Receive,
        send: Send,
        facts: RequestFacts,
        snapshot: Any,
        stable: Callable[[Receive, Send], Awaitable[None]],
    ) -> None:
        """Serve stable through ``stable(receive, send)``, exactly as without mirroring,
        then queue the copy (never waiting for it)."""
        if not config.wants(facts, snapshot):
            await stable(receive, send)
            return
        has_body = _declares_body(scope["headers"])
        tee = BodyTee(receive, config.max_body) if has_body else None
        capture = AnswerCapture(send)
        await stable(tee or receive, capture)
        if not capture.done:
            return  # no whole answer went out (the client left): nothing to compare
        route = route_of(facts.method, facts.path, _template(scope))
        body = b"" if tee is None else tee.body
        if body is None:
            self.report.count(route, "skipped:body")
        else:
            client = scope.get("client")
            target = (raw_path_of(scope), scope.get("query_string", b""))
            self.sender.offer(Job(
                config, route, scope["method"], target,
                scope["headers"], str(client[0]) if client else None, scope.get("scheme", "http"),
                body, capture.answer(),
            ))  # fmt: skip
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush_loop())

    async def _flush_loop(self) -> None:
        idle_since = time.monotonic()
        while time.monotonic() - idle_since < IDLE_STOP:
            await asyncio.sleep(FLUSH)
            if await self.flush():
                idle_since = time.monotonic()

    async def flush(self, force: bool = False) -> bool:
        """Fold what was counted into the store; True when there was something."""
        due = self.report.due(force)
        if due is None:
            return False
        try:
            await self._store.add_shadow(*due)
        except Exception as exc:  # the store is down: keep the counts for the next fold
            logger.debug("canary_mw: could not fold the shadow counts: %r", exc)
            self.report.restore(*due)
        return True

    async def aclose(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(BaseException):
                await self._flusher
        await self.sender.aclose()
        with contextlib.suppress(Exception):
            await self.flush(force=True)


class ThreadMirror:
    """The blocking side: copies go to a few threads per process (ThreadSender)."""

    def __init__(self, policy: ForwardPolicy, store: Any):
        self.report = ShadowReport()
        self.sender = ThreadSender(policy, self.report)
        self._store = store
        self._lock = threading.Lock()
        self._flusher_pid = 0
        self._stop = threading.Event()

    def serve(
        self,
        config: MirrorConfig,
        environ: MutableMapping[str, Any],
        start_response: Callable[..., Any],
        facts: RequestFacts,
        snapshot: Any,
        stable: Callable[[MutableMapping[str, Any], Callable[..., Any]], Iterable[bytes]],
    ) -> Iterable[bytes]:
        if not config.wants(facts, snapshot):
            return stable(environ, start_response)
        route = route_of(facts.method, facts.path)
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = -1
        if length < 0 or "HTTP_TRANSFER_ENCODING" in environ:
            self.report.count(route, "skipped:body")  # no length to tee against
            return stable(environ, start_response)
        tee = InputTee(environ["wsgi.input"], length, config.max_body)
        environ["wsgi.input"] = tee
        head: list[Any] = [0, []]
        headers = environ_headers(environ)

        def start(
            status: str, response_headers: list[tuple[str, str]], exc_info: Any = None
        ) -> Any:
            head[0] = int(status[:3])
            head[1] = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in response_headers]
            return start_response(status, response_headers, exc_info)

        def done(answer: Answer) -> None:
            body = tee.body
            if body is None:
                self.report.count(route, "skipped:body")
                return
            self.sender.offer(Job(
                config, route, facts.method, request_target(environ), headers,
                environ.get("REMOTE_ADDR"), environ.get("wsgi.url_scheme", "http"), body, answer,
            ))  # fmt: skip
            self._ensure_flusher()

        return IterableCapture(stable(environ, start), done, head)

    def _ensure_flusher(self) -> None:
        if self._flusher_pid == os.getpid():
            return
        with self._lock:
            if self._flusher_pid != os.getpid():
                self._flusher_pid = os.getpid()
                threading.Thread(target=self._flush_loop, name="canary-mw-shadow-report",
                                 daemon=True).start()  # fmt: skip

    def _flush_loop(self) -> None:
        while not self._stop.wait(FLUSH):
            self.flush()

    def flush(self, force: bool = False) -> bool:
        due = self.report.due(force)
        if due is None:
            return False
        try:
            self._store.add_shadow(*due)
        except Exception as exc:
            logger.debug("canary_mw: could not fold the shadow counts: %r", exc)
            self.report.restore(*due)
        return True

    def close(self) -> None:
        self._stop.set()
        self.sender.close()
        with contextlib.suppress(Exception):
            self.flush(force=True)
