"""The worker embedded in another process (as ``telefum run`` does) and what it reports."""

from __future__ import annotations

import asyncio
import time

import pytest
from redis.asyncio import Redis
from redis.exceptions import RedisError

from tests.conftest import free_port
from tests.test_worker_jobs import MemoryCrm, record
from worker import stats
from worker.app import WorkerService
from worker.embedded_redis import EmbeddedRedis
from worker.policy import CallPolicy, CrmTarget, WorkerConfig
from worker.queue import enqueue_call

CONFIG = WorkerConfig(
    crm=CrmTarget("http://crm.test/rest", "bridge", "pw", timeout_s=1.0),
    calls=CallPolicy(job_timeout_s=3.0),
    poll_delay_s=0.05,
    heartbeat_s=0.2,
    reconcile_s=1.0,
)


async def wait_until(check, timeout_s: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not await check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_an_embedded_worker_delivers_and_stops_cleanly_when_cancelled(
    redis_url: str, redis_client: Redis
) -> None:
    crm = MemoryCrm()
    service = WorkerService(
        CONFIG,
        redis_url,
        worker_id="embedded",
        client_factory=lambda t: crm,
        handle_signals=False,
    )
    task = asyncio.create_task(service.run())
    try:
        await wait_until(lambda: redis_client.exists("telefum:stats:worker:embedded"))
        await enqueue_call(
            redis_client, record(), queue_name=CONFIG.queue_name, expires_s=60, ledger_ttl_s=60
        )
        await wait_until(lambda: _counter(redis_client, "succeeded", 1))
        assert len(crm.events) == 1
        live = await stats.read_stats(redis_client, CONFIG.queue_name)
        assert [w["id"] for w in live["workers"]] == ["embedded"]
        assert live["workers"][0]["age_s"] < 1.0
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert not await redis_client.exists("telefum:stats:worker:embedded")


async def _counter(redis: Redis, name: str, n: int) -> bool:
    return (await stats.read_stats(redis))["counters"][name] >= n


async def test_a_worker_rides_out_redis_going_away_and_coming_back(
    redis_server: EmbeddedRedis, redis_client: Redis
) -> None:
    crm = MemoryCrm()
    service = WorkerService(
        CONFIG,
        redis_server.url,
        worker_id="sturdy",
        client_factory=lambda t: crm,
        handle_signals=False,
    )
    task = asyncio.create_task(service.run())
    try:
        await wait_until(lambda: redis_client.exists("telefum:stats:worker:sturdy"))
        redis_server.stop()
        await asyncio.sleep(0.5)  # the worker's polls fail for a while
        assert not task.done()
        redis_server.start()
        await enqueue_call(
            redis_client, record(), queue_name=CONFIG.queue_name, expires_s=60, ledger_ttl_s=60
        )
        await wait_until(lambda: _counter(redis_client, "succeeded", 1), timeout_s=20)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_heartbeats_expire_and_vanish_from_the_stats(redis_client: Redis) -> None:
    await stats.heartbeat(redis_client, "gone", {"pid": 1}, ttl_s=0.1)
    await stats.heartbeat(redis_client, "alive", {"pid": 2}, ttl_s=30)
    await asyncio.sleep(0.2)
    live = await stats.read_stats(redis_client)
    assert [w["id"] for w in live["workers"]] == ["alive"]
    assert await redis_client.smembers(stats.WORKERS) == {b"alive"}


async def test_latency_buckets_read_back_cumulative_with_count_and_sum(
    redis_client: Redis,
) -> None:
    tally = stats.LatencyTally()
    for seconds in (0.004, 0.02, 0.02, 3.0, 60.0):
        tally.observe("find", "ok", seconds)
    await tally.flush(redis_client)
    h = (await stats.read_stats(redis_client))["crm_latency"]["find"]["ok"]
    buckets = dict((str(le), n) for le, n in h["buckets"])
    assert buckets["0.005"] == 1 and buckets["0.025"] == 3 and buckets["2.5"] == 3
    assert buckets["5.0"] == 4 and buckets["+Inf"] == 5
    assert h["count"] == 5 and h["sum_s"] == pytest.approx(63.044)


async def test_latencies_counted_while_redis_is_away_are_sent_with_the_next_flush(
    redis_client: Redis,
) -> None:
    tally = stats.LatencyTally()
    tally.observe("addevent", "ok", 0.04)
    tally.observe("addevent", "ok", 0.3)
    away = Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=0.5)
    with pytest.raises(RedisError):
        await tally.flush(away)
    await away.aclose()
    tally.observe("addevent", "ok", 0.04)
    await tally.flush(redis_client)
    assert not tally
    h = (await stats.read_stats(redis_client))["crm_latency"]["addevent"]["ok"]
    buckets = dict((str(le), n) for le, n in h["buckets"])
    assert buckets["0.05"] == 2 and buckets["0.5"] == 3
    assert h["count"] == 3 and h["sum_s"] == pytest.approx(0.38)


async def test_queue_depth_tells_due_jobs_from_deferred_retries(redis_client: Redis) -> None:
    now_ms = int(time.time() * 1000)
    await redis_client.zadd("telefum:queue", {"a": now_ms - 10, "b": now_ms + 60_000})
    q = (await stats.read_stats(redis_client))["queue"]
    assert q == {"depth": 2, "due": 1, "deferred": 1}


async def test_a_worker_loop_that_keeps_failing_is_named_in_its_heartbeat(
    redis_url: str, redis_client: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*args: object, **kwargs: object) -> int:
        raise KeyError("a bug in the reconciler")

    monkeypatch.setattr("worker.app.try_reconcile", broken)
    service = WorkerService(
        CONFIG,
        redis_url,
        worker_id="ailing",
        client_factory=lambda t: MemoryCrm(),
        handle_signals=False,
    )
    task = asyncio.create_task(service.run())

    async def named() -> bool:
        workers = (await stats.read_stats(redis_client))["workers"]
        return any("worker-reconciler: KeyError" in w["failing"] for w in workers)

    try:
        await wait_until(named)
        assert not task.done()  # the worker itself runs on
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
