"""The whole pipeline with real processes on loopback: redis-server, the reference CRM
(``telefum refcrm``), worker processes (``python -m worker``), the listener's hand-off.

Every call's event description carries its call id (``звонок {call_id}``), so the CRM's
own SQLite file says how many events each call got.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from crm_client.types import Credentials
from tests.support.crm import RefCrmProcess
from tests.support.redis import HoldingProxy, WorkerProcess, inbound_call
from worker.embedded_redis import EmbeddedRedis
from worker.handoff import Handoff
from worker.policy import DEFAULT_QUEUE, CallPolicy, CrmTarget, RetryPolicy, WorkerConfig
from worker.queue import enqueue_call
from worker.stats import read_stats

USERS = {"bridge": "bridge-pw", "ivan": "ivan-pw"}
SERVICE = Credentials("bridge", "bridge-pw")
NEW_PHONE = "+79161234567"


def config(crm_url: str, service: Credentials = SERVICE, **kw: Any) -> WorkerConfig:
    """Fast clocks for tests: a killed worker's job is re-run ~3.5 s after it started."""
    base = WorkerConfig(
        crm=CrmTarget(
            crm_url,
            service.login,
            service.password,
            agents={"101": Credentials("ivan", "ivan-pw")},
            timeout_s=1.0,
        ),
        calls=CallPolicy(
            description="Длительность {duration}; звонок {call_id}", job_timeout_s=3.0
        ),
        retry=RetryPolicy(first_delay_s=0.1, max_delay_s=0.5, total_s=120),
        in_progress_grace_s=0.5,
        poll_delay_s=0.05,
        heartbeat_s=0.5,
        reconcile_s=2.0,
    )
    return base.with_(**kw)


def call(call_id: str, phone: str = NEW_PHONE, extension: str | None = "102") -> dict[str, Any]:
    return inbound_call(call_id, phone, extension=extension)


async def enqueue(redis: Redis, *records: dict[str, Any]) -> None:
    for rec in records:
        await enqueue_call(redis, rec, queue_name=DEFAULT_QUEUE, expires_s=3600, ledger_ttl_s=3600)


async def settled(
    redis: Redis, n: int, timeout_s: float = 30.0, what: str = "", *, delivered: bool = False
) -> dict[str, Any]:
    """Wait until n calls are delivered, skipped or dead (``delivered``: n delivered)."""
    deadline = time.monotonic() + timeout_s
    while True:
        stats = await read_stats(redis)
        c = stats["counters"]
        done = c["succeeded"] + (0 if delivered else c["skipped"] + stats["dead_letters"])
        if done >= n:
            return stats
        if time.monotonic() > deadline:
            raise AssertionError(f"not settled ({what}): {stats}")
        await asyncio.sleep(0.05)


def events_per_call(crm: RefCrmProcess) -> Counter[str]:
    out: Counter[str] = Counter()
    for _, _, desc, _ in crm.events():
        m = re.search(r"звонок (\S+)", desc)
        assert m, desc
        out[m.group(1)] += 1
    return out


def contacts_per_phone(crm: RefCrmProcess) -> Counter[str]:
    return Counter(phone for _, phone, _, _ in crm.contacts())


Procs = Callable[..., WorkerProcess]


@pytest.mark.parametrize(
    ("op", "fate"),
    [
        ("addcont", "drop"),  # the CRM never got it
        ("addcont", "forward"),  # the CRM created it after the worker died: find sees it
        ("addevent", "drop"),
    ],
)
async def test_a_worker_killed_in_the_middle_of_a_crm_write_leaves_one_contact_and_one_event(
    op: str,
    fate: str,
    redis_client: Redis,
    refcrm_process: Callable[..., RefCrmProcess],
    holding_proxy_factory: Callable[[str], Any],
    worker_procs: Procs,
) -> None:
    crm = refcrm_process(USERS)
    proxy: HoldingProxy = await holding_proxy_factory(crm.rest_url)
    proxy.hold(op)
    first = worker_procs(config(proxy.url))
    await first.wait_ready(redis_client)
    await enqueue(redis_client, call("1.1"))

    held = await proxy.wait_held()  # the worker is waiting for the CRM's answer right now
    first.kill()
    if fate == "forward":
        status, _ = await held.forward()
        assert status == 200
    else:
        held.drop()

    second = worker_procs(config(proxy.url))
    await second.wait_ready(redis_client)
    stats = await settled(redis_client, 1, what=f"{op}/{fate}")
    assert stats["counters"]["succeeded"] == 1
    assert contacts_per_phone(crm) == {NEW_PHONE: 1}
    assert events_per_call(crm) == {"1.1": 1}
    # the bridge made that contact, whichever run saw the CRM's answer (the report counts it)
    assert stats["counters"]["contacts_created"] == 1
    # a re-sent addevent is flagged "possible duplicate": the worker cannot know it wasn't
    assert stats["counters"]["possible_duplicates"] == (1 if op == "addevent" else 0)


