"""The ledger counts each call once, even when a write is replayed after Redis lost the
answer (the outbox writes it again): the figures ops and the demo read must not run ahead
of the CRM."""

from __future__ import annotations

from redis.asyncio import Redis

from worker import ledger as ledger_mod
from worker.ledger import CallLedger
from worker.stats import read_stats


async def test_a_replayed_delivery_write_counts_the_call_once(redis_client: Redis) -> None:
    entry = await ledger_mod.load(redis_client, "call:default:9.1")
    led = CallLedger(redis_client, entry, ttl_s=3600)
    await led.contact_known("7", "contact", created=True)
    await led.event_created("70", 1.0)
    # what the outbox does when the first attempt's reply was lost: the same write again
    await led.contact_known("7", "contact", created=True)
    await led.event_created("70", 1.0)

    counters = (await read_stats(redis_client))["counters"]
    assert counters["succeeded"] == 1
    assert counters["events_created"] == 1
    assert counters["contacts_created"] == 1


async def test_two_calls_count_twice(redis_client: Redis) -> None:
    for call_id in ("9.2", "9.3"):
        entry = await ledger_mod.load(redis_client, f"call:default:{call_id}")
        await CallLedger(redis_client, entry, ttl_s=3600).event_created("1", 1.0)
    assert (await read_stats(redis_client))["counters"]["succeeded"] == 2
