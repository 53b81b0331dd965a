"""CDR rows as Asterisk wrote them, for the backfill tests: from real recordings.

A recorded AMI trace holds Asterisk's own ``Cdr`` events (``cdr_manager``): the same
rows, field for field, that ``cdr_csv`` appends to ``Master.csv`` and the database
backends insert. From them:

- ``trace_cdrs``: each row, with the ``linkedid`` of its party A channel and the DID the
  dialplan set on it (``__FROM_DID``: what FreePBX stores in its ``did`` column), both read
  from the same trace;
- ``csv_line``: the row as ``cdr_csv`` formats it (``cdr/cdr_csv.c``), for the options
  given;
- ``FREEPBX_CDR`` / ``ASTERISK_PG_CDR``: the tables the two database sources read
  (FreePBX's ``asteriskcdrdb.cdr``; the schema Asterisk ships for ``cdr_pgsql``), and
  ``mysql_values`` / ``pg_values``: a row as those backends write it.
- ``live_records``: what the tracker makes of the same trace (``telefum replay``);
- ``CORPORA``: the recordings of each PBX, with the ``[calls]`` rules its admin writes
  (``trace_rules``: the tracker trace tests' own), for round trips through one table.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from functools import cache, cached_property
from pathlib import Path
from typing import Any

from telephony.ami import AmiCodec, event_time
from telephony.cdr_csv import BASE_COLUMNS
from telephony.records import CallFinished, CallRecord
from telephony.rules import CallRules
from telephony.tracker import CallTracker
from tests.support.pbx import TRACES
from tests.test_tracker_traces import CHANSIP, SCENARIOS, SIP_ACCOUNTS


@dataclass(frozen=True)
class TraceCdr:
    event: dict[str, str]  # the Cdr event's fields (AMI names: Source, StartTime, ...)
    linkedid: str
    did: str


def _messages(trace: Path) -> list[dict[str, str]]:
    codec = AmiCodec()
    return [dict(m) for m in codec.feed(trace.read_bytes())]


@cache
def trace_cdrs(trace: Path) -> list[TraceCdr]:
    linked: dict[str, str] = {}
    did: dict[str, str] = {}
    out = []
    for msg in _messages(trace):
        uid = msg.get("Uniqueid")
        if uid and msg.get("Linkedid"):
            linked[uid] = msg["Linkedid"]
        if (
            uid
            and msg.get("Event") == "VarSet"
            and msg.get("Variable") in ("FROM_DID", "__FROM_DID")
        ):
            did[uid] = msg.get("Value", "")
        if msg.get("Event") == "Cdr":
            uid = msg["UniqueID"]
            out.append(TraceCdr(msg, linked.get(uid, uid), did.get(uid, "")))
    return out


def live_records(trace: Path, rules: CallRules | None = None) -> dict[str, CallRecord]:
    """The tracker's records of a trace, by call id (as ``telefum replay`` makes them)."""
    tracker = CallTracker(rules)
    last = 0.0
    out = {}
    for msg in AmiCodec().feed(trace.read_bytes()):
        last = event_time(msg, last)
        for update in tracker.handle(msg, last):
            if isinstance(update, CallFinished):
                out[update.record.call_id] = update.record
    return out


def trace_rules(name: str) -> CallRules:
    """The ``[calls]`` rules an admin of the trace's PBX writes, as the tracker trace tests
    configure them (tests/test_tracker_traces.py): the chan_sip PBX names its phones by
    account, so ``phones`` maps them; the Asterisk 22 one needs the defaults."""
    return CallRules(phones=SIP_ACCOUNTS) if name in CHANSIP else CallRules()


@dataclass
class Corpus:
    """The recordings of one PBX (the manifest's ``pbx``) that hold its ``Cdr`` events, as
    one CDR table would: every call of them, and the tracker's records of the same calls."""

    pbx: str
    traces: tuple[Path, ...]
    rules: CallRules

    @cached_property
    def cdrs(self) -> list[TraceCdr]:
        return [c for trace in self.traces for c in trace_cdrs(trace)]

    @cached_property
    def live(self) -> dict[str, CallRecord]:
        return {k: v for t in self.traces for k, v in live_records(t, self.rules).items()}


