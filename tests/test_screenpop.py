"""Screen pop state and lookup cache: pure logic, driven by tracker updates.

The CRM here is a small in-memory directory (the HTTP and browser tests use the reference
CRM): what is pinned is what the page is told and how often the CRM is asked. The CRM is
asked only for watched extensions, so most tests open the pages first (:func:`watching`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from crm_client.types import Contact, Credentials, FindResult
from telefum.screenpop import CrmLookup, LookupCache, ScreenPop
from telephony.ami import parse_trace
from telephony.records import Answered, CallFinished, CallRecord, Ringing
from telephony.tracker import CallTracker

CALLER = "+79161234567"
DID = "+74951234567"


class Directory:
    """A CRM directory that counts finds and can hold them until released."""

    def __init__(self, contacts: dict[str, list[Contact]] | None = None) -> None:
        self.contacts = contacts or {}
        self.finds: list[str] = []
        self.gate: asyncio.Event | None = None
        self.fail = False

    async def find(self, phone: str, creds: Credentials) -> FindResult:
        self.finds.append(phone)
        if self.gate is not None:
            await self.gate.wait()
        if self.fail:
            raise ConnectionError("CRM down: password=hunter2")
        found = tuple(self.contacts.get(phone, ()))
        return FindResult(found, len(found))

    def card_url(self, id: str, typecont: str) -> str:
        return f"http://crm.test/card?id={id}&typecont={typecont}"

    def search_url(self, phone: str) -> str:
        return f"http://crm.test/search?phone={phone}"


def make_pop(directory: Directory, **kw: object) -> ScreenPop:
    target = CrmLookup(directory, Credentials("bridge", "secret"))
    return ScreenPop(lambda pbx: target, sources={DID: "Yandex Direct"}, **kw)  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def watching(pop: ScreenPop, *extensions: str) -> AsyncIterator[None]:
    """The agent pages of ``extensions`` open (their feeds unread) for the block's span."""
    async with contextlib.AsyncExitStack() as stack:
        for ext in extensions:
            await stack.enter_async_context(pop.subscribe(ext))
        yield


def ringing(ext: str, call_id: str = "c1", caller: str | None = CALLER, at: float = 1000.0):
    return Ringing(call_id, ext, caller, DID, "in", at)


def finished(call_id: str = "c1", answered_by: str | None = None, rang=("101",)) -> CallFinished:
    return CallFinished(
        CallRecord(
            call_id=call_id,
            direction="in",
            external=CALLER,
            did=DID,
            extension=answered_by,
            answered=answered_by is not None,
            started_at=1000.0,
            answered_at=1002.0 if answered_by else None,
            ended_at=1010.0,
            disposition="answered" if answered_by else "no-answer",
            rang=tuple(rang),
        )
    )


async def test_ringing_shows_caller_and_source_before_the_crm_answers() -> None:
    crm = Directory({CALLER: [Contact("7", "contact", "Ivan Petrov", "Roga i Kopyta")]})
    crm.gate = asyncio.Event()
    pop = make_pop(crm)
    async with pop.subscribe("101") as feed:
        first = await feed.next(1)
        assert first is not None and first["calls"] == []
        pop.on_update(ringing("101"))
        snap = await feed.next(1)
        assert snap is not None
        (call,) = snap["calls"]
        assert (call["caller"], call["did"], call["source"]) == (CALLER, DID, "Yandex Direct")
        assert call["state"] == "ringing" and call["lookup"]["state"] == "pending"
        crm.gate.set()
        snap = await feed.next(1)
    assert snap is not None
    lookup = snap["calls"][0]["lookup"]
    assert lookup["state"] == "done"
    assert [c["url"] for c in lookup["contacts"]] == ["http://crm.test/card?id=7&typecont=contact"]
    await pop.close()


async def test_unknown_caller_gets_the_search_link_and_no_cards() -> None:
    pop = make_pop(Directory())
    async with watching(pop, "101"):
        pop.on_update(ringing("101"))
        await pop.idle()
    lookup = pop.snapshot("101")["calls"][0]["lookup"]
    assert lookup["state"] == "done" and lookup["contacts"] == []
    assert lookup["search_url"] == f"http://crm.test/search?phone={CALLER}"


