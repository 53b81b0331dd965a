"""Health, metrics and the report over the real service: :class:`telefum.service.Bridge`
(what ``telefum run`` / ``telefum listen`` start) built from a settings.toml, against the
simulated PBX on TCP, a redis-server process, worker processes and the reference CRM.

The other health/metrics tests wire the parts by hand; these pin that the shipped wiring
gives the same answers: 503 with the reason when Redis stops, the AMI link is cut or the
workers die, 200 again when each is back; counters that follow the calls played; report
figures that match the calls played and the CRM.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from pbxsim.server import PbxSimulator
from telefum.config import load_settings
from telefum.service import Bridge, Roles
from tests.support.crm import RunningRefCrm
from tests.support.pbx import PBX_SECRET, PBX_USER, FaultyPbx
from worker.embedded_redis import EmbeddedRedis
from worker.policy import CallPolicy, CrmTarget, WorkerConfig

TOKEN = "bridge-live-admin-token"
ANSWERED = "01-inbound-answered-caller-hangup.ami"  # +79161234567 -> +74951234567, answered
MISSED = "03-inbound-missed-caller-abandons.ami"  # the same caller gives up
TIMEOUT_S = 20.0


def settings_file(path: Path, pbx: PbxSimulator, crm: RunningRefCrm, redis_url: str) -> Path:
    path.write_text(
        f"""
