"""Shadow-traffic counts: kept per process in plain dicts, folded into the store every
FLUSH seconds (never per request), summed across instances there; and read back as the
table ``canary-mw mirror report`` prints.

Counters per route: ``sent``, ``dropped`` (the queue was full), ``errors`` (no answer, or a
5xx where stable answered below 500), ``matches``, ``mismatch:status``, ``mismatch:header``,
``mismatch:body``; plus ``skipped:body`` (a request body over ``max_body``, or one the stable
app did not read whole: not mirrored). A route is the method and the path template when the
framework names one (FastAPI's ``scope["route"]``), else the first path segment.
"""

from __future__ import annotations

import json
import threading
import time
import weakref
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from prometheus_client import REGISTRY
from prometheus_client.core import CounterMetricFamily

from .compare import Difference

__all__ = ["COUNTERS", "FLUSH", "ShadowReport", "parse_samples", "report_rows", "route_of"]

#: Seconds between two folds of the counts into the store.
FLUSH = 1.0
#: Distinct routes one process counts separately; later ones are counted as "other".
MAX_ROUTES = 200
#: Sample differences one process keeps between two folds.
SAMPLES_PER_FLUSH = 10
COUNTERS = (
    "sent", "dropped", "skipped:body", "errors", "matches",
    "mismatch:status", "mismatch:header", "mismatch:body",
)  # fmt: skip


def route_of(method: str, path: str, template: str | None = None) -> str:
    """``GET /items/{id}`` with a template, else ``GET /items/*`` (first segment)."""
    if template:
        return f"{method} {template}"
    segment = path.split("/", 2)[1] if path.startswith("/") else ""
    return f"{method} /{segment}" + ("/*" if path.count("/") > 1 or segment else "")


class ShadowReport:
    """One router's shadow counts. ``count`` is called from the request path (a dropped
    copy) and from the senders, so it takes a lock: never per request with mirroring off,
    and the copies are off the stable response's path."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: Counter[str] = Counter()
        self._samples: list[str] = []
        #: Since this process started (Prometheus): (route, counter) -> n.
        self.totals: Counter[tuple[str, str]] = Counter()
        self._routes: set[str] = set()
        self._flushed = time.monotonic()
        _register()
        _REPORTS.add(self)

    def count(self, route: str, counter: str, n: int = 1) -> None:
        with self._lock:
            if route not in self._routes:
                if len(self._routes) >= MAX_ROUTES:
                    route = "other"
                self._routes.add(route)
            self._pending[f"{route} {counter}"] += n
            self.totals[route, counter] += n

    def sample(
        self, route: str, request: str, stable: int, shadow: int, differences: Sequence[Difference]
    ) -> None:
        with self._lock:
            if len(self._samples) >= SAMPLES_PER_FLUSH:
                return
            self._samples.append(json.dumps({
                "time": round(time.time(), 3), "route": route, "request": request[:300],
                "stable": stable, "shadow": shadow,
                "differences": [d.to_json() for d in differences],
            }, separators=(",", ":")))  # fmt: skip

    def due(self, force: bool = False) -> tuple[dict[str, int], list[str]] | None:
        """What to fold into the store now (every FLUSH seconds), or None."""
        with self._lock:
            if not force and time.monotonic() - self._flushed < FLUSH:
                return None
            if not self._pending and not self._samples:
                return None
            counts, samples = dict(self._pending), self._samples
            self._pending, self._samples = Counter(), []
            self._flushed = time.monotonic()
            return counts, samples

    def restore(self, counts: Mapping[str, int], samples: Sequence[str]) -> None:
        """A fold failed: keep its counts for the next one (the samples are let go)."""
        with self._lock:
            self._pending.update(counts)


_REPORTS: weakref.WeakSet[ShadowReport] = weakref.WeakSet()


class _Collector:
    """``canary_mw_shadow_total{route, outcome}``: this process's counts, added up at
    scrape time."""

    def collect(self) -> Iterator[Any]:
        family = CounterMetricFamily(
            "canary_mw_shadow", "Shadow copies by route and outcome (docs/shadow.md)",
            labels=["route", "outcome"],
        )  # fmt: skip
        totals: Counter[tuple[str, str]] = Counter()
        for report in list(_REPORTS):
            totals.update(dict(report.totals))
        for (route, outcome), value in sorted(totals.items()):
            family.add_metric([route, outcome], value)
        yield family


_registered = threading.Lock()
_collectors: list[_Collector] = []


def _register() -> None:
    """Add the collector to prometheus_client's registry once, when a router first mirrors
    (not at import: an app that never mirrors exports no shadow family)."""
    with _registered:
        if not _collectors:
            _collectors.append(_Collector())
            REGISTRY.register(_collectors[0])


def report_rows(counts: Mapping[str, int]) -> list[dict[str, Any]]:
    """The store's counts as one row per route, counters as columns (zeros filled in)."""
    rows: dict[str, dict[str, Any]] = {}
    for name, value in counts.items():
        route, _, counter = name.rpartition(" ")
        if not route:
            continue
        row = rows.setdefault(route, {"route": route, **dict.fromkeys(COUNTERS, 0)})
        row[counter] = row.get(counter, 0) + value
    return [rows[route] for route in sorted(rows)]


def parse_samples(raw: Sequence[str]) -> list[dict[str, Any]]:
    """The store's samples (JSON texts) as objects; anything else written there is left out."""
    parsed = []
    for text in raw:
        try:
            sample = json.loads(text)
        except ValueError:
            continue
        if isinstance(sample, dict):
            parsed.append(sample)
    return parsed
