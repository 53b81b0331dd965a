"""Calls that do not end the normal way: stale calls, a link lost and restored, a restarted
listener; and the tracker's memory, which must not grow with the calls it has seen."""

from __future__ import annotations

import gc
import tracemalloc

import pytest

from pbxsim.rebase import id_span, rebase
from telephony.ami import AmiCodec, Message, encode
from telephony.pbxclock import PbxClock
from telephony.records import CallFinished, CallRecord, CallRefused, CallStarted
from telephony.rules import CallRules
from telephony.tracker import CallTracker
from tests.test_tracker_behaviours import CALLER, DID, Chan, Pbx
from tests.test_tracker_traces import load


def show_channel(ch: Chan, duration_s: int, bridge: str = "") -> Message:
    """A CoreShowChannel event (the answer to CoreShowChannels) for a live channel."""
    h, rest = divmod(duration_s, 3600)
    return {
        "Event": "CoreShowChannel",
        "ActionID": "reconcile-1",
        **Pbx.snap(ch),
        "BridgeId": bridge,
        "Application": "Dial",
        "ApplicationData": "",
        "Duration": f"{h:02d}:{rest // 60:02d}:{rest % 60:02d}",
    }


def answered_call(pbx: Pbx) -> tuple[Chan, Chan, str]:
    trunk = pbx.trunk_call(CALLER, DID)
    p101 = pbx.phone("101", trunk)
    pbx.dial(trunk, p101, "101")
    pbx.ring(trunk, p101)
    pbx.wait(2)
    pbx.answer(trunk, p101)
    return trunk, p101, pbx.bridge(p101, trunk)


def test_a_call_with_no_hangup_is_closed_as_stale_after_the_maximum_age() -> None:
    pbx = Pbx(CallTracker(CallRules(max_call_age_s=3600)))
    trunk, p101, bridge = answered_call(pbx)
    start = pbx.t
    assert pbx.tracker.expire(start + 3000) == []
    (finished,) = [u for u in pbx.tracker.expire(start + 3700) if isinstance(u, CallFinished)]
    rec = finished.record
    assert rec.flags == ("stale",)
    assert (rec.answered, rec.extension, rec.ended_at) == (True, "101", start + 3700)
    assert pbx.tracker.active_count == 0 and pbx.tracker._channels == {}
    # The late hangups, if they ever come, do not report the call a second time.
    assert pbx.hangup(trunk, bridge=bridge) == [] and pbx.hangup(p101, bridge=bridge) == []


def test_call_that_ended_while_the_link_was_down_is_reported_once_as_reconciled() -> None:
    pbx = Pbx()
    answered_call(pbx)
    now = pbx.t + 60
    (finished,) = [u for u in pbx.tracker.reconcile([], now) if isinstance(u, CallFinished)]
    rec = finished.record
    assert (rec.flags, rec.ended_at, rec.answered, rec.extension) == (
        ("reconciled", "gap"),
        now,
        True,
        "101",
    )
    assert pbx.tracker.reconcile([], now + 60) == []
    assert pbx.tracker.active_count == 0 and pbx.tracker._bridges == {}


def test_a_call_that_ended_in_a_gap_ends_when_the_link_was_last_up_not_at_the_reconnect() -> None:
    """Issue 15: calls that ended in a 7 s outage got talk 13 s (true 4 and 6): their end
    was the reconnect. It is the last moment the bridge knew them up, flagged "gap"."""
    pbx = Pbx()
    answered_call(pbx)
    answered = pbx.t
    pbx.wait(4)
    lost = pbx.t  # the link's last message; the call ends somewhere in the next 7 s
    (finished,) = [
        u for u in pbx.tracker.reconcile([], lost + 7, since=lost) if isinstance(u, CallFinished)
    ]
    rec = finished.record
    assert rec.ended_at == lost and rec.talk_s == pytest.approx(lost - answered)
    assert rec.flags == ("reconciled", "gap")
    assert rec.to_json()["flags"] == ["reconciled", "gap"]


def test_an_answer_made_while_the_link_was_down_flags_the_call_gap() -> None:
    pbx = Pbx()
    trunk = pbx.trunk_call(CALLER, DID)
    p101 = pbx.phone("101", trunk)
    pbx.dial(trunk, p101, "101")
    pbx.ring(trunk, p101)
    p101.state = trunk.state = "6"  # answered while we were away
    bridge = "5e1c0d1e-0000-4000-8000-000000000002"
    snapshot = [show_channel(trunk, 6, bridge), show_channel(p101, 6, bridge)]
    pbx.tracker.reconcile(snapshot, pbx.t + 6, since=pbx.t + 1)
    pbx.wait(20)
    pbx.hangup(trunk, bridge=bridge)
    pbx.hangup(p101, bridge=bridge)
    rec = pbx.record()
    assert rec.answered and rec.flags == ("gap",)  # talk counts from the reconnect: a bound


