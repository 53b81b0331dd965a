"""CDR rows -> call records (telephony/cdr.py): the same record the tracker makes.

The rows are Asterisk's own, from the recorded traces (each holds the ``Cdr`` events that
``cdr_csv`` and the database backends write): every recording of both PBXes maps to what
the tracker reported for it, with the ``[calls]`` rules of its PBX, within what a CDR can
know.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from telephony.cdr import (
    CdrCall,
    CdrRow,
    CdrRowError,
    backfill,
    group_calls,
    make_row,
    records_of,
)
from telephony.records import CallRecord, Transfer
from telephony.rules import CallRules
from tests.support.cdr_rows import CORPORA, differences, live_records, trace_cdrs, trace_rules
from tests.support.pbx import TRACES

CLASSES = {
    "inbound-answered": "01-inbound-answered-caller-hangup.ami",
    "inbound-missed": "03-inbound-missed-caller-abandons.ami",
    "inbound-busy": "04-inbound-busy.ami",
    "ring-group": "06-inbound-ringgroup-102-answers.ami",
    "queue": "07-inbound-queue-102-answers.ami",
    "outbound": "08-outbound-answered.ami",
    "blind-transfer": "10-inbound-blind-transfer-101-to-102.ami",
    "attended-transfer": "11-inbound-attended-transfer-101-to-102.ami",
    "three-overlapping": "12-inbound-overlapping-three-calls.ami",
    "click-to-call": "14-outbound-click-to-call-originate.ami",
}
RECORDINGS = [trace.name for corpus in CORPORA.values() for trace in corpus.traces]
RULES = CallRules()


def rows_of(trace: str, *, linkedid: bool = True, did: bool = True) -> list[CdrRow]:
    """The trace's CDR rows, with the columns a backend may or may not log."""
    out = []
    for cdr in trace_cdrs(TRACES / trace):
        values: dict[str, Any] = dict(cdr.event)
        if linkedid:
            values["linkedid"] = cdr.linkedid
        if did:
            values["did"] = cdr.did
        out.append(make_row(values, UTC))
    return out


def records(rows: list[CdrRow], rules: CallRules = RULES) -> dict[str, CallRecord]:
    return {r.call_id: r for c in group_calls(rows) for r in records_of(c, rules)}


def one(rows: list[CdrRow], rules: CallRules = RULES) -> CallRecord:
    (record,) = records(rows, rules).values()
    return record


@pytest.mark.parametrize("trace", RECORDINGS)
def test_cdr_rows_of_a_recorded_call_give_the_record_the_tracker_made(trace: str) -> None:
    rules = trace_rules(trace)
    live = live_records(TRACES / trace, rules)
    got = records(rows_of(trace), rules)
    assert sorted(got) == sorted(live)
    for call_id, record in got.items():
        assert differences(record, live[call_id]) == [], call_id


@pytest.mark.parametrize("trace", RECORDINGS)
def test_without_linkedid_rows_group_by_uniqueid_and_shared_channels(trace: str) -> None:
    # Master.csv with loguniqueid but not newcdrcolumns: no linkedid column
    rules = trace_rules(trace)
    assert records(rows_of(trace, linkedid=False), rules) == records(rows_of(trace), rules)


def test_attended_transfer_rows_of_four_channels_are_one_call() -> None:
    (call,) = group_calls(rows_of(CLASSES["attended-transfer"], linkedid=False))
    assert call.call_id == "1795727906.27"
    assert len(call.rows) == 5
    assert {r.uniqueid for r in call.rows} == {
        "1795727906.27",
        "1795727906.28",
        "1795727911.29",
        "1795727911.30",
    }
    (record,) = records_of(call, RULES)
    assert record.transfers == (Transfer("101", "102", "attended"),)
    assert (record.extension, record.final_extension) == ("101", "102")


def test_blind_transfer_is_told_from_the_caller_running_the_dialplan_again() -> None:
    record = records(rows_of(CLASSES["blind-transfer"]))["1795727886.24"]
    assert record.transfers == (Transfer("101", "102", "blind"),)
    assert record.talk_s == 12.0  # first answer to the end, the transfer included (as live)


