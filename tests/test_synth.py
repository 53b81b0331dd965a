"""pbxsim.synth: a reproducible, realistic mix of calls made from recorded ones."""

from __future__ import annotations

import itertools
from collections import Counter

import pytest

from pbxsim import traces_dir
from pbxsim.synth import (
    DEFAULT_BASE_TIME,
    TRACKING_NUMBERS,
    _numbers_of,
    generate,
    load_templates,
    plan,
)
from telephony.records import CallFinished, CallRecord
from telephony.tracker import CallTracker


def records_of(stream: list[tuple[float, dict[str, str]]]) -> dict[str, CallRecord]:
    tracker = CallTracker()
    out: dict[str, CallRecord] = {}
    for when, msg in stream:
        for update in tracker.handle(msg, when):
            if isinstance(update, CallFinished):
                out[update.record.call_id] = update.record
    assert tracker.active_count == 0
    return out


def test_templates_are_traces_shipped_inside_the_package() -> None:
    shipped = {p.name for p in traces_dir().iterdir()}
    templates = load_templates()
    assert {t.name for t in templates} <= shipped
    assert len(templates) >= 9


def test_same_seed_same_stream_other_seed_other_stream() -> None:
    a = list(itertools.islice(generate(40, 2.0, seed=5), 2000))
    b = list(itertools.islice(generate(40, 2.0, seed=5), 2000))
    c = list(itertools.islice(generate(40, 2.0, seed=6), 2000))
    assert a == b
    assert a != c
    assert plan(40, 2.0, seed=5) == plan(40, 2.0, seed=5)


def test_stream_is_in_time_order_with_timestamps_matching_send_times() -> None:
    stream = list(generate(30, 3.0, seed=1, base_time=DEFAULT_BASE_TIME))
    times = [t for t, _ in stream]
    assert times == sorted(times)
    for when, msg in stream[:: max(1, len(stream) // 200)]:
        assert float(msg["Timestamp"]) == pytest.approx(DEFAULT_BASE_TIME + when, abs=1e-5)


def test_only_call_events_no_login_banner_per_call() -> None:
    events = Counter(m.get("Event") for _, m in generate(30, 3.0, seed=2))
    assert None not in events  # no Response blocks
    assert not {"FullyBooted", "SuccessfulAuth"} & set(events)
    assert events["Newchannel"] >= 60
    # A realistic stream: VarSet and Newexten are most of it.
    assert (events["VarSet"] + events["Newexten"]) / sum(events.values()) > 0.5


def test_mix_has_every_kind_of_call_on_several_tracking_numbers() -> None:
    calls = plan(300, 5.0, seed=3)
    kinds = Counter(c.template.split("-", 1)[1].rsplit(".", 1)[0] for c in calls)
    for kind in (
        "inbound-answered-caller-hangup",
        "inbound-missed-caller-abandons",
        "inbound-busy",
        "inbound-ringgroup-102-answers",
        "inbound-queue-102-answers",
        "outbound-answered",
        "outbound-click-to-call-originate",
        "inbound-blind-transfer-101-to-102",
        "inbound-attended-transfer-101-to-102",
    ):
        assert kinds[kind] > 0, kind
    dids = {c.facts["did"] for c in calls if c.facts["direction"] == "in"}
    assert dids == {"+" + n for n in TRACKING_NUMBERS}
    externals = [c.facts["external"] for c in calls]
    recorded = {"+" + n for t in load_templates() for n in _numbers_of(t)}
    assert not recorded & set(externals)  # fresh caller numbers, not the recorded ones
    repeats = len(externals) - len(set(externals))
    assert 0.1 * len(calls) < repeats < 0.3 * len(calls)  # regulars call again (REPEAT_SHARE)


def test_every_planned_call_comes_out_as_planned_while_calls_overlap() -> None:
    n, rate, seed = 150, 4.0, 11
    calls = plan(n, rate, seed)
    stream = list(generate(n, rate, seed))
    records = records_of(stream)
    assert len({c.call_id for c in calls}) == n
    assert set(records) == {c.call_id for c in calls}
    overlapping = 0
    for call in calls:
        rec = records[call.call_id].to_json()
        for key in (
            "direction",
            "external",
            "did",
            "answered",
            "extension",
            "disposition",
            "rang",
            "final_extension",
        ):
            if key in call.facts:
                assert rec[key] == call.facts[key], (call.template, key)
        assert abs(rec["ring_s"] - call.facts["ring_s"]) <= 1.0
        assert abs(rec["talk_s"] - call.facts["talk_s"]) <= 1.0
        overlapping += any(o is not call and o.start <= call.start < o.start + 15 for o in calls)
    assert overlapping > n // 2


def test_no_two_calls_share_a_unique_id_or_a_channel_name() -> None:
    created = [m for _, m in generate(60, 10.0, seed=4) if m.get("Event") == "Newchannel"]
    assert len(created) > 120
    assert len({m["Uniqueid"] for m in created}) == len(created)
    assert len({m["Channel"] for m in created}) == len(created)


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError):
        plan(5, 0.0, seed=1)