def test_call_still_up_after_a_reconnect_goes_on_and_ends_normally() -> None:
    pbx = Pbx()
    trunk, p101, bridge = answered_call(pbx)
    pbx.wait(10)
    snapshot = [show_channel(trunk, 12, bridge), show_channel(p101, 12, bridge)]
    assert pbx.tracker.reconcile(snapshot, pbx.t) == []
    pbx.wait(5)
    pbx.hangup(trunk, bridge=bridge)
    pbx.hangup(p101, bridge=bridge)
    rec = pbx.record()
    assert (rec.flags, rec.extension, rec.talk_s) == ((), "101", pytest.approx(15.0))


def test_legs_gone_during_the_outage_are_dropped_and_an_answer_missed_is_caught_up() -> None:
    pbx = Pbx()
    trunk = pbx.trunk_call(CALLER, DID)
    p101, p102 = pbx.phone("101", trunk), pbx.phone("102", trunk)
    for p in (p101, p102):
        pbx.dial(trunk, p, p.cid)
        pbx.ring(trunk, p)
    pbx.wait(4)
    # Link down: 102 answered and 101 stopped ringing; we saw neither.
    p102.state = trunk.state = "6"
    bridge = "5e1c0d1e-0000-4000-8000-000000000001"
    snapshot = [show_channel(trunk, 6, bridge), show_channel(p102, 6, bridge)]
    updates = pbx.tracker.reconcile(snapshot, pbx.t + 2)
    assert [type(u).__name__ for u in updates] == ["Answered"]
    assert pbx.tracker._channels.keys() == {trunk.uid, p102.uid}
    pbx.wait(30)
    pbx.hangup(trunk)
    pbx.hangup(p102)
    rec = pbx.record()
    assert (rec.answered, rec.extension, rec.rang) == (True, "102", ("101", "102"))
    assert rec.final_extension == "102"
    assert rec.ring_s == pytest.approx(6.0)


def test_live_call_unknown_to_a_restarted_listener_is_adopted_and_reported_at_its_end() -> None:
    old = Pbx()
    trunk, p101, bridge = answered_call(old)
    old.wait(40)
    fresh = Pbx(t0=old.t)  # a new tracker: the listener restarted mid-call
    snapshot = [show_channel(p101, 40, bridge), show_channel(trunk, 42, bridge)]
    updates = fresh.tracker.reconcile(snapshot, fresh.t)
    assert [type(u) for u in updates if isinstance(u, CallStarted)] == [CallStarted]
    assert fresh.tracker.active_count == 1
    fresh.wait(8)
    fresh.hangup(trunk, bridge=bridge)
    fresh.hangup(p101, bridge=bridge)
    rec = fresh.record()
    assert rec.call_id == trunk.linkedid
    assert (rec.direction, rec.external, rec.answered, rec.extension) == (
        "in",
        "+" + CALLER,
        True,
        "101",
    )
    assert rec.flags == ("adopted", "ring-unknown")
    assert rec.ended_at - rec.started_at == pytest.approx(50.0)  # its start: from Duration
    assert fresh.tracker.active_count == 0


def test_a_call_found_answered_after_a_restart_has_an_unknown_ring_not_zero() -> None:
    """Issue 15: 19 of 21 calls up across a restart got ring 0 s (true 1 s)."""
    old = Pbx()
    trunk, p101, bridge = answered_call(old)
    old.wait(10)
    fresh = Pbx(t0=old.t)
    fresh.tracker.reconcile(
        [show_channel(p101, 10, bridge), show_channel(trunk, 12, bridge)], fresh.t
    )
    fresh.wait(3)
    fresh.hangup(trunk, bridge=bridge)
    fresh.hangup(p101, bridge=bridge)
    rec = fresh.record()
    assert rec.ring_s is None and rec.to_json()["ring_s"] is None
    assert rec.started_at == pytest.approx(fresh.t - 15)  # now - the trunk's Duration
    assert rec.answered_at == pytest.approx(fresh.t - 13)  # at the earliest: 101's leg began
    assert rec.talk_s == pytest.approx(13.0)  # so talk is at most that
    assert CallRecord.from_json(rec.to_json()).ring_s is None  # through the queue and back