def test_ring_group_and_queue_legs_that_rang_out_are_no_transfer() -> None:
    for trace in (CLASSES["ring-group"], CLASSES["queue"]):
        (record,) = records(rows_of(trace)).values()
        assert record.transfers == ()
        assert (record.extension, record.rang) == ("102", ("101", "102"))


def test_a_queue_member_ringing_beside_the_one_who_answered_is_no_transfer() -> None:
    # 45 (chan_sip, ringall): the queue answers the caller at once, so the row to 202, who
    # answers, begins first; 201's row begins a second later and rings out inside it
    trace = "45-sip-inbound-queue-202-answers.ami"
    record = one(rows_of(trace), trace_rules(trace))
    assert (record.extension, record.rang, record.transfers) == ("202", ("202", "201"), ())


JOINED = "26-inbound-two-calls-joined-by-101.ami"
A, C = "1796475246.182", "1796475251.184"


@pytest.mark.parametrize("linkedid", [True, False], ids=["linkedid", "no-linkedid"])
def test_two_callers_an_agent_joined_are_two_calls_each_joined_with_the_other(
    linkedid: bool,
) -> None:
    # 26: A calls 101; C calls 101 on its second line; 101 joins them (REFER with Replaces).
    # C's row carries A's Linkedid; A and C's talk is one row, from A's channel to C's.
    (group,) = group_calls(rows_of(JOINED, linkedid=linkedid))
    got = records_of(group, RULES)
    assert sorted(r.call_id for r in got) == [A, C]
    a, c = sorted(got, key=lambda r: r.call_id)
    assert (a.joined_with, c.joined_with) == ((C,), (A,))
    assert a.transfers == (Transfer("101", "+79262230026", "attended"),)
    assert c.transfers == (Transfer("101", "+79161230026", "attended"),)
    assert (a.extension, c.extension, a.final_extension, c.final_extension) == (
        "101",
        "101",
        None,
        None,
    )
    assert c.ended_at == a.ended_at and c.talk_s == 12.0  # C's call ends with A and C's talk


def test_a_joined_call_the_tracker_knows_leaves_the_other_to_the_backfill() -> None:
    # the live path has A's call (delivered, or still up): C's call is its own
    got, skipped = backfill(group_calls(rows_of(JOINED)), RULES, skip={A})
    assert ([r.call_id for r in got], skipped) == ([C], {"known": 1})


@pytest.mark.parametrize(
    ("trace", "answered", "extension"),
    [
        ("24-inbound-forward-to-mobile-accepted.ami", True, "101"),
        ("25-inbound-forward-to-mobile-not-accepted.ami", False, None),
    ],
)
def test_a_call_forwarded_to_a_mobile_is_one_inbound_call_naming_the_mobile(
    trace: str, answered: bool, extension: str | None
) -> None:
    # 101 rings 5 s, then Dial(PJSIP/79990001122@trunk,30,tTU(confirm-mobile)): the mobile
    # answers, and accepts (24) or refuses (25) at the prompt
    record = one(rows_of(trace))
    assert (record.direction, record.forwarded_to) == ("in", "+79990001122")
    assert (record.answered, record.extension, record.rang) == (answered, extension, ("101",))


def test_a_transfer_to_an_outside_number_after_the_answer_is_no_forward() -> None:
    # 101 answers, then transfers the caller blind to 79990001122 (the caller runs
    # from-internal again and dials out)
    caller = {
        "src": "79161234567",
        "channel": "PJSIP/trunk-00000001",
        "uniqueid": "1795728000.1",
        "linkedid": "1795728000.1",
    }
    legs = [
        row(
            **caller,
            dst="to101",
            dcontext="inbound-routes",
            dstchannel="PJSIP/101-00000002",
            lastdata="PJSIP/101,30,tT",
            start="2026-11-26 21:20:00",
            end="2026-11-26 21:20:09",
            billsec="6",
        ),
        row(
            **caller,
            dst="79990001122",
            dcontext="from-internal",
            dstchannel="PJSIP/trunk-00000003",
            lastdata="PJSIP/79990001122@trunk,30,tT",
            start="2026-11-26 21:20:09",
            end="2026-11-26 21:20:30",
            billsec="15",
        ),
    ]
    record = one(legs)
    assert (record.forwarded_to, record.extension) == (None, "101")
    assert record.transfers == (Transfer("101", "+79990001122", "blind"),)


