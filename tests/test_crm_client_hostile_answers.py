"""A CRM answer cannot freeze the process: parsing is linear and bounded, large answers are
read off the event loop (the loop that also reads AMI and serves /health and /originate).

The inputs are the ones that froze it: deeply nested XML (xmltodict with a callable
``force_list`` copied the path per element: 40k levels took 5 s), an HTML page of unclosed
``<title>`` tags (a lazy title regex: 140 KB took 16 s) and an error page of unclosed tags.
The wall-clock bounds are generous (these took seconds before, milliseconds now).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from crm_client import parse
from crm_client.client import PARSE_INLINE_BYTES, TelefumClient
from crm_client.errors import Transient, TransientCrmError
from crm_client.types import Credentials


def nested(depth: int) -> bytes:
    return ("<response>" + "<a>" * depth + "x" + "</a>" * depth + "</response>").encode()


def test_xml_nested_deeper_than_the_limit_is_rejected_as_an_unreadable_answer() -> None:
    t0 = time.perf_counter()
    with pytest.raises(TransientCrmError) as info:
        parse.parse_find(nested(40_000), "text/xml")
    assert time.perf_counter() - t0 < 1.0
    assert info.value.kind == "bad_response"
    assert f"nested deeper than {parse.MAX_DEPTH}" in str(info.value)


def test_xml_nested_up_to_the_limit_is_still_read() -> None:
    # <response> and <item> plus wrappers: MAX_DEPTH elements in all, the id at the bottom
    wrappers = parse.MAX_DEPTH - 3
    body = (
        "<response><item>"
        + "<w>" * wrappers
        + "<id>7</id>"
        + "</w>" * wrappers
        + "<id>5</id></item></response>"
    ).encode()
    (contact,) = parse.parse_find(body).contacts
    assert contact.id == "5"
    with pytest.raises(TransientCrmError, match="nested deeper"):
        parse.parse_find(body.replace(b"<w>", b"<w><w>", 1).replace(b"</w>", b"</w></w>", 1))


def test_a_deep_document_behind_an_error_status_is_described_without_reading_it_all() -> None:
    t0 = time.perf_counter()
    err = parse.error_for_status(500, nested(40_000), "text/xml")
    assert time.perf_counter() - t0 < 1.0
    assert isinstance(err, Transient) and err.status == 500


def test_a_page_of_unclosed_title_tags_is_read_in_linear_time() -> None:
    body = ("<html><head>" + "<title>" * 20_000).encode()  # 140 KB
    t0 = time.perf_counter()
    with pytest.raises(TransientCrmError, match="HTML page"):
        parse.parse_find(body, "text/html")
    err = parse.error_for_status(502, body, "text/html")
    assert time.perf_counter() - t0 < 1.0
    assert err is not None and err.description is None


def test_an_error_page_of_unclosed_tags_is_described_in_linear_time() -> None:
    for body in (b"<" * 140_000, b"<a " * 50_000, b"<p>" + b"<title <b" * 20_000):
        t0 = time.perf_counter()
        err = parse.error_for_status(500, body, "text/html")
        assert time.perf_counter() - t0 < 1.0, body[:20]
        assert err is not None and err.status == 500


def test_the_title_of_an_ordinary_error_page_is_still_its_description() -> None:
    page = (
        b"<!DOCTYPE html><html><head><TITLE lang=en>502 Bad <b>Gateway</b> &amp; co</TITLE>"
        b"</head><body><title>not this one</title></body></html>"
    )
    err = parse.error_for_status(502, page, "text/html")
    assert err is not None and err.description == "502 Bad Gateway & co"


# --- large answers are parsed off the event loop ------------------------------------------


@pytest.fixture
async def big_answer_crm() -> AsyncIterator[str]:
    """A CRM whose find answer is 3.5 MiB of items (seconds of parsing)."""
    item = b"<item><id>1</id><typecont>contact</typecont></item>"
    body = b"<response>" + item * (3_500_000 // len(item)) + b"</response>"

    async def rest(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="text/xml")

    app = web.Application()
    app.router.add_get("/rest", rest)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{site.port}/rest"
    finally:
        await runner.cleanup()


async def test_a_large_answer_is_parsed_while_the_event_loop_keeps_running(
    big_answer_crm: str,
) -> None:
    ticks: list[float] = []
    parsing = True

    async def ticker() -> None:
        while parsing:
            ticks.append(time.perf_counter())
            await asyncio.sleep(0.005)

    async with TelefumClient(big_answer_crm, timeout_s=60) as crm:
        found = await crm.find("+79161234567", Credentials("bridge", "pw"))  # warm up
        task = asyncio.create_task(ticker())
        t0 = time.perf_counter()
        found = await crm.find("+79161234567", Credentials("bridge", "pw"))
        t1 = time.perf_counter()
        parsing = False
        await task
    took = t1 - t0
    assert len(found.contacts) > 60_000 and PARSE_INLINE_BYTES < 3_500_000
    # inline, the loop stood still for the whole parse; in a thread it ticks throughout
    moments = [t0, *(t for t in ticks if t0 < t < t1), t1]
    longest_stall = max(b - a for a, b in itertools.pairwise(moments))
    assert longest_stall < max(0.5, took / 2), (longest_stall, took)