def test_a_call_found_ringing_after_a_restart_and_answered_later_has_its_ring() -> None:
    old = Pbx()
    trunk = old.trunk_call(CALLER, DID)
    p101 = old.phone("101", trunk)
    old.dial(trunk, p101, "101")
    old.ring(trunk, p101)
    old.wait(2)
    fresh = Pbx(t0=old.t)
    fresh.tracker.reconcile([show_channel(trunk, 2), show_channel(p101, 2)], fresh.t)
    fresh.wait(3)
    fresh.answer(trunk, p101)
    bridge = fresh.bridge(p101, trunk)
    fresh.wait(4)
    fresh.hangup(trunk, bridge=bridge)
    fresh.hangup(p101, bridge=bridge)
    rec = fresh.record()
    assert rec.flags == ("adopted",)
    assert rec.ring_s == pytest.approx(5.0) and rec.talk_s == pytest.approx(4.0)


def test_reconcile_ignores_other_messages_in_the_snapshot() -> None:
    pbx = Pbx()
    trunk, p101, bridge = answered_call(pbx)
    noise: list[Message] = [
        {"Response": "Success", "EventList": "start", "Message": "Channels will follow"},
        {"Event": "CoreShowChannelsComplete", "EventList": "Complete", "ListItems": "2"},
        {"Event": "CoreShowChannel"},  # no Uniqueid
    ]
    snapshot = [*noise, show_channel(trunk, 3, bridge), show_channel(p101, 3, bridge)]
    assert pbx.tracker.reconcile(snapshot, pbx.t) == []
    assert pbx.tracker.active_count == 1


def test_memory_per_active_call_is_small_and_returns_when_calls_end() -> None:
    msgs = load("06-inbound-ringgroup-102-answers.ami")  # 7 channels, 2 bridges: a big call
    span = id_span(msgs)
    # Up to the answer: the state of a ring-group call in progress.
    cut = next(i for i, m in enumerate(msgs) if m.get("Event") == "HangupRequest")
    tracker = CallTracker()

    def wire(first: int) -> list[tuple[bytes, bytes]]:
        """100 copies as AMI bytes (head, tail), so the tracker holds strings of its own
        the way it does behind a socket."""
        out = []
        for k in range(100):
            copy = rebase(msgs, time_offset=0, id_offset=(first + k) * span)
            out.append((b"".join(map(encode, copy[:cut])), b"".join(map(encode, copy[cut:]))))
        return out

    def feed(data: bytes) -> None:
        codec = AmiCodec()
        codec.banner = ""
        for msg in codec.feed(data):
            tracker.handle(msg, 0.0)

    def batch(calls: list[tuple[bytes, bytes]]) -> tuple[float, int]:
        """Memory per call while 100 calls are up, and what is left once they ended."""
        gc.collect()
        base = tracemalloc.get_traced_memory()[0]
        for head, _ in calls:
            feed(head)
        gc.collect()
        held = (tracemalloc.get_traced_memory()[0] - base) / 100
        assert tracker.active_count == 100
        for _, tail in calls:
            feed(tail)
        gc.collect()
        assert tracker.active_count == 0
        return held, tracemalloc.get_traced_memory()[0]

    first, second = wire(0), wire(100)
    tracemalloc.start()
    try:
        per_call, after_first = batch(first)
        del first
        _, after_second = batch(second)
    finally:
        tracemalloc.stop()
    assert per_call < 4096, per_call
    # A second batch reuses what the first left (dict tables); nothing accumulates.
    assert after_second - after_first < 4096


# --- a full tracker ------------------------------------------------------------------------


def test_beyond_max_active_calls_a_new_call_is_refused_and_none_tracked_is_dropped() -> None:
    pbx = Pbx(CallTracker(CallRules(max_active_calls=3)))
    calls = [pbx.trunk_call(f"+7916000000{i}", DID) for i in range(5)]
    refused = [u for u in pbx.updates if isinstance(u, CallRefused)]
    assert [(r.call_id, r.new_call, r.active_calls) for r in refused] == [
        (calls[3].linkedid, True, 3),
        (calls[4].linkedid, True, 3),
    ]
    assert pbx.tracker.active_count == 3
    for ch in calls:
        pbx.hangup(ch)
    # the three tracked calls are reported, whole; the refused ones leave no trace
    assert [r.call_id for r in pbx.records()] == [c.linkedid for c in calls[:3]]
    assert all(r.flags == () for r in pbx.records())
    pbx.trunk_call(CALLER, DID)  # room again
    assert pbx.tracker.active_count == 1 and len(pbx.records()) == 3


def test_a_channel_beyond_the_cap_leaves_its_call_tracked_and_flagged_overflow() -> None:
    pbx = Pbx(CallTracker(CallRules(max_active_calls=1)))  # room for 8 channels
    trunk = pbx.trunk_call(CALLER, DID)
    phones = [pbx.phone(f"10{i}", trunk) for i in range(8)]
    (refused,) = [u for u in pbx.updates if isinstance(u, CallRefused)]
    assert (refused.call_id, refused.new_call) == (trunk.linkedid, False)
    pbx.ring(trunk, phones[0])
    pbx.answer(trunk, phones[0])
    for ch in (*phones, trunk):
        pbx.hangup(ch)
    rec = pbx.record()
    assert rec.call_id == trunk.linkedid and rec.answered and rec.extension == "100"
    assert rec.flags == ("overflow",)