spool_dir = "{path.parent / "spool"}"
[ami]
name = "office"
host = "127.0.0.1"
port = {pbx.port}
username = "{PBX_USER}"
secret = "{PBX_SECRET}"
ping_interval_s = 0.5
ping_timeout_s = 1.0
reconnect_max_s = 0.2
[redis]
url = "{redis_url}"
[crm]
url = "{crm.rest_url}"
login = "bridge"
password = "{crm.users["bridge"]}"
timeout_s = 2.0
[sources]
"+74951234567" = "Yandex Direct"
[http]
listen = "127.0.0.1:0"
token = "{TOKEN}"
[health]
worker_heartbeat_max_age_s = 2.0
redis_timeout_s = 0.5
""",
        encoding="utf-8",
    )
    return path


StartBridge = Callable[[Roles], Awaitable[Bridge]]


@pytest.fixture
async def start_bridge(
    tmp_path: Path, pbx_sim: FaultyPbx, refcrm: RunningRefCrm, redis_url: str
) -> AsyncIterator[StartBridge]:
    started: list[Bridge] = []

    async def start(roles: Roles) -> Bridge:
        settings = load_settings(
            settings_file(tmp_path / "settings.toml", pbx_sim, refcrm, redis_url)
        )
        bridge = Bridge(settings, roles, worker_id="live-worker")
        started.append(bridge)
        await bridge.start()
        return bridge

    yield start
    for bridge in started:
        await bridge.stop()


async def get(bridge: Bridge, path: str) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http,
        http.get(bridge.http_url + path) as resp,
    ):
        if resp.content_type == "application/json":
            return resp.status, await resp.json()
        return resp.status, await resp.text()


async def health_is(bridge: Bridge, status: int, reason: str | None = None) -> dict[str, Any]:
    """Wait until /health answers ``status`` (with a reason containing ``reason``)."""
    body: dict[str, Any] = {}
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        code, body = await get(bridge, "/health")
        if code == status and (reason is None or any(reason in r for r in body["reasons"])):
            return body
        if time.monotonic() > deadline:
            raise AssertionError(f"/health never became {status} {reason!r}: {code} {body}")
        await asyncio.sleep(0.05)


async def test_health_of_the_real_service_follows_redis_the_ami_link_and_the_workers(
    start_bridge: StartBridge,
    pbx_sim: FaultyPbx,
    redis_server: EmbeddedRedis,
    worker_procs: Callable[..., Any],
) -> None:
    """``telefum listen`` with separate workers: every outage is the reason, then 200."""
    worker_config = WorkerConfig(
        crm=CrmTarget("http://127.0.0.1:9/rest", "u", "p", timeout_s=1.0),
        calls=CallPolicy(job_timeout_s=5.0),
        heartbeat_s=0.2,  # its heartbeat expires 0.6 s after it dies
    )
    bridge = await start_bridge(Roles(listen=True, work=False, http=True))
    await health_is(bridge, 503, "no worker alive")
    first = worker_procs(worker_config, "w-first")
    body = await health_is(bridge, 200)
    assert body["ami"][0]["pbx"] == "office" and body["ami"][0]["connected"] is True

    redis_server.stop()
    body = await health_is(bridge, 503, "Redis unreachable")
    assert body["redis"]["ok"] is False
    redis_server.start()  # same port, same data
    await health_is(bridge, 200)

    pbx_sim.refuse_connections = True
    await pbx_sim.drop_clients()
    body = await health_is(bridge, 503, "AMI link down: pbx office")
    assert body["ami"][0]["connected"] is False
    pbx_sim.refuse_connections = False
    body = await health_is(bridge, 200)
    assert body["ami"][0]["reconnects"] >= 1

    first.kill()
    await health_is(bridge, 503, "no worker alive")
    worker_procs(worker_config, "w-second")
    body = await health_is(bridge, 200)
    assert [w["id"] for w in body["workers"]["heartbeats"]] == ["w-second"]


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(m: dict[Any, float], name: str, **labels: str) -> float:
    return m.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_metrics_and_report_of_the_real_service_follow_the_calls_played(
    start_bridge: StartBridge,
    pbx_sim: FaultyPbx,
    refcrm: RunningRefCrm,
    traces_dir: Path,
) -> None:
    """``telefum run``: calls from the PBX reach the CRM; /metrics and /report.json say so."""
    bridge = await start_bridge(Roles())
    await health_is(bridge, 200)
    _, text = await get(bridge, "/metrics")
    before = samples(text)
    assert value(before, "telefum_ami_link_up", pbx="office") == 1
    assert value(before, "telefum_jobs_succeeded_total") == 0

    played = await pbx_sim.play_trace(traces_dir / ANSWERED, speed=0)
    played += await pbx_sim.play_trace(traces_dir / MISSED, speed=0)

    deadline = time.monotonic() + TIMEOUT_S
    while True:
        _, text = await get(bridge, "/metrics")
        after = samples(text)
        latencies = value(
            after, "telefum_crm_request_duration_seconds_count", operation="addevent", outcome="ok"
        )
        if value(after, "telefum_jobs_succeeded_total") >= 2 and latencies >= 2:
            break  # (latencies come in with the worker's next flush, within a second)
        assert time.monotonic() < deadline, f"calls not delivered: {text[-2000:]}"
        await asyncio.sleep(0.1)

    assert value(after, "telefum_ami_events_received_total", pbx="office") >= (
        value(before, "telefum_ami_events_received_total", pbx="office") + played
    )
    finished = "telefum_calls_finished_total"
    assert value(after, finished, pbx="office", direction="in", disposition="answered") == 1
    assert value(after, finished, pbx="office", direction="in", disposition="no-answer") == 1
    assert value(after, "telefum_calls_active", pbx="office") == 0
    assert value(after, "telefum_jobs_enqueued_total") == 2
    assert value(after, "telefum_crm_events_created_total") == 2
    assert value(after, "telefum_crm_contacts_created_total") == 1  # one new caller, twice
    assert value(after, "telefum_jobs_dead_lettered_total") == 0
    assert (
        value(
            after, "telefum_crm_request_duration_seconds_count", operation="addevent", outcome="ok"
        )
        == 2
    )
    assert refcrm.count_events() == 2 and refcrm.count_contacts() == 1

    # played at full speed, a recording's later calls are dated seconds ahead of now
    until = datetime.fromtimestamp(time.time() + 3600, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    status, report = await get(bridge, f"/report.json?token={TOKEN}&since=1d&tz=UTC&until={until}")
    assert status == 200, report
    (row,) = report["numbers"]
    assert (row["tracking_number"], row["source"]) == ("+74951234567", "Yandex Direct")
    figures = ("calls", "answered", "missed", "new_contacts", "first_calls", "repeat_calls")
    assert {k: row[k] for k in figures} == {
        "calls": 2,
        "answered": 1,
        "missed": 1,
        "new_contacts": refcrm.count_contacts(),
        "first_calls": 1,
        "repeat_calls": 1,
    }


async def test_calls_beyond_the_trackers_cap_are_counted_and_logged_by_the_real_service(
    tmp_path: Path,
    pbx_sim: FaultyPbx,
    refcrm: RunningRefCrm,
    redis_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    path = settings_file(tmp_path / "settings.toml", pbx_sim, refcrm, redis_url)
    path.write_text(path.read_text() + "[calls]\nmax_active_calls = 1\n")
    bridge = Bridge(load_settings(path), Roles(listen=True, work=False, http=True))
    caplog.set_level(logging.WARNING, logger="telefum.limits")
    await bridge.start()
    try:
        await bridge.listeners[0].wait_for_session(1, timeout=TIMEOUT_S)
        await pbx_sim.send(
            [
                {
                    "Event": "Newchannel",
                    "Channel": f"PJSIP/trunk-0000000{i}",
                    "ChannelState": "4",
                    "CallerIDNum": "79161234567",
                    "Context": "from-trunk",
                    "Exten": "74951234567",
                    "Uniqueid": f"1800000000.{i}",
                    "Linkedid": f"1800000000.{i}",
                }
                for i in range(3)
            ]
        )
        await bridge.listeners[0].ping()
        _, text = await get(bridge, "/metrics")
    finally:
        await bridge.stop()
    m = samples(text)
    assert value(m, "telefum_calls_active", pbx="office") == 1
    assert value(m, "telefum_limit_hits_total", limit="tracked_calls") == 2
    assert "limit tracked_calls reached: pbx office: 1 calls in progress, a new call" in (
        caplog.text
    )
