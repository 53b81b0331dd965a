"""Every recorded real-Asterisk trace through the tracker must yield its manifest's calls."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pbxsim.rebase import id_span, rebase
from telephony.ami import AmiCodec, Message, parse_trace
from telephony.records import Answered, CallFinished, CallRecord, CallStarted, Ringing, Update
from telephony.rules import CallRules
from telephony.tracker import CallTracker
from tests.support import asterisk_versions as versions
from tests.support.pbx import TRACES

MANIFEST = json.loads((TRACES / "manifest.json").read_text(encoding="utf-8"))
ALL_SCENARIOS = {s["file"]: s for s in MANIFEST["scenarios"]}
# One AMI session each: the file alone yields the calls (29's link cut needs its 2nd session).
SCENARIOS = {k: s for k, s in ALL_SCENARIOS.items() if "session2_file" not in s}
DISPOSITIONS = {
    "ANSWERED": "answered",
    "NO ANSWER": "no-answer",
    "BUSY": "busy",
    "FAILED": "failed",
    "CONGESTION": "failed",
}
EXTENSION = CallRules().extension_re


def e164(number: str | None) -> str | None:
    return "+" + number if number else None


def party(number: str | None) -> str | None:
    """A manifest's transfer party: an extension as is, an outside number in E.164."""
    return number if number is None or EXTENSION.match(number) else e164(number)


def check_against_manifest(expected: dict[str, Any], got: dict[str, Any]) -> list[str]:
    """Differences between a manifest call and a record's JSON (empty when right)."""
    want = {
        "direction": expected["direction"],
        "external": e164(expected["external_number"]),
        "did": e164(expected["did"]),
        "answered": expected["answered"],
        "extension": expected["extension"],
        "disposition": DISPOSITIONS[expected["disposition"]],
    }
    if "answered_by" in expected and expected["direction"] == "in":
        want["extension"] = expected["answered_by"]
    for key in ("rang", "final_extension"):
        if key in expected:
            want[key] = expected[key]
    if "forwarded_to" in expected:
        want["forwarded_to"] = e164(expected["forwarded_to"])
    if "transfers" in expected:
        want["transfers"] = [
            {**t, "from": party(t["from"]), "to": party(t["to"])} for t in expected["transfers"]
        ]
    errors = [f"{k}: want {v!r}, got {got.get(k)!r}" for k, v in want.items() if got.get(k) != v]
    for key, events_key in (("ring_s", "ring_seconds_events"), ("talk_s", "talk_seconds_events")):
        if expected[events_key] is None:  # not measurable from the events (a link cut)
            continue
        if abs(got[key] - expected[events_key]) > 1.0:
            errors.append(f"{key}: want {expected[events_key]} +-1, got {got[key]}")
    return errors


def load(name: str) -> list[Message]:
    return parse_trace((TRACES / name).read_bytes())


def load_timed(name: str) -> list[tuple[Message, float]]:
    """A trace's messages with the time each arrived on the recorder's socket (its
    ``.timing.jsonl``: byte offset and wall clock of every read)."""
    data = (TRACES / name).read_bytes()
    timing = TRACES / name.replace(".ami", ".timing.jsonl")
    codec = AmiCodec()
    out: list[tuple[Message, float]] = []
    for line in timing.read_text().splitlines():
        read = json.loads(line)
        chunk = data[read["offset"] : read["offset"] + read["len"]]
        out += [(m, read["wallclock"]) for m in codec.feed(chunk) if "Event" in m]
    return out


def run(
    messages: list[Message], rules: CallRules | None = None
) -> tuple[CallTracker, list[Update]]:
    tracker = CallTracker(rules)
    updates: list[Update] = []
    for msg in messages:
        updates += tracker.handle(msg, 0.0)
    return tracker, updates


def records(updates: list[Update]) -> list[CallRecord]:
    return [u.record for u in updates if isinstance(u, CallFinished)]


