"""docs/ami.md tells admins what to grant the bridge's AMI user: keep it true to the code."""

from __future__ import annotations

import re
from pathlib import Path

from telephony.ami import parse_trace
from telephony.tracker import CallTracker
from tests.support.pbx import TRACES

ROOT = Path(__file__).resolve().parent.parent
DOC = (ROOT / "docs" / "ami.md").read_text(encoding="utf-8")


def tracker_events() -> set[str]:
    # the tracker's dispatch table: the events it reads (private, but the one true list)
    return {name for name in CallTracker()._handlers if name}


def manager_conf_value(key: str) -> set[str]:
    (line,) = re.findall(rf"^{key} = ([a-z,]+)$", DOC, re.MULTILINE)
    return set(line.split(","))


def test_the_documented_event_whitelist_names_every_event_the_tracker_reads() -> None:
    included = set(re.findall(r"eventfilter\(action\(include\),name\((\w+)\)", DOC))
    assert included == tracker_events()


def test_the_documented_varset_filter_keeps_the_variables_the_tracker_reads() -> None:
    (regex,) = re.findall(r"header\(Variable\),regex\) = (\S+)", DOC)
    for kept in ("DIALSTATUS", "FROM_DID", "__FROM_DID"):
        assert re.search(regex, kept), kept
    for dropped in ("BRIDGEPEER", "DIALEDPEERNUMBER", "MACRO_DEPTH", "FROM_DID_X"):
        assert not re.search(regex, dropped), dropped


def test_read_classes_are_exactly_those_of_the_events_the_tracker_reads() -> None:
    wanted = tracker_events()
    classes: set[str] = set()
    for trace in TRACES.glob("*.ami"):
        for msg in parse_trace(trace.read_bytes()):
            if msg.get("Event") in wanted and msg.get("Privilege"):
                classes.add(msg["Privilege"].split(",")[0])
    assert classes == manager_conf_value("read")


def test_write_classes_are_originate_and_reporting_only() -> None:
    assert manager_conf_value("write") == {"originate", "reporting"}
    assert "timestampevents = yes" in DOC
