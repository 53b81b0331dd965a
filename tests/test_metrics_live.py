"""``GET /metrics`` moves as calls flow: simulated PBX -> listener -> spool -> Redis ->
a worker process -> the reference CRM, every part real, scraped over HTTP."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis

from tests.support.crm import RefCrmProcess
from tests.support.pbx import TRACES, FaultyPbx
from tests.test_health_live import LiveBridge, StartBridge, start_bridge, until  # noqa: F401
from worker.handoff import Handoff
from worker.policy import CallPolicy, CrmTarget, WorkerConfig

ANSWERED = TRACES / "01-inbound-answered-caller-hangup.ami"
MISSED = TRACES / "03-inbound-missed-caller-abandons.ami"


async def scrape(bridge: LiveBridge) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of one scrape, by (name, sorted labels)."""
    status, text = await bridge.get("/metrics")
    assert status == 200
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_metrics_follow_calls_from_the_pbx_to_the_crm(
    start_bridge: StartBridge,  # noqa: F811
    pbx_sim: FaultyPbx,
    redis_url: str,
    redis_client: Redis,
    worker_procs: Callable[..., Any],
    refcrm_process: Callable[..., RefCrmProcess],
    tmp_path: Path,
) -> None:
    crm = refcrm_process({"bridge": "pw"})
    worker_procs(
        WorkerConfig(
            crm=CrmTarget(crm.rest_url, "bridge", "pw", timeout_s=5.0),
            calls=CallPolicy(job_timeout_s=10.0),
            heartbeat_s=0.5,
        )
    )
    handoff = Handoff(redis_url, tmp_path / "spool", publish_every_s=0.2)
    await handoff.start()
    try:
        bridge = await start_bridge(
            on_finished=handoff.submit, spool_size=lambda: handoff.spool_size
        )
        before = await scrape(bridge)
        assert value(before, "telefum_ami_link_up", pbx="office") == 1
        assert value(before, "telefum_redis_up") == 1
        events_before = value(before, "telefum_ami_events_received_total", pbx="office")

        played = await pbx_sim.play_trace(ANSWERED, speed=0)
        played += await pbx_sim.play_trace(MISSED, speed=0)

        async def delivered() -> bool:
            m = await scrape(bridge)
            # CRM latencies come in with the worker's next flush (within a second)
            return (
                value(m, "telefum_crm_events_created_total") >= 2
                and value(
                    m,
                    "telefum_crm_request_duration_seconds_count",
                    operation="addevent",
                    outcome="ok",
                )
                >= 2
            )

        await until(delivered, timeout=30)
        after = await scrape(bridge)
    finally:
        await handoff.close()

    assert value(after, "telefum_ami_events_received_total", pbx="office") >= (
        events_before + played
    )
    assert value(after, "telefum_calls_active", pbx="office") == 0
    finished = "telefum_calls_finished_total"
    assert value(after, finished, pbx="office", direction="in", disposition="answered") == 1
    assert value(after, finished, pbx="office", direction="in", disposition="no-answer") == 1
    assert value(after, "telefum_jobs_enqueued_total") == 2
    assert value(after, "telefum_jobs_succeeded_total") == 2
    assert value(after, "telefum_jobs_dead_lettered_total") == 0
    assert value(after, "telefum_crm_contacts_created_total") == 1  # one new caller, twice
    assert value(after, "telefum_queue_depth") == 0
    assert value(after, "telefum_dead_letters") == 0
    assert value(after, "telefum_workers_alive") == 1
    assert value(after, "telefum_spool_size") == 0
    hist = "telefum_crm_request_duration_seconds_count"
    assert value(after, hist, operation="addevent", outcome="ok") == 2
    assert value(after, hist, operation="find", outcome="ok") >= 2
    assert (
        value(
            after,
            "telefum_crm_request_duration_seconds_bucket",
            operation="addevent",
            outcome="ok",
            le="+Inf",
        )
        == 2
    )
    assert len(crm.events()) == 2


async def test_metrics_show_a_cut_link_and_count_the_reconnect(
    start_bridge: StartBridge,  # noqa: F811
    pbx_sim: FaultyPbx,
) -> None:
    bridge = await start_bridge()
    pbx_sim.refuse_connections = True
    await pbx_sim.drop_clients()

    async def down() -> bool:
        return value(await scrape(bridge), "telefum_ami_link_up", pbx="office") == 0

    await until(down)
    pbx_sim.refuse_connections = False
    await bridge.listener.wait_for_session(2, timeout=5)
    m = await scrape(bridge)
    assert value(m, "telefum_ami_link_up", pbx="office") == 1
    assert value(m, "telefum_ami_reconnects_total", pbx="office") == 1
