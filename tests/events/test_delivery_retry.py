"""When a failing webhook is tried again, and when the subscription is given up on."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from headless_ehr.events.delivery import STEP_CAP_SECONDS, RetryPolicy


def test_each_wait_is_half_fixed_half_random_from_a_step_that_doubles():
    policy = RetryPolicy(base_seconds=2.0)
    for failures in range(1, 10):
        step = 2.0 * 2 ** (failures - 1)
        waits = [policy.delay(failures) for _ in range(200)]
        assert all(step / 2 <= w <= step for w in waits)
        assert max(waits) - min(waits) > step / 10  # jitter: not every node at once


def test_no_wait_is_longer_than_an_hour():
    policy = RetryPolicy(base_seconds=2.0)
    assert all(policy.delay(failures) <= STEP_CAP_SECONDS for failures in (20, 100, 10_000))


def test_by_default_attempts_spread_over_a_day_before_error():
    policy = RetryPolicy()
    start = datetime(2026, 12, 1, tzinfo=UTC)
    assert not policy.exhausted(start, start + timedelta(hours=23, minutes=59))
    assert policy.exhausted(start, start + timedelta(hours=24))


def test_the_default_budget_is_many_attempts_not_a_few():
    policy = RetryPolicy()
    first_failure = datetime(2026, 12, 1, tzinfo=UTC)
    elapsed, attempts = 0.0, 1
    while not policy.exhausted(first_failure, first_failure + timedelta(seconds=elapsed)):
        elapsed += policy.delay(attempts)
        attempts += 1
    assert attempts > 25  # about 11 doubling steps, then hourly
