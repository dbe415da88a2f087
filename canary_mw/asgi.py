"""CanaryRouter: canary routing as pure ASGI middleware (Starlette, FastAPI, any ASGI app)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from time import perf_counter
from typing import Any

from .config import ASYNC, CanaryConfig
from .engine import AsyncEngine
from .facts import ASGIFacts
from .forward.asgi_http import AsyncHTTPForwarder, Outcome, Replayable
from .forward.asgi_ws import proxy_websocket
from .forward.common import refuse_ambiguous_authority
from .health import AsyncChecker
from .outcome import STABLE, Decision
from .router import Router
from .shadow.mirror import AsyncMirror
from .stores import AsyncStore

__all__ = ["DECISION_KEY", "CanaryRouter"]

logger = logging.getLogger("canary_mw")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: Where the stable app finds the routing decision: ``scope["canary_mw.decision"]``.
DECISION_KEY = "canary_mw.decision"
#: How long application startup waits for the first read of the store, in seconds.
STARTUP_WAIT = 2.0


class CanaryRouter(Router):
    """Route each request to the wrapped (stable) app or forward it to a canary upstream.

    >>> app = FastAPI()
    >>> app.add_middleware(
    ...     CanaryRouter,
    ...     store="redis://localhost:6379/0",
    ...     canary_url="http://canary:8000",
    ...     trusted_proxies=["10.0.0.0/8"],
    ... )

    Stable requests go straight to ``app`` (no extra hop, no Redis round trip once the
    snapshot is loaded). Canary requests are forwarded with httpx and streamed back; canary
    WebSockets are proxied. Every response carries ``X-Canary-Version: <target>`` unless
    ``tag_header=None``. The keyword options are :class:`~canary_mw.CanaryConfig`'s fields
    (docs/configuration.md); ``config=CanaryConfig(...)`` passes them as one object instead.
    """

    app: ASGIApp
    store: AsyncStore
    engine: AsyncEngine
    _forwarder: AsyncHTTPForwarder
    _checker: AsyncChecker | None

    def __init__(self, app: ASGIApp, config: CanaryConfig | None = None, **options: Any) -> None:
        super().__init__(app, config, options, ASYNC)
        self._loop_header = self.config.loop
        self._stable_tag = self._targets.tag(STABLE)
        sticky = self.config.overrides.sticky
        self._wrap_stable = bool(self._stable_tag) or self.metrics is not None or bool(sticky)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self._shadow: AsyncMirror | None = None  # built when a mirror is first in force

    # -- the ASGI interface ------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._not_http(scope, receive, send)
            return
        if self._loop is not asyncio.get_running_loop():
            await self.start(wait=self.engine.first_load_wait)
        # The hot path, written flat: every call and coroutine here is paid per request
        # (measured inside uvicorn: ~3x what the same code costs in a tight loop).
        facts = ASGIFacts(scope, self._resolver)
        if facts.authority_conflict:  # two Hosts: never route by one and forward the other
            await refuse_ambiguous_authority(scope, receive, send)
            return
        decision = self.engine.decide_cached(facts)
        if decision.pending:  # a membership answer is not cached: look it up, within budget
            decision = await self.engine.resolve(facts, decision)
        if decision.target != STABLE:
            if self._loop_header in facts.raw_headers():
                # We are the canary behind another router: serve here, never forward again.
                await self.app(scope, receive, send)
                return
            await self._route_elsewhere(scope, receive, send, decision, facts)
            return
        scope[DECISION_KEY] = decision
        if self._mirror is not None:  # shadow traffic: stable served the same, then a copy
            await self._mirrored(scope, receive, send, decision, facts)
            return
        if not self._wrap_stable:  # no tag, no metrics: nothing to see in the response
            self._record(decision, 0, 0.0, facts)
            await self.app(scope, receive, send)
            return
        await self.app(scope, receive, self._stable_send(send, decision, facts))

    async def _route_elsewhere(
        self, scope: Scope, receive: Receive, send: Send, decision: Decision, facts: ASGIFacts
    ) -> None:
        """A decision for an upstream: forward, or serve stable when it cannot take it."""
        started = time.perf_counter()
        snapshot = self.engine.snapshot
        decision, upstream = self._targets.resolve(
            decision, snapshot, facts.host, self._ejected(snapshot)
        )
        scope[DECISION_KEY] = decision
        if upstream is not None:
            if self.config.fallback:  # stable may need what the forwarder already read
                receive = Replayable(receive)
            outcome, status = await self._forwarder.forward(
                scope, receive, send, upstream,
                self._targets.response_headers(decision, facts.is_https),
                fallback=self.config.fallback,
            )  # fmt: skip
            if outcome is not Outcome.FALLBACK:
                self._record(decision, status, started, facts)
                return
            decision = Decision(STABLE, "fallback", decision.rule_id)
            scope[DECISION_KEY] = decision
            if isinstance(receive, Replayable):
                receive.replay()
        await self.app(scope, receive, self._stable_send(send, decision, facts))

    async def _mirrored(
        self, scope: Scope, receive: Receive, send: Send, decision: Decision, facts: ASGIFacts
    ) -> None:
        """A stable request while a mirror is in force (canary_mw.shadow)."""
        shadow = self._shadow
        if shadow is None:
            shadow = self._shadow = AsyncMirror(self.config.forward_policy(), self.store)

        def stable(receive: Receive, send: Send) -> Awaitable[None]:
            return self.app(scope, receive, self._stable_send(send, decision, facts))

        mirror = self._mirror
        if mirror is None:  # turned off since the check (only if the builder ran off the loop)
            await stable(receive, send)
            return
        await shadow.serve(mirror, scope, receive, send, facts, self.engine.snapshot, stable)

    def _stable_send(self, send: Send, decision: Decision, facts: ASGIFacts) -> Send:
        """The ``send`` the stable app gets: adds the tag to the response head and counts the
        request when its last body part goes out. A closure, not an object with ``__call__``:
        calling it is about twice as cheap, and it runs for every message of every request.
        It returns the server's own awaitable, so no extra coroutine is made per message."""
        tag, record = self._stable_tag, self._record
        if decision.set_cookie is not None:  # the first answer a sticky percentage decided
            tag = self._targets.response_headers(decision, facts.is_https)
        started = perf_counter()
        status = 0

        def stable_send(message: Message) -> Awaitable[None]:
            nonlocal status
            kind = message["type"]
            if kind == "http.response.start":
                status = message["status"]
                if tag:
                    # A copy: the app may send one start message it keeps (a constant), and
                    # what one user's response gets must never reach the next one's.
                    message = {**message, "headers": [*message.get("headers", ()), *tag]}
            elif kind == "http.response.body" and not message.get("more_body"):
                record(decision, status, started, facts)
            return send(message)

        return stable_send

    async def _not_http(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self._lifespan(scope, receive, send)
        elif kind != "websocket":
            await self.app(scope, receive, send)
        else:
            await self._websocket(scope, receive, send)

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._loop is not asyncio.get_running_loop():
            await self.start(wait=self.engine.first_load_wait)
        facts = ASGIFacts(scope, self._resolver)
        if facts.authority_conflict:
            await refuse_ambiguous_authority(scope, receive, send)
            return
        if self._loop_header in facts.raw_headers():
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        decision = self.engine.decide_cached(facts)
        if decision.pending:
            decision = await self.engine.resolve(facts, decision)
        upstream = None
        if decision.target != STABLE:
            snapshot = self.engine.snapshot
            decision, upstream = self._targets.resolve(
                decision, snapshot, facts.host, self._ejected(snapshot)
            )
        scope[DECISION_KEY] = decision
        if upstream is None:
            await self.app(scope, receive, send)
        else:
            await proxy_websocket(
                scope, receive, send, upstream, self._targets.tag(decision.target),
                open_timeout=self.config.http_timeout.connect, extra=[self.config.loop_guard],
                is_trusted_peer=self.config.is_trusted_peer,
                address_headers=self.config.address_headers,
            )  # fmt: skip
        self._record(decision, 101, started, facts)

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def receive_and_start() -> Message:
            message = await receive()
            # Load the rules before the first request instead of during it.
            if message["type"] == "lifespan.startup" and not await self.start(wait=STARTUP_WAIT):
                logger.warning(
                    "canary_mw: the store could not be read at startup; serving stable until it can"
                )
            return message

        async def send_and_stop(message: Message) -> None:
            if message["type"] == "lifespan.shutdown.complete":
                await self.aclose()
            await send(message)

        await self.app(scope, receive_and_start, send_and_stop)

    # -- background work ---------------------------------------------------------------
    async def start(self, *, wait: float = STARTUP_WAIT) -> bool:
        """Start the engine (and health checks) in the running loop; wait up to ``wait``
        seconds for the first store read. Called by the lifespan startup or the first
        request; idempotent. True once the rules are loaded."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._loop = loop
            if self._checker is not None:
                self._checker.start()
        loaded: bool = await self.engine.start(wait=wait)
        return loaded

    # -- resources ---------------------------------------------------------------------
    async def aclose(self) -> None:
        """Stop background tasks and close the client (and the store, if built from a URL).
        Safe to call more than once."""
        if self._checker is not None:
            await self._checker.stop()
        await self.engine.aclose()
        self._loop = None
        await self._forwarder.aclose()
        if self._shadow is not None:
            await self._shadow.aclose()
            self._shadow = None
        if self._parts.owns_store and not self._closed:
            await self.store.aclose()
        self._closed = True
