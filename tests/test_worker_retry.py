"""The retry decision (worker/retry.py): pure, one visible function of the exception type."""

from __future__ import annotations

import random

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import LockError

from crm_client.errors import PermanentCrmError, Transient, TransientCrmError
from worker.jobs import BadRecord
from worker.policy import RetryPolicy
from worker.retry import decide, describe, is_transient, may_have_acted
from worker.steps import DeadlineNear, OutcomePending

POLICY = RetryPolicy(first_delay_s=5, factor=2, max_delay_s=600, jitter=0.25, total_s=86400)


def transient(message: str, *, acted: bool = True) -> TransientCrmError:
    return TransientCrmError(message, kind="http", may_have_acted=acted)


WRONG_PASSWORD = PermanentCrmError("Неправильный логин или пароль", kind="auth")


def test_crm_errors_say_by_their_type_whether_a_retry_can_help() -> None:
    assert is_transient(transient("503"))
    assert not is_transient(WRONG_PASSWORD)


@pytest.mark.parametrize(
    "err",
    [
        TimeoutError(),
        ConnectionRefusedError(),
        RedisConnectionError("down"),
        LockError("held"),
        DeadlineNear("1 s left"),
        OutcomePending(3.0),
    ],
)
def test_network_and_redis_trouble_and_the_workers_own_not_now_are_transient(
    err: BaseException,
) -> None:
    assert is_transient(err)


@pytest.mark.parametrize(
    "err", [KeyError("direction"), TypeError("bug"), ValueError("bad"), BadRecord("unreadable")]
)
def test_bugs_and_bad_data_are_permanent(err: BaseException) -> None:
    assert not is_transient(err)


def test_a_transient_subclass_of_anything_is_transient() -> None:
    class Busy(Transient, ValueError):
        pass

    assert is_transient(Busy())


@pytest.mark.parametrize(
    ("err", "acted"),
    [
        (transient("connection reset", acted=True), True),
        (transient("connection refused", acted=False), False),
        (TimeoutError(), True),  # the run's own deadline cut a request short
        (DeadlineNear("1 s left"), False),  # nothing was started
        (OutcomePending(3.0), False),
        (RedisConnectionError("down"), False),  # Redis, not the CRM
        (WRONG_PASSWORD, False),
    ],
)
def test_whether_the_crm_may_have_acted_is_the_errors_own_word(
    err: BaseException, acted: bool
) -> None:
    assert may_have_acted(err) is acted


def test_a_permanent_error_is_dead_lettered_at_once_with_its_reason() -> None:
    d = decide(WRONG_PASSWORD, attempt=1, first_attempt_at=0, now=0, policy=POLICY)
    assert not d.retry
    assert d.reason == "permanent: PermanentCrmError: Неправильный логин или пароль"


def test_backoff_grows_exponentially_within_the_jitter_and_is_capped() -> None:
    rng = random.Random(7)
    for attempt, base in [(1, 5), (2, 10), (3, 20), (4, 40), (8, 600), (30, 600)]:
        for _ in range(50):
            d = decide(
                transient("503"), attempt=attempt, first_attempt_at=0, now=0, policy=POLICY, rng=rng
            ).delay_s
            assert min(base * 0.75, 600) <= d <= min(base * 1.25, 600)


def test_jitter_spreads_retries_of_calls_that_failed_together() -> None:
    rng = random.Random(1)
    delays = {round(POLICY.backoff(rng).delay(3), 3) for _ in range(20)}
    assert len(delays) > 10


def test_a_transient_error_retries_until_the_budget_from_the_first_attempt_runs_out() -> None:
    err = transient("HTTP 503")
    ok = decide(err, attempt=40, first_attempt_at=1000, now=1000 + 86400 - 1000, policy=POLICY)
    assert ok.retry and 0 < ok.delay_s <= 600 * 1.25
    late = decide(err, attempt=150, first_attempt_at=1000, now=1000 + 86400 - 1, policy=POLICY)
    assert not late.retry
    assert "gave up after 150 attempts over 24.0 h" in late.reason
    assert "HTTP 503" in late.reason


def test_messages_are_one_line_and_never_carry_a_password() -> None:
    err = transient("GET http://crm/rest?login=a&password=hunter2\nfailed")
    text = describe(err)
    assert "hunter2" not in text and "\n" not in text
    assert text.startswith("TransientCrmError: GET http://crm/rest?login=a&password=***")


def test_a_crms_retry_after_is_honoured_up_to_the_longest_delay() -> None:
    err = TransientCrmError("HTTP 429", kind="rate_limited", may_have_acted=False, retry_after=120)
    d = decide(err, attempt=1, first_attempt_at=0, now=0, policy=POLICY)
    assert d.retry and d.delay_s == 120
    err.retry_after = 10_000
    assert decide(err, attempt=1, first_attempt_at=0, now=0, policy=POLICY).delay_s == 600


def test_the_workers_own_wait_is_honoured_like_a_crms_retry_after() -> None:
    d = decide(OutcomePending(42.0), attempt=1, first_attempt_at=0, now=0, policy=POLICY)
    assert d.retry and d.delay_s == 42.0
