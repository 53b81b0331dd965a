"""The agent's loop in a real headless Chromium (Debian's, no browser download).

- A simulated ring pops the caller's CRM card link on the agent page (the reference CRM
  holds the contact), within half a second of the ring for the caller's number; an
  unknown caller gets the CRM's search link. A call that came while the page was closed
  was never looked up (the CRM is asked only for watched extensions): the page lists it
  with the CRM's search link, and opening the page does not ask the CRM about it.
- A click on a ``telf:`` link in the reference CRM's card goes the way it goes on an agent's
  desktop: the browser hands the URL to the ``x-scheme-handler/telf`` handler, which is
  ``telefum dial URL`` (deploy/telefum-dial.desktop), which posts to the bridge, which
  sends the Originate. Headless Chromium has no desktop to hand the URL to, so the test
  stands in for the OS: an init script passes clicked ``telf:`` URLs to a binding that runs
  the real ``telefum dial`` command. The PBX must then receive the agent's extension and
  the number.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from crm_client.client import TelefumClient
from pbxsim.server import PbxSimulator, Script
from telefum.screenpop import CrmLookup
from telephony.ami import Message
from telephony.records import Ringing, Update
from telephony.tracker import CallTracker
from tests.support.agents import AGENT_TOKENS, AgentBridge, agent_settings, split_at_first_ring
from tests.support.crm import RunningRefCrm
from tests.test_tracker_behaviours import Pbx, phone_call

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
REPO = Path(__file__).resolve().parents[1]
TIMEOUT_MS = 10_000


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: run `make browser-deps` (apt-get install chromium)")
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        b = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            await b.close()


@pytest.fixture
async def crm_client(refcrm: RunningRefCrm) -> AsyncIterator[TelefumClient]:
    async with TelefumClient(refcrm.rest_url) as client:
        yield client


@pytest.fixture
async def bridge(
    pbx_sim: PbxSimulator, refcrm: RunningRefCrm, crm_client: TelefumClient
) -> AsyncIterator[AgentBridge]:
    target = CrmLookup(crm_client, refcrm.creds(), "e164", name=refcrm.rest_url)
    async with AgentBridge(agent_settings(), pbx=pbx_sim, crm_for=lambda pbx: target) as b:
        yield b


WATCH_FOR_THE_POP = """
new MutationObserver((_, obs) => {
  if (document.querySelector("[data-testid=pop] [data-testid=caller]")) {
    window.popShownAt = Date.now();
    obs.disconnect();
  }
}).observe(document.getElementById("now"), {childList: true, subtree: true});
"""


async def open_agent_page(browser: Any, bridge: AgentBridge, ext: str) -> Any:
    page = await browser.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    await page.goto(f"{bridge.url}/agent/{ext}?token={AGENT_TOKENS[ext]}")
    await page.wait_for_selector("#link[data-state=live]")
    return page


async def test_a_ring_pops_the_callers_card_link_within_half_a_second(
    browser: Any,
    bridge: AgentBridge,
    pbx_sim: PbxSimulator,
    crm_client: TelefumClient,
    refcrm: RunningRefCrm,
    traces_dir: Path,
) -> None:
    creds = refcrm.creds()
    cid = await crm_client.add_contact("+79161234567", "Иван Петров", "contact", None, creds)
    page = await open_agent_page(browser, bridge, "101")
    ring, rest = split_at_first_ring(
        pbx_sim.prepare_trace(traces_dir / "01-inbound-answered-caller-hangup.ami")
    )
    # the page notes when the pop appears (the browser's clock is this machine's clock)
    await page.evaluate(WATCH_FOR_THE_POP)
    await pbx_sim.play(ring, speed=0)
    await page.wait_for_selector("[data-testid=pop][data-state=ringing] [data-testid=caller]")
    shown_at = await page.evaluate("window.popShownAt") / 1000
    rang_at = next(t for t, u in bridge.updates if isinstance(u, Ringing))
    assert 0 <= shown_at - rang_at < 0.5, f"the pop took {shown_at - rang_at:.3f}s"
    assert await page.inner_text("[data-testid=caller]") == "+7 916 123-45-67"
    assert "Yandex Direct" in await page.inner_text("[data-testid=tracking]")

    link = page.locator("[data-testid=pop] a[data-testid=card-link]")
    await link.wait_for()
    assert await link.inner_text() == "Иван Петров"
    href = await link.get_attribute("href")
    assert href == f"{refcrm.base_url}card?id={cid}&typecont=contact"
    assert await page.locator("[data-testid=pop] [data-testid=search-link]").count() == 0
    assert (await page.title()).startswith("☎")

    # the card link opens the contact's card in the CRM
    card = await browser.new_page()
    await card.goto(href)
    assert "Иван Петров" in await card.inner_text("h1")
    await card.close()

    # the call goes on: answered, then ended, then in the recent calls with the same link
    await pbx_sim.play(rest, speed=0)
    await page.wait_for_selector("[data-testid=recent] a[data-testid=card-link]")
    assert await page.locator("[data-testid=pop]").count() == 0
    assert "answered" in await page.inner_text("[data-testid=recent]")


async def test_an_unknown_caller_gets_the_crms_search_link(
    browser: Any,
    bridge: AgentBridge,
    pbx_sim: PbxSimulator,
    refcrm: RunningRefCrm,
    traces_dir: Path,
) -> None:
    page = await open_agent_page(browser, bridge, "101")
    ring, rest = split_at_first_ring(
        pbx_sim.prepare_trace(
            traces_dir / "03-inbound-missed-caller-abandons.ami",
            number_map={"79161234567": "79035550011"},
        )
    )
    await pbx_sim.play(ring, speed=0)
    link = page.locator("[data-testid=pop][data-state=ringing] a[data-testid=search-link]")
    await link.wait_for()
    assert await page.inner_text("[data-testid=caller]") == "+7 903 555-00-11"
    assert await link.get_attribute("href") == f"{refcrm.base_url}search?phone=%2B79035550011"
    assert "Unknown caller" in await link.inner_text()
    assert await page.locator("a[data-testid=card-link]").count() == 0

    await pbx_sim.play(rest, speed=0)
    await page.wait_for_selector("[data-testid=recent] a[data-testid=search-link]")
    assert "missed" in await page.inner_text("[data-testid=recent]")

    # the agent calls the missed caller back from the page
    pbx_sim.click_to_call = None
    await page.click("[data-testid=recent] button.call-back")
    await page.wait_for_selector("#dial-result[data-ok='1']")
    (originate,) = pbx_sim.originates
    assert (originate["Channel"], originate["Exten"]) == ("PJSIP/101", "79035550011")


async def test_a_call_missed_while_the_page_was_closed_shows_the_search_link_unasked(
    browser: Any,
    bridge: AgentBridge,
    pbx_sim: PbxSimulator,
    crm_client: TelefumClient,
    refcrm: RunningRefCrm,
    traces_dir: Path,
) -> None:
    await crm_client.add_contact("+79161234567", "Иван Петров", "contact", None, refcrm.creds())
    await pbx_sim.play(
        pbx_sim.prepare_trace(traces_dir / "03-inbound-missed-caller-abandons.ami"), speed=0
    )
    await bridge.barrier()
    page = await open_agent_page(browser, bridge, "101")
    link = page.locator("[data-testid=recent] a[data-testid=search-link]")
    await link.wait_for()
    assert "Not looked up" in await link.inner_text()
    assert await link.get_attribute("href") == f"{refcrm.base_url}search?phone=%2B79161234567"
    assert "+7 916 123-45-67" in await page.inner_text("[data-testid=recent]")
    assert "missed" in await page.inner_text("[data-testid=recent]")
    assert await page.locator("a[data-testid=card-link]").count() == 0
    assert bridge.screenpop is not None
    await bridge.screenpop.idle()
    assert refcrm.state.requests["find"] == 0


# What the desktop does with a telf: URL, in the browser's place (see the module docstring).
HAND_TELF_TO_THE_OS = """
document.addEventListener("click", (ev) => {
  const a = ev.target.closest && ev.target.closest('a[href^="telf:"]');
  if (!a) return;
  ev.preventDefault();
  window.openWithSchemeHandler(a.href);
}, true);
"""


async def test_a_telf_click_in_the_crm_card_dials_from_the_agents_extension(
    browser: Any,
    bridge: AgentBridge,
    pbx_sim: PbxSimulator,
    crm_client: TelefumClient,
    refcrm: RunningRefCrm,
    tmp_path: Path,
) -> None:
    cid = await crm_client.add_contact(
        "+79031112233", "Анна Смирнова", "contact", None, refcrm.creds()
    )
    agent_page = await open_agent_page(browser, bridge, "102")
    handled: list[tuple[str, int, str]] = []
    done = asyncio.Event()
    telefum = shutil.which("telefum", path=str(Path(sys.executable).parent)) or ""
    command = [telefum] if telefum else [sys.executable, "-m", "telefum.cli"]

    async def scheme_handler(_source: Any, url: str) -> None:
        # x-scheme-handler/telf -> Exec=telefum dial --notify %u, with the agent's settings
        env = {k: v for k, v in os.environ.items() if not k.startswith("TELEFUM_")}
        env.update(
            TELEFUM_AGENT_TOKEN=AGENT_TOKENS["102"],
            TELEFUM_AGENT_EXTENSION="102",
            TELEFUM_BRIDGE_URL=bridge.url,
            TELEFUM_AGENT_FILE=str(tmp_path / "none"),
        )
        proc = await asyncio.create_subprocess_exec(
            *command,
            "dial",
            url,
            cwd=REPO,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 30)
        handled.append((url, proc.returncode or 0, out.decode()))
        done.set()

    context = await browser.new_context()
    await context.expose_binding("openWithSchemeHandler", scheme_handler)
    await context.add_init_script(HAND_TELF_TO_THE_OS)
    card = await context.new_page()
    card.set_default_timeout(TIMEOUT_MS)
    await card.goto(f"{refcrm.base_url}card?id={cid}&typecont=contact")
    await card.click("a.telf")

    await asyncio.wait_for(done.wait(), 30)
    ((url, code, out),) = handled
    assert url == "telf:+79031112233"
    assert code == 0, out
    (originate,) = [{k.lower(): v for k, v in o.items()} for o in pbx_sim.originates]
    assert originate["channel"] == "PJSIP/102"
    assert originate["exten"] == "79031112233"

    # the PBX rings 102 and dials out (the simulator plays the whole call at once): the
    # agent's page shows whom they called, with the card
    link = agent_page.locator("[data-testid=recent] a[data-testid=card-link]")
    await link.wait_for()
    assert await link.inner_text() == "Анна Смирнова"
    assert "answered" in await agent_page.inner_text("[data-testid=recent]")
    await context.close()


# --- what the page says and how it lays a call out ------------------------------------------


class RecordingTracker(CallTracker):
    """A tracker that keeps the AMI messages it is fed, to play them through the PBX."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[Message] = []

    def handle(self, msg: Message, now: float) -> list[Update]:
        self.messages.append(dict(msg))
        return super().handle(msg, now)