async def test_a_kill_after_the_crm_accepted_addevent_is_the_one_documented_duplicate(
    redis_client: Redis,
    refcrm_process: Callable[..., RefCrmProcess],
    holding_proxy_factory: Callable[[str], Any],
    worker_procs: Procs,
) -> None:
    """TelefUM cannot be asked whether it has an event: the call is sent again (never lost)
    and the re-send is counted, as worker/steps.py documents."""
    crm = refcrm_process(USERS)
    proxy: HoldingProxy = await holding_proxy_factory(crm.rest_url)
    proxy.hold("addevent")
    first = worker_procs(config(proxy.url))
    await first.wait_ready(redis_client)
    await enqueue(redis_client, call("1.1"))
    held = await proxy.wait_held()
    first.kill()
    await held.forward()  # the CRM stores the event; its answer goes nowhere

    worker_procs(config(proxy.url))
    stats = await settled(redis_client, 1)
    assert events_per_call(crm) == {"1.1": 2}
    assert contacts_per_phone(crm) == {NEW_PHONE: 1}
    assert stats["counters"]["possible_duplicates"] == 1


async def test_a_crm_losing_30_percent_of_addcont_replies_after_storing_gets_one_contact_each(
    redis_client: Redis, refcrm_process: Callable[..., RefCrmProcess], worker_procs: Procs
) -> None:
    """The CRM creates the contact and the connection drops before its answer: no library
    re-sends the addcont, and the retried run finds the contact instead of making another."""
    crm = refcrm_process(USERS, extra_args=("--lose-replies", "addcont:0.3", "--seed", "13"))
    workers = [worker_procs(config(crm.rest_url)), worker_procs(config(crm.rest_url))]
    for w in workers:
        await w.wait_ready(redis_client)
    phones = [f"+7916444{i:04d}" for i in range(50)]
    calls = [call(f"8.{i}", p) for i, p in enumerate(phones)]
    await enqueue(redis_client, *calls)
    stats = await settled(redis_client, len(calls), timeout_s=60, delivered=True)
    assert contacts_per_phone(crm) == {p: 1 for p in phones}
    assert events_per_call(crm) == {c["call_id"]: 1 for c in calls}
    assert stats["counters"]["contacts_created"] == 50
    assert stats["counters"]["possible_duplicates"] == 0
    assert stats["counters"]["retried"] >= 5  # replies were lost, and the calls retried


async def test_the_crm_down_for_a_while_then_back_gets_every_call(
    redis_client: Redis, refcrm_process: Callable[..., RefCrmProcess], worker_procs: Procs
) -> None:
    crm = refcrm_process(USERS)
    w = worker_procs(config(crm.rest_url))
    await w.wait_ready(redis_client)
    crm.stop()
    calls = [call(f"2.{i}", f"+7916000000{i % 5}") for i in range(20)]
    await enqueue(redis_client, *calls)

    deadline = time.monotonic() + 20
    while (await read_stats(redis_client))["counters"]["retried"] < 20:  # each failed once
        assert time.monotonic() < deadline, "calls were not retried"
        await asyncio.sleep(0.05)
    crm.start()  # same port, same database

    stats = await settled(redis_client, 20)
    assert stats["dead_letters"] == 0
    assert events_per_call(crm) == {c["call_id"]: 1 for c in calls}
    assert contacts_per_phone(crm) == {f"+7916000000{i}": 1 for i in range(5)}
    deadline = time.monotonic() + 5  # the workers send latencies once a second
    while (await read_stats(redis_client))["crm_latency"].get("find", {}).get("transient", {}).get(
        "count", 0
    ) < 20:
        assert time.monotonic() < deadline, "the failed finds' latencies never reached Redis"
        await asyncio.sleep(0.1)