async def test_a_ring_group_asks_the_crm_once_for_all_its_phones() -> None:
    crm = Directory()
    crm.gate = asyncio.Event()
    pop = make_pop(crm)
    async with watching(pop, "101", "102", "103", "104"):
        for ext in ("101", "102", "103"):
            pop.on_update(ringing(ext))
        # a second call from the same number moments later (a queue's next round): cached
        pop.on_update(ringing("104", call_id="c2"))
        crm.gate.set()
        await pop.idle()
    assert crm.finds == [CALLER]
    for ext in ("101", "102", "103", "104"):
        assert pop.snapshot(ext)["calls"][0]["lookup"]["state"] == "done"


async def test_cache_asks_again_once_the_entry_is_older_than_its_ttl() -> None:
    now = [0.0]
    cache = LookupCache(ttl_s=5.0, clock=lambda: now[0])
    calls: list[int] = []

    async def fetch() -> int:
        calls.append(1)
        return len(calls)

    assert await cache.get("p", fetch) == 1
    now[0] = 4.9
    assert await cache.get("p", fetch) == 1
    now[0] = 5.0
    assert await cache.get("p", fetch) == 2
    assert cache.fetches == 2


async def test_concurrent_lookups_share_one_request_and_a_cancelled_waiter_spares_it() -> None:
    cache = LookupCache(ttl_s=5.0)
    gate = asyncio.Event()
    started: list[int] = []

    async def fetch() -> str:
        started.append(1)
        await gate.wait()
        return "found"

    waiters = [asyncio.ensure_future(cache.get("p", fetch)) for _ in range(5)]
    await asyncio.sleep(0)  # let them all reach the shared fetch
    waiters[0].cancel()
    gate.set()
    results = await asyncio.gather(*waiters[1:])
    assert results == ["found"] * 4 and len(started) == 1


async def test_a_failed_lookup_is_not_cached_and_the_page_keeps_the_search_link(
    caplog: pytest.LogCaptureFixture,
) -> None:
    crm = Directory()
    crm.fail = True
    pop = make_pop(crm)
    async with watching(pop, "101", "102"):
        pop.on_update(ringing("101"))
        await pop.idle()
        lookup = pop.snapshot("101")["calls"][0]["lookup"]
        assert lookup["state"] == "failed"
        assert lookup["search_url"] == f"http://crm.test/search?phone={CALLER}"
        assert "hunter2" not in caplog.text
        crm.fail = False
        pop.on_update(ringing("102", call_id="c2"))
        await pop.idle()
    assert pop.snapshot("102")["calls"][0]["lookup"]["state"] == "done"
    assert len(crm.finds) == 2


async def test_phone_is_sent_to_the_crm_in_its_configured_format() -> None:
    crm = Directory()
    target = CrmLookup(crm, Credentials("b", "p"), phone_format="national")
    pop = ScreenPop(lambda pbx: target)
    async with watching(pop, "101"):
        pop.on_update(ringing("101"))
        await pop.idle()
    assert crm.finds == ["89161234567"]
    assert pop.snapshot("101")["calls"][0]["lookup"]["search_url"].endswith("phone=89161234567")


async def test_when_another_phone_answers_the_call_leaves_this_page_for_its_history() -> None:
    pop = make_pop(Directory())
    pop.on_update(ringing("101"))
    pop.on_update(ringing("102"))
    pop.on_update(Answered("c1", "102", 1003.0))
    s101, s102 = pop.snapshot("101"), pop.snapshot("102")
    assert s101["calls"] == []
    assert s101["history"][0]["outcome"] == "answered by 102"
    assert s102["calls"][0]["state"] == "answered"
    pop.on_update(finished(answered_by="102", rang=("101", "102")))
    s102 = pop.snapshot("102")
    assert s102["calls"] == [] and s102["history"][0]["outcome"] == "answered"
    await pop.close()


async def test_unanswered_call_ends_as_missed_and_history_keeps_the_last_few() -> None:
    pop = make_pop(Directory(), history_size=3)
    for i in range(5):
        pop.on_update(ringing("101", call_id=f"c{i}", at=1000.0 + i))
        pop.on_update(finished(call_id=f"c{i}"))
    snap = pop.snapshot("101")
    assert snap["calls"] == []
    assert [c["call_id"] for c in snap["history"]] == ["c4", "c3", "c2"]
    assert {c["outcome"] for c in snap["history"]} == {"missed"}
    assert {c["state"] for c in snap["history"]} == {"ended"}
    await pop.close()