def internal_call_102_to_101() -> tuple[Script, Script]:
    """Extension 102 dials 101, 101 answers: AMI as Asterisk sends it (tests' ``Pbx``)."""
    tracker = RecordingTracker()
    pbx = Pbx(tracker, t0=time.time())
    p102 = phone_call(pbx, "102", "101")
    p101 = pbx.phone("101", p102)
    pbx.dial(p102, p101, "101")
    pbx.ring(p102, p101)
    ringing = len(tracker.messages)
    pbx.wait(2)
    pbx.answer(p102, p101)
    b = pbx.bridge(p101, p102)
    pbx.wait(7)
    pbx.hangup(p101, bridge=b)
    pbx.hangup(p102, bridge=b)
    msgs = tracker.messages
    return Script.from_messages(msgs[:ringing]), Script.from_messages(msgs[ringing:])


async def test_an_internal_call_says_internal_and_an_unreadable_number_says_unknown(
    browser: Any, bridge: AgentBridge, pbx_sim: PbxSimulator, traces_dir: Path
) -> None:
    page = await open_agent_page(browser, bridge, "101")
    # an outside caller whose number the PBX gave as "12": no E.164 number, yet not internal
    ring, rest = split_at_first_ring(
        pbx_sim.prepare_trace(
            traces_dir / "01-inbound-answered-caller-hangup.ami", number_map={"79161234567": "12"}
        )
    )
    await pbx_sim.play(ring, speed=0)
    await page.wait_for_selector("[data-testid=pop][data-state=ringing]")
    crm = await page.inner_text("[data-testid=pop] .crm")
    assert crm == "No number to look up in the CRM"  # not "Internal call"
    assert await page.inner_text("[data-testid=pop] [data-testid=caller]") == "Unknown number"
    await pbx_sim.play(rest, speed=0)
    await page.wait_for_selector("[data-testid=recent]")
    assert await page.inner_text("[data-testid=recent-caller]") == "Unknown number"
    assert "Internal call" not in await page.inner_text("#recent")

    ring, rest = internal_call_102_to_101()
    await pbx_sim.play(ring, speed=0)
    await page.wait_for_selector("[data-testid=pop][data-state=ringing]")
    assert await page.inner_text("[data-testid=pop] [data-testid=caller]") == "Internal call"
    assert await page.inner_text("[data-testid=pop] .crm") == ""
    await pbx_sim.play(rest, speed=0)
    await page.wait_for_selector("[data-testid=recent] >> nth=1")
    callers = await page.locator("[data-testid=recent-caller]").all_inner_texts()
    assert callers == ["Internal call", "Unknown number"]


