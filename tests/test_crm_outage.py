"""A CRM that stops answering, with real processes: ``telefum listen`` on the simulated PBX,
a worker process, the reference CRM (``telefum refcrm --test-control``) switched to HTTP 503
and back, redis-server. ``/health`` and ``telefum status`` say "degraded" and why within
seconds; once the CRM is back, ``telefum queue retry-now`` (or a worker, on its own, at
the CRM's first success) delivers the waiting calls at once instead of after their backoff.

The workers here wait a minute before a call's first retry (the service waits 5 s, doubling
up to 10 min), so a call delivered within seconds was pulled forward, not retried on time;
``crm_failing_s`` is 1 s instead of 60 s.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
from redis.asyncio import Redis

from pbxsim.server import PbxSimulator
from tests.conftest import free_port
from tests.support.crm import RefCrmProcess
from tests.support.procs import Proc, bridge_settings
from tests.support.redis import WorkerProcess, inbound_call
from worker.crm_health import read_states
from worker.policy import DEFAULT_QUEUE, CallPolicy, CrmTarget, RetryPolicy, WorkerConfig
from worker.queue import enqueue_call
from worker.stats import read_stats

USERS = {"bridge": "bridge-pw"}
TRACES = (
    "01-inbound-answered-caller-hangup.ami",
    "03-inbound-missed-caller-abandons.ami",
    "08-outbound-answered.ami",
)
SLOW_RETRY = RetryPolicy(first_delay_s=60.0, max_delay_s=600.0, total_s=3600.0)
FAILING_S = 1.0


def worker_config(crm_url: str) -> WorkerConfig:
    return WorkerConfig(
        crm=CrmTarget(crm_url, "bridge", USERS["bridge"], timeout_s=1.0),
        calls=CallPolicy(job_timeout_s=3.0),
        retry=SLOW_RETRY,
        crm_failing_s=FAILING_S,
        heartbeat_s=0.5,
        poll_delay_s=0.05,
    )


async def until(
    check: Callable[[], Awaitable[Any]], what: str, logs: Callable[[], str], timeout_s: float = 20.0
) -> Any:
    deadline = time.monotonic() + timeout_s
    while not (value := await check()):
        assert time.monotonic() < deadline, f"no {what} in {timeout_s:g} s:\n{logs()[-4000:]}"
        await asyncio.sleep(0.05)
    return value


async def retried(redis: Redis, n: int) -> bool:
    return bool((await read_stats(redis))["counters"]["retried"] >= n)


async def failing_for(redis: Redis, seconds: float) -> bool:
    """The workers' merged view has a failure streak that long."""
    return any(
        s["failing_since"] is not None and s["last_failure_at"] - s["failing_since"] >= seconds
        for s in await read_states(redis)
    )


async def earliest_retry_ms(redis: Redis) -> float:
    [(_, score)] = await redis.zrange(DEFAULT_QUEUE, 0, 0, withscores=True)
    return float(score)


