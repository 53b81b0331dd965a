"""A realistic, reproducible stream of calls made from recorded ones.

The PBX simulator, the tests and the benchmarks need many calls at once: inbound on
several tracking numbers, missed, busy, ring groups, a queue, outbound, click-to-call,
transfers. Rather than inventing AMI, each call is a real recording (the traces
``traces/templates.json`` names) rebased to fresh ids, times and phone numbers
(``pbxsim.rebase``), and the calls are interleaved by time as a busy PBX would send
them. The same ``seed`` always gives the same stream, and ``plan`` says what each call
must come out as (the facts the recording's manifest states, with the new numbers).
"""

from __future__ import annotations

import contextlib
import heapq
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from pbxsim import traces_dir
from pbxsim.rebase import Rebaser, id_bounds, rebase
from telephony.ami import Message, parse_trace

__all__ = [
    "TRACKING_NUMBERS",
    "PlannedCall",
    "Template",
    "generate",
    "load_templates",
    "plan",
    "stream",
]

# The DIDs inbound calls arrive on: each stands for an ad source in the CRM.
TRACKING_NUMBERS = ("74951234567", "74951234568", "74951234569", "74997001122", "78122003344")
REPEAT_SHARE = 0.2  # calls from a number that called before: find hits, no new contact
DEFAULT_BASE_TIME = 1_900_000_000.0  # 2030-03-17: far from the recordings' own times
_NOT_CALL_PRIVILEGES = ("security", "system")


@dataclass(frozen=True, slots=True)
class Template:
    """One recorded call: its events (no login banner) and what it must yield."""

    name: str
    messages: tuple[Message, ...]
    rebaser: Rebaser = field(repr=False, compare=False)
    offsets: tuple[float, ...]  # seconds from the call's first event, per message
    t0: float  # the first event's Timestamp
    id_low: int
    id_high: int
    weight: int
    facts: dict[str, Any]


@dataclass(frozen=True, slots=True)
class PlannedCall:
    """One call of a generated mix: when it starts and what the tracker must report."""

    index: int
    template: str
    start: float  # seconds from the start of the stream
    time_offset: float
    id_offset: int
    number_map: dict[str, str] = field(hash=False)
    facts: dict[str, Any] = field(hash=False)  # call_id, direction, external, did, ...

    @property
    def call_id(self) -> str:
        return str(self.facts["call_id"])


@cache
def load_templates() -> tuple[Template, ...]:
    """The shipped traces' ``templates.json`` names the templates, their weights and
    facts; each ``.ami`` file it names is one recorded call."""
    base = traces_dir()
    index = json.loads((base / "templates.json").read_text(encoding="utf-8"))
    out: list[Template] = []
    for entry in index["templates"]:
        messages = tuple(
            m for m in parse_trace((base / entry["file"]).read_bytes()) if _is_call_event(m)
        )
        if not messages:
            continue
        times: list[float] = []
        last: float | None = None
        for msg in messages:
            with contextlib.suppress(KeyError, ValueError):
                last = float(msg["Timestamp"])
            times.append(last if last is not None else 0.0)
        t0 = next((t for t in times if t), 0.0)
        low, high = id_bounds(messages)
        out.append(
            Template(
                name=entry["file"],
                messages=messages,
                rebaser=Rebaser(messages),
                offsets=tuple(max(0.0, t - t0) for t in times),
                t0=t0,
                id_low=low,
                id_high=high,
                weight=int(entry.get("weight", 1)),
                facts=dict(entry["call"]),
            )
        )
    return tuple(out)


def _is_call_event(msg: Message) -> bool:
    if "Event" not in msg:
        return False  # a Response to the recorder's own login
    return not msg.get("Privilege", "").startswith(_NOT_CALL_PRIVILEGES)


