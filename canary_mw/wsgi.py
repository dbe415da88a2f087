"""CanaryWSGI: canary routing for Flask, Django and any PEP 3333 application."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping, Sequence
from typing import Any

import httpx

from .clientip import DEFAULT_CLIENT_IP_HEADERS
from .decision import STABLE, Decision
from .engine import Engine
from .errors import ConfigurationError
from .facts import WSGIFacts
from .forward.client import DEFAULT_LIMITS, DEFAULT_TIMEOUT, make_sync_transport
from .forward.common import ambiguous_authority_reply
from .forward.wsgi_http import SyncHTTPForwarder
from .health import BlockingChecker, HealthCheck
from .metrics import Metrics
from .router import RouterBase, decision_log
from .rules import DEFAULT_RULES, RuleSet
from .stores import DEFAULT_LOOKUP_TIMEOUT, Store, store_from_url

__all__ = ["DECISION_ENVIRON_KEY", "CanaryWSGI"]

logger = logging.getLogger("canary_mw")

Environ = MutableMapping[str, Any]
StartResponse = Callable[..., Any]
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]

#: Where the stable app finds the routing decision: ``environ["canary_mw.decision"]``.
DECISION_ENVIRON_KEY = "canary_mw.decision"


class _Measured:
    """The response iterable, recording metrics once the server has sent (or dropped) it."""

    def __init__(self, body: Iterable[bytes], done: Callable[[], None]):
        self._body = body
        self._done = done

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._body)

    def close(self) -> None:
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                close()
        finally:
            self._done()


class CanaryWSGI(RouterBase):
    """Route each request to the wrapped (stable) WSGI app or forward it to a canary upstream.

    >>> app = Flask(__name__)
    >>> app.wsgi_app = CanaryWSGI(
    ...     app.wsgi_app,
    ...     store="redis://localhost:6379/0",
    ...     canary_url="http://canary:8000",
    ... )

    The blocking twin of :class:`~canary_mw.CanaryRouter`, with the same options (minus
    WebSockets). Redis connections, background threads and the httpx client are created
    lazily in each worker process, so it is safe under gunicorn ``--preload``.

    Security note, behind a proxy: the client address comes from ``REMOTE_ADDR``, and proxy
    headers are only believed when ``REMOTE_ADDR`` is in ``trusted_proxies``. If you also use
    werkzeug's ``ProxyFix``, put it *outside*: ``ProxyFix(CanaryWSGI(app.wsgi_app, ...),
    x_for=1)`` rewrites ``REMOTE_ADDR`` before we see it, so leave ``trusted_proxies`` empty;
    inside, CanaryWSGI would decide on the proxy's address instead of the client's.
    """

    def __init__(
        self,
        app: WSGIApp,
        *,
        store: str | Store = "memory://",
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
        transport: httpx.BaseTransport | None = None,
        loop_header: str = "X-Canary-Forwarded",
        lookup_timeout: float = DEFAULT_LOOKUP_TIMEOUT,
        health: HealthCheck | None = None,
        metrics: bool | Metrics = True,
        engine_options: Mapping[str, Any] | None = None,
    ) -> None:
        if not callable(app):
            raise ConfigurationError("CanaryWSGI wraps a WSGI callable, e.g. app.wsgi_app")
        self.app = app
        self._configure(
            store=store, store_kind=Store,
            store_from_url=lambda url: store_from_url(url, lookup_timeout=lookup_timeout),
            engine_kind=Engine, transport=transport, transport_kind=httpx.BaseTransport,
            timeout=timeout, limits=limits, max_body_size=max_body_size, metrics=metrics,
            engine_options=engine_options,
            canary_url=canary_url, upstreams=upstreams, trusted_proxies=trusted_proxies,
            client_ip_headers=client_ip_headers, force_header=force_header,
            force_cookie=force_cookie, default_rules=default_rules, tag_header=tag_header,
            loop_header=loop_header, fallback=fallback, preserve_host=preserve_host,
            health=health,
        )  # fmt: skip
        self._loop_key = "HTTP_" + self.options.loop_header.decode().upper().replace("-", "_")
        self._forwarder = SyncHTTPForwarder(self.transport, **self._forwarding_policy())
        self._stable_tag = [(k.decode(), v.decode()) for k, v in self.targets.tag(STABLE)]
        self._default_transport: httpx.BaseTransport | None = None
        self._transport_pid = 0
        self._pid = 0
        self._lock = threading.Lock()
        self._checker = None if self.health is None else BlockingChecker(
            self.health, self._backends, self._share_health, headers=[self._loop_guard],
            after_round=self._after_round,
        )  # fmt: skip

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        if self._pid != os.getpid():
            self._start_in_this_process()
        if self._loop_key in environ:
            # We are the canary behind another router: serve here, never forward again.
            return self.app(environ, start_response)
        started = time.perf_counter()
        facts = WSGIFacts(environ, self.options.resolver)
        if facts.authority_conflict:  # two Hosts: never route by one and forward the other
            status_line, headers, refusal = ambiguous_authority_reply()
            start_response(status_line, headers)
            return [refusal]
        decision = self.engine.decide(facts)
        upstream = None
        if decision.target != STABLE:
            snapshot = self.engine.snapshot
            decision, upstream = self.targets.resolve(
                decision, snapshot, facts.host, self._ejected(snapshot)
            )
        environ[DECISION_ENVIRON_KEY] = decision
        status = [0]

        def start(status_line: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            status[0] = int(status_line[:3])
            return start_response(status_line, headers, exc_info)

        body: Iterable[bytes] | None = None
        if upstream is not None:
            body = self._forwarder.forward(
                environ, start, upstream, self.targets.tag(decision.target),
                fallback=self.options.fallback,
            )  # fmt: skip
            if body is None:
                if self.metrics:
                    self.metrics.fallback(upstream.name)
                decision = Decision(STABLE, "fallback", decision.rule_id)
                environ[DECISION_ENVIRON_KEY] = decision
        if body is None:
            body = self._serve_stable(environ, start)
        if not self.metrics and not decision_log.isEnabledFor(logging.DEBUG):
            self.engine.count(decision.target)
            return body
        final = decision
        return _Measured(body, lambda: self._record(final, status[0], started, facts))

    def _serve_stable(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        tag = self._stable_tag
        if not tag:
            return self.app(environ, start_response)

        def start_tagged(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            return start_response(status, [*headers, *tag], exc_info)

        return self.app(environ, start_tagged)

    # -- per process: the engine's threads and the health checker ---------------------
    def _start_in_this_process(self) -> None:
        with self._lock:
            if self._pid == os.getpid():
                return
            self._pid = os.getpid()
            if self._checker is not None:
                # A forked worker inherits no thread: each process checks for itself.
                self._checker.start()
        self.engine.start(wait=self.engine.first_load_wait)

    def _share_health(
        self, records: Mapping[str, str], lapsed: Sequence[str], announce: bool
    ) -> None:
        self.store.set_health(records, lapsed=lapsed, announce=announce)

    def transport(self) -> httpx.BaseTransport:
        """The forwarding transport: yours if you passed one, else this process's own (a
        forked worker gets a fresh one: sockets must not be shared across processes)."""
        if self._transport is not None:
            return self._transport  # type: ignore[no-any-return]
        if self._default_transport is None or self._transport_pid != os.getpid():
            with self._lock:
                if self._default_transport is None or self._transport_pid != os.getpid():
                    self._default_transport = make_sync_transport(self._limits)
                    self._transport_pid = os.getpid()
        return self._default_transport

    def close(self) -> None:
        """Stop the background threads and close the client (and the store, if built from a
        URL). Safe to call more than once."""
        if self._checker is not None:
            self._checker.stop()
        self.engine.close()
        self._pid = 0
        transport, self._default_transport = self._default_transport, None
        if transport is not None:
            transport.close()
        if self._owns_store:
            self.store.close()
