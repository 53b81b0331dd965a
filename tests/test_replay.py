"""``telefum replay``: the public contract, run as admins run it (a subprocess)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_tracker_traces import SCENARIOS, STAMPED, TRACES, check_against_manifest

RECORD_KEYS = [
    "call_id",
    "direction",
    "external",
    "did",
    "extension",
    "answered",
    "started_at",
    "answered_at",
    "ended_at",
    "ring_s",
    "talk_s",
    "disposition",
    "transfers",
]


def replay(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "telefum.cli", "replay", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("name", STAMPED)  # a trace alone has no arrival times
def test_replay_prints_the_manifest_calls_as_json_lines(name: str) -> None:
    done = replay(str(TRACES / name))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    got = {j["call_id"]: j for j in map(json.loads, lines)}
    scenario = SCENARIOS[name]
    assert len(lines) == len(got) == scenario["n_calls"]
    for call in scenario["calls"]:
        record = got[call["linkedid"]]
        assert list(record)[: len(RECORD_KEYS)] == RECORD_KEYS
        assert not check_against_manifest(call, record)


def test_replay_output_is_stable_run_to_run() -> None:
    trace = str(TRACES / "12-inbound-overlapping-three-calls.ami")
    first, second = replay(trace), replay(trace)
    assert first.stdout == second.stdout
    assert [json.loads(x)["call_id"] for x in first.stdout.splitlines()] == [
        "1795727934.34",
        "1795727935.36",
        "1795727933.32",
    ]  # finish order


def test_replay_leaves_out_calls_still_open_and_says_so(tmp_path: Path) -> None:
    data = (TRACES / "06-inbound-ringgroup-102-answers.ami").read_bytes()
    cut = tmp_path / "cut.ami"
    cut.write_bytes(data[: len(data) // 2])
    done = replay(str(cut))
    assert done.returncode == 0
    assert done.stdout == ""
    assert "1 call(s) still open" in done.stderr


def test_replay_of_a_missing_file_is_a_clear_error() -> None:
    done = replay("/nonexistent/trace.ami")
    assert done.returncode == 2
    assert "cannot read /nonexistent/trace.ami" in done.stderr
    assert "Traceback" not in done.stderr


def test_replay_of_a_directory_is_a_clear_error(tmp_path: Path) -> None:
    done = replay(str(tmp_path))
    assert done.returncode == 2
    assert "cannot read" in done.stderr and "Traceback" not in done.stderr


def test_replay_skips_garbage_and_still_reports_the_calls(tmp_path: Path) -> None:
    data = (TRACES / "01-inbound-answered-caller-hangup.ami").read_bytes()
    head, sep, tail = data.partition(b"\r\n\r\n")
    trace = tmp_path / "garbage.ami"
    trace.write_bytes(head + sep + b"\x00\xff garbage line\r\nnot a header\r\n\r\n" + tail)
    done = replay(str(trace))
    assert done.returncode == 0
    (line,) = done.stdout.splitlines()
    assert json.loads(line)["extension"] == "101"
    assert "malformed" in done.stderr


def test_replay_uses_the_calls_rules_of_the_config(tmp_path: Path) -> None:
    trace = str(TRACES / "01-inbound-answered-caller-hangup.ami")
    config = tmp_path / "settings.toml"
    # An admin whose trunks arrive in a context the defaults do not know, and whose
    # trunk names the pattern does not match: the call is not inbound to this bridge.
    config.write_text(
        "[calls]\ninbound_contexts = [\"from-carrier\"]\ntrunk_channel_pattern = '^IAX2/'\n",
        encoding="utf-8",
    )
    done = replay(trace, "--config", str(config))
    assert done.returncode == 0, done.stderr
    (line,) = done.stdout.splitlines()
    assert json.loads(line)["direction"] != "in"
    assert json.loads(replay(trace).stdout)["direction"] == "in"


def test_replay_with_a_broken_config_is_a_clear_error(tmp_path: Path) -> None:
    config = tmp_path / "settings.toml"
    config.write_text("[calls\n", encoding="utf-8")
    done = replay(str(TRACES / "01-inbound-answered-caller-hangup.ami"), "--config", str(config))
    assert done.returncode == 2
    assert str(config) in done.stderr and "Traceback" not in done.stderr


def test_explain_shows_an_admin_which_rule_misreads_a_hosted_pbx_and_the_fix(
    tmp_path: Path,
) -> None:
    # A hosted chan_sip PBX: phones are SIP accounts in a customer context. With the
    # defaults the phone looks like a trunk; --explain says so, and which rule; with the
    # [calls] phones table the same trace reads right, and --explain says by which rule.
    from telephony.ami import encode
    from tests.test_tracker_traces import hosted, load

    trace = tmp_path / "hosted.ami"
    calls = hosted(load("41-sip-inbound-answered-caller-hangup.ami"))
    trace.write_bytes(b"".join(map(encode, calls)))
    before = replay(str(trace), "--explain")
    assert before.returncode == 0, before.stderr
    # The phone is taken for a trunk, so 201 answering looks like a forward to a mobile:
    assert (
        "extension  none: it was forwarded to +79161234567 on SIP/150010001-00000037 "
        "(a trunk: it matches trunk_channel_pattern), before any extension rang" in before.stdout
    )
    config = tmp_path / "settings.toml"
    config.write_text('[calls]\nphones = { "150010001" = "201" }\n', encoding="utf-8")
    after = replay(str(trace), "--explain", "--config", str(config))
    lines = after.stdout.splitlines()
    assert lines[0].startswith(
        "call 1796475770.62  in  +79161234567 -> +74951234567  extension 201  answered"
    )
    assert (
        "  direction  in: the first channel is SIP/trunk-00000036 (a trunk: it matches "
        "trunk_channel_pattern)" in lines
    )
    assert "  did        +74951234567: the number the first channel dialled (its Exten)" in lines
    assert "  extension  201: SIP/150010001-00000037 (the phone of 201 by [calls] phones)" in lines
    assert "  answered   yes: SIP/150010001-00000037 went Up" in lines


def test_explain_says_why_where_the_tracker_cannot_tell(tmp_path: Path) -> None:
    from telephony.ami import encode
    from tests.test_tracker_traces import load

    # The DID lost: a trunk that sends the call to "s" and no DID variable in the dialplan.
    msgs = [
        {**m, "Exten": "s"} if m.get("Event") == "Newchannel" else m
        for m in load("41-sip-inbound-answered-caller-hangup.ami")
        if m.get("Variable") != "__FROM_DID"
    ]
    trace = tmp_path / "no-did.ami"
    trace.write_bytes(b"".join(map(encode, msgs)))
    done = replay(str(trace), "--explain")
    assert (
        "  flag       did-unknown: the first channel's Exten 's' is not a number and none "
        "of [calls] did_variables was set" in done.stdout.splitlines()
    )
    (record,) = map(json.loads, replay(str(trace)).stdout.splitlines())
    assert (record["flags"], record["reasons"]) == (
        ["did-unknown"],
        {
            "did-unknown": "the first channel's Exten 's' is not a number and none of [calls] "
            "did_variables was set"
        },
    )
