"""Helpers for the agent/marketer tests: the bridge's agent routes on a real socket, wired
to a real AMI listener on the simulated PBX, the way the service shell wires them.

Imported by the tests that need them (not a plugin): ``async with AgentBridge(...) as b``.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import ClientSession, ClientTimeout, web

from pbxsim.server import PbxSimulator, Script
from telefum.agent_routes import setup_agent_routes
from telefum.attribution import Attribution
from telefum.config import HttpSettings, OriginateSettings, Settings
from telefum.originate import Originator
from telefum.screenpop import CrmLookup, ScreenPop
from telephony.ami import Message
from telephony.listener import AmiListener
from telephony.records import Ringing, Update
from telephony.tracker import CallTracker
from tests.support.pbx import PBX_SECRET, PBX_USER

ADMIN_TOKEN = "admin-token-0123"
REPORT_TOKEN = "report-token-0123"
AGENT_TOKENS = {"101": "agent-101-token", "102": "agent-102-token", "103": "agent-103-token"}


def agent_settings(**originate: Any) -> Settings:
    return Settings(
        http=HttpSettings(token=ADMIN_TOKEN, report_token=REPORT_TOKEN, agent_tokens=AGENT_TOKENS),
        sources={"+74951234567": "Yandex Direct", "+74951234568": "Google Ads"},
        originate=OriginateSettings(**originate),
    )


@dataclass
class AgentBridge:
    """The agent routes of one bridge: screen pop fed by a listener on ``pbx``, click-to-call
    through that listener, attribution on ``redis`` (when given)."""

    settings: Settings
    pbx: PbxSimulator | None = None
    crm_for: Callable[[str], CrmLookup] | None = None
    redis: Any = None
    url: str = ""
    updates: list[tuple[float, Update]] = field(default_factory=list)
    screenpop: ScreenPop | None = None
    listener: AmiListener | None = None
    attribution: Attribution | None = None
    _runner: web.AppRunner | None = None

    async def __aenter__(self) -> AgentBridge:
        crm_for = self.crm_for or _no_crm
        self.screenpop = ScreenPop(crm_for, sources=self.settings.sources)
        pop = self.screenpop

        def on_update(update: Update) -> None:
            self.updates.append((time.time(), update))  # wall clock: the browser's too
            pop.on_update(update)

        originator = None
        if self.pbx is not None:
            self.listener = AmiListener(
                "127.0.0.1",
                self.pbx.port,
                PBX_USER,
                PBX_SECRET,
                CallTracker(),
                on_update,
                reconnect_min=0.05,
                reconnect_max=0.5,
            )
            await self.listener.start()
            await self.listener.wait_for_session(1, timeout=10)
            originator = Originator(self.listener.originate, self.settings.originate)
        if self.redis is not None:
            self.attribution = Attribution(self.redis, sources=self.settings.sources)
        app = web.Application()
        setup_agent_routes(
            app,
            screenpop=pop,
            originator=originator,
            attribution=self.attribution,
            settings=self.settings,
        )
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=2)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self.listener is not None:
            await self.listener.stop()
        if self.screenpop is not None:
            await self.screenpop.close()

    async def barrier(self) -> None:
        """Everything the PBX has sent so far has reached the tracker and the screen pop."""
        assert self.listener is not None
        await self.listener.ping()

    async def post(self, path: str, **kw: Any) -> tuple[int, dict[str, Any], Any]:
        async with (
            ClientSession(timeout=ClientTimeout(total=10)) as http,
            http.post(self.url + path, **kw) as resp,
        ):
            with contextlib.suppress(ValueError):
                return resp.status, await resp.json(content_type=None), resp.headers
            return resp.status, {}, resp.headers

    async def get(self, path: str, **kw: Any) -> tuple[int, str, Any]:
        async with (
            ClientSession(timeout=ClientTimeout(total=10)) as http,
            http.get(self.url + path, **kw) as resp,
        ):
            return resp.status, await resp.text(), resp.headers


def _no_crm(pbx: str) -> CrmLookup:
    raise RuntimeError("no CRM in this test")


def contacts_by_source(db_path: Path) -> dict[str, int]:
    """The reference CRM's contacts per ``x_pstn``, straight from its database."""
    with sqlite3.connect(db_path) as conn:
        rows = conn.execute("SELECT x_pstn, COUNT(*) FROM contacts GROUP BY x_pstn")
        return {str(src or ""): int(n) for src, n in rows}


def split_at_first_ring(script: Script) -> tuple[Script, Script]:
    """The recording up to the event that makes a phone ring, and the rest."""
    tracker = CallTracker()
    msgs: list[Message] = list(script.messages)
    for i, msg in enumerate(msgs):
        if any(isinstance(u, Ringing) for u in tracker.handle(msg, 0.0)):
            return Script.from_messages(msgs[: i + 1]), Script.from_messages(msgs[i + 1 :])
    raise AssertionError("the recording never rings a phone")
