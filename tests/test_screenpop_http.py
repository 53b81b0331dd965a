"""The agent page's feed over HTTP, wired the way the service shell wires it
(``create_agent_services`` + ``setup_agent_routes``), with the reference CRM and a real AMI
listener on the simulated PBX."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession, ClientTimeout, web

from crm_client.client import TelefumClient
from telefum.agent_routes import create_agent_services, setup_agent_routes
from telefum.config import AmiSettings, CrmSettings, Settings
from telephony.listener import AmiListener
from telephony.simulator import PbxSimulator
from telephony.tracker import CallTracker
from tests.support.agents import AGENT_TOKENS, agent_settings, split_at_first_ring
from tests.support.crm import RunningRefCrm
from tests.support.pbx import PBX_SECRET, PBX_USER


@pytest.fixture
async def bridge(pbx_sim: PbxSimulator, refcrm: RunningRefCrm) -> AsyncIterator[str]:
    creds = refcrm.creds()
    settings: Settings = replace(
        agent_settings(),
        crm=CrmSettings(url=refcrm.rest_url, login=creds.login, password=creds.password),
        ami=(AmiSettings(name="office"),),
    )
    services_box: list[Any] = []
    listener = AmiListener(
        "127.0.0.1", pbx_sim.port, PBX_USER, PBX_SECRET, CallTracker(),
        lambda u: services_box[0].screenpop.on_update(u),
    )
    services = create_agent_services(settings, listeners={"office": listener})
    services_box.append(services)
    await listener.start()
    await listener.wait_for_session(1, timeout=10)
    app = web.Application()
    setup_agent_routes(
        app, screenpop=services.screenpop, originator=services.originator,
        attribution=services.attribution, settings=settings,
    )
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()
        await listener.stop()
        await services.aclose()


async def read_events(resp: Any) -> AsyncIterator[dict[str, Any]]:
    """The ``state`` events of an SSE stream, decoded."""
    event = None
    async for raw in resp.content:
        line = raw.decode().rstrip("\n")
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: ") and event == "state":
            yield json.loads(line[6:])


async def test_the_feed_needs_the_extensions_own_token(bridge: str) -> None:
    async with ClientSession(timeout=ClientTimeout(total=10)) as http:
        for path in ("/agent/101", "/agent/101/events", "/agent/101/state"):
            for q in ("", "?token=wrong", f"?token={AGENT_TOKENS['102']}"):
                async with http.get(bridge + path + q) as resp:
                    assert resp.status == 401, (path, q)
        async with http.get(f"{bridge}/agent/101?token={AGENT_TOKENS['101']}") as resp:
            assert resp.status == 200 and "text/html" in resp.headers["Content-Type"]
            assert "script-src 'self'" in resp.headers["Content-Security-Policy"]


async def test_a_ring_reaches_the_feed_with_the_crm_card(
    bridge: str, pbx_sim: PbxSimulator, refcrm: RunningRefCrm, traces_dir: Path
) -> None:
    async with TelefumClient(refcrm.rest_url) as crm:
        cid = await crm.add_contact("+79161234567", "Иван", "contact", None, refcrm.creds())
    url = f"{bridge}/agent/101/events?token={AGENT_TOKENS['101']}"
    async with (
        ClientSession(timeout=ClientTimeout(total=20)) as http,
        http.get(url) as resp,
    ):
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        events = read_events(resp)
        first = await anext(events)
        assert first["calls"] == [] and first["extension"] == "101"
        ring, rest = split_at_first_ring(
            pbx_sim.prepare_trace(traces_dir / "01-inbound-answered-caller-hangup.ami")
        )
        await pbx_sim.play(ring, speed=0)
        async with asyncio.timeout(10):
            snap = await anext(events)
            (call,) = snap["calls"]  # the number shows before the CRM has answered
            assert (call["caller"], call["state"], call["lookup"]["state"]) == (
                "+79161234567", "ringing", "pending",
            )
            await pbx_sim.play(rest, speed=0)
            async for snap in events:
                if snap["history"] and snap["history"][0]["lookup"]["state"] == "done":
                    break
    (contact,) = snap["history"][0]["lookup"]["contacts"]
    assert contact["url"] == f"{refcrm.base_url}card?id={cid}&typecont=contact"
    assert snap["history"][0]["outcome"] == "answered"
