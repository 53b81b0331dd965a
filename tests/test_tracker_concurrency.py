"""Many calls at once must come out exactly as each does alone (property test)."""

from __future__ import annotations

import random
from functools import cache

from hypothesis import given, settings
from hypothesis import strategies as st

from pbxsim.rebase import id_bounds, rebase
from telephony.ami import Message
from telephony.records import CallFinished, CallRecord
from telephony.tracker import CallTracker
from tests.test_tracker_traces import SCENARIOS, load

# The recordings of one to three calls (not the 50-call burst: it would only be slow).
NAMES = sorted(name for name, s in SCENARIOS.items() if s["n_calls"] <= 3)


@cache
def trace(name: str) -> tuple[Message, ...]:
    return tuple(load(name))


def finished(messages: list[Message]) -> dict[str, CallRecord]:
    tracker = CallTracker()
    out: dict[str, CallRecord] = {}
    for msg in messages:
        for update in tracker.handle(msg, 0.0):
            if isinstance(update, CallFinished):
                assert update.record.call_id not in out, "a call reported twice"
                out[update.record.call_id] = update.record
    assert tracker.active_count == 0
    return out


@settings(max_examples=40, deadline=None)
@given(
    calls=st.lists(
        st.tuples(st.sampled_from(NAMES), st.floats(min_value=0, max_value=30)),
        min_size=2,
        max_size=10,
    ),
    shuffle=st.randoms(use_true_random=False),
)
def test_interleaved_calls_yield_the_records_each_yields_alone(
    calls: list[tuple[str, float]], shuffle: random.Random
) -> None:
    copies: list[list[Message]] = []
    next_id = 0
    for name, start in calls:
        low, high = id_bounds(trace(name))
        copies.append(rebase(trace(name), time_offset=start, id_offset=next_id - low))
        next_id += high - low + 1
    alone: dict[str, CallRecord] = {}
    for copy in copies:
        alone.update(finished(copy))
    # Any interleaving that keeps each call's own order (a PBX never reorders one call).
    cursors = [0] * len(copies)
    lanes = [i for i, copy in enumerate(copies) for _ in copy]
    shuffle.shuffle(lanes)
    mixed: list[Message] = []
    for lane in lanes:
        mixed.append(copies[lane][cursors[lane]])
        cursors[lane] += 1
    together = finished(mixed)
    assert together == alone
