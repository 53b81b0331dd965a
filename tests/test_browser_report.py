"""The marketer's ``/report`` page in headless Chromium: the table and the chart show the
figures the bridge stored, and the quiet days of the period are on the chart too."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from redis.asyncio import Redis

from tests.support.agents import REPORT_TOKEN, AgentBridge, agent_settings
from tests.test_browser_agent import browser  # noqa: F401 - the fixture
from tests.test_report import CALLS, fill

pytestmark = pytest.mark.browser


async def until(
    read: Callable[[], Awaitable[str]], ok: Callable[[str], bool], timeout_s: float = 10.0
) -> None:
    """Poll ``read`` until ``ok`` holds; fail with the last value seen after ``timeout_s``."""
    async with asyncio.timeout(timeout_s):
        while not ok(value := await read()):
            await asyncio.sleep(0.05)
    assert ok(value)


@pytest.fixture
async def bridge(redis_client: Redis) -> AsyncIterator[AgentBridge]:
    await fill(redis_client)
    async with AgentBridge(agent_settings(), redis=redis_client) as b:
        yield b


async def test_report_page_shows_the_figures_and_a_bar_per_day(
    browser: Any,  # noqa: F811
    bridge: AgentBridge,
) -> None:
    page = await browser.new_page()
    page.set_default_timeout(10_000)
    await page.goto(f"{bridge.url}/report?token={REPORT_TOKEN}&since=30d")
    await page.wait_for_selector("body[data-loaded='1']")

    rows = await page.locator("[data-testid=number-row]").all_inner_texts()
    assert len(rows) == 2
    yandex = rows[0].split("\t")
    assert yandex[:3] == ["+74951234567", "Yandex Direct", "4"]
    total = (await page.inner_text("[data-testid=total-row]")).split("\t")
    assert total[0] == "Total" and total[2] == str(len(CALLS))

    # one stacked segment per day and number; their heights add up to the calls
    bars = page.locator("[data-testid=chart] rect")
    counts = [int(await bars.nth(i).get_attribute("data-calls")) for i in range(await bars.count())]
    assert sum(counts) == len(CALLS)
    labels = await page.locator("[data-testid=chart] text.axis").all_text_contents()
    assert len([t for t in labels if "-" in t]) >= 10  # the 30 days, quiet ones included

    # a shorter period reloads the figures
    await page.select_option("#since", "1d")
    # (polled from here: the page's CSP forbids the eval that wait_for_function needs)
    await until(
        lambda: page.inner_text("[data-testid=total-row]"), lambda t: t.split("\t")[2] == "2"
    )


async def test_the_chart_keeps_every_day_label_inside_it(
    browser: Any,  # noqa: F811
    bridge: AgentBridge,
) -> None:
    page = await browser.new_page()
    page.set_default_timeout(10_000)
    for since in ("30d", "90d"):  # many days: the last label sits right at the edge
        await page.goto(f"{bridge.url}/report?token={REPORT_TOKEN}&since={since}")
        await page.wait_for_selector("body[data-loaded='1']")
        width = float(
            await page.locator("[data-testid=chart] svg").evaluate("s => s.viewBox.baseVal.width")
        )
        spans = await page.locator("[data-testid=chart] text.axis").evaluate_all(
            "ts => ts.map(t => [t.textContent, t.getBBox().x, t.getBBox().x + t.getBBox().width])"
        )
        days = [(text, x0, x1) for text, x0, x1 in spans if "-" in text]
        assert days[-1][0] == time.strftime("%m-%d", time.localtime()), days[-1]
        clipped = [(t, x0, x1) for t, x0, x1 in days if x0 < 0 or x1 > width]
        assert clipped == [], f"{since}: labels outside the chart's {width} units: {clipped}"


async def test_a_configured_source_without_calls_is_a_row_of_zeros_on_the_page(
    browser: Any,  # noqa: F811
    redis_client: Redis,
) -> None:
    await fill(redis_client)
    settings = agent_settings()
    settings.sources["+78122003344"] = "Avito"
    async with AgentBridge(settings, redis=redis_client) as b:
        page = await browser.new_page()
        page.set_default_timeout(10_000)
        await page.goto(f"{b.url}/report?token={REPORT_TOKEN}&since=7d")
        await page.wait_for_selector("body[data-loaded='1']")
        rows = [
            r.split("\t") for r in await page.locator("[data-testid=number-row]").all_inner_texts()
        ]
        assert rows[-1] == ["+78122003344", "Avito", "0", "0", "0", "0", "0", "0", "–"]
        legend = await page.inner_text("#legend")
        assert "Avito" not in legend  # no bars, no colour to explain
