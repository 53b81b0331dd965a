"""``telefum demo``: the whole chain on embedded defaults, end to end, in one process.

A private Redis, the reference CRM on a fresh SQLite file, the PBX simulator playing a
realistic mix of calls (``pbxsim.synth``), and the bridge itself (listener, worker, HTTP)
built from a settings.toml written here and read by the real loader. Every part talks to the
next over real sockets. The summary counts what reached the CRM from the CRM's own database
and checks it against the bridge's ledger; the last line is one JSON object.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import secrets
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from aiohttp import web

from crm_client import refcrm_store
from crm_client.refcrm import create_app as create_crm_app
from pbxsim.server import PbxSimulator
from telefum.config import load_settings
from telefum.progress import Progress
from telefum.service import Bridge
from telephony.phones import to_e164
from worker.stats import read_stats

log = logging.getLogger("telefum.demo")

SOURCES = {  # the synthetic mix's tracking numbers (pbxsim.synth.TRACKING_NUMBERS)
    "+74951234567": "Yandex Direct",
    "+74951234568": "Google Ads",
    "+74951234569": "Billboard, Leningradskoe sh.",
    "+74997001122": "Website",
    "+78122003344": "Avito",
}
AGENTS = {"101": "ivan", "102": "olga", "103": "petr"}  # extension -> CRM login


@dataclass
class DemoOptions:
    calls: int = 60
    rate: float = 3.0  # calls per second of PBX time
    speed: float = 5.0  # PBX time runs this many times faster than the wall clock
    seed: int = 7
    timeout_s: float = 120.0  # for everything to reach the CRM once the PBX has played
    workdir: Path | None = None  # kept when given; else a temporary directory, removed
    serve: bool = False  # keep running after the summary (agent pages, CRM) until Ctrl-C


@dataclass
class DemoResult:
    planned: int
    calls: int  # finished calls the tracker reported
    delivered: int  # calls whose event the CRM accepted (the worker's ledger)
    skipped: int  # calls not logged by policy
    contacts_created: int  # contacts in the CRM (it started empty)
    events: int  # events in the CRM
    dead_letters: int
    elapsed_s: float
    problems: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, int]:
        """The demo's contract: its last output line is this object."""
        return {
            "calls": self.calls,
            "delivered": self.delivered,
            "contacts_created": self.contacts_created,
            "events": self.events,
            "dead_letters": self.dead_letters,
        }

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass(frozen=True)
class DemoSecrets:
    """New each run: the CRM passwords (per login), the PBX's AMI secret, the admin token
    (an agent's token is it, "-" and the extension). Long enough not to be warned about."""

    passwords: dict[str, str]
    pbx: str
    token: str

    @classmethod
    def generate(cls) -> DemoSecrets:
        logins = ("bridge", *AGENTS.values())
        return cls(
            {login: secrets.token_urlsafe(9) for login in logins},
            secrets.token_urlsafe(9),
            secrets.token_urlsafe(12),
        )


def settings_text(work: Path, pbx_port: int, crm_url: str, keys: DemoSecrets) -> str:
    """The demo's settings.toml: defaults everywhere except where the demo's parts live."""
    passwords, token = keys.passwords, keys.token
    agents = "".join(
        f'[crm.agents."{ext}"]\nlogin = "{login}"\npassword = "{passwords[login]}"\n\n'
        for ext, login in AGENTS.items()
    )
    sources = "".join(f'"{num}" = "{label}"\n' for num, label in SOURCES.items())
    agent_tokens = "".join(f'"{ext}" = "{token}-{ext}"\n' for ext in AGENTS)
    return f"""\
# written by `telefum demo`: every part on this machine, on ports picked at start
spool_dir = "{work / "spool"}"

[ami]
host = "127.0.0.1"
port = {pbx_port}
username = "telefum"
secret = "{keys.pbx}"

[redis]
url = ""   # a private Redis

[crm]
url = "{crm_url}"
login = "bridge"
password = "{passwords["bridge"]}"

{agents}[sources]
{sources}
[worker]
create_contacts_for = ["in", "out"]   # the demo's outbound calls go to new numbers too

[http]
listen = "127.0.0.1:0"
token = "{token}"

[http.agent_tokens]
{agent_tokens}"""


