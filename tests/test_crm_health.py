"""Whether each CRM answers: the workers' tallies merged in a real Redis (``worker.crm_health``),
and the waiting calls made due at once (``worker.queue.retry_now``)."""

from __future__ import annotations

import time

import pytest
from redis.asyncio import Redis

from tests.support.redis import inbound_call
from worker.crm_health import CrmTally, Recovered, read_states
from worker.policy import DEFAULT_QUEUE
from worker.queue import enqueue_call, retry_now
from worker.stats import read_stats

URL = "http://bridge:s3cret@crm.test/rest"  # a password in the URL never reaches Redis
SCOPE = "a1b2c3"


async def state(redis: Redis) -> dict[str, object]:
    [only] = await read_states(redis)
    return only


async def test_what_several_workers_saw_is_one_streak_and_a_later_success_ends_it(
    redis_client: Redis,
) -> None:
    a, b = CrmTally(), CrmTally()
    a.failed(SCOPE, URL, "HTTP 503 (a)", at=100.0)
    a.failed(SCOPE, URL, "HTTP 503 (a)", at=130.0)
    b.failed(SCOPE, URL, "timeout (b)", at=170.0)
    assert await a.flush(redis_client, 60) == [] and await b.flush(redis_client, 60) == []
    st = await state(redis_client)
    assert (st["failing_since"], st["last_failure_at"], st["failures"]) == (100.0, 170.0, 3)
    assert st["last_error"] == "timeout (b)" and st["url"] == "http://bridge:***@crm.test/rest"

    a.ok(SCOPE, URL, at=180.0)
    assert await a.flush(redis_client, 60) == [
        Recovered(SCOPE, "http://bridge:***@crm.test/rest", 100.0, 170.0, 3)
    ]
    st = await state(redis_client)
    assert st["failing_since"] is None and st["last_ok_at"] == 180.0 and st["failures"] == 0


async def test_a_success_older_than_the_latest_failure_does_not_end_the_streak(
    redis_client: Redis,
) -> None:
    a, late = CrmTally(), CrmTally()
    a.failed(SCOPE, URL, "HTTP 503", at=100.0)
    a.failed(SCOPE, URL, "HTTP 503", at=170.0)
    await a.flush(redis_client, 60)
    late.ok(SCOPE, URL, at=150.0)  # a slow worker's answer, flushed after
    assert await late.flush(redis_client, 60) == []
    st = await state(redis_client)
    assert (st["failing_since"], st["last_failure_at"], st["failures"]) == (170.0, 170.0, 1)


async def test_a_short_streak_ended_is_no_recovery(redis_client: Redis) -> None:
    a = CrmTally()
    a.failed(SCOPE, URL, "HTTP 503", at=100.0)
    a.failed(SCOPE, URL, "HTTP 503", at=130.0)
    await a.flush(redis_client, 60)
    a.ok(SCOPE, URL, at=140.0)
    assert await a.flush(redis_client, 60) == []  # 30 s of failures: not "failing"


async def test_a_flush_redis_refuses_keeps_what_was_seen_for_the_next(
    redis_client: Redis, redis_url: str
) -> None:
    a = CrmTally()
    a.failed(SCOPE, URL, "HTTP 503", at=100.0)
    gone = Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.5)
    with pytest.raises(Exception):  # noqa: B017 - any client error
        await a.flush(gone, 60)
    await gone.aclose()
    a.failed(SCOPE, URL, "HTTP 502", at=200.0)
    await a.flush(redis_client, 60)
    st = await state(redis_client)
    assert (st["failing_since"], st["last_failure_at"], st["failures"]) == (100.0, 200.0, 2)
    assert st["last_error"] == "HTTP 502"


async def test_retry_now_makes_the_chosen_waiting_calls_due_and_leaves_the_rest(
    redis_client: Redis,
) -> None:
    for i, pbx in enumerate(["office", "office", "branch"]):
        await enqueue_call(
            redis_client,
            inbound_call(f"1.{i}", pbx=pbx),
            queue_name=DEFAULT_QUEUE,
            expires_s=3600,
            ledger_ttl_s=3600,
            defer_s=600,
        )
    await enqueue_call(
        redis_client,
        inbound_call("2.0"),
        queue_name=DEFAULT_QUEUE,
        expires_s=3600,
        ledger_ttl_s=3600,
    )  # due already
    assert (await read_stats(redis_client))["queue"] == {"depth": 4, "due": 1, "deferred": 3}

    moved = await retry_now(redis_client, DEFAULT_QUEUE, only=lambda job: ":office:" in job)
    assert moved == 2
    assert (await read_stats(redis_client))["queue"] == {"depth": 4, "due": 3, "deferred": 1}
    assert await retry_now(redis_client, DEFAULT_QUEUE) == 1
    score = await redis_client.zscore(DEFAULT_QUEUE, "call:branch:1.2")
    assert score is not None and score <= time.time() * 1000
