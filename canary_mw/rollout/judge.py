"""The judge: is the canary worse than stable? A pure function of two telemetry windows.

Two metrics, each classified ``pass`` / ``marginal`` / ``fail`` with the numbers behind it
(docs/rollouts.md, "The judge"):

* **Errors** (5xx responses and upstream errors over requests): the canary fails when its
  error rate exceeds stable's by more than ``max_error_rate_increase`` *significantly*: a
  one-sided two-proportion z-test of ``p_canary - p_stable > margin`` with the Agresti-Caffo
  adjustment (one error and one success added to each side, so 0 errors still has a spread
  and 1 error in 50 requests is no verdict). z above 2.326 (p < 0.01) fails; an observed
  excess that is not significant is marginal.
* **Latency**: Mann-Whitney U over the binned latencies (each request is its histogram
  bucket; ties within a bucket count half), as Kayenta's judge compares distributions
  without assuming a shape. It fails when the canary is slower with p < 0.01, its median
  is more than ``latency_slack`` above stable's, *and* the effect is at least medium
  (Vargha-Delaney A = P(canary slower) >= 0.64); it is marginal at p < 0.05 and A >= 0.56
  (with the same median condition). Independently, the p99 bound: with ``limit`` = the larger of
  stable's p99 (interpolated within its bucket) x ``max_p99_ratio`` and stable's p99 +
  ``latency_slack`` (25 ms: the canary is a network hop away), the canary fails when significantly
  more than 1% of its requests are slower than ``limit`` (one-sided binomial z > 2.326),
  and is marginal when its own p99 is above ``limit`` without that significance.

Below ``min_requests`` on either side the verdict is ``insufficient``: nothing is decided.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigurationError
from ..metrics import BUCKETS

__all__ = ["FAIL", "INSUFFICIENT", "MARGINAL", "PASS", "Thresholds", "Verdict", "Window", "judge"]

PASS, MARGINAL, FAIL, INSUFFICIENT = "pass", "marginal", "fail", "insufficient"
_RANK = {PASS: 0, MARGINAL: 1, FAIL: 2}

#: One-sided z for p < 0.01 (fail) and p < 0.05 (marginal).
Z_FAIL = 2.326
Z_MARGINAL = 1.645
#: Vargha-Delaney A effect sizes: medium (fail) and small (marginal).
EFFECT_FAIL = 0.64
EFFECT_MARGINAL = 0.56


@dataclass(frozen=True, slots=True)
class Window:
    """What one side served over a span: requests, errors (5xx and upstream errors) and the
    latency histogram (requests per bucket of ``bounds``, the last bucket unbounded)."""

    requests: int = 0
    errors: int = 0
    buckets: tuple[int, ...] = field(default=(0,) * (len(BUCKETS) + 1))

    def __add__(self, other: Window) -> Window:
        size = max(len(self.buckets), len(other.buckets))
        mine = (*self.buckets, *(0,) * (size - len(self.buckets)))
        theirs = (*other.buckets, *(0,) * (size - len(other.buckets)))
        return Window(
            self.requests + other.requests,
            self.errors + other.errors,
            tuple(a + b for a, b in zip(mine, theirs, strict=True)),
        )

    def to_json(self) -> dict[str, Any]:
        return {"requests": self.requests, "errors": self.errors, "buckets": list(self.buckets)}


@dataclass(frozen=True, slots=True)
class Thresholds:
    """The judge's bounds. ``max_error_rate_increase`` is absolute (0.005 = half a point)."""

    max_error_rate_increase: float = 0.005
    max_p99_ratio: float = 1.3
    min_requests: int = 200
    #: Seconds of latency increase (at the median and at p99) never judged a failure: the
    #: canary is a network hop away and stable is served in-process.
    latency_slack: float = 0.025

    def __post_init__(self) -> None:
        if not 0 <= self.max_error_rate_increase < 1:
            raise ConfigurationError(
                "max_error_rate_increase is a fraction in [0, 1), e.g. 0.005 for 0.5%; "
                f"got {self.max_error_rate_increase!r}"
            )
        if not self.max_p99_ratio >= 1:
            raise ConfigurationError(f"max_p99_ratio must be >= 1, got {self.max_p99_ratio!r}")
        if not isinstance(self.min_requests, int) or self.min_requests < 1:
            raise ConfigurationError(f"min_requests must be >= 1, got {self.min_requests!r}")
        if not 0 <= self.latency_slack < 60:
            raise ConfigurationError(f"latency_slack is in seconds, got {self.latency_slack!r}")

    def to_json(self) -> dict[str, Any]:
        return {
            "max_error_rate_increase": self.max_error_rate_increase,
            "max_p99_ratio": self.max_p99_ratio,
            "min_requests": self.min_requests,
            "latency_slack": self.latency_slack,
        }