def match_calls(scenario: dict[str, Any], recs: list[CallRecord]) -> None:
    by_id = {r.call_id: r for r in recs}
    calls = [c for c in scenario["calls"] if not c.get("only_in_cdr_csv")]
    assert sorted(by_id) == sorted(c["linkedid"] for c in calls)
    for call in calls:
        got = by_id[call["linkedid"]]
        errors = check_against_manifest(call, got.to_json())
        if "joined_with" in call:  # the other caller an agent put this one through to
            joined = [by_id[i].external for i in got.joined_with]
            if joined != [e164(call["joined_with"])]:
                errors.append(f"joined_with: want {call['joined_with']}, got {joined}")
        assert not errors, f"{scenario['file']} {call['linkedid']}: {errors}"


def run_timed(name: str, rules: CallRules | None = None) -> tuple[CallTracker, list[Update]]:
    """A trace through the tracker, each message at the time it arrived when the recording
    says (its .timing.jsonl), else at 0 (its Timestamps carry the times)."""
    if not (TRACES / name.replace(".ami", ".timing.jsonl")).is_file():
        return run(load(name), rules)
    tracker = CallTracker(rules)
    updates: list[Update] = []
    for msg, arrived in load_timed(name):
        updates += tracker.handle(msg, arrived)
    return tracker, updates


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_trace_yields_the_manifest_calls(name: str) -> None:
    tracker, updates = run_timed(name)
    match_calls(SCENARIOS[name], records(updates))
    assert tracker.active_count == 0


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_tracker_state_is_empty_once_every_call_finished(name: str) -> None:
    tracker, _ = run(load(name))
    assert tracker._calls == {}
    assert tracker._by_linkedid == {}
    assert tracker._channels == {}
    assert tracker._bridges == {}
    assert tracker._local_ones == {}


STAMPED = sorted(
    name for name, s in SCENARIOS.items() if "no_timestamp" not in s.get("transform", ())
)


@pytest.mark.parametrize("name", STAMPED)
def test_rebased_trace_yields_the_same_calls_moved_in_time(name: str) -> None:
    msgs = load(name)
    shift = 3 * 86400 + 0.25
    moved_msgs = rebase(msgs, time_offset=shift, id_offset=id_span(msgs))
    (_, plain), (_, moved) = run(msgs), run(moved_msgs)
    a, b = records(plain), records(moved)
    assert len(a) == len(b) == SCENARIOS[name]["n_calls"]
    for x, y in zip(a, b, strict=True):
        assert y.call_id != x.call_id
        assert y.started_at == pytest.approx(x.started_at + shift)
        assert (y.ring_s, y.talk_s, y.rang, y.extension, y.disposition) == (
            x.ring_s,
            x.talk_s,
            x.rang,
            x.extension,
            x.disposition,
        )


def test_updates_for_a_ring_group_come_in_call_order() -> None:
    _, updates = run(load("06-inbound-ringgroup-102-answers.ami"))
    kinds = [(type(u).__name__, getattr(u, "extension", None)) for u in updates]
    assert kinds == [
        ("CallStarted", None),
        ("Ringing", "101"),
        ("Ringing", "102"),
        ("Answered", "102"),
        ("CallFinished", None),
    ]
    started, ringing = updates[0], updates[1]
    assert isinstance(started, CallStarted) and isinstance(ringing, Ringing)
    assert (ringing.external, ringing.did, ringing.direction) == (
        "+79161234567",
        "+74951234567",
        "in",
    )


def test_queue_answer_is_the_agent_not_the_pbx_answering_the_trunk() -> None:
    _, updates = run(load("07-inbound-queue-102-answers.ami"))
    (answered,) = [u for u in updates if isinstance(u, Answered)]
    (rec,) = records(updates)
    assert answered.extension == "102"
    assert rec.answered_at == answered.at
    assert rec.ring_s == pytest.approx(4.52, abs=0.05)


def test_click_to_call_rings_the_agent_without_a_screen_pop_and_starts_at_the_outside_dial() -> (
    None
):
    _, updates = run(load("14-outbound-click-to-call-originate.ami"))
    assert not [u for u in updates if isinstance(u, Ringing)]
    (rec,) = records(updates)
    assert (rec.direction, rec.extension, rec.external) == ("out", "101", "+79031112233")
    assert rec.rang == ()
    assert rec.ring_s == pytest.approx(2.01, abs=0.05)


def test_overlapping_calls_finish_in_the_order_they_end() -> None:
    _, updates = run(load("12-inbound-overlapping-three-calls.ami"))
    assert [r.call_id for r in records(updates)] == [
        "1795727934.34",
        "1795727935.36",
        "1795727933.32",
    ]