async def test_health_and_status_say_degraded_why_and_retry_now_delivers_the_waiting_calls(
    tmp_path: Path,
    pbx_sim: PbxSimulator,
    redis_url: str,
    redis_client: Redis,
    refcrm_process: Callable[..., RefCrmProcess],
    worker_procs: Callable[..., WorkerProcess],
    telefum: Callable[..., Awaitable[Proc]],
    traces_dir: Path,
) -> None:
    crm = refcrm_process(USERS, extra_args=("--test-control",))
    port = free_port()
    config = bridge_settings(
        tmp_path / "settings.toml",
        pbx_port=pbx_sim.port,
        crm_url=crm.rest_url,
        crm_password=USERS["bridge"],
        redis_url=redis_url,
        http_port=port,
        extra=f"[health]\ncrm_failing_s = {FAILING_S}\n",
    )
    listen = await telefum("listen", "--config", str(config))
    worker = worker_procs(worker_config(crm.rest_url))
    logs = lambda: listen.text() + "\n---\n" + worker.log()  # noqa: E731
    health_url = f"http://127.0.0.1:{port}/health"

    async def health() -> tuple[int, dict[str, Any]]:
        try:
            async with aiohttp.ClientSession() as s, s.get(health_url) as r:
                return r.status, await r.json()
        except aiohttp.ClientError:
            return 0, {}

    await until(lambda: _is(health(), 200), "a healthy bridge", logs)
    await crm.control(fail_mode="503")
    for trace in TRACES[:2]:
        await pbx_sim.play_trace(traces_dir / trace)
    await until(lambda: retried(redis_client, 2), "two calls failing", logs)
    await asyncio.sleep(FAILING_S + 0.1)  # the failures must span crm_failing_s: that is the rule
    await pbx_sim.play_trace(traces_dir / TRACES[2])
    await until(lambda: retried(redis_client, 3), "the third call failing", logs)
    failed_at = time.monotonic()

    async def degraded() -> dict[str, Any] | None:
        status, body = await health()
        return body if status == 503 and body.get("status") == "degraded" else None

    body = await until(degraded, "a degraded /health", logs, timeout_s=10)
    assert time.monotonic() - failed_at < 5.0  # within seconds (a flush a second, a read)
    [reason] = body["reasons"]
    assert reason.startswith(f"CRM {crm.rest_url} failing since 20")
    assert "3 requests failed, none succeeded): 3 calls waiting; last error " in reason
    assert reason.endswith("HTTP 503: 503 Service Unavailable")
    [state] = body["crm"]
    assert state["failing"] is True and state["waiting"] == 3

    status = await telefum("status", "--config", str(config))
    assert await status.proc.wait() == 1
    screen = status.text()
    assert "DEGRADED" in screen.splitlines()[0] and f"  ! {reason[:60]}" in screen
    assert f"CRM           {crm.rest_url}   FAILING since " in screen

    await crm.control(fail_mode="")  # back; nothing asks it before the calls' next retry
    due_at_ms = await earliest_retry_ms(redis_client)
    assert due_at_ms / 1000 - time.time() > 30
    now = await telefum("queue", "retry-now", "--config", str(config))
    assert await now.proc.wait() == 0, now.tail()
    assert "3 waiting call(s) made due now" in now.text()
    await until(lambda: _settled(redis_client, 3), "the three calls through", logs)
    assert time.time() * 1000 < due_at_ms  # long before any was due
    assert len(crm.events()) == 2  # the outbound call's number is unknown: not logged

    await until(lambda: _is(health(), 200), "a healthy /health again", logs)
    assert await listen.terminate() == 0


async def test_a_worker_runs_the_waiting_calls_when_a_failing_crm_answers_again(
    redis_client: Redis,
    refcrm_process: Callable[..., RefCrmProcess],
    worker_procs: Callable[..., WorkerProcess],
) -> None:
    crm = refcrm_process(USERS, extra_args=("--test-control",))
    worker = worker_procs(worker_config(crm.rest_url))
    await worker.wait_ready(redis_client)
    await crm.control(fail_mode="503")
    await enqueue(redis_client, "20.1", "+79165550001")
    await until(lambda: retried(redis_client, 1), "a failure", worker.log)
    await asyncio.sleep(FAILING_S + 0.1)  # the failures must span crm_failing_s
    await enqueue(redis_client, "20.2", "+79165550002")
    await until(lambda: failing_for(redis_client, FAILING_S), "a failing CRM", worker.log)
    due_at_ms = await earliest_retry_ms(redis_client)

    await crm.control(fail_mode="")
    await enqueue(redis_client, "20.3", "+79165550003")  # a new call: the first success
    await until(lambda: _events(crm, 3), "all three calls in the CRM", worker.log)
    assert time.time() * 1000 < due_at_ms  # the two waiting ones did not wait their minute
    [line] = [x for x in worker.log().splitlines() if "answers again" in x]
    assert f"CRM {crm.rest_url} answers again, after 2 failed requests over " in line
    assert line.endswith("2 waiting call(s) run now")


async def enqueue(redis: Redis, call_id: str, phone: str) -> None:
    await enqueue_call(
        redis,
        inbound_call(call_id, phone),
        queue_name=DEFAULT_QUEUE,
        expires_s=3600,
        ledger_ttl_s=3600,
    )


async def _is(answer: Awaitable[tuple[int, Any]], status: int) -> bool:
    return (await answer)[0] == status


async def _settled(redis: Redis, n: int) -> bool:
    c = (await read_stats(redis))["counters"]
    return bool(c["succeeded"] + c["skipped"] >= n)


async def _events(crm: RefCrmProcess, n: int) -> bool:
    return len(crm.events()) >= n
