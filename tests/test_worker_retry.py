"""The retry decision (worker/retry.py): pure, one visible function."""

from __future__ import annotations

import random

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from worker.policy import RetryPolicy
from worker.retry import decide, describe, is_transient


class CrmError(Exception):
    def __init__(self, msg: str, transient: bool) -> None:
        super().__init__(msg)
        self.transient = transient


POLICY = RetryPolicy(first_delay_s=5, factor=2, max_delay_s=600, jitter=0.25, total_s=86400)


def test_crm_errors_say_themselves_whether_a_retry_can_help() -> None:
    assert is_transient(CrmError("503", transient=True))
    assert not is_transient(CrmError("Неправильный логин или пароль", transient=False))


@pytest.mark.parametrize(
    "err", [TimeoutError(), ConnectionRefusedError(), RedisConnectionError("down")]
)
def test_network_and_redis_trouble_is_transient(err: BaseException) -> None:
    assert is_transient(err)


@pytest.mark.parametrize("err", [KeyError("direction"), TypeError("bug"), ValueError("bad")])
def test_bugs_and_bad_data_are_permanent(err: BaseException) -> None:
    assert not is_transient(err)


def test_a_permanent_error_is_dead_lettered_at_once_with_its_reason() -> None:
    d = decide(
        CrmError("Неправильный логин или пароль", transient=False),
        attempt=1, first_attempt_at=0, now=0, policy=POLICY,
    )  # fmt: skip
    assert not d.retry
    assert d.reason == "permanent: CrmError: Неправильный логин или пароль"


def test_backoff_grows_exponentially_within_the_jitter_and_is_capped() -> None:
    rng = random.Random(7)
    for attempt, base in [(1, 5), (2, 10), (3, 20), (4, 40), (8, 600), (30, 600)]:
        for _ in range(50):
            d = POLICY.backoff(rng).delay(attempt)
            assert min(base * 0.75, 600) <= d <= min(base * 1.25, 600)


def test_jitter_spreads_retries_of_calls_that_failed_together() -> None:
    rng = random.Random(1)
    delays = {round(POLICY.backoff(rng).delay(3), 3) for _ in range(20)}
    assert len(delays) > 10


def test_a_transient_error_retries_until_the_budget_from_the_first_attempt_runs_out() -> None:
    err = CrmError("HTTP 503", transient=True)
    ok = decide(err, attempt=40, first_attempt_at=1000, now=1000 + 86400 - 1000, policy=POLICY)
    assert ok.retry and 0 < ok.delay_s <= 600 * 1.25
    late = decide(err, attempt=150, first_attempt_at=1000, now=1000 + 86400 - 1, policy=POLICY)
    assert not late.retry
    assert "gave up after 150 attempts over 24.0 h" in late.reason
    assert "HTTP 503" in late.reason


def test_messages_are_one_line_and_never_carry_a_password() -> None:
    err = CrmError("GET http://crm/rest?login=a&password=hunter2\nfailed", transient=True)
    text = describe(err)
    assert "hunter2" not in text and "\n" not in text
    assert text.startswith("CrmError: GET http://crm/rest?login=a&password=***")


def test_a_crms_retry_after_is_honoured_up_to_the_longest_delay() -> None:
    err = CrmError("HTTP 429", transient=True)
    err.retry_after = 120  # type: ignore[attr-defined]
    d = decide(err, attempt=1, first_attempt_at=0, now=0, policy=POLICY)
    assert d.retry and d.delay_s == 120
    err.retry_after = 10_000  # type: ignore[attr-defined]
    assert decide(err, attempt=1, first_attempt_at=0, now=0, policy=POLICY).delay_s == 600
