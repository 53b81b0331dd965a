"""``GET /health`` over HTTP with real parts: a Redis server, the AMI listener on the PBX
simulator, worker heartbeats in Redis. Each failure turns it 503 with its reason, and
putting it right turns it back to 200."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from redis.asyncio import Redis

from telefum.config import HealthSettings, HttpSettings, Settings
from telefum.web import Service, create_app, start_http
from telephony.listener import AmiListener
from telephony.records import CallFinished, CallRecord, Update
from telephony.tracker import CallTracker
from tests.support.pbx import PBX_SECRET, PBX_USER, FaultyPbx
from worker import stats
from worker.embedded_redis import EmbeddedRedis
from worker.policy import CallPolicy, CrmTarget, WorkerConfig

HEALTH = HealthSettings(worker_heartbeat_max_age_s=5, redis_timeout_s=1.0)


async def until(check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    """For states with no event to await (a link that went down, a key that expired)."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


@dataclass
class LiveBridge:
    """Listener + tracker + the HTTP app, wired the way ``telefum run`` wires them."""

    listener: AmiListener
    service: Service
    url: str
    http: aiohttp.ClientSession
    finished: list[Any] = field(default_factory=list)

    async def get(self, path: str) -> tuple[int, Any]:
        async with self.http.get(self.url + path) as resp:
            if resp.content_type == "application/json":
                return resp.status, await resp.json()
            return resp.status, await resp.text()

    async def health(self) -> tuple[int, dict[str, Any]]:
        return await self.get("/health")

    async def health_is(self, status: int, reason: str | None = None) -> dict[str, Any]:
        """Wait until /health answers ``status`` (with a reason containing ``reason``)."""
        body: dict[str, Any] = {}

        async def check() -> bool:
            nonlocal body
            code, body = await self.health()
            return code == status and (reason is None or any(reason in r for r in body["reasons"]))

        try:
            await until(check)
        except AssertionError:
            raise AssertionError(f"/health never became {status} {reason!r}: {body}") from None
        return body


StartBridge = Callable[..., Awaitable[LiveBridge]]


@pytest.fixture
async def start_bridge(pbx_sim: FaultyPbx, redis_client: Redis) -> AsyncIterator[StartBridge]:
    started: list[tuple[AmiListener, web.AppRunner, aiohttp.ClientSession]] = []

    async def start(
        health: HealthSettings = HEALTH,
        on_finished: Callable[[CallRecord], None] | None = None,
        **service_kw: Any,
    ) -> LiveBridge:
        settings = Settings(health=health, http=HttpSettings(listen="127.0.0.1:0"))
        tracker = CallTracker(settings.calls, pbx="office")  # records carry the PBX
        box: list[LiveBridge] = []

        def on_update(update: Update) -> None:
            if isinstance(update, CallFinished):
                box[0].service.calls.observe(update.record)
                box[0].finished.append(update.record)
                if on_finished is not None:
                    on_finished(update.record)

        listener = AmiListener(
            "127.0.0.1",
            pbx_sim.port,
            PBX_USER,
            PBX_SECRET,
            tracker,
            on_update,
            ping_interval=30.0,
            ping_timeout=2.0,
            reconnect_min=0.01,
            reconnect_max=0.1,
            connect_timeout=2.0,
            expire_interval=3600.0,
            pbx="office",
        )
        service = Service(settings, links=[listener], redis=redis_client, **service_kw)
        runner = await start_http(create_app(service), settings.http)
        http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
        started.append((listener, runner, http))
        bridge = LiveBridge(listener, service, f"http://127.0.0.1:{runner.port}", http)
        box.append(bridge)
        await listener.start()
        await listener.wait_for_session(1, timeout=5)
        return bridge

    yield start
    for listener, runner, http in started:
        await http.close()
        await runner.cleanup()
        await listener.stop()


async def beat(redis: Redis, wid: str = "test-worker", ttl_s: float = 10.0) -> None:
    """A worker's heartbeat, written by the workers' own code."""
    await stats.heartbeat(redis, wid, {"pid": 1, "host": "here", "running": 0, "done": 0}, ttl_s)


async def test_healthy_when_link_redis_and_a_worker_are_fine(
    start_bridge: StartBridge, redis_client: Redis
) -> None:
    await beat(redis_client)
    bridge = await start_bridge()
    status, body = await bridge.health()
    assert status == 200, body
    assert body["status"] == "ok" and body["reasons"] == []
    assert body["ami"][0]["pbx"] == "office" and body["ami"][0]["connected"] is True
    assert body["redis"]["ok"] is True and body["workers"]["alive"] == 1