def _corpora() -> dict[str, Corpus]:
    # Real recordings only: a derived trace (synthetic) is another AMI view of a recording's
    # calls (same CDR); 29's link cut needs its second session for the tracker's records.
    by_pbx: dict[str, list[str]] = {}
    for name, scenario in sorted(SCENARIOS.items()):
        if not scenario.get("synthetic"):
            by_pbx.setdefault(scenario["pbx"], []).append(name)
    out = {}
    for pbx, names in by_pbx.items():
        rules = trace_rules(names[0])
        assert all(trace_rules(n) == rules for n in names), pbx  # one PBX, one [calls]
        out[pbx] = Corpus(pbx, tuple(TRACES / n for n in names), rules)
    return out


CORPORA = _corpora()


def _q(text: str) -> str:
    return '"' + text.replace('"', '""') + '"'


def csv_line(
    cdr: TraceCdr, *, uniqueid: bool = True, userfield: bool = True, newcolumns: bool = False
) -> str:
    """The row as cdr_csv writes it with loguniqueid/loguserfield/newcdrcolumns."""
    e = cdr.event
    fields = [
        _q(e[k])
        for k in (
            "AccountCode",
            "Source",
            "Destination",
            "DestinationContext",
            "CallerID",
            "Channel",
            "DestinationChannel",
            "LastApplication",
            "LastData",
        )
    ]
    fields += [_q(e[k]) if e[k] else "" for k in ("StartTime", "AnswerTime", "EndTime")]
    fields += [e["Duration"], e["BillableSeconds"], _q(e["Disposition"]), _q(e["AMAFlags"])]
    if uniqueid:
        fields.append(_q(e["UniqueID"]))
    if userfield:
        fields.append(_q(e.get("UserField", "")))
    if newcolumns:
        fields += [_q(""), _q(cdr.linkedid), "0"]
    return ",".join(fields) + "\n"


FREEPBX_CDR = """
CREATE TABLE {table} (
  calldate datetime NOT NULL DEFAULT '0000-00-00 00:00:00',
  clid varchar(80) NOT NULL DEFAULT '', src varchar(80) NOT NULL DEFAULT '',
  dst varchar(80) NOT NULL DEFAULT '', dcontext varchar(80) NOT NULL DEFAULT '',
  channel varchar(80) NOT NULL DEFAULT '', dstchannel varchar(80) NOT NULL DEFAULT '',
  lastapp varchar(80) NOT NULL DEFAULT '', lastdata varchar(80) NOT NULL DEFAULT '',
  duration int(11) NOT NULL DEFAULT 0, billsec int(11) NOT NULL DEFAULT 0,
  disposition varchar(45) NOT NULL DEFAULT '', amaflags int(11) NOT NULL DEFAULT 0,
  accountcode varchar(20) NOT NULL DEFAULT '', uniqueid varchar(32) NOT NULL DEFAULT '',
  userfield varchar(255) NOT NULL DEFAULT '', did varchar(50) NOT NULL DEFAULT '',
  recordingfile varchar(255) NOT NULL DEFAULT '', cnum varchar(80) NOT NULL DEFAULT '',
  cnam varchar(80) NOT NULL DEFAULT '', outbound_cnum varchar(80) NOT NULL DEFAULT '',
  outbound_cnam varchar(80) NOT NULL DEFAULT '', dst_cnam varchar(80) NOT NULL DEFAULT '',
  linkedid varchar(32) NOT NULL DEFAULT '', peeraccount varchar(80) NOT NULL DEFAULT '',
  sequence int(11) NOT NULL DEFAULT 0,
  KEY calldate (calldate), KEY dst (dst), KEY accountcode (accountcode),
  KEY uniqueid (uniqueid), KEY did (did), KEY recordingfile (recordingfile(191))
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4
"""

ASTERISK_PG_CDR = """
CREATE TABLE {table} (
    accountcode VARCHAR(80), src VARCHAR(80), dst VARCHAR(80), dcontext VARCHAR(80),
    clid VARCHAR(80), channel VARCHAR(80), dstchannel VARCHAR(80), lastapp VARCHAR(80),
    lastdata VARCHAR(80), start TIMESTAMP WITHOUT TIME ZONE,
    answer TIMESTAMP WITHOUT TIME ZONE, "end" TIMESTAMP WITHOUT TIME ZONE,
    duration INTEGER, billsec INTEGER, disposition VARCHAR(45), amaflags VARCHAR(45),
    userfield VARCHAR(256), uniqueid VARCHAR(150), linkedid VARCHAR(150),
    peeraccount VARCHAR(80), sequence INTEGER
)
"""

