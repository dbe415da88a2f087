"""CircuitBreaker (engine/breaker.py), driven by a clock the test moves."""

from __future__ import annotations

import pytest

from canary_mw.engine.breaker import CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def test_it_opens_after_threshold_consecutive_failures(clock: Clock) -> None:
    breaker = CircuitBreaker(threshold=3, reset_timeout=1.0, clock=clock)
    breaker.failure()
    breaker.failure()
    assert (breaker.is_open, breaker.allow()) == (False, True)
    breaker.failure()
    assert breaker.is_open
    assert breaker.allow() is False


def test_a_success_between_failures_starts_the_count_again(clock: Clock) -> None:
    breaker = CircuitBreaker(threshold=2, clock=clock)
    breaker.failure()
    breaker.success()
    breaker.failure()
    assert not breaker.is_open
    breaker.failure()
    assert breaker.is_open


def test_trip_opens_at_once(clock: Clock) -> None:
    breaker = CircuitBreaker(threshold=5, clock=clock)
    breaker.trip("refresh failed")
    assert breaker.is_open
    assert breaker.allow() is False


def test_open_lets_one_trial_through_per_reset_timeout(clock: Clock) -> None:
    breaker = CircuitBreaker(threshold=1, reset_timeout=1.0, clock=clock)
    breaker.failure()
    clock.now += 0.99
    assert breaker.allow() is False
    clock.now += 0.01
    assert breaker.allow() is True  # the trial
    assert breaker.allow() is False  # and only one
    clock.now += 1.0
    assert breaker.allow() is True  # the next one, a reset_timeout later


def test_a_successful_trial_closes_it(clock: Clock) -> None:
    breaker = CircuitBreaker(threshold=1, reset_timeout=1.0, clock=clock)
    breaker.failure()
    clock.now += 1.0
    assert breaker.allow()
    breaker.success()
    assert not breaker.is_open
    assert all(breaker.allow() for _ in range(5))


def test_a_failed_trial_keeps_it_open_for_another_reset_timeout(clock: Clock) -> None:
    breaker = CircuitBreaker(threshold=1, reset_timeout=1.0, clock=clock)
    breaker.failure()
    clock.now += 1.0
    assert breaker.allow()
    breaker.failure()
    clock.now += 0.5
    assert breaker.allow() is False
    clock.now += 0.5
    assert breaker.allow() is True


def test_opening_and_closing_are_logged_once_each(
    clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    breaker = CircuitBreaker(threshold=1, clock=clock)
    with caplog.at_level("WARNING", logger="canary_mw.store"):
        breaker.failure("down")
        breaker.failure("down")  # already open: said once
        breaker.success()
        breaker.success()  # already closed: nothing more
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 2
    assert "store unavailable (down)" in messages[0]
    assert "reachable again" in messages[1]
