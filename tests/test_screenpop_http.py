"""The agent page's feed over HTTP, wired the way the service shell wires it
(``telefum.wiring.agent_services`` + ``setup_agent_routes``), with the reference CRM and a real AMI
listener on the simulated PBX. The reference CRM counts the ``find`` requests it answers:
the caller is looked up only for a watched extension (an open feed or a state request)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession, ClientTimeout, web

from crm_client.client import TelefumClient
from pbxsim.server import PbxSimulator
from telefum.agent_routes import AgentServices, setup_agent_routes
from telefum.config import AmiSettings, Settings
from telefum.wiring import agent_services
from telephony.listener import AmiListener
from telephony.tracker import CallTracker
from tests.support.agents import (
    ADMIN_TOKEN,
    AGENT_TOKENS,
    AgentBridge,
    agent_settings,
    split_at_first_ring,
)
from tests.support.crm import RunningRefCrm
from tests.support.pbx import PBX_SECRET, PBX_USER
from worker.policy import CrmTarget

CALLER = "+79161234567"  # the caller of the recordings used here


@dataclass
class Bridge:
    url: str
    listener: AmiListener
    services: AgentServices

    async def barrier(self) -> None:
        """Everything the PBX has sent so far has reached the screen pop."""
        await self.listener.ping()


@pytest.fixture
async def bridge(pbx_sim: PbxSimulator, refcrm: RunningRefCrm) -> AsyncIterator[Bridge]:
    creds = refcrm.creds()
    settings: Settings = agent_settings().model_copy(
        update={
            "crm": CrmTarget(url=refcrm.rest_url, login=creds.login, password=creds.password),
            "ami": (
                AmiSettings(name="office", host="127.0.0.1", username=PBX_USER, secret=PBX_SECRET),
            ),
        }
    )
    services_box: list[Any] = []
    listener = AmiListener(
        "127.0.0.1",
        pbx_sim.port,
        PBX_USER,
        PBX_SECRET,
        CallTracker(),
        lambda u: services_box[0].screenpop.on_update(u),
    )
    services = agent_services(settings, listeners={"office": listener})
    services_box.append(services)
    await listener.start()
    await listener.wait_for_session(1, timeout=10)
    app = web.Application()
    setup_agent_routes(
        app,
        screenpop=services.screenpop,
        originator=services.originator,
        attribution=services.attribution,
        settings=settings,
    )
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield Bridge(f"http://127.0.0.1:{port}", listener, services)
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


async def test_the_feed_needs_the_extensions_own_token(bridge: Bridge) -> None:
    async with ClientSession(timeout=ClientTimeout(total=10)) as http:
        for path in ("/agent/101", "/agent/101/events", "/agent/101/state"):
            for q in ("", "?token=wrong", f"?token={AGENT_TOKENS['102']}"):
                async with http.get(bridge.url + path + q) as resp:
                    assert resp.status == 401, (path, q)
        async with http.get(f"{bridge.url}/agent/101?token={AGENT_TOKENS['101']}") as resp:
            assert resp.status == 200 and "text/html" in resp.headers["Content-Type"]
            assert "script-src 'self'" in resp.headers["Content-Security-Policy"]


async def test_a_ring_reaches_the_feed_with_the_crm_card(
    bridge: Bridge, pbx_sim: PbxSimulator, refcrm: RunningRefCrm, traces_dir: Path
) -> None:
    async with TelefumClient(refcrm.rest_url) as crm:
        cid = await crm.add_contact(CALLER, "Иван", "contact", None, refcrm.creds())
    url = f"{bridge.url}/agent/101/events?token={AGENT_TOKENS['101']}"
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
                CALLER,
                "ringing",
                "pending",
            )
            await pbx_sim.play(rest, speed=0)
            async for snap in events:
                if snap["history"] and snap["history"][0]["lookup"]["state"] == "done":
                    break
    (contact,) = snap["history"][0]["lookup"]["contacts"]
    assert contact["url"] == f"{refcrm.base_url}card?id={cid}&typecont=contact"
    assert snap["history"][0]["outcome"] == "answered"
    assert refcrm.state.requests["find"] == 1


async def test_no_crm_lookup_while_no_page_is_open_for_the_extension(
    bridge: Bridge, pbx_sim: PbxSimulator, refcrm: RunningRefCrm, traces_dir: Path
) -> None:
    await pbx_sim.play(
        pbx_sim.prepare_trace(traces_dir / "01-inbound-answered-caller-hangup.ami"), speed=0
    )
    await bridge.barrier()
    await bridge.services.screenpop.idle()
    assert refcrm.state.requests["find"] == 0
    # a page opened afterwards shows the call, not looked up, with the CRM's search link
    url = f"{bridge.url}/agent/101/events?token={AGENT_TOKENS['101']}"
    async with (
        ClientSession(timeout=ClientTimeout(total=10)) as http,
        http.get(url) as resp,
    ):
        snap = await anext(read_events(resp))
    (entry,) = snap["history"]
    assert entry["caller"] == CALLER and entry["outcome"] == "answered"
    assert entry["lookup"]["state"] == "none" and entry["lookup"]["contacts"] == []
    assert entry["lookup"]["search_url"] == f"{refcrm.base_url}search?phone=%2B79161234567"
    await bridge.services.screenpop.idle()
    assert refcrm.state.requests["find"] == 0


async def known_caller_rings_unwatched(
    bridge: Bridge, pbx_sim: PbxSimulator, refcrm: RunningRefCrm, traces_dir: Path
) -> None:
    """A caller the CRM knows rings 101 while no page is open: nothing is looked up yet."""
    async with TelefumClient(refcrm.rest_url) as crm:
        await crm.add_contact(CALLER, "Иван", "contact", None, refcrm.creds())
    ring, _ = split_at_first_ring(
        pbx_sim.prepare_trace(traces_dir / "01-inbound-answered-caller-hangup.ami")
    )
    await pbx_sim.play(ring, speed=0)
    await bridge.barrier()
    await bridge.services.screenpop.idle()
    assert refcrm.state.requests["find"] == 0


async def test_opening_the_page_mid_call_starts_the_lookup_for_its_current_calls(
    bridge: Bridge, pbx_sim: PbxSimulator, refcrm: RunningRefCrm, traces_dir: Path
) -> None:
    await known_caller_rings_unwatched(bridge, pbx_sim, refcrm, traces_dir)
    url = f"{bridge.url}/agent/101/events?token={AGENT_TOKENS['101']}"
    async with (
        ClientSession(timeout=ClientTimeout(total=20)) as http,
        http.get(url) as resp,
        asyncio.timeout(10),
    ):
        events = read_events(resp)
        (call,) = (await anext(events))["calls"]
        assert (call["caller"], call["state"]) == (CALLER, "ringing")
        assert call["lookup"]["state"] == "pending"  # started by opening the page
        async for snap in events:  # the contacts follow when the CRM answers
            if snap["calls"][0]["lookup"]["state"] != "pending":
                break
    assert [c["name"] for c in snap["calls"][0]["lookup"]["contacts"]] == ["Иван"]
    assert refcrm.state.requests["find"] == 1


async def test_snapshot_request_looks_up_current_calls(
    bridge: Bridge, pbx_sim: PbxSimulator, refcrm: RunningRefCrm, traces_dir: Path
) -> None:
    await known_caller_rings_unwatched(bridge, pbx_sim, refcrm, traces_dir)
    url = f"{bridge.url}/agent/101/state?token={AGENT_TOKENS['101']}"
    async with ClientSession(timeout=ClientTimeout(total=10)) as http:
        async with http.get(url) as resp:
            (call,) = (await resp.json())["calls"]
        assert call["caller"] == CALLER and call["lookup"]["state"] == "pending"
        await bridge.services.screenpop.idle()
        async with http.get(url) as resp:  # asked again: the contacts, no second lookup
            (call,) = (await resp.json())["calls"]
    assert call["lookup"]["state"] == "done"
    assert [c["name"] for c in call["lookup"]["contacts"]] == ["Иван"]
    assert refcrm.state.requests["find"] == 1


async def test_live_feeds_are_capped_per_extension_and_in_all(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """One agent token opened 5,000 feeds: each holds a connection for as long as it is
    open. At most [http] max_streams_per_extension per extension, half of max_connections
    in all; a feed beyond is a 429 and counts as a hit of the sse_streams cap."""
    base = agent_settings()
    http_settings = replace(base.http, max_streams_per_extension=2, max_connections=8)
    caplog.set_level(logging.WARNING, logger="telefum.limits")
    async with (
        AgentBridge(base.model_copy(update={"http": http_settings})) as b,
        ClientSession(timeout=ClientTimeout(total=10)) as http,
    ):

        async def feed(ext: str, token: str) -> Any:
            resp = await http.get(f"{b.url}/agent/{ext}/events?token={token}")
            opened.append(resp)
            return resp

        opened: list[Any] = []
        assert [(await feed("101", AGENT_TOKENS["101"])).status for _ in range(2)] == [200, 200]
        refused = await feed("101", AGENT_TOKENS["101"])
        assert refused.status == 429 and "max_streams_per_extension" in await refused.text()
        assert [(await feed("102", AGENT_TOKENS["102"])).status for _ in range(2)] == [200, 200]
        refused = await feed("103", ADMIN_TOKEN)  # 4 open in all: half of max_connections
        assert refused.status == 429 and "max_connections" in await refused.text()
        for resp in opened:
            resp.close()
    assert "limit sse_streams reached: extension 101 has 2 open" in caplog.text
