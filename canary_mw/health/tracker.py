"""BackendHealth: one instance's table of backend states, and what the request path asks it.

The request path pays one set lookup per canary decision (:meth:`BackendHealth.ejected`
returns the set of ejected backend URLs, the store's merged with this instance's own) and,
per forwarded request, one dict lookup to report the outcome; everything else happens in the
check loop (:mod:`canary_mw.health.loop`). Request threads (WSGI) and the check loop change
the table concurrently, so changes hold a lock; a report of a request that connected, to a
backend with nothing to reset, takes no lock.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import replace

from .policy import HealthCheck
from .state import BackendState, SharedState, after_check, after_request, is_ejected, to_share

__all__ = ["INSTANCE", "BackendHealth"]

logger = logging.getLogger("canary_mw.health")

#: Who wrote a shared record: ``host:pid``.
INSTANCE = f"{socket.gethostname()}:{os.getpid()}"

_NEW = BackendState()


class BackendHealth:
    """This instance's health of every backend URL it routes to.

    >>> health = BackendHealth(HealthCheck(interval=1))
    >>> health.request_result("http://canary:8000", refused=True)
    >>> "http://canary:8000" in health.ejected(frozenset())
    False
    """

    def __init__(
        self, policy: HealthCheck, *, clock: Callable[[], float] = time.time, by: str = ""
    ):
        self.policy = policy
        self._clock = clock
        self._by = by or INSTANCE
        self._states: dict[str, BackendState] = {}
        self._lock = threading.Lock()
        #: URLs this instance's own verdict ejects (replaced whole, never mutated; read it,
        #: do not assign it).
        self.local: frozenset[str] = frozenset()
        self._merged: tuple[AbstractSet[str], frozenset[str], AbstractSet[str]] = (
            frozenset(), frozenset(), frozenset()
        )  # fmt: skip
        #: Called (from any thread) when a verdict changed outside the check loop, so the
        #: loop shares it now rather than at its next round. Set by the runner.
        self.wake: Callable[[], None] = lambda: None

    # -- the request path -------------------------------------------------------------
    def ejected(self, shared: AbstractSet[str]) -> AbstractSet[str]:
        """Backend URLs out of service here: the store's ejections (``shared``) and this
        instance's own, which hold before the store confirms them and while it cannot."""
        local = self.local
        if not local:
            return shared
        seen_shared, seen_local, merged = self._merged
        if seen_shared is shared and seen_local is local:
            return merged
        merged = frozenset(shared) | local
        self._merged = (shared, local, merged)
        return merged

    def request_result(self, url: str, refused: bool) -> None:
        """A forwarded request to ``url`` connected (refused False) or could not connect."""
        if self.policy.passive_after is None:
            return
        if not refused:
            state = self._states.get(url)
            if state is None or not state.refused:
                return
        with self._lock:
            before = self._states.get(url, _NEW)
            after = after_request(before, refused, self._clock(), self.policy)
            self._states[url] = after
            changed = after.healthy != before.healthy
            if changed:
                self._verdict_changed(url, before, after)
        if changed:
            self.wake()

    # -- the check loop ---------------------------------------------------------------
    def checked(self, results: Iterable[tuple[str, bool, str]]) -> None:
        """Active checks finished: ``(url, passed, what it saw)`` each."""
        with self._lock:
            now = self._clock()
            for url, ok, reason in results:
                before = self._states.get(url, _NEW)
                after = after_check(before, ok, reason, now, self.policy)
                self._states[url] = after
                if after.healthy != before.healthy:
                    self._verdict_changed(url, before, after)
            self._refresh_local(now)

    def keep_only(self, urls: Iterable[str]) -> None:
        """Forget backends no upstream resolves to any more."""
        wanted = set(urls)
        with self._lock:
            for url in [url for url in self._states if url not in wanted]:
                del self._states[url]
            self._refresh_local(self._clock())

    def to_share(self, shared: Mapping[str, SharedState]) -> dict[str, SharedState]:
        """Records to write to the store now (see state.to_share)."""
        now = self._clock()
        records = {}
        for url, state in list(self._states.items()):
            record = to_share(state, shared.get(url), now, self.policy, self._by)
            if record is not None:
                records[url] = record
        return records

    def shared_ok(self, records: Mapping[str, SharedState]) -> None:
        """The store took ``records``: their verdicts no longer need writing."""
        with self._lock:
            for url, record in records.items():
                state = self._states.get(url)
                if state is not None and state.healthy == record.healthy:
                    self._states[url] = replace(state, shared=True)

    def states(self) -> dict[str, BackendState]:
        """A copy of the table, for status and tests."""
        return dict(self._states)

    # -- internals --------------------------------------------------------------------
    def _verdict_changed(self, url: str, before: BackendState, after: BackendState) -> None:
        """Called with the lock held."""
        self._refresh_local(self._clock())
        if before.healthy is None and after.healthy:
            logger.info("canary_mw: backend %s is healthy: %s", url, after.reason)
            return
        verdict = "healthy again" if after.healthy else "ejected"
        logger.warning("canary_mw: backend %s is %s: %s", url, verdict, after.reason)

    def _refresh_local(self, now: float) -> None:
        """Called with the lock held; drops ejections that have lapsed."""
        local = frozenset(url for url, state in self._states.items() if is_ejected(state, now))
        if local != self.local:
            self.local = local
