"""rebase(): one recorded trace played many times must look like many distinct calls."""

from __future__ import annotations

import copy
import re

import pytest

from pbxsim.rebase import Rebaser, id_span, rebase
from telephony.ami import Message, parse_trace
from tests.support.pbx import TRACES

UID = re.compile(r"^\d{9,11}\.\d+$")
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
CHANNEL = re.compile(r"\b[A-Za-z]\w*/[^\s,&|;]*?-[0-9a-f]{8}(?!\w)")


def load(name: str) -> list[Message]:
    (path,) = TRACES.glob(f"{name}*.ami")
    return parse_trace(path.read_bytes())


def ids_in(messages: list[Message]) -> set[str]:
    """Every unique id, channel name and bridge UUID the messages mention."""
    found: set[str] = set()
    for msg in messages:
        for key, value in msg.items():
            if key in ("Timestamp", "SentNTP"):
                continue
            if UID.match(value):
                found.add(value)
            found.update(UUID.findall(value))
            found.update(CHANNEL.findall(value))
    return found


def test_timestamps_move_by_the_offset() -> None:
    msgs = load("01")
    out = rebase(msgs, time_offset=1000.25, id_offset=0)
    for old, new in zip(msgs, out, strict=True):
        if "Timestamp" in old:
            assert float(new["Timestamp"]) == pytest.approx(float(old["Timestamp"]) + 1000.25)


def test_event_tv_and_cdr_times_move_by_the_offset() -> None:
    msgs = [
        {"Event": "SuccessfulAuth", "EventTV": "2026-11-26T21:16:20.288+0000"},
        {"Event": "Cdr", "StartTime": "2026-11-26 21:16:21", "AnswerTime": ""},
    ]
    out = rebase(msgs, time_offset=3600 * 3 + 0.5, id_offset=0)
    assert out[0]["EventTV"] == "2026-11-27T00:16:20.788+0000"
    assert out[1]["StartTime"] == "2026-11-27 00:16:21"
    assert out[1]["AnswerTime"] == ""


def test_unique_ids_shift_sequence_and_epoch_consistently() -> None:
    msgs = load("06")
    out = rebase(msgs, time_offset=86400.0, id_offset=500)
    first = next(m for m in out if m.get("Event") == "Newchannel")
    assert first["Uniqueid"] == "1795814230.510"
    assert first["Linkedid"] == "1795814230.510"
    # Every id-like header (Dest*, LocalOne*, Transfer*...) maps the same old id the same way.
    seen: dict[str, str] = {}
    for old, new in zip(msgs, out, strict=True):
        for key, value in old.items():
            if key != "Timestamp" and UID.match(value):
                assert seen.setdefault(value, new[key]) == new[key], key


def test_channel_names_get_new_sequence_and_keep_local_halves() -> None:
    msgs = load("06")
    out = rebase(msgs, time_offset=0, id_offset=0x100)
    chans = {m["Channel"] for m in out if "Channel" in m}
    assert "PJSIP/trunk-0000010a" in chans
    assert "Local/101@rg-members-00000100;1" in chans
    assert "Local/101@rg-members-00000100;2" in chans
    bridgepeers = {m["Value"] for m in out if m.get("Variable") == "BRIDGEPEER" and m["Value"]}
    assert bridgepeers <= chans | {""}


def test_bridge_ids_are_regenerated_consistently() -> None:
    msgs = load("01")
    out = rebase(msgs, time_offset=0, id_offset=7)
    old_bridges = {m["BridgeUniqueid"] for m in msgs if "BridgeUniqueid" in m}
    new_bridges = {m["BridgeUniqueid"] for m in out if "BridgeUniqueid" in m}
    assert len(old_bridges) == len(new_bridges) == 1
    assert not old_bridges & new_bridges


def test_two_copies_share_no_id_channel_or_bridge() -> None:
    msgs = load("11")
    span = id_span(msgs)
    a = rebase(msgs, time_offset=0, id_offset=0)
    b = rebase(msgs, time_offset=0.5, id_offset=span)
    assert ids_in(a) and not ids_in(a) & ids_in(b)


def test_rebase_is_deterministic_and_leaves_input_alone() -> None:
    msgs = load("07")
    before = copy.deepcopy(msgs)
    one = rebase(msgs, time_offset=12.5, id_offset=42, number_map={"79031234455": "79990001122"})
    two = rebase(msgs, time_offset=12.5, id_offset=42, number_map={"79031234455": "79990001122"})
    assert one == two
    assert msgs == before


def test_number_map_swaps_the_number_everywhere_but_not_inside_ids() -> None:
    msgs = load("01")
    out = rebase(
        msgs,
        time_offset=0,
        id_offset=0,
        number_map={"79161234567": "79035550000", "74951234567": "74950000001"},
    )
    text = "\n".join(v for m in out for v in m.values())
    assert "79161234567" not in text and "74951234567" not in text
    newchannel = next(m for m in out if m.get("Event") == "Newchannel")
    assert newchannel["CallerIDNum"] == "79035550000"
    assert newchannel["Exten"] == "74950000001"
    noop = next(m for m in out if m.get("Application") == "NoOp")
    assert noop["AppData"] == "Inbound call to DID 74950000001 from 79035550000"
    # The ids stay what the offsets make them.
    assert newchannel["Uniqueid"] == "1795727781.0"


def test_number_map_leaves_longer_numbers_that_contain_the_key() -> None:
    out = rebase(
        [{"Event": "Newchannel", "CallerIDNum": "+79161234567", "AppData": "179161234567"}],
        time_offset=0,
        id_offset=0,
        number_map={"79161234567": "79035550000"},
    )
    assert out[0]["CallerIDNum"] == "+79035550000"
    assert out[0]["AppData"] == "179161234567"


def test_values_that_are_not_ids_pass_through() -> None:
    msg = {"Event": "VarSet", "Variable": "RINGTIME", "Value": "2", "Cause-txt": "User busy"}
    assert rebase([msg], time_offset=10, id_offset=10) == [msg]


def test_a_prepared_rebaser_gives_the_same_copies_as_rebase() -> None:
    msgs = load("11")
    prepared = Rebaser(msgs)
    numbers = {"79161234567": "79035550000"}
    for offset in (0, 300, 600):
        assert prepared.apply(time_offset=offset * 2.5, id_offset=offset, number_map=numbers) == (
            rebase(msgs, time_offset=offset * 2.5, id_offset=offset, number_map=numbers)
        )
