"""Telemetry windows: what a router served per target since the last fold, read from the
counts its Metrics already keeps (requests, 5xx responses, the latency histogram).

Nothing is added to the request path: the router counts as it always did, and once per
interval the rollout agent takes the difference from the previous totals and folds it into
the shared window in Redis (storage.fold_windows, one pipelined write). Routers in one
process share one Metrics; the baseline is shared too, so every request is folded once.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

from ..metrics import Metrics
from .judge import Window

__all__ = ["cumulative", "take_windows"]

_BASELINES: weakref.WeakKeyDictionary[Metrics, dict[str, Window]] = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def cumulative(metrics: Metrics) -> dict[str, Window]:
    """Everything ``metrics`` counted so far, as one window per target."""
    counters, durations = metrics.totals()
    requests: dict[str, float] = {}
    for key, count in counters["requests"].items():
        target = key[0]
        requests[target] = requests.get(target, 0) + count
    windows = {}
    for target, total in requests.items():
        errors = counters["responses"].get((target, "5xx"), 0)
        histogram: Any = durations.get(target, [])[:-1]  # the last cell is the sum
        windows[target] = Window(int(total), int(errors), tuple(int(n) for n in histogram))
    return windows


def _minus(now: Window, before: Window | None) -> Window:
    if before is None:
        return now
    return Window(
        now.requests - before.requests,
        now.errors - before.errors,
        tuple(a - b for a, b in zip(now.buckets, before.buckets, strict=False)),
    )


def take_windows(metrics: Metrics) -> dict[str, Window]:
    """What ``metrics`` counted per target since the last call (by any agent)."""
    with _LOCK:
        now = cumulative(metrics)
        before = _BASELINES.get(metrics, {})
        _BASELINES[metrics] = now
    deltas = {target: _minus(window, before.get(target)) for target, window in now.items()}
    return {target: window for target, window in deltas.items() if window.requests > 0}
