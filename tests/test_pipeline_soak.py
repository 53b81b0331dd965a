"""A soak of 1,000 calls through the real pipeline: hand-off -> Redis -> two worker processes
-> the reference CRM. As many events as calls, one contact per new number, no duplicates."""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from crm_client.client import TelefumClient
from tests.support.crm import RefCrmProcess
from tests.support.redis import WorkerProcess
from tests.test_pipeline import (
    SERVICE,
    USERS,
    config,
    contacts_per_phone,
    events_per_call,
    settled,
)
from worker.handoff import Handoff

CALLS = 1000


def soak_calls(rng: random.Random, new: list[str], known: list[str]) -> list[dict[str, Any]]:
    calls = []
    t0 = 1_764_158_400
    for i in range(CALLS):
        outbound = rng.random() < 0.2
        answered = rng.random() < 0.8
        phone = rng.choice(known) if outbound else rng.choice(new + known)
        start = t0 + i * 7
        calls.append(
            {
                "call_id": f"{start}.{i}",
                "pbx": "default",
                "direction": "out" if outbound else "in",
                "external": phone,
                "did": None if outbound else "+74951234567",
                "extension": rng.choice(["101", "102", "103"]) if answered or outbound else None,
                "answered": answered,
                "started_at": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(start)),
                "answered_at": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(start + 5))
                if answered
                else None,
                "ended_at": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(start + 95)),
                "disposition": "answered" if answered else "no-answer",
                "transfers": [],
            }
        )
    return calls


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_a_thousand_calls_give_a_thousand_events_and_one_contact_per_new_number(
    tmp_path: Path,
    redis_url: str,
    redis_client: Redis,
    refcrm_process: Callable[..., RefCrmProcess],
    worker_procs: Callable[..., WorkerProcess],
) -> None:
    rng = random.Random(20261126)
    new = [f"+7916{n:07d}" for n in rng.sample(range(10**7), 300)]
    known = [f"+7925{n:07d}" for n in rng.sample(range(10**7), 50)]
    crm = refcrm_process(USERS)
    async with TelefumClient(crm.rest_url, timeout_s=5) as client:
        for phone in known:
            await client.add_contact(phone, f"Клиент {phone}", "contact", None, SERVICE)

    cfg = config(crm.rest_url)
    workers = [worker_procs(cfg), worker_procs(cfg)]
    for w in workers:
        await w.wait_ready(redis_client)

    calls = soak_calls(rng, new, known)
    handoff = Handoff(redis_url, tmp_path / "spool")
    await handoff.start()
    t0 = time.monotonic()
    try:
        for c in calls:
            handoff.submit(c)
        assert await handoff.wait_drained(30)
        stats = await settled(redis_client, CALLS, timeout_s=90, what="soak")
    finally:
        await handoff.close()
    elapsed = time.monotonic() - t0
    print(f"soak: {CALLS} calls delivered in {elapsed:.1f}s ({CALLS / elapsed:.0f} calls/s)")

    assert stats["dead_letters"] == 0 and stats["counters"]["skipped"] == 0
    assert stats["counters"]["succeeded"] == CALLS
    assert events_per_call(crm) == Counter({c["call_id"]: 1 for c in calls})
    called_new = {c["external"] for c in calls if c["external"] in set(new)}
    per_phone = contacts_per_phone(crm)
    assert {p: per_phone[p] for p in called_new} == {p: 1 for p in called_new}
    assert {p: per_phone[p] for p in known} == {p: 1 for p in known}
    assert stats["counters"]["contacts_created"] == len(called_new)
    assert stats["counters"]["possible_duplicates"] == 0
