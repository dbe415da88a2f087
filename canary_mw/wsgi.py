"""CanaryWSGI: canary routing for Flask, Django and any PEP 3333 application."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, MutableMapping
from typing import Any

from .config import BLOCKING, CanaryConfig
from .engine import Engine
from .errors import ConfigurationError
from .facts import WSGIFacts
from .forward.common import ambiguous_authority_reply
from .forward.wsgi_http import SyncHTTPForwarder
from .health import BlockingChecker
from .outcome import STABLE, Decision
from .parts import decision_log
from .router import Router
from .shadow.mirror import ThreadMirror
from .stores import Store
from .targets import placement_cookie

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


class CanaryWSGI(Router):
    """Route each request to the wrapped (stable) WSGI app or forward it to a canary upstream.

    >>> app = Flask(__name__)
    >>> app.wsgi_app = CanaryWSGI(
    ...     app.wsgi_app,
    ...     store="redis://localhost:6379/0",
    ...     canary_url="http://canary:8000",
    ... )

    The blocking twin of :class:`~canary_mw.CanaryRouter`, with the same options
    (:class:`~canary_mw.CanaryConfig`'s fields, or ``config=``), minus WebSockets. Redis
    connections, background threads and the httpx client are created lazily in each worker
    process, so it is safe under gunicorn ``--preload``.

    Security note, behind a proxy: the client address comes from ``REMOTE_ADDR``, and proxy
    headers are only believed when ``REMOTE_ADDR`` is in ``trusted_proxies``. If you also use
    werkzeug's ``ProxyFix``, put it *outside*: ``ProxyFix(CanaryWSGI(app.wsgi_app, ...),
    x_for=1)`` rewrites ``REMOTE_ADDR`` before we see it, so leave ``trusted_proxies`` empty;
    inside, CanaryWSGI would decide on the proxy's address instead of the client's.
    """

    app: WSGIApp
    store: Store
    engine: Engine
    _forwarder: SyncHTTPForwarder
    _checker: BlockingChecker | None

    def __init__(self, app: WSGIApp, config: CanaryConfig | None = None, **options: Any) -> None:
        if not callable(app):
            raise ConfigurationError("CanaryWSGI wraps a WSGI callable, e.g. app.wsgi_app")
        super().__init__(app, config, options, BLOCKING)
        self._loop_key = "HTTP_" + self.config.loop.decode().upper().replace("-", "_")
        self._stable_tag = [(k.decode(), v.decode()) for k, v in self._targets.tag(STABLE)]
        self._pid = 0
        self._lock = threading.Lock()
        self._shadow: ThreadMirror | None = None  # built when a mirror is first in force

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        if self._pid != os.getpid():
            self._start_in_this_process()
        if self._loop_key in environ:
            # We are the canary behind another router: serve here, never forward again.
            return self.app(environ, start_response)
        started = time.perf_counter()
        facts = WSGIFacts(environ, self._resolver)
        if facts.authority_conflict:  # two Hosts: never route by one and forward the other
            status_line, headers, refusal = ambiguous_authority_reply()
            start_response(status_line, headers)
            return [refusal]
        decision = self.engine.decide(facts)
        upstream = None
        if decision.target != STABLE:
            snapshot = self.engine.snapshot
            decision, upstream = self._targets.resolve(
                decision, snapshot, facts.host, self._ejected(snapshot)
            )
        environ[DECISION_ENVIRON_KEY] = decision
        status = [0]
        # The sticky cookie the decision placed the user with (not when stable stands in);
        # most requests place nobody, and pay one attribute read for it.
        cookie = decision.set_cookie
        if cookie is not None:
            cookie = placement_cookie(decision, facts.is_https)

        def start(status_line: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            status[0] = int(status_line[:3])
            if cookie is not None:
                headers = [*headers, ("Set-Cookie", cookie.decode("latin-1"))]
            return start_response(status_line, headers, exc_info)

        body: Iterable[bytes] | None = None
        if upstream is not None:
            body = self._forwarder.forward(
                environ, start, upstream, self._targets.tag(decision.target),
                fallback=self.config.fallback,
            )  # fmt: skip
            if body is None:
                cookie = None
                decision = Decision(STABLE, "fallback", decision.rule_id)
                environ[DECISION_ENVIRON_KEY] = decision
        if body is None:
            if self._mirror is None:
                body = self._serve_stable(environ, start)
            else:  # shadow traffic: stable served the same, then a copy
                body = self._mirrored(environ, start, facts)
        if not self.metrics and not decision_log.isEnabledFor(logging.DEBUG):
            self.engine.count(decision.target)
            return body
        final = decision
        return _Measured(body, lambda: self._record(final, status[0], started, facts))

    def _mirrored(
        self, environ: Environ, start_response: StartResponse, facts: WSGIFacts
    ) -> Iterable[bytes]:
        """A stable request while a mirror is in force (canary_mw.shadow)."""
        mirror = self._mirror  # read once: the engine's thread may turn it off meanwhile
        if mirror is None:
            return self._serve_stable(environ, start_response)
        shadow = self._shadow
        if shadow is None:
            with self._lock:
                if self._shadow is None:
                    self._shadow = ThreadMirror(self.config.forward_policy(), self.store)
                shadow = self._shadow
        return shadow.serve(
            mirror, environ, start_response, facts, self.engine.snapshot, self._serve_stable
        )

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

    def close(self) -> None:
        """Stop the background threads and close the client (and the store, if built from a
        URL). Safe to call more than once."""
        if self._checker is not None:
            self._checker.stop()
        self.engine.close()
        self._pid = 0
        self._forwarder.close()
        if self._shadow is not None:
            self._shadow.close()
            self._shadow = None
        if self._parts.owns_store:
            self.store.close()
