"""The blocking engine, for WSGI servers and scripts: background threads keep it current."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from typing import Any

from ..errors import StoreError
from ..facts import RequestFacts
from ..keys import Probe
from ..outcome import Decision
from ..stores.blocking import Store
from .core import LISTEN_WAKEUP, MAX_ROUNDS, REVALIDATE_BATCH, EngineCore

__all__ = ["Engine"]

logger = logging.getLogger("canary_mw.engine")


class Engine(EngineCore):
    """Decide requests against a store snapshot kept current by two daemon threads.

    One thread re-reads the store every ``poll_interval`` (and at once when notified), one
    listens on pub/sub and invalidates the membership cache, one re-reads membership answers
    given out past their TTL. Threads start on first use in each process, so an engine
    created before a fork (gunicorn ``--preload``) works in every worker.

    >>> engine = Engine(store_from_url("redis://localhost:6379/0"))
    >>> decision = engine.decide(WSGIFacts(environ))
    """

    def __init__(self, store: Store, **options: Any) -> None:
        super().__init__(**options)
        if not isinstance(store, Store):
            raise TypeError("Engine needs a blocking Store; use AsyncEngine for an AsyncStore")
        self.store = store
        self._pid = 0
        self._start_lock = threading.Lock()
        self._stopped = threading.Event()
        self._wake = threading.Event()
        self._attempted = threading.Event()
        self._stale = threading.Event()  # set when answers were given out past their TTL
        self._threads: list[threading.Thread] = []

    # -- deciding ----------------------------------------------------------------------
    def decide(self, facts: RequestFacts) -> Decision:
        if self._pid != os.getpid():
            self.start(wait=self.first_load_wait)
        decision, snapshot = self._first_pass(facts)
        if self.cache.stale:
            self._stale.set()
        if decision.pending:
            decision = self._resolve(facts, snapshot, decision)
        return decision

    def _resolve(self, facts: RequestFacts, snapshot: Any, decision: Decision) -> Decision:
        local: dict[Probe, bool] = {}
        for _ in range(MAX_ROUNDS):
            if not self.breaker.allow():
                return decision
            generation = self.cache.generation
            try:
                fetched = self.store.lookup(decision.pending)
            except Exception as exc:  # never let the store turn into a 500
                self._lookup_failed(exc)
                return decision
            settled = self._next_pass(facts, snapshot, local, fetched, generation)
            if settled is None:
                return decision
            decision = settled
            if not decision.pending:
                return decision
        return decision

    # -- lifecycle ---------------------------------------------------------------------
    def start(self, *, wait: float | None = None) -> bool:
        """Start the refresher threads in this process (idempotent) and wait up to ``wait``
        seconds (default: the store timeout) for the first store read. True once loaded."""
        with self._start_lock:
            if self._pid != os.getpid():
                self._pid = os.getpid()
                self._stopped = threading.Event()
                self._attempted = threading.Event()
                self._stale = threading.Event()
                self._threads = [
                    threading.Thread(target=self._poll_loop, name="canary_mw-poll", daemon=True),
                    threading.Thread(
                        target=self._listen_loop, name="canary_mw-listen", daemon=True
                    ),
                    threading.Thread(
                        target=self._revalidate_loop, name="canary_mw-revalidate", daemon=True
                    ),
                ]
                for thread in self._threads:
                    thread.start()
        self._attempted.wait(1.0 if wait is None else wait)
        return self.snapshot.loaded

    def refresh(self) -> None:
        """Read the store now (raises StoreError on failure)."""
        for _ in range(2):
            sets, lists = self.builder.wants()
            if self._apply(self.store.read_state(sets, lists)):
                break
        self.breaker.success()
        cold = self._cold_dbs()
        if cold:
            self.store.warm(cold)
            self._warm_dbs |= cold

    def _poll_loop(self) -> None:
        while not self._stopped.is_set():
            self._wake.clear()
            try:
                self.refresh()
            except StoreError as exc:
                self._refresh_failed(exc)
            except Exception:
                logger.exception("canary_mw: unexpected error while refreshing rules")
            self.refreshes += 1
            counts = self._traffic_due()
            if counts:
                with contextlib.suppress(StoreError):  # best effort: not worth a retry queue
                    self.store.add_traffic(counts)
            self._attempted.set()
            self._wake.wait(self.poll_interval)

    def _revalidate_loop(self) -> None:
        """Read again, in one round trip per batch, the answers given out past their TTL."""
        stale, cache = self._stale, self.cache
        while not self._stopped.is_set():
            if not stale.wait(LISTEN_WAKEUP):
                continue
            stale.clear()
            while cache.stale and self.breaker.allow() and not self._stopped.is_set():
                generation = cache.generation
                try:
                    probes = cache.take_stale(REVALIDATE_BATCH)
                    fetched = self.store.lookup(probes, within_budget=False)
                except Exception as exc:  # the answers expire; requests then look up
                    self._lookup_failed(exc)
                    break
                self._revalidated(fetched, generation)

    def _listen_loop(self) -> None:
        backoff = 0.05
        while not self._stopped.is_set():
            try:
                subscription = self.store.subscribe()
            except Exception as exc:
                logger.debug("canary_mw: subscribe failed: %s", exc)
                self._stopped.wait(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            try:
                while not self._stopped.is_set():
                    if subscription.get(LISTEN_WAKEUP) is not None:
                        self._notice()
                        self._wake.set()
                        backoff = 0.05
            except Exception as exc:
                logger.debug("canary_mw: subscription lost: %s", exc)
            finally:
                subscription.close()
            self._stopped.wait(backoff)

    def close(self) -> None:
        """Stop the threads (the store is left open: close it if you own it)."""
        self._stopped.set()
        self._wake.set()
        self._stale.set()
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(timeout=LISTEN_WAKEUP + 1)
        self._threads = []
        self._pid = 0