async def test_a_recorded_ring_group_pops_on_both_phones_and_ends_right(traces_dir: Path) -> None:
    crm = Directory({CALLER: [Contact("7", "contact", "Ivan"), Contact("8", "lead", "Olga")]})
    pop = make_pop(crm)
    raw = (traces_dir / "06-inbound-ringgroup-102-answers.ami").read_bytes()
    async with watching(pop, "101", "102"):
        for update in CallTracker().feed(parse_trace(raw)):
            pop.on_update(update)
        await pop.idle()
    (h101,) = pop.snapshot("101")["history"]
    (h102,) = pop.snapshot("102")["history"]
    assert h101["outcome"] == "answered by 102" and h102["outcome"] == "answered"
    assert len(h102["lookup"]["contacts"]) == 2 and crm.finds == [CALLER]


async def test_a_click_to_call_pops_on_the_agents_page_once_answered(traces_dir: Path) -> None:
    callee = "+79031112233"
    crm = Directory({callee: [Contact("9", "contact", "Anna")]})
    pop = make_pop(crm)
    raw = (traces_dir / "14-outbound-click-to-call-originate.ami").read_bytes()
    updates = CallTracker().feed(parse_trace(raw))
    async with watching(pop, "101"):
        for update in updates[:-1]:  # all but CallFinished
            pop.on_update(update)
        await pop.idle()
    (call,) = pop.snapshot("101")["calls"]
    assert (call["direction"], call["caller"], call["state"]) == ("out", callee, "answered")
    assert call["lookup"]["contacts"][0]["name"] == "Anna"
    pop.on_update(updates[-1])
    assert pop.snapshot("101")["history"][0]["outcome"] == "answered"


async def test_odd_updates_do_not_break_the_pop() -> None:
    pop = make_pop(Directory())
    pop.on_update(Ringing("c1", None, CALLER, DID, "in", 1.0))  # type: ignore[arg-type]
    pop.on_update(Answered("c9", "101", 1.0))  # never started, never rang
    pop.on_update(CallFinished(None))  # type: ignore[arg-type]
    pop.on_update("not an update")
    pop.on_update(ringing("101"))
    await pop.idle()
    assert pop.snapshot("101")["calls"][0]["caller"] == CALLER


async def test_close_ends_every_open_feed() -> None:
    pop = make_pop(Directory())
    async with pop.subscribe("101") as feed:
        await feed.next(1)
        await pop.close()
        with pytest.raises(StopAsyncIteration):
            await feed.next(1)


# --- the CRM is asked only about calls someone watches --------------------------------------


async def test_no_crm_lookup_while_no_page_is_open_for_the_extension() -> None:
    crm = Directory({CALLER: [Contact("7", "contact", "Ivan")]})
    pop = make_pop(crm)
    pop.on_update(ringing("101"))
    await pop.idle()
    (call,) = pop.snapshot("101")["calls"]  # the pure snapshot does not look up either
    await pop.idle()
    assert crm.finds == []
    # not looked up, and says so; the search link is made without asking the CRM
    assert call["caller"] == CALLER
    assert call["lookup"]["state"] == "none" and call["lookup"]["contacts"] == []
    assert call["lookup"]["search_url"] == f"http://crm.test/search?phone={CALLER}"
    # the call ends unwatched: its history entry is not looked up when a page opens later
    pop.on_update(finished())
    async with pop.subscribe("101") as feed:
        snap = await feed.next(1)
        await pop.idle()
    assert crm.finds == []
    assert snap is not None and snap["calls"] == []
    assert snap["history"][0]["lookup"]["state"] == "none"
    assert snap["history"][0]["lookup"]["contacts"] == []
    await pop.close()


async def test_opening_the_page_mid_call_starts_the_lookup_for_its_current_calls() -> None:
    crm = Directory({CALLER: [Contact("7", "contact", "Ivan")]})
    pop = make_pop(crm)
    pop.on_update(ringing("101"))
    pop.on_update(Answered("c1", "101", 1002.0))
    await pop.idle()
    assert crm.finds == []
    crm.gate = asyncio.Event()  # hold the CRM's answer to see the pending state
    async with pop.subscribe("101") as feed:
        first = await feed.next(1)
        assert first is not None
        assert first["calls"][0]["lookup"]["state"] == "pending"
        crm.gate.set()
        snap = await feed.next(1)
        async with pop.subscribe("101"):  # a second tab: once per call, no new request
            await pop.idle()
    assert snap is not None
    (call,) = snap["calls"]
    assert call["state"] == "answered" and call["lookup"]["state"] == "done"
    assert [c["name"] for c in call["lookup"]["contacts"]] == ["Ivan"]
    assert crm.finds == [CALLER]
    await pop.close()


