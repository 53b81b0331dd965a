"""The listener's hand-over to Redis (worker/handoff.py): nothing lost, in order, never blocking."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis

from telefum.config import Settings
from telefum.web import HttpSettings, Service, create_app, start_http
from telephony.supervise import Supervisor
from tests.conftest import free_port
from tests.support.crm import RefCrmProcess
from tests.support.redis import WorkerProcess, inbound_call
from worker import keys
from worker.embedded_redis import EmbeddedRedis
from worker.handoff import Handoff
from worker.policy import DEFAULT_QUEUE, CallPolicy, CrmTarget, WorkerConfig
from worker.stats import read_stats

Q = DEFAULT_QUEUE


def record(i: int) -> dict[str, Any]:
    return inbound_call(f"1764158400.{i}")


async def queued_in_order(redis: Redis, ids: range) -> list[int]:
    """The calls in Redis, in the order they were first enqueued."""
    seen = []
    for i in ids:
        first = await redis.hget(keys.ledger(f"call:default:1764158400.{i}"), "first_seen")
        if first is not None and await redis.zscore(Q, f"call:default:1764158400.{i}"):
            seen.append((float(first), i))
    return [i for _, i in sorted(seen)]


async def until(predicate: Any, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


async def test_submitted_calls_reach_the_queue_in_order(
    tmp_path: Path, redis_url: str, redis_client: Redis
) -> None:
    handoff = Handoff(redis_url, tmp_path / "spool")
    await handoff.start()
    try:
        t0 = time.perf_counter()
        for i in range(200):
            handoff.submit(record(i))
        submit_s = time.perf_counter() - t0
        assert submit_s < 0.05, f"submit blocked the event loop for {submit_s:.3f}s"
        assert await handoff.wait_drained(10)
        assert await queued_in_order(redis_client, range(200)) == list(range(200))
        assert handoff.spool_size == 0
    finally:
        await handoff.close()


async def test_calls_of_a_busy_moment_share_spool_writes_and_a_lone_call_is_not_held(
    tmp_path: Path, redis_url: str
) -> None:
    handoff = Handoff(redis_url, tmp_path / "spool", linger_s=0.2)
    await handoff.start()
    assert handoff._spool is not None
    writes: list[int] = []
    append = handoff._spool.append
    handoff._spool.append = lambda items: (writes.append(len(items)), append(items))[1]  # type: ignore[method-assign]
    try:
        t0 = time.monotonic()
        handoff.submit(record(0))
        await handoff.flush(5)
        assert time.monotonic() - t0 < 0.15, "a lone call waited for company"
        for i in range(1, 11):  # ten calls 5 ms apart, right after a write
            handoff.submit(record(i))
            await asyncio.sleep(0.005)
        await handoff.flush(5)
        assert writes[0] == 1 and sum(writes) == 11
        assert len(writes) <= 3, f"ten calls 5 ms apart took {len(writes) - 1} spool writes"
        assert await handoff.wait_drained(10)
    finally:
        await handoff.close()


async def test_redis_stopped_and_started_under_the_handoff_loses_nothing(
    tmp_path: Path, redis_server: EmbeddedRedis, redis_client: Redis
) -> None:
    handoff = Handoff(redis_server.url, tmp_path / "spool", retry_max_s=0.2)
    await handoff.start()
    try:
        for i in range(20):
            handoff.submit(record(i))
        assert await handoff.wait_drained(10)

        redis_server.stop()
        for i in range(20, 50):
            handoff.submit(record(i))
        await handoff.flush()
        await until(lambda: not handoff.redis_ok)
        assert handoff.spool_size == 30
        assert list(tmp_path.joinpath("spool").glob("*.jsonl"))  # on disk, not in memory

        redis_server.start()  # same port, same data (appendonly)
        assert await handoff.wait_drained(15)
        assert handoff.redis_ok
        assert await queued_in_order(redis_client, range(50)) == list(range(50))
        stats = await read_stats(redis_client, Q)
        assert stats["counters"]["enqueued"] == 50
    finally:
        await handoff.close()


async def test_the_spool_size_is_published_for_health_and_metrics(
    tmp_path: Path, redis_url: str, redis_client: Redis
) -> None:
    handoff = Handoff(redis_url, tmp_path / "spool", listener_id="pbx-listener-1")
    await handoff.start()
    try:
        handoff.submit(record(1))
        assert await handoff.wait_drained(10)
        deadline = time.monotonic() + 5
        while True:
            stats = await read_stats(redis_client, Q)
            if stats["spool"]["listeners"]:
                break
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        listener = stats["spool"]["listeners"][0]
        assert listener["id"] == "pbx-listener-1"
        assert listener["size"] == 0
        assert stats["spool"]["total"] == 0
    finally:
        await handoff.close()


LISTENER = """
import asyncio, sys
from worker.handoff import Handoff

