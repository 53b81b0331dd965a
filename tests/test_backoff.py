"""The one backoff (telephony/backoff.py): pure logic, no clock and no sockets, so these
tests pass ``now`` and a seeded ``random.Random`` themselves."""

from __future__ import annotations

import random

import pytest

from telephony.backoff import Backoff


def test_delays_grow_by_the_factor_from_the_first_up_to_the_cap() -> None:
    b = Backoff(0.5, 8.0, factor=2.0)
    assert [b.delay(n) for n in range(1, 8)] == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]


def test_jitter_stays_within_its_share_of_each_delay_and_never_passes_the_cap() -> None:
    b = Backoff(5.0, 600.0, jitter=0.25, rng=random.Random(7))
    for attempt, base in [(1, 5), (2, 10), (3, 20), (4, 40), (8, 600), (30, 600)]:
        delays = [b.delay(attempt) for _ in range(200)]
        assert all(min(base * 0.75, 600) <= d <= min(base * 1.25, 600) for d in delays)
        assert max(delays) - min(delays) > base / 10 or base == 600  # spread, not one value


def test_the_randomness_is_the_callers_to_give() -> None:
    one = Backoff(1.0, 60.0, jitter=0.5, rng=random.Random(3))
    two = Backoff(1.0, 60.0, jitter=0.5, rng=random.Random(3))
    assert [one.delay(n) for n in range(1, 10)] == [two.delay(n) for n in range(1, 10)]
    other = random.Random(4)
    assert one.delay(3, other) != two.delay(3)  # a per-call rng overrides the instance's


def test_a_loop_that_keeps_failing_backs_off_and_starts_over_after_a_success() -> None:
    b = Backoff(0.05, 2.0)
    assert [b.next(now=0.0) for _ in range(8)] == [0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0]
    b.reset()
    assert b.next(now=100.0) == 0.05


def test_a_fast_phase_retries_within_a_second_then_backs_off_from_the_first_delay() -> None:
    b = Backoff(1.5, 60.0, jitter=1 / 3, fast_s=0.75, fast_for_s=10.0, rng=random.Random(1))
    now, fast = 0.0, []
    while now < 10.0:  # a refused connect fails at once: only the delays pass
        fast.append(b.next(now))
        now += fast[-1]
    assert all(0.5 <= d <= 1.0 for d in fast)
    assert len(fast) >= 10
    slow = [b.next(now) for _ in range(8)]
    for d, centre in zip(slow, [1.5, 3, 6, 12, 24, 48, 60, 60], strict=True):
        assert min(centre * 2 / 3, 60) <= d <= min(centre * 4 / 3, 60)


def test_the_fast_phase_is_timed_from_the_first_failure_of_each_run() -> None:
    b = Backoff(4.0, 60.0, fast_s=0.5, fast_for_s=10.0)
    assert b.next(now=1000.0) == 0.5
    assert b.next(now=1009.9) == 0.5
    assert b.next(now=1010.0) == 4.0  # ten seconds after the run began: exponential
    assert b.next(now=1010.0) == 8.0
    b.reset()
    assert b.next(now=2000.0) == 0.5  # a new run: fast again


def test_a_fast_delay_above_the_cap_is_capped() -> None:
    b = Backoff(0.1, 0.2, fast_s=0.75, fast_for_s=10.0)
    assert b.next(now=0.0) == 0.2


def test_days_of_failures_stay_at_the_cap() -> None:
    b = Backoff(0.5, 60.0, factor=2.0)
    assert b.delay(5000) == 60.0
    for _ in range(3000):
        last = b.next(now=0.0)
    assert last == 60.0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"first_s": 0.0, "max_s": 1.0},
        {"first_s": 2.0, "max_s": 1.0},
        {"first_s": 1.0, "max_s": 2.0, "factor": 0.5},
        {"first_s": 1.0, "max_s": 2.0, "jitter": 1.0},
        {"first_s": 1.0, "max_s": 2.0, "fast_for_s": 5.0},  # a fast phase without a delay
    ],
)
def test_settings_that_make_no_backoff_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="backoff"):
        Backoff(**kwargs)