async def test_recent_calls_give_the_card_link_room_and_keep_call_back_in_its_row(
    browser: Any,
    bridge: AgentBridge,
    pbx_sim: PbxSimulator,
    crm_client: TelefumClient,
    refcrm: RunningRefCrm,
    traces_dir: Path,
) -> None:
    name = "Иван Петрович Сидоров"
    await crm_client.add_contact("+79161234567", name, "contact", None, refcrm.creds())
    page = await open_agent_page(browser, bridge, "101")
    await pbx_sim.play(
        pbx_sim.prepare_trace(traces_dir / "01-inbound-answered-caller-hangup.ami"), speed=0
    )
    link = page.locator("[data-testid=recent] a[data-testid=card-link]")
    await link.wait_for()
    row = await page.locator("[data-testid=recent]").bounding_box()
    box = await link.bounding_box()
    button = await page.locator("[data-testid=recent] button.call-back").bounding_box()
    line = float(await link.evaluate("a => parseFloat(getComputedStyle(a).lineHeight)"))
    assert await link.inner_text() == name
    assert box["height"] < 1.5 * line, f"the name wraps in a squeezed column: {box}"
    # the button sits in its own row, at its right end
    assert row["x"] <= button["x"] and button["x"] + button["width"] <= row["x"] + row["width"]
    assert row["y"] <= button["y"] and button["y"] + button["height"] <= row["y"] + row["height"]
    assert button["x"] > box["x"] + box["width"]