def test_blind_and_attended_transfers_are_recorded_with_their_kind() -> None:
    (blind,) = records(run(load("10-inbound-blind-transfer-101-to-102.ami"))[1])
    (attended,) = records(run(load("11-inbound-attended-transfer-101-to-102.ami"))[1])
    assert [t.to_json() for t in blind.transfers] == [{"from": "101", "to": "102", "kind": "blind"}]
    assert [t.to_json() for t in attended.transfers] == [
        {"from": "101", "to": "102", "kind": "attended"}
    ]


def test_direction_comes_from_the_rules_not_from_names() -> None:
    msgs = load("01-inbound-answered-caller-hangup.ami")
    # The same trunk, but rules that know neither its name nor its context.
    rules = CallRules(inbound_contexts=(), trunk_channel_pattern=r"^IAX2/")
    (rec,) = records(run(msgs, rules)[1])
    assert rec.direction != "in"
    # Rules that know it only by context still see it as inbound.
    rules = CallRules(inbound_contexts=("from-trunk",), trunk_channel_pattern=r"^IAX2/")
    (rec,) = records(run(msgs, rules)[1])
    assert (rec.direction, rec.extension) == ("in", "101")


def test_times_come_from_arrival_when_the_pbx_sends_no_timestamp() -> None:
    msgs = [
        {k: v for k, v in m.items() if k != "Timestamp"}
        for m in load("01-inbound-answered-caller-hangup.ami")
    ]
    tracker = CallTracker()
    out: list[Update] = []
    for i, msg in enumerate(msgs):
        out += tracker.handle(msg, 1000.0 + i * 0.01)
    (rec,) = records(out)
    assert rec.started_at >= 1000.0
    assert rec.ended_at > rec.answered_at > rec.started_at  # type: ignore[operator]


def test_a_link_cut_reports_every_call_seen_on_ami_once_flagged_by_what_was_missed() -> None:
    # 29: the AMI link is cut for 7 s; session 2 starts with the CoreShowChannels answer the
    # listener asks for, handed to reconcile() the moment it is complete. Arrival times are
    # the recorder's own, as the listener would have them.
    scenario = ALL_SCENARIOS["29-inbound-ami-link-cut-7s.ami"]
    tracker = CallTracker()
    recs: list[CallRecord] = []
    for msg, arrived in load_timed(scenario["file"]):
        recs += records(tracker.handle(msg, arrived))
    second = load_timed(scenario["session2_file"])
    done = next(
        i for i, (m, _) in enumerate(second) if m.get("Event") == "CoreShowChannelsComplete"
    )
    shown = [m for m, _ in second[:done] if m.get("Event") == "CoreShowChannel"]
    gap = json.loads((TRACES / scenario["file"].replace(".ami", ".gap.json")).read_text())
    # ``since``: the link's last sign of life, as the listener tells it
    recs += records(tracker.reconcile(shown, second[done][1], gap["session1_closed_wallclock"]))
    for msg, arrived in second[done + 1 :]:
        recs += records(tracker.handle(msg, arrived))
    by_id = {r.call_id: r for r in recs}
    flags = {
        c["linkedid"]: by_id[c["linkedid"]].flags
        for c in scenario["calls"]
        if not c.get("only_in_cdr_csv")
    }
    assert flags == {
        "1796475312.288": (),  # spans the gap: its end came in session 2
        "1796475313.290": ("reconciled", "gap"),  # ended in the gap
        "1796475318.294": ("adopted",),  # started in the gap: first seen in the snapshot
        "1796475324.296": (),  # after the reconnect
    }
    ended_in_gap = by_id["1796475313.290"]  # closed when the snapshot showed it gone
    # issue 15: not at the reconnect (talk 8.8 s, true 3 s), at the link's last sign of life
    assert ended_in_gap.ended_at == pytest.approx(gap["session1_closed_wallclock"], abs=0.5)
    assert ended_in_gap.talk_s < 3.0
    adopted = by_id["1796475318.294"]  # started ~1 s before the snapshot (to the second)
    assert adopted.started_at == pytest.approx(gap["session2_connected_wallclock"] - 4, abs=1.5)
    # CoreShowChannel carries no DID: the listener asks the PBX for it (test_listener).
    assert adopted.did is None
    expected = {
        **scenario,
        "calls": [
            {**c, "did": None} if c["linkedid"] == adopted.call_id else c for c in scenario["calls"]
        ],
    }
    match_calls(expected, recs)
    assert tracker.active_count == 0


