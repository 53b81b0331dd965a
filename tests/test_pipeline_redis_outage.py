"""An answer the CRM gave survives Redis going away: the worker keeps it (memory and disk)
until Redis takes it, the run is not failed for it, and no later run writes the call again.

Real processes on loopback: redis-server (stopped, or hung with SIGSTOP, right while the
CRM answers), two ``python -m worker`` processes, the reference CRM behind a proxy that
holds the request until Redis is away.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from tests.support.crm import RefCrmProcess
from tests.support.redis import HoldingProxy, WorkerProcess
from tests.test_pipeline import (
    NEW_PHONE,
    USERS,
    call,
    config,
    contacts_per_phone,
    enqueue,
    events_per_call,
    settled,
)
from worker.embedded_redis import EmbeddedRedis
from worker.stats import read_stats

AWAY_S = 6.0  # longer than the test config's settle time (3.5 s): the old wait ran out

Procs = Callable[..., WorkerProcess]


@pytest.fixture
def resume_redis(redis_server: EmbeddedRedis) -> Iterator[EmbeddedRedis]:
    """The Redis of the test; never left stopped or hung."""
    yield redis_server
    if redis_server.pid is not None:
        os.kill(redis_server.pid, signal.SIGCONT)


def away(redis: EmbeddedRedis, how: str) -> None:
    if how == "stopped":
        redis.stop()
    else:
        assert redis.pid is not None
        os.kill(redis.pid, signal.SIGSTOP)


def back(redis: EmbeddedRedis, how: str) -> None:
    if how == "stopped":
        redis.start()  # same port, same data (appendonly)
    else:
        assert redis.pid is not None
        os.kill(redis.pid, signal.SIGCONT)


async def wait_for_log(workers: list[WorkerProcess], text: str, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while not any(text in w.log() for w in workers):
        assert time.monotonic() < deadline, f"no {text!r} in the workers' logs"
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("how", ["stopped", "hung"])
@pytest.mark.parametrize("op", ["addevent", "addcont"])
async def test_redis_away_when_the_crm_answers_writes_nothing_twice(
    tmp_path: Path,
    resume_redis: EmbeddedRedis,
    redis_client: Redis,
    refcrm_process: Callable[..., RefCrmProcess],
    holding_proxy_factory: Callable[[str], Any],
    worker_procs: Procs,
    op: str,
    how: str,
) -> None:
    crm = refcrm_process(USERS)
    proxy: HoldingProxy = await holding_proxy_factory(crm.rest_url)
    proxy.hold(op)
    cfg = config(proxy.url, outbox_dir=str(tmp_path / "outbox"))
    workers = [worker_procs(cfg), worker_procs(cfg)]
    for w in workers:
        await w.wait_ready(redis_client)
    await enqueue(redis_client, call("1.1"))

    held = await proxy.wait_held()  # the worker waits for the CRM's answer right now
    away(resume_redis, how)
    status, _ = await held.forward()  # the CRM acts and answers; Redis cannot take it
    assert status == 200
    await wait_for_log(workers, "kept for it in the outbox")
    await asyncio.sleep(AWAY_S)
    back(resume_redis, how)

    stats = await settled(redis_client, 1, timeout_s=40, delivered=True)
    await asyncio.sleep(4.0)  # room for a wrong second run to write again
    stats = await read_stats(redis_client)
    assert events_per_call(crm) == {"1.1": 1}
    assert contacts_per_phone(crm) == {NEW_PHONE: 1}
    assert stats["counters"]["succeeded"] == 1
    assert stats["counters"]["contacts_created"] == 1
    assert stats["counters"]["possible_duplicates"] == 0
    assert stats["dead_letters"] == 0


async def test_an_answer_kept_on_disk_by_a_worker_killed_while_redis_was_away_is_taken_over(
    tmp_path: Path,
    resume_redis: EmbeddedRedis,
    redis_client: Redis,
    refcrm_process: Callable[..., RefCrmProcess],
    holding_proxy_factory: Callable[[str], Any],
    worker_procs: Procs,
) -> None:
    """The worker that holds the answer dies before Redis is back: another worker of the
    host finds its journal, writes the answer, and the call is not sent again."""
    crm = refcrm_process(USERS)
    proxy: HoldingProxy = await holding_proxy_factory(crm.rest_url)
    proxy.hold("addevent")
    cfg = config(proxy.url, outbox_dir=str(tmp_path / "outbox"))
    first = worker_procs(cfg)
    await first.wait_ready(redis_client)
    await enqueue(redis_client, call("1.1"))
    held = await proxy.wait_held()
    away(resume_redis, "stopped")
    await held.forward()
    await wait_for_log([first], "kept for it in the outbox")
    first.kill()
    await asyncio.sleep(AWAY_S)
    back(resume_redis, "stopped")
    second = worker_procs(cfg)

    stats = await settled(redis_client, 1, timeout_s=40, delivered=True)
    await asyncio.sleep(4.0)
    assert "took over 1 CRM answer(s)" in second.log()
    assert events_per_call(crm) == {"1.1": 1}
    assert (await read_stats(redis_client))["counters"]["possible_duplicates"] == 0
    assert stats["counters"]["succeeded"] == 1