def plan(
    n_calls: int,
    rate_per_s: float,
    seed: int,
    *,
    base_time: float = DEFAULT_BASE_TIME,
    first_id: int = 1000,
    repeat_share: float = REPEAT_SHARE,
) -> list[PlannedCall]:
    """Which template each call uses, when it starts (Poisson arrivals at ``rate_per_s``),
    its new ids and numbers, and the facts the tracker must report for it."""
    templates = load_templates()
    if not templates:
        raise ValueError(f"no call templates in {traces_dir()}")
    if rate_per_s <= 0:
        raise ValueError("rate_per_s must be positive")
    rng = random.Random(seed)
    weights = [t.weight for t in templates]
    taken = {n for t in templates for n in _numbers_of(t)}
    calls: list[PlannedCall] = []
    callers: list[str] = []
    start = 0.0
    next_id = first_id
    for index in range(n_calls):
        if index:
            start += rng.expovariate(rate_per_s)
        tpl = rng.choices(templates, weights)[0]
        number_map: dict[str, str] = {}
        facts = dict(tpl.facts)
        if callers and rng.random() < repeat_share:
            caller = rng.choice(callers)  # a regular calling again (a CRM contact by now)
        else:
            caller = _fresh_mobile(rng, taken)
            callers.append(caller)
        if facts.get("external_number"):
            number_map[facts["external_number"]] = caller
        if facts.get("did"):
            number_map[facts["did"]] = rng.choice(TRACKING_NUMBERS)
        id_offset = next_id - tpl.id_low
        next_id += tpl.id_high - tpl.id_low + 1
        time_offset = base_time + start - tpl.t0
        call_id = rebase(
            [{"Linkedid": facts.pop("linkedid")}], time_offset=time_offset, id_offset=id_offset
        )[0]["Linkedid"]
        ext = number_map.get(facts.pop("external_number") or "")
        did = facts.get("did")
        facts.update(
            call_id=call_id,
            external="+" + ext if ext else None,
            did="+" + number_map[did] if did else None,
        )
        calls.append(PlannedCall(index, tpl.name, start, time_offset, id_offset, number_map, facts))
    return calls


def generate(
    n_calls: int,
    rate_per_s: float,
    seed: int,
    *,
    base_time: float = DEFAULT_BASE_TIME,
    first_id: int = 1000,
) -> Iterator[tuple[float, Message]]:
    """``(send time, message)`` for a mix of ``n_calls`` calls, in time order.

    Send times are seconds from the start of the stream; each message's ``Timestamp`` is
    ``base_time`` plus its send time. Calls are rebased one at a time as they start, so a
    long stream costs little memory. ``plan`` with the same arguments lists the calls.
    """
    calls = plan(n_calls, rate_per_s, seed, base_time=base_time, first_id=first_id)
    return stream(calls)


def stream(calls: list[PlannedCall]) -> Iterator[tuple[float, Message]]:
    """``(send time, message)`` for calls already planned (``plan``), in time order: what
    ``generate`` gives, for a caller that needs the plan too without planning twice."""
    return _interleave(calls, {t.name: t for t in load_templates()})


def _interleave(
    calls: list[PlannedCall], templates: dict[str, Template]
) -> Iterator[tuple[float, Message]]:
    heap: list[tuple[float, int, int, Message]] = []
    pending = iter(calls)
    upcoming = next(pending, None)
    while heap or upcoming is not None:
        # Start every call due before the earliest queued message.
        while upcoming is not None and (not heap or upcoming.start <= heap[0][0]):
            tpl = templates[upcoming.template]
            msgs = tpl.rebaser.apply(
                time_offset=upcoming.time_offset,
                id_offset=upcoming.id_offset,
                number_map=upcoming.number_map,
            )
            for seq, (offset, msg) in enumerate(zip(tpl.offsets, msgs, strict=True)):
                heapq.heappush(heap, (upcoming.start + offset, upcoming.index, seq, msg))
            upcoming = next(pending, None)
        when, _, _, msg = heapq.heappop(heap)
        yield when, msg


def _numbers_of(tpl: Template) -> list[str]:
    return [n for n in (tpl.facts.get("external_number"), tpl.facts.get("did")) if n]


def _fresh_mobile(rng: random.Random, taken: set[str]) -> str:
    """A Russian mobile number (79XXXXXXXXX) no template uses."""
    while True:
        number = f"79{rng.randrange(10**9):09d}"
        if number not in taken:
            return number
