"""The worker's delivery hook feeds the marketers' report: each delivered inbound call is
counted exactly once, with its new contact, however often its job runs.

Real Redis, the reference CRM over HTTP, the real TelefumClient, the worker's job
(``worker.jobs.Runtime``) and the shell's hook (``telefum.attribution.attribution_hook``), as
``telefum run`` and ``telefum worker`` wire them. A worker that dies is played by cancelling
its job mid-way: the ledger and the CRM then hold exactly what a SIGKILL would leave.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from typing import Any

import pytest
from arq import Retry
from arq.constants import job_key_prefix
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from crm_client.client import TelefumClient
from telefum.attribution import Attribution, attribution_hook
from telephony.records import CallRecord
from tests.support.crm import RunningRefCrm
from worker.jobs import OnDelivered, Runtime
from worker.ledger import LedgerEntry, load
from worker.policy import CallPolicy, CrmTarget, RetryPolicy, WorkerConfig
from worker.queue import enqueue_call

SOURCES = {"+74951234567": "Yandex Direct"}
CALLER = "+79161234567"


def record(call_id: str, answered: bool = True, hour: int = 12) -> dict[str, Any]:
    return {
        "call_id": call_id,
        "pbx": "default",
        "direction": "in",
        "external": CALLER,
        "did": "+74951234567",
        "extension": "101" if answered else None,
        "answered": answered,
        "started_at": f"2025-11-26T{hour}:00:00.000Z",
        "answered_at": f"2025-11-26T{hour}:00:06.000Z" if answered else None,
        "ended_at": f"2025-11-26T{hour}:04:00.000Z",
        "disposition": "answered" if answered else "no-answer",
        "transfers": [],
    }


@pytest.fixture
async def crm_client(refcrm: RunningRefCrm) -> AsyncIterator[TelefumClient]:
    async with TelefumClient(refcrm.rest_url) as client:
        yield client


def runtime(
    refcrm: RunningRefCrm, client: TelefumClient, redis: Redis, hook: OnDelivered
) -> Runtime:
    """One worker process's job runtime (a new one per 'process')."""
    config = WorkerConfig(
        crm=CrmTarget(refcrm.rest_url, "bridge", refcrm.creds().password, timeout_s=2.0),
        retry=RetryPolicy(first_delay_s=0.1, max_delay_s=0.5, total_s=60),
        calls=CallPolicy(job_timeout_s=5.0),
    )
    return Runtime(
        config, redis, {refcrm.rest_url: client}, rng=random.Random(0), on_delivered=hook
    )


async def run_job(rt: Runtime, rec: dict[str, Any]) -> str:
    """The job as arq runs it (enqueueing again is a no-op while the call is pending)."""
    await enqueue_call(
        rt.redis, rec, queue_name=rt.config.queue_name, expires_s=3600, ledger_ttl_s=3600
    )
    jid = f"call:default:{rec['call_id']}"
    try:
        return await rt.deliver(rec, jid)
    finally:
        await rt.redis.delete(job_key_prefix + jid)
        await rt.redis.zrem(rt.config.queue_name, jid)


async def counted(redis: Redis) -> list[Any]:
    return await Attribution(redis).calls(0, 4e9)


async def test_a_job_redone_after_its_worker_died_before_counting_counts_the_call_once(
    refcrm: RunningRefCrm, crm_client: TelefumClient, redis_client: Redis
) -> None:
    entered = asyncio.Event()

    async def dies_here(record: CallRecord, entry: LedgerEntry) -> None:
        entered.set()
        await asyncio.Event().wait()  # the worker is killed right here

    rec = record("1.1")
    first = asyncio.create_task(run_job(runtime(refcrm, crm_client, redis_client, dies_here), rec))
    await asyncio.wait_for(entered.wait(), 10)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    assert (await load(redis_client, "call:default:1.1")).state == "done"  # the CRM has it...
    assert await counted(redis_client) == []  # ...the report does not, yet

    hook = attribution_hook(redis_client, SOURCES)
    again = runtime(refcrm, crm_client, redis_client, hook)  # arq re-runs it on a new worker
    assert (await run_job(again, rec)).startswith("nothing to do")
    assert (await run_job(again, rec)).startswith("nothing to do")  # and once more

    (row,) = await counted(redis_client)
    assert (row.call_id, row.source, row.new_contact) == ("1.1", "Yandex Direct", True)
    assert refcrm.count_contacts() == 1 and refcrm.count_events() == 1


async def test_a_retried_job_counts_its_call_once_and_a_second_call_as_a_repeat(
    refcrm: RunningRefCrm, crm_client: TelefumClient, redis_client: Redis
) -> None:
    hook = attribution_hook(redis_client, SOURCES)
    rt = runtime(refcrm, crm_client, redis_client, hook)
    refcrm.set_failure("503")
    with pytest.raises(Retry):
        await run_job(rt, record("2.1"))
    assert await counted(redis_client) == []  # nothing delivered, nothing counted

    refcrm.set_failure(None)
    assert (await run_job(rt, record("2.1"))).startswith("delivered")
    assert (await run_job(rt, record("2.1"))).startswith("nothing to do")  # a duplicate run
    assert (await run_job(rt, record("2.2", answered=False, hour=15))).startswith("delivered")

    report = await Attribution(redis_client).report(0, 4e9)
    (row,) = report["numbers"]
    figures = ("calls", "answered", "missed", "new_contacts", "first_calls", "repeat_calls")
    assert {k: row[k] for k in figures} == {
        "calls": 2,
        "answered": 1,
        "missed": 1,
        "new_contacts": 1,
        "first_calls": 1,
        "repeat_calls": 1,
    }
    assert row["new_contacts"] == refcrm.count_contacts()
    assert refcrm.count_events() == 2


async def test_a_hook_that_finds_redis_away_retries_the_job_and_counts_the_call_once(
    refcrm: RunningRefCrm, crm_client: TelefumClient, redis_client: Redis
) -> None:
    real = attribution_hook(redis_client, SOURCES)
    told: list[str] = []

    async def flaky(call: CallRecord, entry: LedgerEntry) -> None:
        told.append(call.call_id)
        if len(told) == 1:  # the first time, Redis is away
            raise RedisConnectionError("Redis went away")
        await real(call, entry)

    rt = runtime(refcrm, crm_client, redis_client, flaky)
    with pytest.raises(Retry):  # delivered, but not yet counted: arq runs the job again
        await run_job(rt, record("7.1"))
    assert refcrm.count_events() == 1 and await counted(redis_client) == []
    assert (await run_job(rt, record("7.1"))).startswith("nothing to do")
    assert refcrm.count_events() == 1
    assert [c.call_id for c in await counted(redis_client)] == ["7.1"]