def telefum(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "telefum.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_a_wrong_crm_password_dead_letters_with_the_reason_and_a_requeue_delivers(
    redis_url: str,
    redis_client: Redis,
    refcrm_process: Callable[..., RefCrmProcess],
    worker_procs: Procs,
) -> None:
    crm = refcrm_process(USERS)
    wrong = worker_procs(config(crm.rest_url, Credentials("bridge", "typo")))
    await wrong.wait_ready(redis_client)
    calls = [call(f"3.{i}", f"+7916111111{i}") for i in range(5)]
    await enqueue(redis_client, *calls)
    stats = await settled(redis_client, 5)
    assert stats["dead_letters"] == 5 and stats["counters"]["retried"] == 0

    listed = await asyncio.to_thread(telefum, "dlq", "--redis-url", redis_url, "list")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.startswith("5 dead letter(s)")
    assert listed.stdout.count("Неправильный логин или пароль") == 5
    assert "typo" not in listed.stdout  # the password never shows

    wrong.terminate()
    fixed = worker_procs(config(crm.rest_url))
    await fixed.wait_ready(redis_client)
    requeued = await asyncio.to_thread(telefum, "dlq", "requeue", "--all", "--redis-url", redis_url)
    assert requeued.returncode == 0, requeued.stderr
    assert requeued.stdout.strip() == "requeued 5 dead letter(s)"

    stats = await settled(redis_client, 5, delivered=True)
    assert stats["counters"]["succeeded"] == 5
    assert stats["dead_letters"] == 0
    assert events_per_call(crm) == {c["call_id"]: 1 for c in calls}
    empty = await asyncio.to_thread(telefum, "dlq", "list", "--redis-url", redis_url)
    assert empty.stdout.strip() == "no dead letters"


async def test_the_same_new_number_calling_several_times_at_once_makes_one_contact(
    redis_client: Redis, refcrm_process: Callable[..., RefCrmProcess], worker_procs: Procs
) -> None:
    crm = refcrm_process(USERS, extra_args=("--test-control",))
    await crm.control(latency_ms=100)  # every find overlaps the others'
    a, b = worker_procs(config(crm.rest_url)), worker_procs(config(crm.rest_url))
    await a.wait_ready(redis_client)
    await b.wait_ready(redis_client)
    phones = [f"+7916222222{i}" for i in range(4)]
    calls = [call(f"4.{n}.{i}", p) for n in range(3) for i, p in enumerate(phones)]
    await enqueue(redis_client, *calls)
    stats = await settled(redis_client, len(calls))
    assert contacts_per_phone(crm) == {p: 1 for p in phones}
    assert events_per_call(crm) == {c["call_id"]: 1 for c in calls}
    assert stats["counters"]["contacts_created"] == 4


async def test_redis_stopped_and_started_under_the_listener_and_workers_loses_nothing(
    tmp_path: Path,
    redis_server: EmbeddedRedis,
    redis_client: Redis,
    refcrm_process: Callable[..., RefCrmProcess],
    worker_procs: Procs,
) -> None:
    crm = refcrm_process(USERS)
    w = worker_procs(config(crm.rest_url))
    await w.wait_ready(redis_client)
    handoff = Handoff(redis_server.url, tmp_path / "spool", retry_max_s=0.2)
    await handoff.start()
    try:
        calls = [call(f"5.{i}", f"+7916333333{i % 3}") for i in range(30)]
        for c in calls[:10]:
            handoff.submit(c)
        assert await handoff.wait_drained(10)
        redis_server.stop()
        for c in calls[10:]:
            handoff.submit(c)
        await handoff.flush()
        redis_server.start()
        assert await handoff.wait_drained(20)
        stats = await settled(redis_client, 30, timeout_s=40)
    finally:
        await handoff.close()
    assert stats["dead_letters"] == 0
    assert events_per_call(crm) == {c["call_id"]: 1 for c in calls}
    assert contacts_per_phone(crm) == {f"+7916333333{i}": 1 for i in range(3)}


