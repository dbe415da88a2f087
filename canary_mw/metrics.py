"""Prometheus metrics for routers, cheap enough for the hot path.

prometheus_client's own Counter takes a lock on every ``inc()`` and Histogram walks its
buckets on every ``observe()``: 5-7 µs per request, as much as the whole routing decision.
Here each thread counts in its own plain dicts (no lock, no race) and a custom collector adds
them up only when Prometheus scrapes. Store errors and breaker state are read from the
engines at scrape time, costing requests nothing.

One Metrics per process (:func:`default_metrics`), shared by every router in it. Under
gunicorn with several workers each worker serves its own numbers (custom collectors do not
take part in prometheus_client's multiprocess mode); ``canary-mw status`` shows traffic per
target summed over every instance from the store.
"""

from __future__ import annotations

import threading
import weakref
from bisect import bisect_left
from collections.abc import Iterator
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

__all__ = ["Metrics", "default_metrics", "metrics_asgi_app", "metrics_wsgi_app"]

_CLASSES = {1: "1xx", 2: "2xx", 3: "3xx", 4: "4xx", 5: "5xx"}
#: prometheus_client's default latency buckets, in seconds.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)


def new_cell() -> list[float]:
    """A cell of ``_Counts.cells``: a count per latency bucket, then the sum of latencies."""
    return [0.0] * (len(BUCKETS) + 2)


class _Table:
    """One thread's counts, as plain attributes: a scrape (or the rollout agent) reads them
    from another thread."""

    __slots__ = ("cells", "fallbacks", "upstream_errors")

    def __init__(self) -> None:
        # (target, reason, status) -> latency bucket counts..., then the sum of latencies.
        # One table for requests, responses and latency: one dict lookup per request; the
        # three metrics are folded out of it at scrape time.
        self.cells: dict[tuple[str, str, int], list[float]] = {}
        self.upstream_errors: dict[tuple[str, str], int] = {}
        self.fallbacks: dict[str, int] = {}


class _Counts(threading.local):
    """The calling thread's table. Its attributes are per thread, so what the owner keeps
    for scrapes is each thread's ``_Table`` itself, not this object (read from the scraping
    thread, this object's attributes would be that thread's own)."""

    def __init__(self, owner: Metrics):
        table = _Table()
        self.cells = table.cells
        self.upstream_errors = table.upstream_errors
        self.fallbacks = table.fallbacks
        with owner._lock:
            owner._threads.append(table)


def _add(total: dict[Any, float], part: dict[Any, int]) -> None:
    for key, value in dict(part).items():  # dict(): a consistent copy under the GIL
        total[key] = total.get(key, 0) + value


