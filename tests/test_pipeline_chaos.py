"""Chaos over the durable pipeline, everything at once, with real processes on loopback.

The listener's hand-over feeds ~40 s of calls into Redis while two worker processes deliver
them to the reference CRM (``telefum refcrm``, answering in windows-1251), and:

- the CRM loses 15 % of its ``addcont`` replies after storing the contact;
- the CRM is down for 8 s (its process stopped; it comes back on the same port and file);
- Redis hangs for 12 s (SIGSTOP), with calls and CRM answers in flight;
- a worker is SIGKILLed every 7 s (and another started in its place).

Then: every call delivered, none dead; one contact per number; each call's event once,
except where the bridge itself counted a possible duplicate, exactly:
events in the CRM = calls + ``possible_duplicates``.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from tests.support.crm import RefCrmProcess
from tests.support.redis import WorkerProcess, inbound_call
from tests.test_pipeline import USERS, config, contacts_per_phone, events_per_call, settled
from worker.embedded_redis import EmbeddedRedis
from worker.handoff import Handoff
from worker.stats import read_stats

CALLS = 320
FEED_S = 40.0  # calls are handed over during this long
CRM_DOWN = (6.0, 8.0)  # (from, for) seconds after the start
REDIS_HUNG = (18.0, 12.0)
KILL_EVERY_S = 7.0  # from KILL_FIRST_S: some land while the backlog of an outage drains
KILL_FIRST_S = 3.5


def chaos_calls(rng: random.Random) -> list[dict[str, Any]]:
    numbers = [f"+7916{n:07d}" for n in rng.sample(range(10**7), 140)]
    calls = []
    for i in range(CALLS):
        phone = numbers[i] if i < len(numbers) else rng.choice(numbers)  # new, then repeats
        ext = rng.choice(["101", "102", "103", None])
        calls.append(inbound_call(f"1764158400.{i}", phone, extension=ext))
    return calls


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_chaos_every_call_once_but_the_counted_duplicates_one_contact_per_number(
    tmp_path: Path,
    redis_server: EmbeddedRedis,
    redis_client: Redis,
    refcrm_process: Callable[..., RefCrmProcess],
    worker_procs: Callable[..., WorkerProcess],
) -> None:
    rng = random.Random(20261213)
    # 40 ms per request: a killed worker often leaves a write the CRM then carries out
    crm = refcrm_process(
        USERS,
        latency_ms=40,
        extra_args=(
            "--encoding",
            "windows-1251",
            "--lose-replies",
            "addcont:0.15",
            "--seed",
            "7",
        ),
    )
    cfg = config(crm.rest_url, outbox_dir=str(tmp_path / "outbox"))
    workers = [worker_procs(cfg), worker_procs(cfg)]
    for w in workers:
        await w.wait_ready(redis_client)
    calls = chaos_calls(rng)
    handoff = Handoff(redis_server.url, tmp_path / "spool", retry_max_s=0.5)
    await handoff.start()
    t0 = time.monotonic()
    log: list[str] = []

    async def at(second: float) -> None:
        await asyncio.sleep(max(0.0, t0 + second - time.monotonic()))

    async def feed() -> None:
        for i, c in enumerate(calls):
            await at(FEED_S * i / CALLS)
            handoff.submit(c)

    async def crm_outage() -> None:
        start, length = CRM_DOWN
        await at(start)
        await asyncio.to_thread(crm.stop)
        log.append(f"{time.monotonic() - t0:.1f}s CRM down")
        await at(start + length)
        await asyncio.to_thread(crm.start)
        log.append(f"{time.monotonic() - t0:.1f}s CRM back")

    async def redis_hang() -> None:
        start, length = REDIS_HUNG
        await at(start)
        assert redis_server.pid is not None
        os.kill(redis_server.pid, signal.SIGSTOP)
        log.append(f"{time.monotonic() - t0:.1f}s Redis hung")
        await at(start + length)
        os.kill(redis_server.pid, signal.SIGCONT)
        log.append(f"{time.monotonic() - t0:.1f}s Redis back")

    async def killer() -> None:
        n = 0
        while time.monotonic() - t0 < FEED_S + 5:
            await at(KILL_FIRST_S + n * KILL_EVERY_S)
            n += 1
            victim = workers.pop(0)
            victim.kill()
            workers.append(worker_procs(cfg))
            log.append(f"{time.monotonic() - t0:.1f}s killed {victim.wid}")

    try:
        await asyncio.gather(feed(), crm_outage(), redis_hang(), killer())
        assert await handoff.wait_drained(30)
        stats = await settled(redis_client, CALLS, timeout_s=90, what="chaos", delivered=True)
        await asyncio.sleep(2.0)  # nothing may come after: a late duplicate would show here
    finally:
        if redis_server.pid is not None:
            os.kill(redis_server.pid, signal.SIGCONT)
        await handoff.close()
    stats = await read_stats(redis_client)
    print("chaos:", "; ".join(log), f"; settled after {time.monotonic() - t0:.0f}s")
    print("chaos counters:", stats["counters"])

    counters = stats["counters"]
    assert stats["dead_letters"] == 0
    assert counters["succeeded"] == CALLS
    per_call = events_per_call(crm)
    assert set(per_call) == {c["call_id"] for c in calls}  # every call's event is there
    assert sum(per_call.values()) == CALLS + counters["possible_duplicates"]
    numbers = {c["external"] for c in calls}
    assert contacts_per_phone(crm) == Counter({p: 1 for p in numbers})
    assert counters["contacts_created"] == len(numbers)
    assert counters["retried"] > 0 and crm_replies_lost(crm) > 0  # the chaos did happen


def crm_replies_lost(crm: RefCrmProcess) -> int:
    """How many addcont replies the CRM dropped (its log counts them: see its stats)."""
    import json
    import urllib.request

    with urllib.request.urlopen(crm.base_url + "_stats", timeout=5) as resp:
        return int(json.load(resp).get("requests", {}).get("replies_lost", 0))