def test_lost_hangups_cannot_grow_the_tracker_past_its_cap_nor_flood_a_reconnect() -> None:
    tracker = CallTracker(CallRules(max_active_calls=1000))
    events = [
        {
            "Event": "Newchannel",
            "Channel": f"PJSIP/trunk-{i:08x}",
            "Uniqueid": f"1.{i}",
            "Linkedid": f"1.{i}",
            "Context": "from-trunk",
            "CallerIDNum": "79161234567",
            "Exten": "74951234567",
            "ChannelState": "4",
            "Timestamp": "1800000000.0",
        }
        for i in range(5000)
    ]
    updates = tracker.feed(events)
    assert tracker.active_count == 1000 and len(tracker._channels) == 1000
    assert sum(isinstance(u, CallRefused) for u in updates) == 4000
    closed = [u for u in tracker.reconcile([], 1_800_000_100.0) if isinstance(u, CallFinished)]
    assert len(closed) == 1000 and tracker.active_count == 0


# --- the PBX's clock: calls are aged on it, whatever ours says ------------------------------

HALF_DAY = 12 * 3600.0


@pytest.mark.parametrize("host_ahead_s", [HALF_DAY, -HALF_DAY])
def test_a_pbx_whose_clock_is_12_hours_off_has_its_calls_aged_on_its_own_clock(
    host_ahead_s: float,
) -> None:
    pbx = Pbx(CallTracker(CallRules(max_call_age_s=3600)), host_ahead_s=host_ahead_s)
    trunk, p101, bridge = answered_call(pbx)
    assert pbx.tracker.expire(pbx.now + 1) == []  # 1 s old on the PBX, not 12 h
    assert pbx.tracker.clock_offset == pytest.approx(host_ahead_s)
    pbx.wait(5)
    pbx.hangup(trunk, bridge=bridge)
    pbx.hangup(p101, bridge=bridge)
    rec = pbx.record()
    assert (rec.answered, rec.flags, rec.talk_s) == (True, (), pytest.approx(5.0))


def test_a_stale_call_on_a_pbx_12_hours_behind_ends_on_the_pbx_clock() -> None:
    pbx = Pbx(CallTracker(CallRules(max_call_age_s=3600)), host_ahead_s=HALF_DAY)
    answered_call(pbx)
    start = pbx.t
    (finished,) = [u for u in pbx.tracker.expire(pbx.now + 3700) if isinstance(u, CallFinished)]
    assert finished.record.flags == ("stale",)
    assert finished.record.ended_at == pytest.approx(start + 3700)


def test_a_call_that_ended_in_a_link_loss_is_closed_on_the_pbx_clock() -> None:
    pbx = Pbx(host_ahead_s=-HALF_DAY)
    answered_call(pbx)
    pbx.wait(60)
    (finished,) = [u for u in pbx.tracker.reconcile([], pbx.now) if isinstance(u, CallFinished)]
    assert finished.record.talk_s == pytest.approx(60.0)  # not 60 s - 12 h, clamped to 0


def test_clock_offset_is_the_smallest_lag_of_the_last_two_minutes() -> None:
    clock = PbxClock()
    assert clock.offset is None and clock.pbx_time(100.0) == 100.0
    clock.observe(1000.0, 1000.2)
    clock.observe(1010.0, 1030.0)  # read late (a backlog): a lag, not the offset
    clock.observe(1020.0, 1020.05)
    assert clock.offset == pytest.approx(0.05)
    assert clock.pbx_time(2000.0) == pytest.approx(1999.95)
    # The PBX's NTP steps its clock 90 s back: followed within two windows.
    for t in range(1100, 1300, 5):
        clock.observe(t - 90.0, t + 0.01)
    assert clock.offset == pytest.approx(90.01)
    assert clock.skewed


def test_a_pbx_that_sends_no_timestamp_works_on_arrival_time_with_no_offset() -> None:
    tracker = CallTracker(CallRules(max_call_age_s=3600))
    msgs = [
        {k: v for k, v in m.items() if k != "Timestamp"}
        for m in load("01-inbound-answered-caller-hangup.ami")
    ]
    head = [m for m in msgs if m.get("Event") != "Hangup"]
    tracker.feed(head, 5000.0)
    assert tracker.clock_offset is None
    assert tracker.expire(5000.0 + 3599) == []
    assert [type(u).__name__ for u in tracker.expire(5000.0 + 3601)][-1] == "CallFinished"