async def run_demo(opts: DemoOptions, out: IO[str] = sys.stdout) -> DemoResult:
    """Run the demo; print progress (stderr) and the summary (``out``)."""
    work = opts.workdir or Path(tempfile.mkdtemp(prefix="telefum-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        return await _run(opts, work, out)
    finally:
        if opts.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


async def _run(opts: DemoOptions, work: Path, out: IO[str]) -> DemoResult:
    t0 = time.monotonic()
    keys = DemoSecrets.generate()
    passwords, token = keys.passwords, keys.token
    db = work / "crm.sqlite"
    crm = web.AppRunner(
        create_crm_app(db, passwords, functools.partial(to_e164, default_country="RU")),
        access_log=None,
        shutdown_timeout=1.0,
    )
    await crm.setup()
    site = web.TCPSite(crm, "127.0.0.1", 0)
    await site.start()
    crm_base = f"http://127.0.0.1:{crm.addresses[0][1]}"
    sim = PbxSimulator(secret=keys.pbx, speed=opts.speed)
    await sim.start()
    config = work / "settings.toml"
    config.write_text(settings_text(work, sim.port, f"{crm_base}/rest", keys), encoding="utf-8")
    settings = load_settings(config)
    bridge = Bridge(settings, embedded_redis_dir=work / "redis")
    try:
        await bridge.start()
        print(f"demo: working in {work}", file=out)
        print(f"demo: reference CRM {crm_base}/   bridge {bridge.http_url}/health", file=out)
        print(
            f"demo: agent 101's screen pop  {bridge.http_url}/agent/101?token={token}-101", file=out
        )
        out.flush()
        await bridge.listeners[0].wait_for_session(1, timeout=15.0)
        print(
            f"demo: PBX simulator plays {opts.calls} calls "
            f"({opts.rate:g}/s, {opts.speed:g}x real time)",
            file=out,
        )
        out.flush()
        result = await _play_and_wait(opts, sim, bridge, db, t0)
        await _attribution(bridge, out)
        _report(result, out)
        if opts.serve:
            from telefum.service import signal_stop

            print("demo: still serving; Ctrl-C stops", file=out)
            out.flush()
            await signal_stop().wait()
        return result
    finally:
        await bridge.stop()
        await sim.stop()
        await crm.cleanup()


async def _play_and_wait(
    opts: DemoOptions, sim: PbxSimulator, bridge: Bridge, db: Path, t0: float
) -> DemoResult:
    assert bridge.redis is not None and bridge.service is not None
    player = asyncio.create_task(sim.play_synth(opts.calls, opts.rate, opts.seed))
    calls = bridge.service.calls
    bar = Progress(opts.calls, "calls in the CRM", log_every_s=2.0)
    problems: list[str] = []
    deadline: float | None = None
    stats: dict[str, Any] = {}
    try:
        while True:
            stats = await read_stats(bridge.redis)
            c = stats["counters"]
            settled = c["succeeded"] + c["skipped"] + c["dead_lettered"]
            bar(settled)
            if player.done():
                player.result()  # a failed play is the demo's failure
                deadline = deadline or time.monotonic() + opts.timeout_s
                spool = bridge.handoff.spool_size if bridge.handoff else 0
                if settled >= calls.total and not stats["pending"] and not spool:
                    await asyncio.sleep(0.5)  # stragglers: the tracker's last hangups
                    again = await read_stats(bridge.redis)
                    if again["counters"] == c:
                        break
                elif time.monotonic() > deadline:
                    problems.append(
                        f"{calls.total - settled} call(s) still on their way after "
                        f"{opts.timeout_s:g}s"
                    )
                    break
            await asyncio.sleep(0.2)
    finally:
        bar.close()
        if not player.done():
            player.cancel()
    c = stats["counters"]
    crm = await asyncio.to_thread(refcrm_store.counts, db)
    result = DemoResult(
        planned=opts.calls,
        calls=calls.total,
        delivered=c["succeeded"],
        skipped=c["skipped"],
        contacts_created=crm["contacts"],
        events=crm["events"],
        dead_letters=stats["dead_letters"],
        elapsed_s=time.monotonic() - t0,
        problems=problems,
    )
    _check(result, c)
    return result


def _check(r: DemoResult, counters: dict[str, int]) -> None:
    """What must agree for the demo to pass: the CRM against the ledger and the plan."""
    if r.calls != r.planned:
        r.problems.append(f"the PBX played {r.planned} calls, the tracker finished {r.calls}")
    if r.events != r.delivered:
        r.problems.append(f"the CRM holds {r.events} events for {r.delivered} delivered calls")
    if r.contacts_created != counters["contacts_created"]:
        r.problems.append(
            f"the CRM holds {r.contacts_created} contacts, the worker created "
            f"{counters['contacts_created']}"
        )
    if r.dead_letters:
        r.problems.append(f"{r.dead_letters} call(s) dead-lettered (`telefum dlq list`)")


async def _attribution(bridge: Bridge, out: IO[str]) -> None:
    """What the marketers see (``telefum report``): inbound calls per tracking number."""
    from telefum.attribution import Attribution
    from telefum.commands.report import render

    assert bridge.redis is not None
    now = time.time()  # the simulated PBX dates calls from now on: include what is ahead
    report = await Attribution(bridge.redis, sources=SOURCES).report(now - 86400, now + 86400)
    print("\ndemo: inbound calls by ad source (telefum report)", file=out)
    out.write(render(report, "table"))


def _report(r: DemoResult, out: IO[str]) -> None:
    print("", file=out)
    print(f"demo: {r.calls} calls finished in {r.elapsed_s:.1f}s", file=out)
    print(f"  delivered to the CRM    {r.delivered}", file=out)
    print(f"  not logged (by policy)  {r.skipped}", file=out)
    print(
        f"  contacts created        {r.contacts_created}  (x_pstn = the tracking number)", file=out
    )
    print(f"  events in the CRM       {r.events}", file=out)
    print(f"  dead letters            {r.dead_letters}", file=out)
    for p in r.problems:
        print(f"  PROBLEM: {p}", file=out)
    print(json.dumps(r.summary()), file=out)
    out.flush()
