"""AmiCodec: whole messages out of socket reads cut anywhere, bad lines skipped, and the
events a reader does not use passed over without changing what it sees."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from pbxsim.synth import generate
from telephony.ami import AmiCodec, Message, encode
from telephony.records import CallFinished, Update
from telephony.tracker import CallTracker


def _reference(data: bytes) -> tuple[list[Message], int]:
    """The codec's rules written the plain way, one block and one line at a time."""
    out: list[Message] = []
    skipped = 0
    for block in data.split(b"\r\n\r\n")[:-1]:
        if not block:
            continue
        msg: Message = {}
        for line in block.decode("utf-8", "replace").split("\r\n"):
            key, sep, value = line.partition(": ")
            if not sep:
                if line.endswith(":") and line[:-1] and " " not in line:
                    msg[line[:-1]] = ""
                elif line.strip():
                    skipped += 1
                continue
            if key in msg and key in ("ChanVariable", "Output"):
                msg[key] += "\n" + value
            else:
                msg[key] = value
        if msg:
            out.append(msg)
        else:
            skipped += 1
    return out, skipped


def _feed_in_pieces(codec: AmiCodec, data: bytes, cuts: list[int]) -> list[Message]:
    out: list[Message] = []
    start = 0
    for cut in [*sorted({min(c, len(data)) for c in cuts}), len(data)]:
        out += codec.feed(data[start:cut])
        start = cut
    return out


_piece = st.sampled_from(
    [
        "Event",
        "Channel",
        "ChanVariable",
        "Output",
        ": ",
        ":",
        " ",
        "\r\n",
        "\r\n\r\n",
        "x",
        "7",
        "Иван",
        "\n",
        "\r",
        "ActionID",
    ]
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_piece, max_size=60), st.lists(st.integers(0, 400), max_size=6))
def test_any_bytes_cut_anywhere_give_the_messages_decoded_one_by_one(
    pieces: list[str], cuts: list[int]
) -> None:
    data = "".join(pieces).encode() + b"\r\n\r\n"
    codec = AmiCodec()
    codec.banner = ""  # no login banner in this stream
    got = _feed_in_pieces(codec, data, cuts)
    want, skipped = _reference(data)
    assert got == want
    assert codec.skipped == skipped


def test_a_cyrillic_name_split_inside_a_character_arrives_intact() -> None:
    data = encode({"Event": "Newchannel", "CallerIDName": "Иван Петров"})
    cut = data.index("Иван".encode()) + 1  # inside the two bytes of "И"
    codec = AmiCodec()
    codec.banner = ""
    assert _feed_in_pieces(codec, data, [cut]) == [
        {"Event": "Newchannel", "CallerIDName": "Иван Петров"}
    ]


def test_unread_events_are_passed_over_but_answers_and_junk_never_are() -> None:
    stream = (
        b"".join(
            encode(m)
            for m in [
                {"Event": "Newexten", "Uniqueid": "1.1"},
                {"Event": "VarSet", "Variable": "CDR(foo)", "Value": "1"},
                {"Event": "VarSet", "Variable": "DIALSTATUS", "Value": "BUSY"},
                {"Event": "Newchannel", "Uniqueid": "1.2"},
                {"Event": "CoreShowChannel", "ActionID": "7", "Uniqueid": "1.3"},
                {"Response": "Success", "ActionID": "7"},
            ]
        )
        + b"garbageEvent: Hangup\r\nUniqueid: 1.4\r\n\r\n"
    )
    codec = AmiCodec(events={"Newchannel", "VarSet"}, variables={"DIALSTATUS"})
    codec.banner = ""
    got = list(codec.feed(stream))
    assert [m.get("Event") or m.get("Response") for m in got] == [
        "VarSet",
        "Newchannel",
        "CoreShowChannel",
        "Success",
        None,
    ]
    assert got[-1] == {"garbageEvent": "Hangup", "Uniqueid": "1.4"}  # for the listener
    assert codec.passed_over == 2


def _records(updates: list[Update]) -> list[object]:
    return [u.record for u in updates if isinstance(u, CallFinished)]


def _track(data: bytes, codec: AmiCodec, tracker: CallTracker) -> list[Update]:
    out: list[Update] = []
    for i in range(0, len(data), 4096):
        for msg in codec.feed(data[i : i + 4096]):
            if "Event" in msg and "ActionID" not in msg:
                out += tracker.handle(msg, 0.0)
    return out


def test_the_tracker_reports_the_same_calls_when_the_codec_passes_over_what_it_ignores(
    traces_dir: Path,
) -> None:
    streams = [p.read_bytes() for p in sorted(traces_dir.glob("*.ami"))]
    assert streams
    mix = b"".join(encode(m) for _, m in generate(150, 20.0, seed=3))
    streams.append(b"Asterisk Call Manager/5.0.2\r\n" + mix)
    reported = 0
    for data in streams:
        full = CallTracker()
        want = _records(_track(data, AmiCodec(), full))
        lean = CallTracker()
        codec = AmiCodec(lean.events, lean.variables)
        got = _records(_track(data, codec, lean))
        assert got == want
        assert lean.active_count == full.active_count
        reported += len(got)
    assert codec.passed_over > 0
    assert reported >= 150
