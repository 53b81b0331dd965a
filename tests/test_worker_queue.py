"""One job per call, and the ledger's word over arq's memory (worker/queue.py, reconcile.py)."""

from __future__ import annotations

import json
from typing import Any

from arq.constants import job_key_prefix, result_key_prefix
from redis.asyncio import Redis

from tests.support.redis import inbound_call
from worker import keys
from worker.policy import DEFAULT_QUEUE
from worker.queue import ALREADY_QUEUED, QUEUED, enqueue_call, loads
from worker.reconcile import reconcile_once
from worker.stats import read_stats

Q = DEFAULT_QUEUE
OPTS: dict[str, Any] = {"queue_name": Q, "expires_s": 3600, "ledger_ttl_s": 3600}


def record(call_id: str = "1764158400.17", pbx: str = "office") -> dict[str, Any]:
    return inbound_call(call_id, pbx=pbx)


async def test_a_call_enqueued_twice_is_one_job_with_a_deterministic_id(
    redis_client: Redis,
) -> None:
    assert await enqueue_call(redis_client, record(), **OPTS) == QUEUED
    assert await enqueue_call(redis_client, record(), **OPTS) == ALREADY_QUEUED
    assert await redis_client.zrange(Q, 0, -1) == [b"call:office:1764158400.17"]
    job = loads(await redis_client.get(job_key_prefix + "call:office:1764158400.17"))
    assert job["f"] == "deliver_call"
    assert job["a"] == [record()]
    stats = await read_stats(redis_client, Q)
    assert stats["counters"]["enqueued"] == 1
    assert stats["pending"] == 1


async def test_a_delivered_call_is_not_run_again_after_arq_forgot_its_job(
    redis_client: Redis,
) -> None:
    await enqueue_call(redis_client, record(), **OPTS)
    jid = "call:office:1764158400.17"
    # what a finished run leaves: the ledger says done, arq dropped its keys
    await redis_client.hset(keys.ledger(jid), mapping={"state": "done", "event_id": "7"})
    await redis_client.delete(job_key_prefix + jid)
    await redis_client.zrem(Q, jid)
    assert await enqueue_call(redis_client, record(), **OPTS) == "done"
    assert await redis_client.zcard(Q) == 0


async def test_a_kept_arq_result_does_not_block_a_requeue(redis_client: Redis) -> None:
    jid = "call:office:1764158400.17"
    await enqueue_call(redis_client, record(), **OPTS)
    await redis_client.hset(keys.ledger(jid), "state", "dead")
    await redis_client.delete(job_key_prefix + jid)
    await redis_client.zrem(Q, jid)
    await redis_client.set(result_key_prefix + jid, b"old result")  # arq would refuse the id
    assert await enqueue_call(redis_client, record(), **OPTS) == "dead"  # the listener can't
    assert await enqueue_call(redis_client, record(), requeue=True, **OPTS) == QUEUED  # ops can
    assert await redis_client.exists(result_key_prefix + jid) == 0
    assert await redis_client.zrange(Q, 0, -1) == [jid.encode()]


async def test_two_pbxs_with_the_same_call_id_are_two_calls(redis_client: Redis) -> None:
    assert await enqueue_call(redis_client, record(pbx="a"), **OPTS) == QUEUED
    assert await enqueue_call(redis_client, record(pbx="b"), **OPTS) == QUEUED
    assert await redis_client.zcard(Q) == 2


async def test_the_ledger_keeps_the_record_so_nothing_depends_on_arqs_copy(
    redis_client: Redis,
) -> None:
    await enqueue_call(redis_client, record(), **OPTS)
    raw = await redis_client.hget(keys.ledger("call:office:1764158400.17"), "record")
    assert json.loads(raw) == record()


async def test_the_reconciler_re_enqueues_a_pending_call_whose_arq_job_was_lost(
    redis_client: Redis,
) -> None:
    await enqueue_call(redis_client, record("1"), **OPTS)
    await enqueue_call(redis_client, record("2"), **OPTS)
    await enqueue_call(redis_client, record("3"), **OPTS)
    # job 1 expired in arq (its key is gone); job 2 is done; job 3 is fine
    await redis_client.delete(job_key_prefix + "call:office:1")
    await redis_client.zrem(Q, "call:office:1")
    await redis_client.hset(keys.ledger("call:office:2"), "state", "done")
    await redis_client.delete(job_key_prefix + "call:office:2")
    await redis_client.zrem(Q, "call:office:2")

    assert await reconcile_once(redis_client, **OPTS) == 1
    assert sorted(await redis_client.zrange(Q, 0, -1)) == [b"call:office:1", b"call:office:3"]
    assert await redis_client.zrange(keys.PENDING, 0, -1) == [b"call:office:1", b"call:office:3"]
    assert (await read_stats(redis_client, Q))["counters"]["recovered"] == 1
    assert await reconcile_once(redis_client, **OPTS) == 0


async def test_a_record_without_a_call_id_is_refused_with_a_clear_error(
    redis_client: Redis,
) -> None:
    bad = record()
    del bad["call_id"]
    try:
        await enqueue_call(redis_client, bad, **OPTS)
    except ValueError as err:
        assert "without a call_id" in str(err)
    else:
        raise AssertionError("accepted a record without a call id")
    assert await redis_client.zcard(Q) == 0