async def main():
    h = Handoff(sys.argv[1], sys.argv[2], retry_max_s=0.1)
    await h.start()
    for i in range(int(sys.argv[3])):
        h.submit({"call_id": f"1764158400.{i}", "pbx": "default", "direction": "in",
                  "external": "+79161234567", "did": None, "extension": "101",
                  "answered": True, "started_at": "2025-11-26T12:00:00.000Z",
                  "answered_at": "2025-11-26T12:00:01.000Z",
                  "ended_at": "2025-11-26T12:01:00.000Z", "disposition": "answered"})
    await h.flush()
    print("flushed", h.spool_size, flush=True)
    await asyncio.sleep(60)

asyncio.run(main())
"""


async def test_a_listener_killed_with_calls_in_its_spool_loses_none_of_them(
    tmp_path: Path, redis_url: str, redis_client: Redis
) -> None:
    spool_dir = tmp_path / "spool"
    dead_redis = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens: Redis is "down"
    proc = subprocess.Popen(
        [sys.executable, "-c", LISTENER, dead_redis, str(spool_dir), "40"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 20)
        assert line.split() == [b"flushed", b"40"], proc.stderr.read() if proc.stderr else ""
    finally:
        proc.kill()
        proc.wait(10)

    restarted = Handoff(redis_url, spool_dir)
    assert restarted.spool_size == 0  # not opened yet
    await restarted.start()
    try:
        assert restarted.spool_size == 40
        assert await restarted.wait_drained(10)
        assert await queued_in_order(redis_client, range(40)) == list(range(40))
    finally:
        await restarted.close()


async def test_a_spool_handed_over_twice_still_gives_one_job_per_call(
    tmp_path: Path, redis_url: str, redis_client: Redis
) -> None:
    spool_dir = tmp_path / "spool"
    first = Handoff(redis_url, spool_dir)
    await first.start()
    for i in range(10):
        first.submit(record(i))
    assert await first.wait_drained(10)
    await first.close()
    (spool_dir / "cursor.json").unlink()  # as if it crashed before saving the cursor

    second = Handoff(redis_url, spool_dir)
    await second.start()
    try:
        assert second.spool_size == 10  # handed over again...
        assert await second.wait_drained(10)
        assert await redis_client.zcard(Q) == 10  # ...but still one job per call
        assert (await read_stats(redis_client, Q))["counters"]["enqueued"] == 10
    finally:
        await second.close()


async def test_a_record_that_is_not_a_call_is_set_aside_and_the_rest_goes_through(
    tmp_path: Path, redis_url: str, redis_client: Redis
) -> None:
    handoff = Handoff(redis_url, tmp_path / "spool")
    await handoff.start()
    try:
        handoff.submit(record(1))
        handoff.submit({"no": "call id"})
        handoff.submit(record(2))
        assert await handoff.wait_drained(10)
        assert await redis_client.zcard(Q) == 2
        rejected = (tmp_path / "spool" / "rejected.jsonl").read_text()
        assert "not a call record" in rejected and "call id" in rejected
    finally:
        await handoff.close()


async def test_a_replayed_call_that_was_delivered_gets_a_line_naming_it(
    tmp_path: Path,
    redis_url: str,
    redis_client: Redis,
    refcrm_process: Callable[..., RefCrmProcess],
    worker_procs: Callable[..., WorkerProcess],
    caplog: pytest.LogCaptureFixture,
) -> None:
    crm = refcrm_process({"bridge": "bridge-pw"})
    w = worker_procs(
        WorkerConfig(
            crm=CrmTarget(crm.rest_url, "bridge", "bridge-pw", timeout_s=1.0),
            calls=CallPolicy(job_timeout_s=3.0),
        )
    )
    await w.wait_ready(redis_client)
    call = inbound_call("1764158400.7", pbx="office")
    caplog.set_level(logging.INFO, logger="worker.queue")
    handoff = Handoff(redis_url, tmp_path / "spool")
    await handoff.start()
    try:
        handoff.submit(call)
        deadline = time.monotonic() + 20
        while (await read_stats(redis_client))["counters"]["succeeded"] < 1:
            assert time.monotonic() < deadline, w.log()
            await asyncio.sleep(0.05)
        assert not [r for r in caplog.records if r.name == "worker.queue"]  # queued: no line

        handoff.submit(call)  # the same call id again: a PBX trace played twice
        assert await handoff.wait_drained(10)
    finally:
        await handoff.close()
    [line] = [r for r in caplog.records if r.name == "worker.queue"]
    assert line.levelno == logging.INFO
    assert (line.call_id, line.pbx) == ("1764158400.7", "office")  # type: ignore[attr-defined]
    assert "already done" in line.getMessage()
    assert len(crm.events()) == 1


@contextlib.contextmanager
def no_file_descriptor_left() -> Iterator[None]:
    """This process out of file descriptors (EMFILE), as 1,100 connections that never
    finish their headers left the listener; what is already open keeps working."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    in_use = max(int(fd) for fd in os.listdir("/proc/self/fd")) + 1
    resource.setrlimit(resource.RLIMIT_NOFILE, (in_use + 32, hard))
    taken: list[int] = []
    try:
        with contextlib.suppress(OSError):
            while True:
                taken.append(os.open(os.devnull, os.O_RDONLY))
        yield
    finally:
        for fd in taken:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def test_the_hand_over_survives_running_out_of_file_descriptors_and_health_says_so(
    tmp_path: Path, redis_url: str, redis_client: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """The drainer fails to open the spool (EMFILE): it is restarted, not left dead; /health
    names it within seconds (asked on a connection opened before: there is no descriptor
    for a new one); its error is logged once, not once per retry; when descriptors are
    back the call goes to Redis and /health drops the reason."""
    supervisor = Supervisor(restart_first_s=0.2, restart_max_s=0.5)
    handoff = Handoff(redis_url, tmp_path / "spool", supervisor=supervisor)
    service = Service(
        Settings(), redis=redis_client, supervisor=supervisor, spool_size=lambda: handoff.spool_size
    )
    http = await start_http(create_app(service), HttpSettings(listen="127.0.0.1:0"))
    url = f"http://127.0.0.1:{http.port}/health"
    session = aiohttp.ClientSession()
    await handoff.start()
    try:
        handoff.submit(record(1))
        assert await handoff.wait_drained(10)
        async with session.get(url) as resp:  # the connection /health is asked on later
            assert "handoff-drainer" not in await resp.text()
        with caplog.at_level(logging.ERROR, "telefum.supervise"), no_file_descriptor_left():
            handoff.submit(record(2))
            await handoff.flush()  # written to the spool: the file was open already
            deadline = time.monotonic() + 5
            while not supervisor.failing() or supervisor.failing()[0].failures < 3:
                assert time.monotonic() < deadline, "the drainer did not fail"
                await asyncio.sleep(0.05)
            async with session.get(url) as resp:
                status, body = resp.status, await resp.json()
        assert status == 503
        [reason] = [r for r in body["reasons"] if "handoff-drainer" in r]
        assert "Too many open files" in reason
        assert len([r for r in caplog.records if "handoff-drainer" in r.getMessage()]) == 1
        assert await handoff.wait_drained(10)  # back: the call reaches Redis
        assert await queued_in_order(redis_client, range(1, 3)) == [1, 2]
        async with session.get(url) as resp:
            assert "handoff-drainer" not in await resp.text()
    finally:
        await session.close()
        await handoff.close()
        await http.cleanup()
        await supervisor.close()