def test_phones_named_by_account_are_the_extensions_the_phones_table_says() -> None:
    # 41 (chan_sip): SIP/150010001-... is 201's phone; by its name alone it is a trunk
    trace = "41-sip-inbound-answered-caller-hangup.ami"
    record = one(rows_of(trace), CallRules(phones={"150010001": "201"}))
    assert (record.extension, record.rang, record.final_extension) == ("201", ("201",), "201")
    assert one(rows_of(trace)).extension is None


def test_a_phone_matched_by_a_pattern_without_a_group_takes_its_caller_id_from_its_rows() -> None:
    # 49 (chan_sip): 201 answers, consults 203 and transfers. 201's channel has a row of its
    # own (the consultation: src 201); 203's phone was dialled by Local/203@from-internal.
    trace = "49-sip-inbound-attended-transfer-201-to-203.ami"
    rules = CallRules(phone_channel_pattern=r"^SIP/15001\d{4}-")
    record = one(rows_of(trace), rules)
    assert differences(record, live_records(TRACES / trace, rules)[record.call_id]) == []
    assert (record.extension, record.rang) == ("201", ("201", "203"))
    assert record.transfers == (Transfer("201", "203", "attended"),)


def test_a_queue_trying_agents_one_after_another_is_no_transfer() -> None:
    # Queue(support) with strategy linear: 101 rings out for 15 s, then 102 answers
    caller = {
        "src": "79031234455",
        "dst": "queue",
        "dcontext": "inbound-routes",
        "channel": "PJSIP/trunk-0000000d",
        "lastapp": "Queue",
        "lastdata": "support",
        "uniqueid": "1795727844.17",
        "linkedid": "1795727844.17",
    }
    legs = [
        row(
            **caller,
            dstchannel="PJSIP/101-0000000e",
            disposition="NO ANSWER",
            start="2026-11-26 21:20:00",
            end="2026-11-26 21:20:15",
            billsec="15",
        ),
        row(
            **caller,
            dstchannel="PJSIP/102-0000000f",
            start="2026-11-26 21:20:15",
            end="2026-11-26 21:20:40",
            billsec="25",
        ),
    ]
    record = one(legs)
    assert (record.extension, record.rang, record.transfers) == ("102", ("101", "102"), ())


def test_queue_answer_is_when_the_agent_leg_began_not_the_pbx_answering_the_caller() -> None:
    (record,) = records(rows_of(CLASSES["queue"])).values()
    pbx_answer = datetime(2026, 11, 26, 21, 17, 24, tzinfo=UTC).timestamp()
    leg_102 = datetime(2026, 11, 26, 21, 17, 25, tzinfo=UTC).timestamp()  # its row's start
    assert record.answered_at == leg_102 != pbx_answer
    assert (record.extension, record.talk_s) == ("102", 9.0)  # live: 28.7 s, 5.5 s


def test_click_to_call_starts_at_the_agent_pickup_and_its_ring_is_not_known() -> None:
    (record,) = records(rows_of(CLASSES["click-to-call"])).values()
    live = live_records(TRACES / CLASSES["click-to-call"])[record.call_id]
    assert record.direction == "out" and record.extension == "101"
    assert record.external == "+79031112233"
    assert abs(record.started_at - live.started_at) < 1  # the PBX dials out from here
    assert record.answered_at == record.started_at and record.talk_s == 7.0  # billsec


def test_busy_call_has_a_busy_disposition_and_the_phone_that_was_tried() -> None:
    (record,) = records(rows_of(CLASSES["inbound-busy"])).values()
    assert (record.disposition, record.answered, record.rang) == ("busy", False, ("101",))