async def test_agents_own_credentials_make_them_the_author_of_the_event(
    redis_client: Redis, refcrm_process: Callable[..., RefCrmProcess], worker_procs: Procs
) -> None:
    crm = refcrm_process(USERS)
    w = worker_procs(config(crm.rest_url))
    await w.wait_ready(redis_client)
    await enqueue(redis_client, call("6.1", extension="101"), call("6.2", extension="102"))
    await settled(redis_client, 2)
    authors = {
        m.group(1): by for _, _, desc, by in crm.events() if (m := re.search(r"звонок (\S+)", desc))
    }
    assert authors == {"6.1": "ivan", "6.2": "bridge"}


async def test_telefum_worker_runs_from_settings_toml_and_stops_on_sigterm(
    tmp_path: Path,
    redis_url: str,
    redis_client: Redis,
    refcrm_process: Callable[..., RefCrmProcess],
) -> None:
    crm = refcrm_process(USERS)
    settings = tmp_path / "settings.toml"
    settings.write_text(
        f'[redis]\nurl = "{redis_url}"\n\n'
        f'[crm]\nurl = "{crm.rest_url}"\nlogin = "bridge"\npassword = "bridge-pw"\n'
        "timeout_s = 2.0\n\n"
        '[sources]\n"+74951234567" = "Yandex Direct"\n\n'
        "[worker]\njob_timeout_s = 5.0\n",
        encoding="utf-8",
    )
    log = open(tmp_path / "worker.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "telefum.cli",
            "worker",
            "--config",
            str(settings),
            "--worker-id",
            "from-settings",
        ],
        stdout=log,
        stderr=log,
        stdin=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while not await redis_client.exists("telefum:stats:worker:from-settings"):
            assert proc.poll() is None, (tmp_path / "worker.log").read_text()
            assert time.monotonic() < deadline, (tmp_path / "worker.log").read_text()
            await asyncio.sleep(0.05)
        await enqueue(redis_client, call("7.1", extension=None))
        await settled(redis_client, 1, delivered=True)
        [(_, subj, desc, by)] = crm.events()
        assert (subj, by) == ("Входящий звонок", "bridge")
        assert desc == "Длительность 3:54; номер +74951234567 (Yandex Direct)"
        proc.terminate()
        assert await asyncio.to_thread(proc.wait, 20) == 0
        # a clean stop takes its heartbeat away at once
        assert not await redis_client.exists("telefum:stats:worker:from-settings")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        log.close()


async def test_log_internal_puts_a_recorded_internal_call_on_the_other_extensions_contact(
    redis_client: Redis, refcrm_process: Callable[..., RefCrmProcess], worker_procs: Procs
) -> None:
    # 201 calls 202 on the chan_sip PBX (recorded); the tracker's record goes through the
    # queue to a worker process and the reference CRM, with log_internal = true.
    from telephony.records import CallFinished
    from telephony.tracker import CallTracker
    from tests.test_tracker_traces import load

    (record,) = [
        u.record
        for u in CallTracker().feed(load("51-sip-internal-call-201-to-202.ami"))
        if isinstance(u, CallFinished)
    ]
    assert (record.direction, record.extension, record.final_extension) == (
        "internal",
        "201",
        "202",
    )
    crm = refcrm_process(USERS)
    cfg = config(crm.rest_url)
    cfg = cfg.with_(
        crm=CrmTarget(
            crm.rest_url,
            SERVICE.login,
            SERVICE.password,
            agents={"201": Credentials("ivan", "ivan-pw")},
            timeout_s=1.0,
        ),
        calls=CallPolicy(
            description="Длительность {duration}; звонок {call_id}",
            job_timeout_s=3.0,
            log_internal=True,
            create_contacts_for=("in", "internal"),
        ),
    )
    w = worker_procs(cfg)
    await w.wait_ready(redis_client)
    await enqueue(redis_client, record.to_json())
    stats = await settled(redis_client, 1, delivered=True)
    assert stats["dead_letters"] == 0
    ((contact_id, phone, x_pstn, _),) = crm.contacts()
    assert (phone, x_pstn) == ("202", None)  # no source: not from a tracking number
    ((on, subj, desc, by),) = crm.events()
    assert (on, subj, by) == (contact_id, "Внутренний звонок", "ivan")  # by the caller, 201
    assert desc == f"Длительность 0:03; звонок {record.call_id}"