FREEPBX_COLUMNS = (
    "calldate",
    "clid",
    "src",
    "dst",
    "dcontext",
    "channel",
    "dstchannel",
    "lastapp",
    "lastdata",
    "duration",
    "billsec",
    "disposition",
    "accountcode",
    "uniqueid",
    "userfield",
    "did",
    "linkedid",
)
# cdr_pgsql's columns: Master.csv's base ones, then what its table adds
PG_COLUMNS = (*BASE_COLUMNS, "userfield", "uniqueid", "linkedid")


def _dt(text: str) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


def mysql_values(cdr: TraceCdr) -> tuple[Any, ...]:
    """A row as FreePBX's cdr_adaptive_odbc writes it (``alias start => calldate``)."""
    e = cdr.event
    return (
        _dt(e["StartTime"]),
        e["CallerID"],
        e["Source"],
        e["Destination"],
        e["DestinationContext"],
        e["Channel"],
        e["DestinationChannel"],
        e["LastApplication"],
        e["LastData"],
        int(e["Duration"]),
        int(e["BillableSeconds"]),
        e["Disposition"],
        e["AccountCode"],
        e["UniqueID"],
        e.get("UserField", ""),
        cdr.did,
        cdr.linkedid,
    )


def pg_values(cdr: TraceCdr) -> tuple[Any, ...]:
    """A row as cdr_pgsql writes it into Asterisk's own schema."""
    e = cdr.event
    return (
        e["AccountCode"],
        e["Source"],
        e["Destination"],
        e["DestinationContext"],
        e["CallerID"],
        e["Channel"],
        e["DestinationChannel"],
        e["LastApplication"],
        e["LastData"],
        _dt(e["StartTime"]),
        _dt(e["AnswerTime"]),
        _dt(e["EndTime"]),
        int(e["Duration"]),
        int(e["BillableSeconds"]),
        e["Disposition"],
        e["AMAFlags"],
        e.get("UserField", ""),
        e["UniqueID"],
        cdr.linkedid,
    )


# What a CDR cannot know of these recorded calls (docs/backfill.md says why): the answer
# of the queue agent (the PBX answered the caller first), and of the outside party of a
# click-to-call (the CDR answers when the agent picks up).
CDR_CANNOT_KNOW = {
    "1795727844.17": {"answered_at"},  # 07 queue
    "1796475814.75": {"answered_at"},  # 45 queue (chan_sip)
    "1795727960.138": {"answered_at"},  # 14 click-to-call
    "1796475904.90": {"answered_at"},  # 50 click-to-call (chan_sip)
}
EXACT = (
    "call_id",
    "direction",
    "external",
    "did",
    "extension",
    "answered",
    "disposition",
    "transfers",
    "rang",
    "final_extension",
    "pbx",
    "forwarded_to",
    "joined_with",
)


def differences(
    cdr: CallRecord, live: CallRecord, *, slack_s: float = 1.0, did: bool = True
) -> list[str]:
    """How a record made from the CDR differs from the tracker's beyond what a CDR
    cannot know: every field equal, each time within ``slack_s`` (CDR times are cut to
    the second), the same flags with a reason each; the DID (and its "did-unknown" flag)
    only when the source has it (``did``)."""
    got, want = cdr.to_json(), live.to_json()
    out = [
        f"{k}: cdr {got.get(k)!r} != live {want.get(k)!r}"
        for k in EXACT
        if got.get(k) != want.get(k) and (did or k != "did")
    ]
    flags = [[f for f in r["flags"] if did or f != "did-unknown"] for r in (got, want)]
    if flags[0] != flags[1]:
        out.append(f"flags: cdr {got['flags']} != live {want['flags']}")
    if sorted(got.get("reasons", {})) != sorted(got["flags"]):
        out.append(f"reasons: {got.get('reasons')} for flags {got['flags']}")
    skip = CDR_CANNOT_KNOW.get(live.call_id, set())
    for k in ("started_at", "answered_at", "ended_at"):
        a, b = getattr(cdr, k), getattr(live, k)
        if k in skip or (a is None and b is None):
            continue
        if a is None or b is None or abs(a - b) >= slack_s:
            out.append(f"{k}: cdr {got[k]} vs live {want[k]}")
    if got.get("source") != "cdr":
        out.append(f"source: {got.get('source')!r}")
    return out