# An internal call, as Asterisk 22 writes it (the corpus has none recorded yet):
#  src  dst  dcontext       channel             dstchannel          start   answer  end  billsec
#  101  102  from-internal  PJSIP/101-00000020  PJSIP/102-00000021  :00     :03     :09  6
def row(**kw: Any) -> CdrRow:
    base = {
        "start": "2026-11-26 21:20:00",
        "end": "2026-11-26 21:20:09",
        "billsec": "6",
        "disposition": "ANSWERED",
        "src": "101",
        "dst": "102",
        "dcontext": "from-internal",
        "channel": "PJSIP/101-00000020",
        "dstchannel": "PJSIP/102-00000021",
        "lastapp": "Dial",
        "lastdata": "PJSIP/102,30,tT",
        "uniqueid": "1795728000.40",
        "linkedid": "1795728000.40",
    }
    return make_row(base | kw, UTC)


def test_internal_call_has_no_outside_party_and_names_who_dialled() -> None:
    record = one([row()])
    assert (record.direction, record.external, record.did) == ("internal", None, None)
    assert (record.extension, record.final_extension, record.rang) == ("101", "102", ("102",))
    assert (record.ring_s, record.talk_s, record.disposition) == (3.0, 6.0, "answered")


@pytest.mark.parametrize(
    ("disposition", "expected"),
    [
        ("NO ANSWER", "no-answer"),
        ("CANCEL", "no-answer"),
        ("BUSY", "busy"),
        ("FAILED", "failed"),
        ("CONGESTION", "failed"),
    ],
)
def test_unanswered_dispositions_map_onto_the_record_s(disposition: str, expected: str) -> None:
    record = one([row(disposition=disposition, billsec="0")])
    assert (record.answered, record.disposition, record.talk_s) == (False, expected, 0.0)


def test_did_is_the_did_column_else_dst_in_an_inbound_context_else_unknown() -> None:
    inbound = {
        "src": "79161234567",
        "channel": "PJSIP/trunk-00000001",
        "dstchannel": "PJSIP/101-00000002",
        "lastdata": "PJSIP/101,30,tT",
    }

    def did(**kw: str) -> str | None:
        return one([row(**inbound, **kw)]).did

    assert did(did="74951234567", dst="101", dcontext="ext-local") == "+74951234567"
    assert did(dst="74951234568", dcontext="from-trunk") == "+74951234568"
    assert did(dst="to101", dcontext="inbound-routes") is None


def test_an_inbound_call_whose_did_the_cdr_does_not_have_is_flagged_with_the_reason() -> None:
    inbound = {
        "src": "79161234567",
        "channel": "PJSIP/trunk-00000001",
        "dstchannel": "PJSIP/101-00000002",
        "lastdata": "PJSIP/101,30,tT",
    }
    record = one([row(**inbound, dst="to101", dcontext="inbound-routes")])
    assert (record.did, record.flags) == (None, ("did-unknown",))
    assert "'to101'" in dict(record.reasons)["did-unknown"]
    assert one([row(**inbound, did="74951234567")]).flags == ()


def test_a_call_from_a_channel_no_rule_classifies_is_flagged_as_the_tracker_flags_it() -> None:
    record = one([row(channel="Console/dsp", src="", dst="102")])
    assert (record.direction, record.extension) == ("internal", None)
    assert record.flags == ("direction-guessed", "extension-unknown")
    assert "Console/dsp" in dict(record.reasons)["direction-guessed"]


def test_call_id_is_the_oldest_id_by_its_sequence_number_not_as_text() -> None:
    a = row(uniqueid="1795727830.10", linkedid="")
    b = row(
        uniqueid="1795727830.9",
        linkedid="",
        channel="Local/102@x-0001;2",
        dstchannel="PJSIP/102-00000021",
    )
    c = row(uniqueid="1795727830.11", linkedid="", dstchannel="Local/102@x-0001;1")
    (call,) = group_calls([a, b, c])
    assert call.call_id == "1795727830.9"


