"""Numbers and extensions are ASCII digits: Python's ``\\d`` and ``str.isdigit()`` also take
Arabic-Indic (١٠١), Devanagari and other scripts' digits, and superscripts (``"²".isdigit()``,
which ``int()`` then refuses). Every pattern and check that reads a number says 0-9."""

from __future__ import annotations

from pathlib import Path

import pytest

from crm_client import parse
from telefum.attribution import parse_since
from telefum.originate import DialRefused, OriginateSettings, Originator
from telefum.web import split_listen
from telephony.phones import to_e164
from telephony.rules import CallRules
from telephony.tracker import CallTracker
from worker.spool import Spool

ARABIC_101 = "\u0661\u0660\u0661"  # ١٠١
ARABIC_MOBILE = "\u0668\u0669\u0661\u0666\u0661\u0662\u0663\u0664\u0665\u0666\u0667"  # 89161234567


def test_an_extension_is_ascii_digits_by_default_and_in_an_admins_pattern() -> None:
    assert CallRules().is_extension("101")
    assert not CallRules().is_extension(ARABIC_101)
    assert not CallRules(extension_pattern=r"^\d{3}$").is_extension(ARABIC_101)
    assert not CallRules().is_trunk_channel(f"PJSIP/trunk-{ARABIC_101}")


def test_a_phone_number_in_other_digits_is_not_a_number() -> None:
    assert to_e164("89161234567") == "+79161234567"
    assert to_e164(ARABIC_MOBILE) is None
    assert to_e164("+7916123456\u00b2") is None  # superscript two


async def _never_sent(**fields: object) -> None:
    raise AssertionError("prepare() sends nothing")


def test_click_to_call_refuses_an_extension_in_other_digits() -> None:
    originator = Originator(_never_sent, OriginateSettings())
    for ext in (ARABIC_101, "101\n", "1\u00b2"):
        with pytest.raises(DialRefused, match="not an extension"):
            originator.prepare(ext, "+79161234567")
    assert originator.prepare("101", "+79161234567").channel == "PJSIP/101"


def test_the_tracker_reads_no_phone_from_a_channel_named_in_other_digits() -> None:
    tracker = CallTracker()
    ups = tracker.feed(
        [
            {
                "Event": "Newchannel",
                "Channel": f"PJSIP/{ARABIC_101}-00000001",
                "Uniqueid": "1.1",
                "Linkedid": "1.1",
                "Context": "from-internal",
                "CallerIDNum": ARABIC_101,
                "Exten": "89161234567",
                "ChannelState": "4",
            },
            {"Event": "Hangup", "Uniqueid": "1.1", "Cause": "16"},
        ]
    )
    (finished,) = [u for u in ups if type(u).__name__ == "CallFinished"]
    assert finished.record.extension is None  # type: ignore[attr-defined]


def test_crm_answers_with_other_digits_are_warnings_not_crashes() -> None:
    body = b"<response><item><id>1</id></item><total>\xc2\xb2</total></response>"
    found = parse.parse_find(body)
    assert any("not a number" in w for w in found.warnings)
    assert parse.parse_retry_after("\u00b2") is None
    assert parse.parse_retry_after("\u0661\u0662\u0660") is None
    assert parse.parse_retry_after("120") == 120.0


def test_a_report_period_and_a_listen_port_take_ascii_digits_only() -> None:
    with pytest.raises(ValueError, match="7d"):
        parse_since("\u0667d", 1_800_000_000.0)
    with pytest.raises(ValueError):
        split_listen("127.0.0.1:\u0668\u0660\u0668\u0668")
    assert split_listen("127.0.0.1:8088") == ("127.0.0.1", 8088)


def test_a_stray_file_named_in_other_digits_does_not_break_the_spool(tmp_path: Path) -> None:
    (tmp_path / "\u00b2.jsonl").write_text("")
    (tmp_path / f"{ARABIC_101}.jsonl").write_text("")
    spool = Spool(tmp_path)
    try:
        assert spool.pending == 0
    finally:
        spool.close()