class Metrics:
    """Per-target request counters and latency, upstream errors, fallbacks, store health.

    >>> metrics = default_metrics()          # what routers use unless metrics=False
    >>> app.mount("/metrics", metrics_asgi_app())
    """

    def __init__(self, registry: CollectorRegistry | None = REGISTRY, namespace: str = "canary_mw"):
        self.namespace = namespace
        self._lock = threading.Lock()
        self._threads: list[_Table] = []
        self._counts = _Counts(self)
        self._engines: weakref.WeakSet[Any] = weakref.WeakSet()
        self._ejected: dict[str, bool] = {}
        if registry is not None:
            registry.register(self)

    # -- recording (hot path: a few dict operations, no lock) ---------------------------
    @property
    def counts(self) -> _Counts:
        """This thread's tables. The routers add to ``counts.cells`` themselves, as
        ``request`` does (``RouterParts.record``): one call per request fewer."""
        return self._counts

    def request(self, target: str, reason: str, status: int, seconds: float) -> None:
        cells = self._counts.cells
        key = (target, reason, status)
        cell = cells.get(key)
        if cell is None:
            cell = cells[key] = new_cell()
        cell[bisect_left(BUCKETS, seconds)] += 1
        cell[-1] += seconds

    def upstream_error(self, upstream: str, error: str) -> None:
        table = self._counts.upstream_errors
        table[upstream, error] = table.get((upstream, error), 0) + 1

    def fallback(self, upstream: str) -> None:
        table = self._counts.fallbacks
        table[upstream] = table.get(upstream, 0) + 1

    def set_ejected(self, upstream: str, ejected: bool) -> None:
        self._ejected[upstream] = ejected

    def watch(self, engine: Any) -> None:
        """Report this engine's store errors and breaker state."""
        self._engines.add(engine)

    # -- reading -----------------------------------------------------------------------
    def totals(self) -> tuple[dict[str, dict[Any, float]], dict[str, list[float]]]:
        """Everything counted so far, summed over threads: the counters by name, and the
        latency histograms by target (bucket counts, then the sum). Handy in tests too."""
        counters: dict[str, dict[Any, float]] = {
            name: {} for name in ("requests", "responses", "upstream_errors", "fallbacks")
        }
        requests, responses = counters["requests"], counters["responses"]
        durations: dict[str, list[float]] = {}
        with self._lock:
            threads = list(self._threads)
        for counts in threads:
            _add(counters["upstream_errors"], counts.upstream_errors)
            _add(counters["fallbacks"], counts.fallbacks)
            for (target, reason, status), cell in dict(counts.cells).items():
                cell = list(cell)  # noqa: PLW2901 - a consistent copy under the GIL
                count = sum(cell[:-1])
                requests[target, reason] = requests.get((target, reason), 0) + count
                klass = (target, _CLASSES.get(status // 100, "other"))
                responses[klass] = responses.get(klass, 0) + count
                merged = durations.setdefault(target, [0.0] * len(cell))
                for index, value in enumerate(cell):
                    merged[index] += value
        return counters, durations

    def collect(self) -> Iterator[Any]:
        """Called by prometheus_client on every scrape."""
        ns = self.namespace
        totals, durations = self.totals()
        families = [
            ("requests", "Requests routed, by target and decision reason", ["target", "reason"]),
            ("responses", "Responses sent, by target and status class", ["target", "status"]),
            ("upstream_errors", "Upstream failures, by upstream and error", ["upstream", "error"]),
            ("fallbacks", "Requests served by stable: the upstream was unreachable", ["upstream"]),
        ]
        for name, help_text, labels in families:
            family = CounterMetricFamily(f"{ns}_{name}", help_text, labels=labels)
            for key, value in sorted(totals[name].items()):
                family.add_metric(list(key) if isinstance(key, tuple) else [key], value)
            yield family
        histogram = HistogramMetricFamily(
            f"{ns}_request_duration_seconds", "Time from routing to the end of the response",
            labels=["target"],
        )  # fmt: skip
        for target, counts in sorted(durations.items()):
            cumulative, buckets = 0.0, []
            for bound, count in zip((*BUCKETS, float("inf")), counts[:-1], strict=True):
                cumulative += count
                buckets.append((str(bound) if bound != float("inf") else "+Inf", cumulative))
            histogram.add_metric([target], buckets, counts[-1])
        yield histogram
        engines = list(self._engines)
        store_errors = CounterMetricFamily(
            f"{ns}_store_errors", "Failed store operations", labels=["operation"]
        )
        store_errors.add_metric(["lookup"], sum(e.lookup_failures for e in engines))
        store_errors.add_metric(["refresh"], sum(e.refresh_failures for e in engines))
        yield store_errors
        breaker = GaugeMetricFamily(
            f"{ns}_store_breaker_open", "Engines whose store circuit breaker is open"
        )
        breaker.add_metric([], sum(e.breaker.is_open for e in engines))
        yield breaker
        ejected = GaugeMetricFamily(
            f"{ns}_upstream_ejected", "1 while a backend URL is ejected as unhealthy",
            labels=["upstream"],
        )  # fmt: skip
        for upstream, is_ejected in sorted(self._ejected.items()):
            ejected.add_metric([upstream], int(is_ejected))
        yield ejected


_DEFAULT: Metrics | None = None
_DEFAULT_LOCK = threading.Lock()


def default_metrics() -> Metrics:
    """The process-wide metrics on prometheus_client's default registry."""
    global _DEFAULT  # noqa: PLW0603 - one registry per process is prometheus_client's model
    with _DEFAULT_LOCK:
        if _DEFAULT is None:
            _DEFAULT = Metrics()
        return _DEFAULT


def metrics_asgi_app(registry: CollectorRegistry = REGISTRY) -> Any:
    """An ASGI app serving the metrics, e.g. ``app.mount("/metrics", metrics_asgi_app())``."""
    from prometheus_client import make_asgi_app  # noqa: PLC0415 - keep import time low

    return make_asgi_app(registry)


def metrics_wsgi_app(registry: CollectorRegistry = REGISTRY) -> Any:
    """A WSGI app serving the metrics (werkzeug's DispatcherMiddleware can mount it)."""
    from prometheus_client import make_wsgi_app  # noqa: PLC0415 - keep import time low

    return make_wsgi_app(registry)
