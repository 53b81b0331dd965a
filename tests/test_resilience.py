"""Nothing lost when the bridge is away (issue 15): the real commands as processes against
the simulated PBX (which writes Master.csv as Asterisk's cdr_csv does), a real Redis and
the reference CRM, under the faults an installation meets: ``kill -9`` of ``telefum run``
mid-burst, two ``telefum listen`` for one PBX with one killed or both restarted in turn,
a Redis primary crashing under Sentinel, and a cut AMI link with the CDR in PostgreSQL.

The burst is the recorded 50-call burst of the lab's Asterisk 22 (pbxsim/traces, 28),
played three times faster than recorded: 50 different callers, so the CRM's events per
caller phone tell whether a call arrived once.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from pbxsim.server import Script, load_trace
from tests.conftest import free_port
from tests.support.cdr_db import DbServer
from tests.support.cdr_rows import ASTERISK_PG_CDR, PG_COLUMNS, pg_values
from tests.support.crm import RunningRefCrm
from tests.support.pbx import PBX_SECRET, PBX_USER, TRACES, FaultyPbx
from tests.support.procs import Proc
from tests.support.sentinel import SentinelSet
from tests.test_backfill import live_trace
from tests.test_cdr_sources import pg_connect
from tests.test_listener import T01
from tests.test_service import get_json, healthy

BURST = TRACES / "28-inbound-burst-50-calls-varied.ami"
SPEED = 3.0  # the burst's 27 s in 9 s
TIMEOUT_S = 60.0
AGENT_TOKEN = "agent-101-token-for-tests"
Start = Callable[..., Awaitable[Proc]]


def burst_truth() -> dict[str, dict[str, Any]]:
    """The recorder's truth per caller (E.164): answered, and the CDR's billsec."""
    manifest = json.loads((TRACES / "manifest.json").read_text())
    (burst,) = [s for s in manifest["scenarios"] if s["file"] == BURST.name]
    out = {}
    for call in burst["calls"]:
        rows = call["cdr_records"]
        billsec = max(int(r["BillableSeconds"]) for r in rows)
        out["+" + call["external_number"]] = {"answered": call["answered"], "billsec": billsec}
    return out


def burst_script(pbx: FaultyPbx) -> Script:
    """The burst from now, moved by whole seconds (its CDR times stay cut like Asterisk's)."""
    first = float(load_trace(BURST)[0]["Timestamp"])
    return pbx.prepare_trace(BURST, time_offset=round(time.time() - first + 0.5))


def write_settings(
    path: Path,
    pbx: FaultyPbx,
    crm: RunningRefCrm,
    redis_url: str,
    *,
    spool: Path,
    http_port: int,
    backfill: str = "",
    name: str = "office",
) -> Path:
    path.write_text(
        f"""
spool_dir = "{spool}"
[ami]
name = "{name}"
host = "127.0.0.1"
port = {pbx.port}
username = "{PBX_USER}"
secret = "{PBX_SECRET}"
ping_interval_s = 1.0
ping_timeout_s = 1.0
[redis]
url = "{redis_url}"
[crm]
url = "{crm.rest_url}"
login = "bridge"
password = "{crm.users["bridge"]}"
timeout_s = 2.0
[worker]
job_timeout_s = 5.0
[calls]
inbound_contexts = ["from-trunk"]
[http]
listen = "127.0.0.1:{http_port}"
token = "admin-token-for-tests"
[http.agent_tokens]
"101" = "{AGENT_TOKEN}"
[originate]
context = "from-internal"
{backfill}
""",
        encoding="utf-8",
    )
    return path


def csv_backfill(csv: Path) -> str:
    return f'[backfill]\nkind = "csv"\npath = "{csv}"\ntimezone = "UTC"\nsettle_s = 1.0\n'


async def wait_for(check: Callable[[], Any], what: str, procs: list[Proc]) -> Any:
    """Poll ``check`` (sync or async) until truthy; fail with the processes' logs."""
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        await asyncio.sleep(0.2)
    pytest.fail(f"no {what} in {TIMEOUT_S:g} s:\n" + "\n---\n".join(p.tail() for p in procs))


def events_per_caller(crm: RunningRefCrm, callers: list[str]) -> dict[str, list[str]]:
    """Each caller's CRM events (their descriptions)."""
    out = {}
    for phone in callers:
        contacts = crm.contacts(phone)
        out[phone] = [e.desc for c in contacts for e in crm.events(c.id)]
    return out


def assert_each_call_once(crm: RunningRefCrm, truth: dict[str, dict[str, Any]]) -> None:
    """Every call of the burst in the CRM once, each answered one with its duration within
    1 s of its CDR's billsec and no bound ("≥", "≤"): its times were known."""
    got = events_per_caller(crm, list(truth))
    assert {p: len(e) for p, e in got.items() if len(e) != 1} == {}
    for phone, (desc,) in got.items():
        m = re.search(r"Длительность ([≥≤]?)(\d+):(\d\d)", desc)
        if not truth[phone]["answered"]:
            assert m is None, (phone, desc)
            continue
        assert m is not None and not m.group(1), (phone, desc)
        shown = int(m.group(2)) * 60 + int(m.group(3))
        assert abs(shown - truth[phone]["billsec"]) <= 1, (phone, desc, truth[phone])
    assert crm.count_events() == len(truth)


async def http_ok(url: str) -> bool:
    status, _ = await get_json(url)
    return status == 200


# --- kill -9 of telefum run -----------------------------------------------------------------


async def test_kill_9_of_telefum_run_mid_burst_delivers_all_50_calls_once_with_their_times(
    tmp_path: Path, pbx_sim: FaultyPbx, refcrm: RunningRefCrm, telefum: Start
) -> None:
    """Issue 15: 15 to 29 of the 50 calls never reached the CRM, 1-2 twice, and the calls
    up across the restart got ring 0. With Master.csv as the backfill source: 50 of 50,
    once each, with the CDR's durations."""
    pbx_sim.cdr_csv = tmp_path / "Master.csv"
    port = free_port()
    config = write_settings(
        tmp_path / "settings.toml",
        pbx_sim,
        refcrm,
        "",
        spool=tmp_path / "spool",
        http_port=port,
        backfill=csv_backfill(pbx_sim.cdr_csv),
    )
    base = f"http://127.0.0.1:{port}"
    run = await telefum("run", "--config", str(config))
    await wait_for(lambda: healthy(base), "healthy /health", [run])

    play = asyncio.create_task(pbx_sim.play(burst_script(pbx_sim), speed=SPEED))
    await asyncio.sleep(4.0)  # a third of the calls started, some over, many up
    run.proc.send_signal(signal.SIGKILL)
    await run.proc.wait()
    await asyncio.sleep(0.5)
    again = await telefum("run", "--config", str(config))
    await play
    truth = burst_truth()
    await wait_for(lambda: refcrm.count_events() >= len(truth), "50 events", [again])
    await asyncio.sleep(2.0)  # nothing more arrives
    assert_each_call_once(refcrm, truth)
    _, body = await get_json(f"{base}/health")
    (backfill,) = body["backfill"]
    assert backfill["gaps"] == 1 and backfill["calls_found"] + backfill["calls_completed"] > 0
    assert await again.terminate() == 0


# --- two listeners, one PBX -----------------------------------------------------------------


async def two_listeners(
    tmp_path: Path, pbx: FaultyPbx, crm: RunningRefCrm, redis_url: str, telefum: Start
) -> tuple[list[Path], list[int], list[Proc], Proc]:
    """Listeners "a" and "b" (their own spool and HTTP port, one PBX name) and a worker."""
    pbx.cdr_csv = tmp_path / "Master.csv"
    configs, ports, listeners = [], [], []
    for host in ("a", "b"):
        port = free_port()
        config = write_settings(
            tmp_path / f"{host}.toml",
            pbx,
            crm,
            redis_url,
            spool=tmp_path / host / "spool",
            http_port=port,
            backfill=csv_backfill(pbx.cdr_csv),
        )
        configs.append(config)
        ports.append(port)
        listeners.append(await telefum("listen", "--config", str(config)))
    worker = await telefum("worker", "--config", str(configs[0]))
    for port in ports:
        await wait_for(
            lambda p=port: healthy(f"http://127.0.0.1:{p}"),
            "healthy listeners",
            [*listeners, worker],
        )
    return configs, ports, listeners, worker


async def test_two_listeners_one_killed_mid_burst_deliver_every_call_once(
    tmp_path: Path, pbx_sim: FaultyPbx, refcrm: RunningRefCrm, redis_url: str, telefum: Start
) -> None:
    _, ports, (a, b), worker = await two_listeners(tmp_path, pbx_sim, refcrm, redis_url, telefum)
    play = asyncio.create_task(pbx_sim.play(burst_script(pbx_sim), speed=SPEED))
    await asyncio.sleep(4.0)
    a.proc.send_signal(signal.SIGKILL)
    await a.proc.wait()
    await play
    truth = burst_truth()
    await wait_for(lambda: refcrm.count_events() >= len(truth), "50 events", [b, worker])
    await asyncio.sleep(2.0)
    assert_each_call_once(refcrm, truth)

    # the survivor still pops the caller on an agent's page and still dials
    survivor = f"http://127.0.0.1:{ports[1]}"
    await pbx_sim.send(live_trace(T01, shift=0.0, ids=90_000))  # rings 101
    state = f"{survivor}/agent/101/state?token={AGENT_TOKEN}"

    async def popped() -> bool:
        status, body = await get_json(state)
        return status == 200 and "+79161234567" in json.dumps(body)

    await wait_for(popped, "the caller on 101's page", [b])
    async with (
        aiohttp.ClientSession() as s,
        s.post(
            f"{survivor}/originate",
            json={"extension": "101", "number": "+79031112233"},
            headers={"Authorization": f"Bearer {AGENT_TOKEN}"},
        ) as r,
    ):
        assert r.status == 202, await r.text()
    assert "PJSIP/101" in json.dumps(pbx_sim.originates[-1])
    assert await b.terminate() == 0 and await worker.terminate() == 0


async def test_a_rolling_restart_of_two_listeners_loses_nothing(
    tmp_path: Path, pbx_sim: FaultyPbx, refcrm: RunningRefCrm, redis_url: str, telefum: Start
) -> None:
    configs, _, (a, b), worker = await two_listeners(tmp_path, pbx_sim, refcrm, redis_url, telefum)
    play = asyncio.create_task(pbx_sim.play(burst_script(pbx_sim), speed=SPEED))
    await asyncio.sleep(2.0)
    assert await a.terminate() == 0
    a = await telefum("listen", "--config", str(configs[0]))
    await asyncio.sleep(3.0)
    assert await b.terminate() == 0
    b = await telefum("listen", "--config", str(configs[1]))
    await play
    truth = burst_truth()
    await wait_for(lambda: refcrm.count_events() >= len(truth), "50 events", [a, b, worker])
    await asyncio.sleep(2.0)
    assert_each_call_once(refcrm, truth)
    for p in (a, b, worker):
        assert await p.terminate() == 0


# --- Redis behind Sentinel --------------------------------------------------------------------


async def test_a_redis_primary_crashing_under_sentinel_mid_burst_loses_no_call(
    tmp_path: Path,
    pbx_sim: FaultyPbx,
    refcrm: RunningRefCrm,
    sentinel_redis: SentinelSet,
    telefum: Start,
) -> None:
    port = free_port()
    config = write_settings(
        tmp_path / "settings.toml",
        pbx_sim,
        refcrm,
        sentinel_redis.url,
        spool=tmp_path / "spool",
        http_port=port,
    )
    listen = await telefum("listen", "--config", str(config))
    worker = await telefum("worker", "--config", str(config))
    await wait_for(lambda: healthy(f"http://127.0.0.1:{port}"), "healthy /health", [listen, worker])
    play = asyncio.create_task(pbx_sim.play(burst_script(pbx_sim), speed=SPEED))
    await asyncio.sleep(4.0)
    old = sentinel_redis.kill_primary()
    await asyncio.to_thread(sentinel_redis.wait_failover, old)
    await play
    truth = burst_truth()
    await wait_for(lambda: refcrm.count_events() >= len(truth), "50 events", [listen, worker])
    await asyncio.sleep(2.0)
    assert_each_call_once(refcrm, truth)
    assert await listen.terminate() == 0 and await worker.terminate() == 0


# --- a cut link, the CDR in PostgreSQL ------------------------------------------------------


async def test_a_call_made_while_the_link_was_cut_reaches_the_crm_once_from_postgres(
    tmp_path: Path,
    pbx_sim: FaultyPbx,
    refcrm: RunningRefCrm,
    postgres: DbServer,
    telefum: Start,
) -> None:
    table = f"cdr_{free_port()}"
    conn = await pg_connect(postgres)
    await conn.execute(ASTERISK_PG_CDR.format(table=table))
    pbx_sim.keep_cdrs = True
    port = free_port()
    backfill = (
        f'[backfill]\nkind = "postgres"\ndsn = "{postgres.dsn}"\nuser = "{postgres.user}"'
        f'\ntable = "{table}"\ntimezone = "UTC"\nsettle_s = 1.0\n'
    )
    config = write_settings(
        tmp_path / "settings.toml",
        pbx_sim,
        refcrm,
        "",
        spool=tmp_path / "spool",
        http_port=port,
        backfill=backfill,
    )
    env = {"TELEFUM_BACKFILL__PASSWORD": postgres.password}
    run = await telefum("run", "--config", str(config), env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        await wait_for(lambda: healthy(base), "healthy /health", [run])
        pbx_sim.refuse_connections = True
        await pbx_sim.drop_clients()
        await pbx_sim.send(live_trace(T01, shift=-7.5, ids=91_000))  # a whole call, unseen
        cols = ", ".join(f'"{c}"' for c in PG_COLUMNS)
        marks = ", ".join(f"${i + 1}" for i in range(len(PG_COLUMNS)))
        await conn.executemany(
            f"INSERT INTO {table} ({cols}) VALUES ({marks})", [pg_values(c) for c in pbx_sim.cdrs]
        )
        pbx_sim.refuse_connections = False
        await wait_for(lambda: refcrm.count_events() >= 1, "the call in the CRM", [run])
        await asyncio.sleep(2.0)
        assert refcrm.count_events() == 1
        (contact,) = refcrm.contacts("+79161234567")
        (event,) = refcrm.events(contact.id)
        assert event.desc.startswith("Длительность 0:05")  # the recorded call's 5 s of talk
        _, body = await get_json(f"{base}/health")
        assert body["backfill"][0]["source"].startswith("postgres telefum@127.0.0.1:")
        assert body["backfill"][0]["calls_found"] == 1
        assert password_not_in(run, postgres.password)
        assert await run.terminate() == 0
    finally:
        await conn.execute(f"DROP TABLE {table}")
        await conn.close()


def password_not_in(proc: Proc, password: str) -> bool:
    return password not in proc.log.read_text(errors="replace")