def test_a_channel_name_used_again_after_an_asterisk_restart_joins_no_calls() -> None:
    # PJSIP/101-00000002 twice: a day apart (the channel counter restarted with Asterisk)
    first = row(uniqueid="1795700000.1", linkedid="", dstchannel="PJSIP/101-00000002")
    later = row(
        uniqueid="1795790000.1",
        linkedid="",
        dstchannel="PJSIP/101-00000002",
        start="2026-11-27 21:20:00",
        end="2026-11-27 21:20:09",
    )
    assert [c.call_id for c in group_calls([first, later])] == ["1795700000.1", "1795790000.1"]


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"start": ""}, "no start time"),
        ({"end": "2026-11-26 21:19:00"}, "ends before"),
        ({"billsec": "ten"}, "billsec is not a number"),
        ({"channel": ""}, "no channel"),
        ({"start": "yesterday"}, "start is not a time"),
        ({"end": "", "duration": ""}, "neither an end time nor a duration"),
    ],
)
def test_a_row_that_cannot_be_used_is_refused_with_the_reason(
    change: dict[str, str], error: str
) -> None:
    with pytest.raises(CdrRowError, match=error):
        row(**change)


def test_times_without_a_zone_are_the_pbx_zone_given_and_end_may_come_from_duration() -> None:
    moscow = make_row(
        {
            "calldate": datetime(2026, 11, 27, 0, 20),
            "duration": 9,
            "billsec": 6,
            "channel": "PJSIP/101-1",
            "disposition": "ANSWERED",
        },
        ZoneInfo("Europe/Moscow"),
    )
    assert moscow.start == datetime(2026, 11, 26, 21, 20, tzinfo=UTC).timestamp()
    assert moscow.end == moscow.start + 9 and moscow.answered_at == moscow.start + 3


def test_text_in_another_encoding_is_decoded_not_fatal() -> None:
    cp1251 = "Звонок".encode("cp1251")
    r = make_row(
        {
            "start": "2026-11-26 21:20:00",
            "end": "2026-11-26 21:20:09",
            "channel": "PJSIP/101-1",
            "lastdata": cp1251,
        },
        UTC,
    )
    assert r.lastdata == "Звонок"


def test_backfill_leaves_out_calls_the_tracker_knows_and_rows_without_an_id() -> None:
    calls = group_calls(rows_of(CLASSES["three-overlapping"]))
    nameless = CdrCall("", (row(uniqueid="", linkedid=""),))
    # a call still up: the tracker holds a channel of it (one of its uniqueids)
    got, skipped = backfill([*calls, nameless], RULES, skip={"1795727934.34"})
    assert sorted(r.call_id for r in got) == ["1795727933.32", "1795727935.36"]
    assert skipped == {"known": 1, "no id": 1}
    assert {r.source for r in got} == {"cdr"}


def test_a_cdr_record_says_so_in_its_json_and_reads_back() -> None:
    (record,) = records_of(group_calls([row()])[0], CallRules(), "pbx1")
    data = json.loads(json.dumps(record.to_json()))
    assert data["source"] == "cdr" and data["pbx"] == "pbx1"
    assert CallRecord.from_json(data) == record


def test_a_live_record_s_json_has_no_source_key() -> None:
    live = live_records(TRACES / CLASSES["inbound-answered"])["1795727781.0"]
    assert live.source == "live"
    assert "source" not in live.to_json()
    back = CallRecord.from_json(live.to_json())
    assert back.source == "live" and back.to_json() == live.to_json()


def test_a_call_the_tracker_still_holds_is_left_to_the_live_path() -> None:
    # the listener is back mid-call: the tracker holds the ring group call (adopted or
    # never lost); its CDR rows so far must not be taken for the finished call
    from telephony.ami import AmiCodec, event_time
    from telephony.tracker import CallTracker

    data = (TRACES / CLASSES["ring-group"]).read_bytes()
    tracker, last = CallTracker(RULES), 0.0
    for msg in AmiCodec().feed(data[: len(data) * 2 // 3]):
        last = event_time(msg, last)
        tracker.handle(msg, last)
    assert "1795727830.10" in tracker.live_ids
    got, skipped = backfill(
        group_calls(rows_of(CLASSES["ring-group"])), RULES, skip=tracker.live_ids
    )
    assert (got, skipped) == ([], {"known": 1})
    for msg in AmiCodec().feed(data[len(data) * 2 // 3 :]):
        last = event_time(msg, last)
        tracker.handle(msg, last)
    assert tracker.live_ids == frozenset()