@dataclass(frozen=True, slots=True)
class Verdict:
    """The outcome (pass, marginal, fail or insufficient) and, per metric, its
    classification and numbers."""

    outcome: str
    metrics: Mapping[str, Mapping[str, Any]]
    canary: Window
    stable: Window

    def to_json(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome,
            "metrics": {name: dict(numbers) for name, numbers in self.metrics.items()},
            "canary": self.canary.to_json(),
            "stable": self.stable.to_json(),
        }


def _round(value: float) -> float:
    return round(value, 6) if math.isfinite(value) else value


def error_rate(canary: Window, stable: Window, margin: float) -> dict[str, Any]:
    """Agresti-Caffo one-sided test of ``p_canary - p_stable > margin``."""
    rate_c = canary.errors / canary.requests
    rate_s = stable.errors / stable.requests
    adj_c = (canary.errors + 1) / (canary.requests + 2)
    adj_s = (stable.errors + 1) / (stable.requests + 2)
    spread = math.sqrt(
        adj_c * (1 - adj_c) / (canary.requests + 2) + adj_s * (1 - adj_s) / (stable.requests + 2)
    )
    z = (adj_c - adj_s - margin) / spread
    if z > Z_FAIL:
        result = FAIL
    elif rate_c - rate_s > margin:
        result = MARGINAL
    else:
        result = PASS
    return {
        "result": result, "canary_rate": _round(rate_c), "stable_rate": _round(rate_s),
        "increase": _round(rate_c - rate_s), "max_increase": margin, "z": _round(z),
    }  # fmt: skip


def mann_whitney(canary: Sequence[int], stable: Sequence[int]) -> tuple[float, float]:
    """(z, A) for "canary is slower", from binned samples: ``A`` is P(canary > stable) with
    ties counted half (Vargha-Delaney), ``z`` the tie-corrected normal approximation of U."""
    n_c, n_s = sum(canary), sum(stable)
    if not n_c or not n_s:
        return 0.0, 0.5
    below, u = 0, 0.0
    ties = 0
    for c, s in zip(canary, stable, strict=True):
        u += c * (below + s / 2)
        below += s
        t = c + s
        ties += t * t * t - t
    total = n_c + n_s
    mean = n_c * n_s / 2
    variance = n_c * n_s / 12 * ((total + 1) - ties / (total * (total - 1)))
    effect = u / (n_c * n_s)
    if variance <= 0:  # every sample in one bucket: no evidence either way
        return 0.0, effect
    z = (u - mean - 0.5) / math.sqrt(variance) if u > mean else (u - mean) / math.sqrt(variance)
    return z, effect


def quantile(buckets: Sequence[int], bounds: Sequence[float], q: float) -> float:
    """The ``q`` quantile, interpolated linearly within its bucket (the unbounded last
    bucket is read as reaching twice the last bound)."""
    total = sum(buckets)
    rank = q * total
    seen, lower = 0.0, 0.0
    edges = (*bounds, bounds[-1] * 2)
    for count, upper in zip(buckets, edges, strict=True):
        if count and seen + count >= rank:
            return lower + (upper - lower) * (rank - seen) / count
        seen += count
        lower = upper
    return edges[-1]