async def test_snapshot_request_looks_up_current_calls() -> None:
    crm = Directory({CALLER: [Contact("7", "contact", "Ivan")]})
    pop = make_pop(crm)
    pop.on_update(ringing("101"))
    pop.on_update(ringing("102", call_id="c2", caller="+79031112233"))
    asked = pop.watch("101")
    assert asked["calls"][0]["lookup"]["state"] == "pending"
    await pop.idle()
    assert pop.watch("101")["calls"][0]["lookup"]["contacts"][0]["name"] == "Ivan"
    assert crm.finds == [CALLER]  # once, and only for the extension asked about
    assert pop.snapshot("102")["calls"][0]["lookup"]["state"] == "none"
    assert pop.watch("999")["calls"] == []  # an extension that never rang: nothing to do
    await pop.close()


async def test_a_ring_group_is_looked_up_once_when_one_of_its_phones_is_watched() -> None:
    crm = Directory({CALLER: [Contact("7", "contact", "Ivan")]})
    pop = make_pop(crm)
    async with watching(pop, "102"):
        pop.on_update(ringing("101"))  # nobody watches 101: no lookup yet
        await pop.idle()
        assert crm.finds == []
        pop.on_update(ringing("102"))  # the same call on a watched phone: looked up
        pop.on_update(ringing("103"))
        await pop.idle()
    assert crm.finds == [CALLER]
    for ext in ("101", "102", "103"):  # one call, one lookup, shown wherever it rang
        assert pop.snapshot(ext)["calls"][0]["lookup"]["state"] == "done"
    await pop.close()


async def test_an_internal_call_is_not_looked_up_and_has_no_search_link() -> None:
    crm = Directory()
    pop = make_pop(crm)
    async with watching(pop, "101"):
        pop.on_update(ringing("101", caller=None))
        await pop.idle()
        lookup = pop.snapshot("101")["calls"][0]["lookup"]
    assert crm.finds == [] and lookup["state"] == "none" and lookup["search_url"] is None
    await pop.close()


# --- how many lookups at once --------------------------------------------------------------


def caller(i: int) -> str:
    return f"+7916{i:07d}"


async def test_thousands_of_calls_ringing_a_watched_extension_ask_the_crm_a_few_at_a_time() -> None:
    crm = Directory()
    crm.gate = asyncio.Event()
    pop = make_pop(crm, max_lookups=8, max_lookups_per_extension=3)
    for i in range(2000):
        pop.on_update(ringing("101", f"c{i}", caller(i)))
    snap = pop.watch("101")  # the JSON endpoint: asking counts as watching
    await asyncio.sleep(0.01)
    assert len(crm.finds) == 3
    states = [c["lookup"]["state"] for c in snap["calls"]]
    assert states.count("pending") == 3 and states.count("none") == 1997
    waiting = [c for c in snap["calls"] if c["lookup"]["state"] == "none"]
    assert all(c["lookup"]["search_url"] for c in waiting)  # shown with the search link
    pop.watch("101")  # asking again does not count the same calls twice
    assert pop.limits.hits["crm_lookups"] == 1997
    # another agent's calls are not held back by 101's flood
    pop.on_update(ringing("102", "d1", CALLER))
    pop.watch("102")
    await asyncio.sleep(0.01)
    assert len(crm.finds) == 4 and crm.finds[-1] == CALLER
    crm.gate.set()
    await pop.idle()
    await pop.close()


async def test_an_open_page_gets_the_waiting_lookups_as_running_ones_end() -> None:
    crm = Directory({caller(i): [Contact(str(i), "contact", f"N{i}", "")] for i in range(10)})
    pop = make_pop(crm, max_lookups=8, max_lookups_per_extension=2)
    async with pop.subscribe("101") as feed:
        for i in range(10):
            pop.on_update(ringing("101", f"c{i}", caller(i)))
        await pop.idle()
        snap = pop.snapshot("101")
        assert [c["lookup"]["state"] for c in snap["calls"]] == ["done"] * 10
        assert sorted(crm.finds) == sorted(caller(i) for i in range(10))
        assert feed is not None
    assert pop.limits.hits["crm_lookups"] == 8
    await pop.close()


async def test_many_calls_from_one_number_are_one_crm_request() -> None:
    crm = Directory()
    crm.gate = asyncio.Event()
    pop = make_pop(crm)
    async with watching(pop, "101", "102"):
        for i in range(500):
            pop.on_update(ringing("101" if i % 2 else "102", f"c{i}", CALLER))
        await asyncio.sleep(0.01)
        crm.gate.set()
        await pop.idle()
    assert crm.finds == [CALLER]
    await pop.close()
