"""The judge on fixed vectors: each case is two windows and the verdict they must give."""

from __future__ import annotations

import math

import pytest

from canary_mw.errors import ConfigurationError
from canary_mw.metrics import BUCKETS
from canary_mw.rollout.judge import (
    FAIL,
    INSUFFICIENT,
    MARGINAL,
    PASS,
    Thresholds,
    Window,
    judge,
    mann_whitney,
    quantile,
)

SIZE = len(BUCKETS) + 1


def hist(**at: int) -> tuple[int, ...]:
    """A histogram from bucket bounds: hist(b0_05=10) puts 10 requests in the <=0.05 bucket."""
    counts = [0] * SIZE
    for name, count in at.items():
        bound = float(name[1:].replace("_", "."))
        counts[BUCKETS.index(bound)] += count
    return tuple(counts)


def window(requests: int, errors: int, **latency: int) -> Window:
    buckets = hist(**latency) if latency else hist(b0_05=requests)
    return Window(requests, errors, buckets)


# Stable: 10 000 requests, 0.1 % errors, mostly 25-50 ms with a tail at 100 ms.
STABLE = window(10_000, 10, b0_025=4000, b0_05=5900, b0_1=100)

CASES = [
    # id, canary, expected outcome, expected per metric
    ("healthy", window(1000, 1, b0_025=400, b0_05=590, b0_1=10), PASS, (PASS, PASS)),
    ("too-few", window(50, 1, b0_05=50), INSUFFICIENT, None),
    ("one-in-fifty-with-low-minimum", window(50, 1, b0_025=20, b0_05=29, b0_1=1), MARGINAL, None),
    ("fifth-errors", window(1000, 200, b0_025=400, b0_05=590, b0_1=10), FAIL, (FAIL, PASS)),
    ("slight-excess", window(1000, 8, b0_025=400, b0_05=590, b0_1=10), MARGINAL, (MARGINAL, PASS)),
    ("three-times-slower", window(1000, 1, b0_075=400, b0_1=590, b0_25=10), FAIL, (PASS, FAIL)),
    ("tail-only", window(1000, 1, b0_025=400, b0_05=560, b0_5=40), FAIL, (PASS, FAIL)),
    ("one-slow-of-fifty", window(50, 0, b0_025=20, b0_05=29, b0_5=1), MARGINAL, None),
    ("a-bit-slower", window(1000, 1, b0_025=200, b0_05=790, b0_1=10), MARGINAL, (PASS, MARGINAL)),
]


@pytest.mark.parametrize(
    ("canary", "outcome", "per_metric"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_fixed_vectors(canary: Window, outcome: str, per_metric: tuple[str, str] | None) -> None:
    minimum = 50 if canary.requests == 50 and canary.buckets[2] == 20 else 200
    # No slack: these vectors shift latencies by a bucket or two, a few milliseconds.
    verdict = judge(canary, STABLE, Thresholds(min_requests=minimum, latency_slack=0))
    assert verdict.outcome == outcome, verdict.to_json()
    if per_metric is not None:
        assert (verdict.metrics["errors"]["result"], verdict.metrics["latency"]["result"]) == (
            per_metric
        )


def test_a_shift_within_the_slack_is_no_latency_verdict() -> None:
    # Every canary request one bucket up (10-25 ms -> 25-50 ms): significant, a large
    # effect, and a median 12.5 ms higher: within the default 25 ms slack, so it passes.
    canary = window(2000, 0, b0_05=2000)
    stable = window(2000, 0, b0_025=2000)
    assert judge(canary, stable).metrics["latency"]["result"] == PASS
    assert judge(canary, stable, Thresholds(latency_slack=0.01)).outcome == FAIL


def test_one_error_in_fifty_is_not_a_verdict_even_when_fifty_is_enough() -> None:
    verdict = judge(window(50, 1), window(50, 0), Thresholds(min_requests=50))
    assert verdict.metrics["errors"]["result"] != FAIL
    assert verdict.metrics["errors"]["increase"] == pytest.approx(0.02)


def test_the_numbers_behind_the_error_verdict() -> None:
    numbers = judge(window(1000, 200), window(1000, 0)).metrics["errors"]
    assert numbers["canary_rate"] == 0.2
    assert numbers["stable_rate"] == 0.0
    assert numbers["z"] > 10


def test_no_errors_anywhere_passes() -> None:
    assert judge(window(500, 0), window(500, 0)).outcome == PASS


def test_insufficient_names_both_counts() -> None:
    verdict = judge(window(10, 0), window(5000, 0))
    assert verdict.outcome == INSUFFICIENT
    assert verdict.metrics["sample"] == {
        "result": INSUFFICIENT, "canary_requests": 10, "stable_requests": 5000, "min_requests": 200,
    }  # fmt: skip


def test_mann_whitney_matches_the_textbook_on_distinct_values() -> None:
    # Three canary samples all above three stable ones: U = 9, A = 1.
    canary, stable = [0, 0, 0, 1, 1, 1], [1, 1, 1, 0, 0, 0]
    z, effect = mann_whitney(canary, stable)
    assert effect == 1.0
    # n=3,3, no ties: mean 4.5, variance 3*3/12*7 = 5.25; continuity-corrected z
    assert z == pytest.approx((9 - 4.5 - 0.5) / math.sqrt(5.25))


def test_mann_whitney_corrects_for_ties_within_buckets() -> None:
    z, effect = mann_whitney([0, 3], [3, 0])  # two buckets of three: ties term 2*(27-3)
    assert effect == 1.0
    assert z == pytest.approx((9 - 4.5 - 0.5) / math.sqrt(3 * 3 / 12 * (7 - 48 / 30)))


def test_identical_distributions_are_not_slower() -> None:
    z, effect = mann_whitney([5, 10, 5], [50, 100, 50])
    assert effect == pytest.approx(0.5)
    assert z <= 0


def test_quantile_interpolates_within_the_bucket() -> None:
    buckets = hist(b0_05=50, b0_1=50)
    assert quantile(buckets, BUCKETS, 0.5) == pytest.approx(0.05)
    assert quantile(buckets, BUCKETS, 0.75) == pytest.approx(0.0875)  # (0.075, 0.1]


def test_windows_add_up() -> None:
    total = window(10, 1) + window(5, 2)
    assert (total.requests, total.errors, sum(total.buckets)) == (15, 3, 15)


@pytest.mark.parametrize(
    "options",
    [{"max_error_rate_increase": 5}, {"max_p99_ratio": 0.5}, {"min_requests": 0}],
    ids=["rate-as-percent", "ratio-below-one", "no-minimum"],
)
def test_invalid_thresholds_say_how_to_fix_them(options: dict[str, float]) -> None:
    with pytest.raises(ConfigurationError):
        Thresholds(**options)  # type: ignore[arg-type]


def test_a_histogram_of_the_wrong_size_is_refused() -> None:
    with pytest.raises(ValueError, match="buckets"):
        judge(Window(300, 0, (300,)), window(300, 0))