async def test_redis_stopped_gives_503_and_started_again_gives_200(
    start_bridge: StartBridge, redis_client: Redis, redis_server: EmbeddedRedis
) -> None:
    await beat(redis_client, ttl_s=60)
    bridge = await start_bridge()
    await bridge.health_is(200)

    redis_server.stop()
    body = await bridge.health_is(503, "Redis unreachable")
    assert body["redis"]["ok"] is False and body["workers"] is None

    redis_server.start()  # same port, same data (append-only file): the heartbeat is back
    await bridge.health_is(200)


async def test_ami_link_cut_gives_503_and_reconnected_gives_200(
    start_bridge: StartBridge, redis_client: Redis, pbx_sim: FaultyPbx
) -> None:
    await beat(redis_client, ttl_s=60)
    bridge = await start_bridge()
    await bridge.health_is(200)

    pbx_sim.refuse_connections = True
    await pbx_sim.drop_clients()
    body = await bridge.health_is(503, "AMI link down: pbx office")
    assert body["ami"][0]["connected"] is False

    pbx_sim.refuse_connections = False
    await bridge.listener.wait_for_session(2, timeout=5)
    body = await bridge.health_is(200)
    assert body["ami"][0]["reconnects"] >= 1


async def test_rejected_ami_login_is_the_reason_given(
    start_bridge: StartBridge, redis_client: Redis, pbx_sim: FaultyPbx
) -> None:
    await beat(redis_client, ttl_s=60)
    bridge = await start_bridge()
    pbx_sim.secret = "rotated-by-the-admin"
    await pbx_sim.drop_clients()
    body = await bridge.health_is(503, "AMI login rejected")
    assert any("(pbx office)" in r for r in body["reasons"])
    assert "rotated-by-the-admin" not in str(body) and PBX_SECRET not in str(body)

    pbx_sim.secret = PBX_SECRET
    await bridge.health_is(200)


async def test_workers_gone_gives_503_and_a_new_worker_gives_200(
    start_bridge: StartBridge,
    redis_client: Redis,
    worker_procs: Callable[..., Any],
) -> None:
    """Real worker processes: one SIGKILLed stops beating and its heartbeat expires."""
    config = WorkerConfig(
        crm=CrmTarget("http://127.0.0.1:9/rest", "u", "p", timeout_s=1.0),
        calls=CallPolicy(job_timeout_s=5.0),
        heartbeat_s=0.2,  # heartbeat TTL: 3 beats = 0.6 s
    )
    bridge = await start_bridge()
    body = await bridge.health_is(503, "no worker alive")

    first = worker_procs(config, "w-first")
    body = await bridge.health_is(200)
    assert [w["id"] for w in body["workers"]["heartbeats"]] == ["w-first"]

    first.kill()
    await bridge.health_is(503, "no worker alive")

    worker_procs(config, "w-second")
    body = await bridge.health_is(200)
    assert [w["id"] for w in body["workers"]["heartbeats"]] == ["w-second"]


async def test_spool_that_does_not_drain_gives_503(
    start_bridge: StartBridge, redis_client: Redis
) -> None:
    await beat(redis_client, ttl_s=60)
    spool = {"size": 0}
    bridge = await start_bridge(
        health=HealthSettings(spool_stall_s=1.0, redis_timeout_s=1.0),
        spool_size=lambda: spool["size"],
    )
    await bridge.health_is(200)
    spool["size"] = 3  # calls spooled, and nothing takes them
    status, body = await bridge.health()
    assert status == 200 and body["spool"] == {"size": 3, "draining": True, "stalled_s": 0.0}
    body = await bridge.health_is(503, "spool not draining: 3 calls waiting")
    spool["size"] = 2  # the hand-over moves again
    await bridge.health_is(200)


async def test_health_answers_json_with_no_cache(start_bridge: StartBridge) -> None:
    bridge = await start_bridge()
    async with bridge.http.get(bridge.url + "/health") as resp:
        assert resp.content_type == "application/json"
        assert resp.headers["Cache-Control"] == "no-store"
        body = await resp.json()
    assert resp.status == 503 and body["reasons"] == [
        "no worker alive: no heartbeat in the last 5 s"
    ]