def share_above(buckets: Sequence[int], bounds: Sequence[float], limit: float) -> float:
    """The fraction of requests slower than ``limit`` (interpolated within its bucket)."""
    total = sum(buckets)
    if not total:
        return 0.0
    above, lower = 0.0, 0.0
    for count, upper in zip(buckets, (*bounds, bounds[-1] * 2), strict=True):
        if lower >= limit:
            above += count
        elif upper > limit:
            above += count * (upper - limit) / (upper - lower)
        lower = upper
    return above / total


def latency(
    canary: Window,
    stable: Window,
    max_ratio: float,
    bounds: Sequence[float],
    slack: float = 0.0,
) -> dict[str, Any]:
    z, effect = mann_whitney(canary.buckets, stable.buckets)
    p99_c = quantile(canary.buckets, bounds, 0.99)
    p99_s = quantile(stable.buckets, bounds, 0.99)
    ratio = p99_c / p99_s if p99_s > 0 else math.inf
    # A p99 over a few hundred requests is a handful of them: the bound fails only when
    # significantly more than 1% of the canary's requests are slower than it allows.
    limit = max(p99_s * max_ratio, p99_s + slack)
    slow = share_above(canary.buckets, bounds, limit)
    samples = max(sum(canary.buckets), 1)
    z_tail = (slow - 0.01) / math.sqrt(0.01 * 0.99 / samples)
    over = p99_c > limit
    tail_fails = over and z_tail > Z_FAIL
    # A shift of the whole distribution counts only when the median moved by more than the
    # slack: with thousands of requests, a millisecond's hop is "significant" and harmless.
    median_c = quantile(canary.buckets, bounds, 0.5)
    median_s = quantile(stable.buckets, bounds, 0.5)
    shifted = median_c - median_s > slack
    if tail_fails or (shifted and z > Z_FAIL and effect >= EFFECT_FAIL):
        result = FAIL
    elif over or (shifted and z > Z_MARGINAL and effect >= EFFECT_MARGINAL):
        result = MARGINAL
    else:
        result = PASS
    return {
        "result": result, "canary_p99": _round(p99_c), "stable_p99": _round(p99_s),
        "p99_ratio": _round(ratio), "max_p99_ratio": max_ratio, "p99_limit": _round(limit),
        "share_over_bound": _round(slow), "tail_z": _round(z_tail),
        "canary_median": _round(median_c), "stable_median": _round(median_s),
        "mann_whitney_z": _round(z), "p_canary_slower": _round(effect),
    }  # fmt: skip


def judge(
    canary: Window,
    stable: Window,
    thresholds: Thresholds = Thresholds(),
    bounds: Sequence[float] = BUCKETS,
) -> Verdict:
    """Compare the canary's window with stable's; see the module docstring for the method.

    >>> judge(Window(1000, 50, canary_buckets), Window(9000, 9, stable_buckets)).outcome
    'fail'
    """
    for name, window in (("canary", canary), ("stable", stable)):
        if len(window.buckets) != len(bounds) + 1:
            raise ValueError(f"the {name} histogram has {len(window.buckets)} buckets, not "
                             f"{len(bounds) + 1}")  # fmt: skip
    if min(canary.requests, stable.requests) < thresholds.min_requests:
        numbers = {
            "result": INSUFFICIENT, "canary_requests": canary.requests,
            "stable_requests": stable.requests, "min_requests": thresholds.min_requests,
        }  # fmt: skip
        return Verdict(INSUFFICIENT, {"sample": numbers}, canary, stable)
    metrics = {
        "errors": error_rate(canary, stable, thresholds.max_error_rate_increase),
        "latency": latency(
            canary, stable, thresholds.max_p99_ratio, bounds, thresholds.latency_slack
        ),
    }
    worst = max((numbers["result"] for numbers in metrics.values()), key=_RANK.__getitem__)
    return Verdict(worst, metrics, canary, stable)
