"""CanaryRouter: canary routing as pure ASGI middleware (Starlette, FastAPI, any ASGI app)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, MutableMapping, Sequence
from typing import Any

import httpx

from .clientip import DEFAULT_CLIENT_IP_HEADERS
from .decision import STABLE, Decision
from .engine import AsyncEngine
from .facts import ASGIFacts
from .forward.asgi_http import AsyncHTTPForwarder, Outcome, Replayable
from .forward.asgi_ws import proxy_websocket
from .forward.client import DEFAULT_LIMITS, DEFAULT_TIMEOUT, make_async_transport
from .forward.common import refuse_ambiguous_authority
from .health import AsyncChecker, HealthCheck
from .metrics import Metrics
from .router import RouterBase
from .rules import DEFAULT_RULES, RuleSet
from .stores import DEFAULT_LOOKUP_TIMEOUT, AsyncStore, async_store_from_url

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


class CanaryRouter(RouterBase):
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
    ``tag_header=None``. Every option: docs/configuration.md.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        store: str | AsyncStore = "memory://",
        canary_url: str | None = None,
        upstreams: Mapping[str, str] | None = None,
        trusted_proxies: Sequence[str] = (),
        client_ip_headers: Sequence[str] = DEFAULT_CLIENT_IP_HEADERS,
        force_header: str | None = None,
        force_cookie: str | None = None,
        default_rules: RuleSet | Mapping[str, Any] | Sequence[Any] | str = DEFAULT_RULES,
        tag_header: str | None = "X-Canary-Version",
        fallback: bool = False,
        preserve_host: bool = True,
        timeout: float | httpx.Timeout | Mapping[str, float | None] = DEFAULT_TIMEOUT,
        limits: httpx.Limits = DEFAULT_LIMITS,
        max_body_size: int | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        loop_header: str = "X-Canary-Forwarded",
        lookup_timeout: float = DEFAULT_LOOKUP_TIMEOUT,
        health: HealthCheck | None = None,
        metrics: bool | Metrics = True,
        engine_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.app = app
        self._configure(
            store=store, store_kind=AsyncStore,
            store_from_url=lambda url: async_store_from_url(url, lookup_timeout=lookup_timeout),
            engine_kind=AsyncEngine, transport=transport, transport_kind=httpx.AsyncBaseTransport,
            timeout=timeout, limits=limits, max_body_size=max_body_size, metrics=metrics,
            engine_options=engine_options,
            canary_url=canary_url, upstreams=upstreams, trusted_proxies=trusted_proxies,
            client_ip_headers=client_ip_headers, force_header=force_header,
            force_cookie=force_cookie, default_rules=default_rules, tag_header=tag_header,
            loop_header=loop_header, fallback=fallback, preserve_host=preserve_host,
            health=health,
        )  # fmt: skip
        self._forwarder = AsyncHTTPForwarder(self.transport, **self._forwarding_policy())
        self._stable_tag = self.targets.tag(STABLE)
        self._wrap_stable = bool(self._stable_tag) or self.metrics is not None
        self._default_transport: httpx.AsyncBaseTransport | None = None
        self._transport_loop: asyncio.AbstractEventLoop | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._checker = None if self.health is None else AsyncChecker(
            self.health, self._backends, self._share_health, headers=[self._loop_guard],
            after_round=self._after_round,
        )  # fmt: skip
        self._closed = False

    # -- the ASGI interface ------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._not_http(scope, receive, send)
            return
        if self._loop is not asyncio.get_running_loop():
            await self.start(wait=self.engine.first_load_wait)
        # The hot path, written flat: every call and coroutine here is paid per request
        # (measured inside uvicorn: ~3x what the same code costs in a tight loop).
        facts = ASGIFacts(scope, self.options.resolver)
        if facts.authority_conflict:  # two Hosts: never route by one and forward the other
            await refuse_ambiguous_authority(scope, receive, send)
            return
        decision = self.engine.decide_cached(facts)
        if decision.pending:  # a membership answer is not cached: look it up, within budget
            decision = await self.engine.resolve(facts, decision)
        if decision.target != STABLE:
            if self.options.loop_header in facts.raw_headers():
                # We are the canary behind another router: serve here, never forward again.
                await self.app(scope, receive, send)
                return
            await self._route_elsewhere(scope, receive, send, decision, facts)
            return
        scope[DECISION_KEY] = decision
        if self._wrap_stable:
            await self.app(scope, receive, self._stable_send(send, decision, facts))
        else:  # no tag, no metrics: nothing to see in the response, so no wrapper at all
            self._record(decision, 0, 0.0, facts)
            await self.app(scope, receive, send)

    async def _route_elsewhere(
        self, scope: Scope, receive: Receive, send: Send, decision: Decision, facts: ASGIFacts
    ) -> None:
        """A decision for an upstream: forward, or serve stable when it cannot take it."""
        started = time.perf_counter()
        snapshot = self.engine.snapshot
        decision, upstream = self.targets.resolve(
            decision, snapshot, facts.host, self._ejected(snapshot)
        )
        scope[DECISION_KEY] = decision
        if upstream is not None:
            if self.options.fallback:  # stable may need what the forwarder already read
                receive = Replayable(receive)
            outcome, status = await self._forwarder.forward(
                scope, receive, send, upstream, self.targets.tag(decision.target),
                fallback=self.options.fallback,
            )  # fmt: skip
            if outcome is not Outcome.FALLBACK:
                self._record(decision, status, started, facts)
                return
            if self.metrics:
                self.metrics.fallback(upstream.name)
            decision = Decision(STABLE, "fallback", decision.rule_id)
            scope[DECISION_KEY] = decision
            if isinstance(receive, Replayable):
                receive.replay()
        await self.app(scope, receive, self._stable_send(send, decision, facts))

    def _stable_send(self, send: Send, decision: Decision, facts: ASGIFacts) -> Send:
        """The ``send`` the stable app gets: adds the tag to the response head and counts the
        request when its last body part goes out. A closure, not an object with ``__call__``:
        calling it is about twice as cheap, and it runs for every message of every request.
        It returns the server's own awaitable, so no extra coroutine is made per message."""
        tag, record = self._stable_tag, self._record
        started = time.perf_counter()
        status = 0

        def stable_send(message: Message) -> Awaitable[None]:
            nonlocal status
            kind = message["type"]
            if kind == "http.response.start":
                status = message["status"]
                if tag:
                    message["headers"] = [*message.get("headers", ()), *tag]
            elif kind == "http.response.body" and not message.get("more_body", False):
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
        facts = ASGIFacts(scope, self.options.resolver)
        if facts.authority_conflict:
            await refuse_ambiguous_authority(scope, receive, send)
            return
        if self.options.loop_header in facts.raw_headers():
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        decision = self.engine.decide_cached(facts)
        if decision.pending:
            decision = await self.engine.resolve(facts, decision)
        upstream = None
        if decision.target != STABLE:
            snapshot = self.engine.snapshot
            decision, upstream = self.targets.resolve(
                decision, snapshot, facts.host, self._ejected(snapshot)
            )
        scope[DECISION_KEY] = decision
        if upstream is None:
            await self.app(scope, receive, send)
        else:
            await proxy_websocket(
                scope, receive, send, upstream, self.targets.tag(decision.target),
                open_timeout=self._timeout.connect, extra=[self._loop_guard],
                is_trusted_peer=self.options.is_trusted_peer,
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

    async def _share_health(
        self, records: Mapping[str, str], lapsed: Sequence[str], announce: bool
    ) -> None:
        await self.store.set_health(records, lapsed=lapsed, announce=announce)

    # -- resources ---------------------------------------------------------------------
    def transport(self) -> httpx.AsyncBaseTransport:
        """The forwarding transport: yours if you passed one, else ours, created in (and
        bound to) the running event loop."""
        if self._transport is not None:
            return self._transport  # type: ignore[no-any-return]
        loop = asyncio.get_running_loop()
        if self._default_transport is None or self._transport_loop is not loop:
            self._default_transport = make_async_transport(self._limits)
            self._transport_loop = loop
        return self._default_transport

    async def aclose(self) -> None:
        """Stop background tasks and close the client (and the store, if built from a URL).
        Safe to call more than once."""
        if self._checker is not None:
            await self._checker.stop()
        await self.engine.aclose()
        self._loop = None
        transport, self._default_transport = self._default_transport, None
        if transport is not None:
            await transport.aclose()
        if self._owns_store and not self._closed:
            await self.store.aclose()
        self._closed = True