CHANSIP = sorted(name for name, s in SCENARIOS.items() if "chan_sip" in s["pbx"])
SIP_ACCOUNTS = {f"15001000{n}": f"20{n}" for n in range(1, 6)}


def hosted(messages: list[Message]) -> list[Message]:
    """The chan_sip recording as a hosted PBX would send it: its phones live in a customer
    context of their own (not in internal_contexts), so only [calls] phones says that
    SIP/150010001-... is extension 201."""
    return [
        {
            k: ("cust42-phones" if v == "from-internal" and k.endswith("Context") else v)
            for k, v in m.items()
        }
        for m in messages
    ]


@pytest.mark.parametrize("name", CHANSIP)
def test_account_named_phones_in_a_hosted_context_come_out_right_with_the_phones_table(
    name: str,
) -> None:
    tracker = CallTracker(CallRules(phones=SIP_ACCOUNTS))
    timed = load_timed(name)
    updates: list[Update] = []
    for msg, (_, arrived) in zip(hosted([m for m, _ in timed]), timed, strict=True):
        updates += tracker.handle(msg, arrived)
    match_calls(SCENARIOS[name], records(updates))
    assert tracker.active_count == 0


# --- other Asterisk versions and AMI setups (tests/support/asterisk_versions.py) ------------

SYNTHETIC = sorted(name for name, s in SCENARIOS.items() if s.get("synthetic"))


@pytest.mark.parametrize("name", SYNTHETIC)
def test_a_derived_trace_is_what_its_documented_transform_makes_of_its_recording(
    name: str, tmp_path: Path
) -> None:
    scenario = SCENARIOS[name]
    steps = tuple(getattr(versions, step) for step in scenario["transform"])
    for kind in (".timing.jsonl", ".ami"):
        (tmp_path / scenario["derived_from"].replace(".ami", kind)).write_bytes(
            (TRACES / scenario["derived_from"].replace(".ami", kind)).read_bytes()
        )
    made = versions.derive(tmp_path, scenario["derived_from"], name, steps)
    assert made == (TRACES / name).read_bytes()
    assert scenario["why"] and scenario["pbx"]


def test_asterisk_13_blonde_transfer_without_target_headers_names_the_ringing_target() -> None:
    (rec,) = records(run_timed("61-sip13-inbound-blonde-transfer-no-target.ami")[1])
    assert [t.to_json() for t in rec.transfers] == [
        {"from": "201", "to": "202", "kind": "attended"}
    ]
    assert rec.flags == ()


def test_asterisk_13_0_without_linkedid_groups_the_legs_by_who_dialled_them() -> None:
    name = "64-sip13.4-inbound-ringgroup-no-linkedid.ami"
    assert "Linkedid" not in (TRACES / name).read_text()
    (rec,) = records(run_timed(name)[1])
    assert (rec.extension, rec.rang, rec.answered) == ("202", ("201", "202"), True)


def test_a_pbx_without_timestamps_times_its_calls_by_their_arrival() -> None:
    name = "65-sip-inbound-blind-transfer-no-timestamp.ami"
    assert "Timestamp" not in (TRACES / name).read_text()
    tracker, updates = run_timed(name)
    ((rec,), (stamped,)) = records(updates), records(run_timed(SCENARIOS[name]["derived_from"])[1])
    assert tracker.clock_offset is None
    assert rec.ring_s == pytest.approx(stamped.ring_s, abs=0.05)
    assert rec.talk_s == pytest.approx(stamped.talk_s, abs=0.05)


def test_an_ami_user_without_the_dialplan_and_agent_classes_still_sees_who_answered() -> None:
    name = "66-sip-inbound-queue-call-class-only.ami"
    assert "AgentConnect" not in (TRACES / name).read_text()
    (rec,) = records(run_timed(name)[1])
    assert (rec.extension, rec.did, rec.ring_s) == (
        "202",
        "+74951234569",
        pytest.approx(4.52, abs=0.05),
    )
