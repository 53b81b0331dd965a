"""A new contact carries the tracking number its caller dialled first, whatever order the
caller's calls reach the CRM in, and the marketers' report credits that number.

The end-to-end case runs the real pipeline: the listener's hand-off, redis-server, a
``telefum worker`` process (with the report's delivery hook), the reference CRM over HTTP,
``telefum dlq requeue`` and ``telefum report`` as an admin and a marketer run them. The
others run one job in-process (``worker.jobs.Runtime``) against the same real parts.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from arq.constants import job_key_prefix
from redis.asyncio import Redis

from crm_client.client import TelefumClient
from telefum.attribution import Attribution, attribution_hook
from telephony.records import CallRecord
from tests.support.crm import RefCrmProcess, RunningRefCrm
from worker import keys
from worker.embedded_redis import EmbeddedRedis
from worker.first_call import first_calls
from worker.handoff import Handoff
from worker.jobs import Runtime
from worker.policy import DEFAULT_QUEUE, CallPolicy, CrmTarget, RetryPolicy, WorkerConfig
from worker.queue import enqueue_call
from worker.stats import read_stats

REPO = Path(__file__).resolve().parents[1]
CALLER = "+79161234567"
YANDEX, GOOGLE, AVITO = "+74951234567", "+74951234568", "+78122003344"
SOURCES = {YANDEX: "Yandex Direct", GOOGLE: "Google Ads"}


def call(call_id: str, did: str, ago_s: float, *, pbx: str = "default") -> dict[str, Any]:
    at = time.time() - ago_s
    return CallRecord(
        call_id=call_id,
        direction="in",
        external=CALLER,
        did=did,
        extension="101",
        answered=True,
        started_at=at,
        answered_at=at + 3,
        ended_at=at + 60,
        disposition="answered",
        pbx=pbx,
    ).to_json()


async def until(redis: Redis, what: str, ok: Callable[[dict[str, Any]], bool]) -> None:
    deadline = time.monotonic() + 30
    while not ok(stats := await read_stats(redis)):
        assert time.monotonic() < deadline, f"{what}: {stats}"
        await asyncio.sleep(0.05)


def telefum(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TELEFUM_")}
    return subprocess.run(
        [sys.executable, "-m", "telefum.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env=env,
    )


@pytest.fixture
async def worker(
    tmp_path: Path,
    redis_url: str,
    redis_client: Redis,
    refcrm_process: Callable[..., RefCrmProcess],
) -> AsyncIterator[tuple[Path, RefCrmProcess]]:
    """``telefum worker`` from a settings.toml, as systemd runs it; the CRM it talks to."""
    crm = refcrm_process({"bridge": "bridge-pw"}, extra_args=("--test-control",))
    settings = tmp_path / "settings.toml"
    settings.write_text(
        f'[redis]\nurl = "{redis_url}"\n\n'
        f'[crm]\nurl = "{crm.rest_url}"\nlogin = "bridge"\npassword = "bridge-pw"\n'
        "timeout_s = 2.0\n\n"
        f'[sources]\n"{YANDEX}" = "Yandex Direct"\n"{GOOGLE}" = "Google Ads"\n\n'
        "[worker]\njob_timeout_s = 5.0\n",
        encoding="utf-8",
    )
    log = open(tmp_path / "worker.log", "wb")  # noqa: SIM115
    env = {k: v for k, v in os.environ.items() if not k.startswith("TELEFUM_")}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "telefum.cli",
            "worker",
            "--config",
            str(settings),
            "--worker-id",
            "w1",
        ],
        stdout=log,
        stderr=log,
        stdin=subprocess.DEVNULL,
        cwd=REPO,
        env=env,
    )
    try:
        deadline = time.monotonic() + 20
        while not await redis_client.exists("telefum:stats:worker:w1"):
            assert proc.poll() is None, (tmp_path / "worker.log").read_text()
            assert time.monotonic() < deadline, (tmp_path / "worker.log").read_text()
            await asyncio.sleep(0.05)
        yield settings, crm
    finally:
        proc.kill()
        proc.wait(10)
        log.close()
        print((tmp_path / "worker.log").read_text(errors="replace")[-4000:])


async def test_a_first_call_dead_lettered_and_requeued_after_a_later_call_keeps_its_source(
    tmp_path: Path,
    redis_server: EmbeddedRedis,
    redis_client: Redis,
    worker: tuple[Path, RefCrmProcess],
) -> None:
    settings, crm = worker
    handoff = Handoff(redis_server.url, tmp_path / "spool")
    await handoff.start()
    try:
        # the caller dials the Yandex number; the CRM refuses that call
        await crm.control(fail_mode="error", fail_count=1)
        handoff.submit(call("1.1", YANDEX, ago_s=3 * 3600))
        await until(redis_client, "first call dead", lambda s: s["dead_letters"] == 1)
        assert crm.contacts() == []

        # an hour later they dial the Google number: delivered first, it creates the contact
        handoff.submit(call("1.2", GOOGLE, ago_s=2 * 3600))
        await until(redis_client, "second call", lambda s: s["counters"]["succeeded"] == 1)
    finally:
        await handoff.close()

    requeued = await asyncio.to_thread(
        telefum, "dlq", "requeue", "--all", "--config", str(settings)
    )
    assert requeued.returncode == 0, requeued.stderr
    await until(redis_client, "first call requeued", lambda s: s["counters"]["succeeded"] == 2)

    # one contact, whose source is the number the caller dialled first
    [(contact_id, phone, x_pstn, _)] = crm.contacts()
    assert (phone, x_pstn) == (CALLER, YANDEX)
    assert [e[0] for e in crm.events()] == [contact_id, contact_id]

    out = await asyncio.to_thread(
        telefum, "report", "--config", str(settings), "--format", "json", "--since", "1d"
    )
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    by = {r["tracking_number"]: r for r in report["numbers"]}
    figures = ("calls", "new_contacts", "first_calls", "repeat_calls")
    assert {k: by[YANDEX][k] for k in figures} == {
        "calls": 1,
        "new_contacts": 1,
        "first_calls": 1,
        "repeat_calls": 0,
    }
    assert {k: by[GOOGLE][k] for k in figures} == {
        "calls": 1,
        "new_contacts": 0,
        "first_calls": 1,
        "repeat_calls": 0,
    }
    assert report["totals"]["new_contacts"] == len(crm.contacts())


# --- one job at a time, in-process -----------------------------------------------------------


@pytest.fixture
async def crm_client(refcrm: RunningRefCrm) -> AsyncIterator[TelefumClient]:
    async with TelefumClient(refcrm.rest_url) as client:
        yield client


def runtime(config: WorkerConfig, redis: Redis, clients: dict[str, TelefumClient]) -> Runtime:
    return Runtime(
        config, redis, clients, rng=random.Random(0), on_delivered=attribution_hook(redis, SOURCES)
    )


def worker_config(
    target: CrmTarget, calls: dict[str, Any] | None = None, **kw: Any
) -> WorkerConfig:
    return WorkerConfig(
        crm=target,
        retry=RetryPolicy(first_delay_s=0.1, max_delay_s=0.5, total_s=60),
        calls=CallPolicy(job_timeout_s=5.0, **(calls or {})),
        **kw,
    )


async def queue(redis: Redis, rec: dict[str, Any]) -> str:
    await enqueue_call(redis, rec, queue_name=DEFAULT_QUEUE, expires_s=3600, ledger_ttl_s=3600)
    jid = keys.job_id(rec["pbx"], rec["call_id"])
    await redis.delete(job_key_prefix + jid)  # this test runs the job itself
    await redis.zrem(DEFAULT_QUEUE, jid)
    return jid


async def test_the_earliest_call_is_on_record_whatever_order_calls_are_queued_in(
    redis_client: Redis,
) -> None:
    for cid, did, ago in (("2.2", GOOGLE, 3600), ("2.1", YANDEX, 7200), ("2.3", AVITO, 60)):
        await queue(redis_client, call(cid, did, ago))
    [first] = await first_calls(redis_client, CALLER)
    assert (first.call_id, first.did) == ("2.1", YANDEX)
    # kept as long as the caller's ledgers
    assert 3500 < await redis_client.ttl(keys.first_inbound(CALLER)) <= 3600


async def test_an_unreadable_first_call_entry_is_replaced_and_the_call_still_queued(
    redis_client: Redis,
) -> None:
    await redis_client.hset(keys.first_inbound(CALLER), "default", "not json")
    rec = call("5.1", YANDEX, 60)
    outcome = await enqueue_call(
        redis_client, rec, queue_name=DEFAULT_QUEUE, expires_s=60, ledger_ttl_s=60
    )
    assert outcome == "queued"
    [first] = await first_calls(redis_client, CALLER)
    assert (first.call_id, first.did) == ("5.1", YANDEX)


async def test_the_contact_name_follows_the_first_call_as_its_source_does(
    refcrm: RunningRefCrm, crm_client: TelefumClient, redis_client: Redis
) -> None:
    target = CrmTarget(refcrm.rest_url, "bridge", refcrm.creds().password, timeout_s=2.0)
    config = worker_config(target, calls={"contact_name": "Звонок на {did}"}, sources=SOURCES)
    await queue(redis_client, call("3.1", YANDEX, 7200))  # the first call waits (retrying)
    later = call("3.2", GOOGLE, 3600)
    jid = await queue(redis_client, later)
    rt = runtime(config, redis_client, {refcrm.rest_url: crm_client})
    assert (await rt.deliver(later, jid)).startswith("delivered")
    [contact] = refcrm.contacts(CALLER)
    assert (contact.name, contact.x_pstn) == (f"Звонок на {YANDEX}", YANDEX)
    [row] = await Attribution(redis_client).calls(0, 4e9)
    assert (row.tracking_number, row.new_contact, row.credited) == (
        GOOGLE,
        True,
        (YANDEX, "Yandex Direct"),
    )


async def test_a_first_call_to_a_pbx_with_another_crm_does_not_set_the_source(
    refcrm: RunningRefCrm, crm_client: TelefumClient, redis_client: Redis
) -> None:
    # the same server under two URLs: to the bridge, two CRMs (a branch office's PBX "b2")
    ours = CrmTarget(refcrm.rest_url, "bridge", refcrm.creds().password, timeout_s=2.0)
    theirs_url = refcrm.rest_url.replace("127.0.0.1", "localhost")
    theirs = CrmTarget(theirs_url, "bridge", refcrm.creds().password, timeout_s=2.0)
    config = worker_config(ours, crm_by_pbx={"b2": theirs})
    await queue(redis_client, call("4.1", AVITO, 7200, pbx="b2"))  # for the other CRM
    await queue(redis_client, call("4.2", YANDEX, 5400))  # ours, still waiting
    now = call("4.3", GOOGLE, 3600)
    jid = await queue(redis_client, now)
    async with TelefumClient(theirs_url) as other:
        rt = runtime(config, redis_client, {refcrm.rest_url: crm_client, theirs_url: other})
        assert (await rt.deliver(now, jid)).startswith("delivered")
    [contact] = refcrm.contacts(CALLER)
    assert contact.x_pstn == YANDEX  # our CRM's first call, not the branch's
