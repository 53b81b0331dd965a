"""Asterisk's call detail records (CDR) -> the same ``CallRecord`` the live tracker builds.

Pure: rows in, records out; no I/O, no clock. The sources that read the rows
(``Master.csv``, MySQL/MariaDB, PostgreSQL) are in ``telephony/cdr_sources.py``.

Why the CDR: AMI has no replay, so a call that ends while the bridge is away (restart,
crash, cut link) is gone from the event stream; Asterisk still writes its CDR. A record
made here carries the call's Linkedid as its ``call_id``, exactly as the live path does,
so the job id (``call:{pbx}:{call_id}``) is the same and the worker's ledger delivers a
call seen both live and in the CDR once, whichever comes first.

What a CDR row is (Asterisk 12+, ``main/cdr.c``): one row per *pair* of channels that
met: party A (``channel``, ``uniqueid``) and the party B it dialled or was bridged to
(``dstchannel``), with ``start`` (A's CDR began), ``answer``, ``end``, ``duration`` =
end - start and ``billsec`` = end - answer (both whole seconds, cut, not rounded),
``disposition`` (how *that* dial ended), ``src``/``dst``/``dcontext`` (A's caller id and
the extension and context where A's dialplan last was), ``lastapp``/``lastdata``
(``Dial`` and its argument). A call is several rows: a ring group or queue has one per
phone tried; a transfer starts new rows for the caller; each Local channel pair adds
rows of its ``;2`` half. Every row of a call carries the call's ``linkedid`` where the
backend logs it.

How rows become calls (``group_calls``): rows sharing a ``linkedid`` or a ``uniqueid``
are one group; so are rows that name the same channel (one row's ``dstchannel`` is
another's ``channel``, or the two halves ``;1``/``;2`` of a Local pair) while both rows'
times overlap (channel names repeat after an Asterisk restart). That joins a call
without ``linkedid`` (``Master.csv`` without ``newcdrcolumns``) and the two Linkedids
of an attended transfer made from a second line, as the tracker merges them. The group's
id is its oldest Linkedid, else its oldest ``uniqueid`` (the first channel's, which is
the Linkedid Asterisk gave the call): ``1795727781.0`` < ``1795727781.10``. A group is
one call, but for callers an agent joined (``calls_apart``): as live, each caller keeps
a call of its own, its id its channel's ``uniqueid``, and the two name each other.

What each field of the record comes from, with the same ``[calls]`` rules
(``CallRules``) as the tracker:

- the *root* rows: those whose party A is the call's first channel. Direction: ``in``
  when it is a trunk (``channel_kind``: the ``phones`` table, ``phone_channel_pattern``,
  ``extension_pattern``, then ``trunk_channel_pattern``) or its first row's ``dcontext``
  is an inbound context; else ``out`` when any leg is a trunk; else ``internal``.
- external: ``src`` of the root (in); the number in the trunk leg's ``Dial`` argument,
  else its ``dst`` (out); E.164 by ``default_country``.
- DID (in): the ``did`` column where the backend has one (FreePBX's
  ``asteriskcdrdb.cdr``, or ``Set(CDR(did)=...)`` with a ``did`` column in a
  ``cdr_pgsql``/``cdr_adaptive_odbc`` table); else ``dst`` of a root row whose
  ``dcontext`` is an inbound context; else null (a dialplan that leaves the inbound
  context before dialling leaves no DID in ``Master.csv``).
- who answered: the phone behind the first leg of the outside party (through Local
  pairs) that a *person* answered (``ANSWERED`` to a phone, or to an outside number the
  call was forwarded to: then the phone that rang before, whose forward it is): never the
  PBX answering the trunk for an IVR or a queue. A phone whose call another phone picked
  up (directed or group pickup, INVITE with Replaces) did not answer it, though its row
  may say ``ANSWERED``: Asterisk gives the picked channel a row of its own that reached
  nobody, and the caller's next row goes to the picker, who answered (and never rang).
- times: ``started_at`` = the earliest row's ``start``; ``ended_at`` = the latest row's
  ``end`` (``start`` + ``duration`` where the backend has no ``end`` column);
  ``answered_at`` = that answering leg's ``answer`` (else its end - billsec): ring and
  talk are then each right to the second.
- disposition: answered; else a leg that rang out (``NO ANSWER``, ``CANCEL``) before a
  busy one (``BUSY``) before an unreachable one (``FAILED``, ``CONGESTION``), as the
  tracker orders them.
- transfers: the outside party's legs in order: a leg to another agent that begins once
  the current agent's leg is over (not a queue member ringing beside it) is a transfer;
  blind when the outside party ran the dialplan again for it (another
  ``lastapp``/``lastdata``), attended when only its bridge changed. The conversation with
  another caller an agent joined it with is an attended transfer to that caller's number.
- ``rang``: every phone dialled, in order (not a picker); ``final_extension``: the agent
  of the last answered leg of the outside party (null when that was another caller).
- ``forwarded_to``: the outside number a leg of an inbound caller dialled before anyone
  answered (a forward: one inbound call, the extension whose forward it is).
- ``flags``/``reasons``: what the rows cannot tell, as the tracker flags it
  (``did-unknown``, ``direction-guessed``, ``extension-unknown``).

What a CDR cannot know, and the record then says instead:

- times are whole seconds (the PBX cuts them): each time is up to 1 s early, 2 s for
  ``ended_at`` without an ``end`` column; ring and talk within 1 s;
- the answer of an agent in a queue, or after an IVR, when the PBX answered the caller
  first: the answering leg's billsec counts from when the queue offered the call to that
  agent, so ``answered_at`` is that moment, not the agent's pickup (the agent's own ring
  counts as talk);
- click-to-call (the agent's phone rung first by Originate, recognised by the caller id
  the bridge gives that leg, the dialled number itself, as ``src`` = ``dst``): the CDR
  answers when the agent picks up; the call starts then, and the outside party's ring is
  not known: ``answered_at`` = ``started_at``, talk = billsec;
- calls not logged at all: an unanswered call that never dialled anyone (an IVR hangup)
  with ``cdr.conf`` ``unanswered = no`` (the default), or ``congestion = no``;
- which agent pressed which key: a transfer's ``from`` is the agent who had the caller,
  its ``to`` the next one; a transfer made while nobody had answered is not one;
- a phone whose channel name looks like a trunk (``PJSIP/ivan-0001``,
  ``SIP/150010001-...``): the tracker tells it from the context it was created in, or its
  caller id, which the CDR does not log for a dialled phone: name it in ``[calls] phones``
  or ``phone_channel_pattern``, or give phones extension-like endpoint names;
- the extension of a phone that ``phone_channel_pattern`` (without a group) leaves to its
  caller id, unless it has rows of its own (``src``) or a ``Local/<ext>@...`` dialled it;
- a join of an outbound call's outside party (it was dialled, so no caller of its own):
  the two calls come out as one.

docs/backfill.md has the same, measured on the recorded calls.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from typing import Literal

from telephony.phones import to_e164
from telephony.records import CallRecord, Direction, Disposition, Transfer, TransferKind
from telephony.rules import CallRules
from telephony.tracker_state import LOCAL, PHONE, TRUNK, ChannelKind, Rule, channel_kind

__all__ = [
    "CdrCall",
    "CdrRow",
    "CdrRowError",
    "Joined",
    "backfill",
    "calls_apart",
    "calls_ended_in",
    "group_calls",
    "make_row",
    "records_of",
]

ANSWERED = "ANSWERED"
_NO_ANSWER = frozenset({"NO ANSWER", "CANCEL"})
_BUSY = frozenset({"BUSY"})
_FAILED = frozenset({"FAILED", "CONGESTION"})

# Column names as the CDR engine, the AMI ``Cdr`` event and FreePBX spell them -> ours.
_ALIASES = {
    "calldate": "start",
    "starttime": "start",
    "answertime": "answer",
    "endtime": "end",
    "source": "src",
    "destination": "dst",
    "destinationcontext": "dcontext",
    "callerid": "clid",
    "destinationchannel": "dstchannel",
    "lastapplication": "lastapp",
    "billableseconds": "billsec",
    "uniqueid": "uniqueid",
    "userfield": "userfield",
}
_UID = re.compile(r"([0-9]+)\.([0-9]+)$")
_NUMBER_RUN = re.compile(r"\+?[0-9]{5,}")
_CHANNEL_SEQ = re.compile(r"-([0-9a-fA-F]+)(?:;[12])?$")


class CdrRowError(ValueError):
    """A row that cannot be used (a missing or unreadable field); the message says which."""


@dataclass(frozen=True, slots=True)
class CdrRow:
    """One CDR row, the fields the mapping reads; times in Unix seconds."""

    start: float
    end: float
    billsec: float
    disposition: str  # as Asterisk spells it: ANSWERED, NO ANSWER, BUSY, FAILED, ...
    channel: str
    dstchannel: str = ""
    src: str = ""
    dst: str = ""
    dcontext: str = ""
    lastapp: str = ""
    lastdata: str = ""
    uniqueid: str = ""
    linkedid: str = ""
    did: str = ""
    answer: float | None = None  # None where the backend has no answer column

    @property
    def answered_at(self) -> float:
        """When this leg was answered: its ``answer`` (cut to the second like ``start``,
        so ring = answer - start is right to the second), else end - billsec."""
        at = self.answer if self.answer is not None else self.end - self.billsec
        return min(max(at, self.start), self.end)


@dataclass(frozen=True, slots=True)
class Joined:
    """Another caller's call that an agent put this call's caller through to."""

    call_id: str
    channel: str  # that caller's channel
    number: str  # its caller id (``src``), as the CDR has it


@dataclass(frozen=True, slots=True)
class CdrCall:
    """The rows of one call, in order; ``call_id`` is "" when no row has an id.

    ``joined``/``shared``: the callers an agent joined this call's caller with, and the
    rows of their calls in which this call's caller is party B (the conversation after
    the join is one row, written on the older caller's channel)."""

    call_id: str
    rows: tuple[CdrRow, ...]
    ids: frozenset[str] = field(default=frozenset())  # every linkedid and uniqueid in it
    joined: tuple[Joined, ...] = ()
    shared: tuple[CdrRow, ...] = ()

    @property
    def started_at(self) -> float:
        return min(r.start for r in self.rows)

    @property
    def ended_at(self) -> float:
        return max(r.end for r in self.rows + self.shared)


# --- rows ---------------------------------------------------------------------------------


def make_row(
    values: Mapping[str, object], tz: tzinfo | None = None, fallback_encoding: str = "cp1251"
) -> CdrRow:
    """A row from one CDR line or table row (column name -> value).

    Values may be text (``Master.csv``), bytes (text columns read raw, decoded here: UTF-8,
    else ``fallback_encoding``), ``datetime``, numbers or None. Times without a zone are
    the PBX's local time: ``tz`` (None: this host's zone). CdrRowError: unusable."""
    v = {_ALIASES.get(k.lower(), k.lower()): x for k, x in values.items()}

    def text(name: str) -> str:
        x = v.get(name)
        if x is None:
            return ""
        if isinstance(x, bytes | bytearray | memoryview):
            raw = bytes(x)
            try:
                return raw.decode("utf-8").strip()
            except UnicodeDecodeError:
                return raw.decode(fallback_encoding, errors="replace").strip()
        return str(x).strip()

    def number(name: str) -> float | None:
        x = v.get(name)
        if x is None or x == "":
            return None
        try:
            n = float(x if isinstance(x, int | float) else text(name))
        except (TypeError, ValueError):
            raise CdrRowError(f"{name} is not a number: {text(name)!r}") from None
        if n != n or n < 0:  # NaN or negative
            raise CdrRowError(f"{name} is not a duration: {text(name)!r}")
        return n

    start = _time(v.get("start"), tz, "start")
    if start is None:
        raise CdrRowError("no start time")
    end = _time(v.get("end"), tz, "end")
    if end is None:
        duration = number("duration")
        if duration is None:
            raise CdrRowError("neither an end time nor a duration")
        end = start + duration
    if end < start:
        raise CdrRowError("ends before it starts")
    billsec = min(number("billsec") or 0.0, end - start)
    answer = _time(v.get("answer"), tz, "answer")
    channel = text("channel")
    if not channel:
        raise CdrRowError("no channel")
    return CdrRow(
        start=start,
        end=end,
        billsec=billsec,
        disposition=text("disposition").upper(),
        channel=channel,
        dstchannel=text("dstchannel"),
        src=text("src"),
        dst=text("dst"),
        dcontext=text("dcontext"),
        lastapp=text("lastapp"),
        lastdata=text("lastdata"),
        uniqueid=text("uniqueid"),
        linkedid=text("linkedid"),
        did=text("did"),
        answer=answer,
    )


def _time(x: object, tz: tzinfo | None, name: str) -> float | None:
    """Unix seconds of a CDR time: a datetime, ``2026-11-26 21:16:21`` or epoch seconds;
    None for an empty one (and MySQL's zero date)."""
    if x is None:
        return None
    if isinstance(x, int | float):
        return float(x) if x > 0 else None
    if isinstance(x, bytes):
        x = x.decode("ascii", errors="replace")
    if isinstance(x, str):
        s = x.strip()
        if not s or s.startswith("0000-00-00"):
            return None
        try:
            x = datetime.fromisoformat(s)
        except ValueError:
            raise CdrRowError(f"{name} is not a time: {s!r}") from None
    if not isinstance(x, datetime):
        raise CdrRowError(f"{name} is not a time: {x!r}")
    if x.tzinfo is None:
        x = x.replace(tzinfo=tz) if tz is not None else x.astimezone()
    return x.timestamp()


# --- grouping -----------------------------------------------------------------------------


def _uid_order(uid: str) -> tuple[int, int, int, str]:
    """Asterisk ids are ``<epoch>.<sequence>``: the older channel sorts first."""
    m = _UID.search(uid)
    return (0, int(m.group(1)), int(m.group(2)), uid) if m else (1, 0, 0, uid)


def _channel_key(name: str) -> str:
    """One key for both halves of a Local pair (``...;1`` and ``...;2``)."""
    return name[:-2] if name.startswith("Local/") and name[-2:] in (";1", ";2") else name


class _Sets:
    """Union-find over row indexes: which rows are one call."""

    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        parent = self.parent
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def groups(self) -> dict[int, list[int]]:
        out: dict[int, list[int]] = {}
        for i in range(len(self.parent)):
            out.setdefault(self.find(i), []).append(i)
        return out


def _row_order(r: CdrRow) -> tuple[float, float, tuple[int, int, int, str]]:
    return (r.start, r.end, _uid_order(r.uniqueid))


def group_calls(rows: Iterable[CdrRow]) -> list[CdrCall]:
    """Rows -> groups of connected rows (see the module doc), ordered by the time each
    ended. A group is one call, or the calls of callers an agent joined (``calls_apart``)."""
    rows = list(rows)
    sets = _Sets(len(rows))
    first_with: dict[tuple[str, str], int] = {}
    for i, r in enumerate(rows):
        for key in (("L", r.linkedid), ("U", r.uniqueid)):
            if key[1]:
                sets.union(i, first_with.setdefault(key, i))
    # A channel name's rows, by start: those whose times overlap (1 s slack) are one channel.
    current: dict[str, tuple[float, int]] = {}  # name -> (end of its current run, a row)
    for i in sorted(range(len(rows)), key=lambda i: (rows[i].start, rows[i].end)):
        r = rows[i]
        for name in {_channel_key(r.channel), _channel_key(r.dstchannel)} - {""}:
            run = current.get(name)
            if run is not None and r.start <= run[0] + 1:
                sets.union(i, run[1])
                current[name] = (max(run[0], r.end), run[1])
            else:
                current[name] = (r.end, i)
    calls = []
    for members in sets.groups().values():
        group = sorted((rows[i] for i in members), key=_row_order)
        linked = [r.linkedid for r in group if r.linkedid]
        uids = [r.uniqueid for r in group if r.uniqueid]
        call_id = min(linked or uids, key=_uid_order) if (linked or uids) else ""
        calls.append(CdrCall(call_id, tuple(group), frozenset(linked + uids)))
    calls.sort(key=lambda c: (c.ended_at, _uid_order(c.call_id)))
    return calls


def calls_ended_in(calls: Iterable[CdrCall], since: float, until: float) -> list[CdrCall]:
    """The calls whose last row ended in ``[since, until]``."""
    return [c for c in calls if since <= c.ended_at <= until]


# --- callers an agent joined: two calls -----------------------------------------------------


def _kind_a(rules: CallRules, row: CdrRow) -> tuple[ChannelKind, str | None, Rule]:
    """Party A's kind. ``dcontext`` is where its dialplan *ended* (a transferred trunk
    ends in from-internal), so it only tells a phone with a trunk-like name, whose caller
    id is an extension, from a trunk."""
    context = row.dcontext if rules.is_extension(row.src) else ""
    return channel_kind(rules, row.channel, context, row.src)


def _callers(rows: tuple[CdrRow, ...], rules: CallRules) -> dict[str, int]:
    """The outside callers among a group's channels, each with the index of its first
    row: a trunk that is party A of rows of its own and that no earlier row dialled (the
    first channel of a call of its own: inbound, or a callback)."""
    first: dict[str, int] = {}
    dialled: dict[str, float] = {}
    for i, r in enumerate(rows):
        first.setdefault(r.channel, i)
        if r.dstchannel:
            dialled[r.dstchannel] = min(dialled.get(r.dstchannel, r.start), r.start)
    return {
        ch: i
        for ch, i in first.items()
        if dialled.get(ch, math.inf) > rows[i].start and _kind_a(rules, rows[i])[0] == TRUNK
    }


def calls_apart(call: CdrCall, rules: CallRules) -> list[CdrCall]:
    """The calls the tracker reports for one group of rows: one, unless the group holds
    several callers. An agent who joins two callers (an attended transfer of one to the
    other) leaves both calls in one group: Asterisk gives the younger caller's channel
    the older one's Linkedid (its rows carry it), and writes their conversation after the
    join as a row from the older caller's channel to the younger's. Each caller keeps a
    call of its own, as live: its id is the caller's ``uniqueid`` (the Linkedid Asterisk
    gave its call), its rows those reached from its channel, and the calls name each other
    (``joined``); the join row is the older one's, and ``shared`` with the younger."""
    rows = call.rows
    callers = _callers(rows, rules)
    if len(callers) < 2:
        return [call]

    def into_another_caller(r: CdrRow) -> bool:
        return r.dstchannel in callers and r.dstchannel != r.channel

    # The rows reached from each caller: by channel and uniqueid, not linkedid (a join moved
    # it), and not across a row into another caller's channel (the join).
    sets = _Sets(len(rows))
    first_with: dict[tuple[str, str], int] = {}
    for i, r in enumerate(rows):
        keys = [("U", r.uniqueid), ("C", _channel_key(r.channel))]
        if r.dstchannel and not into_another_caller(r):
            keys.append(("C", _channel_key(r.dstchannel)))
        for key in keys:
            if key[1]:
                sets.union(i, first_with.setdefault(key, i))
    # One piece per caller; its id the caller's uniqueid (the oldest, should one piece
    # hold two). Rows reached from no caller go with the caller whose id is their
    # linkedid, else with the oldest caller.
    caller_of: dict[int, str] = {}  # piece -> its caller's channel
    for ch in sorted(callers, key=lambda ch: _uid_order(rows[callers[ch]].uniqueid)):
        caller_of.setdefault(sets.find(callers[ch]), ch)
    id_of = {p: rows[callers[ch]].uniqueid for p, ch in caller_of.items()}
    piece_with_id = {cid: p for p, cid in id_of.items() if cid}
    oldest = min(caller_of, key=lambda p: _uid_order(id_of[p]))
    pieces: dict[int, list[int]] = {p: [] for p in caller_of}
    for root, members in sets.groups().items():
        if root not in pieces:
            lids = sorted(
                {rows[i].linkedid for i in members} & piece_with_id.keys(), key=_uid_order
            )
            root = piece_with_id[lids[0]] if lids else oldest
        pieces[root] += members
    piece_of = {i: p for p, members in pieces.items() for i in members}
    joined: dict[int, dict[int, None]] = {p: {} for p in pieces}  # piece -> joined pieces
    shared: dict[int, list[CdrRow]] = {p: [] for p in pieces}
    for i, r in enumerate(rows):
        mine = piece_of[i]
        others = []
        if into_another_caller(r):
            other = piece_of[callers[r.dstchannel]]
            if other != mine:
                shared[other].append(r)
                others.append(other)
        if r.channel in callers and r.linkedid in piece_with_id:
            others.append(piece_with_id[r.linkedid])  # its Linkedid moved: a bridge joined them
        for other in others:
            if other != mine:
                joined[mine][other] = None
                joined[other][mine] = None
    every_id = set(piece_with_id)
    out = []
    for p, members in pieces.items():
        own = tuple(rows[i] for i in sorted(members))
        ids = {r.uniqueid for r in own if r.uniqueid} | {r.linkedid for r in own if r.linkedid}
        out.append(
            CdrCall(
                id_of[p],
                own,
                frozenset(ids - (every_id - {id_of[p]})),
                tuple(
                    Joined(id_of[q], caller_of[q], rows[callers[caller_of[q]]].src)
                    for q in joined[p]
                ),
                tuple(sorted(shared[p], key=_row_order)),
            )
        )
    out.sort(key=lambda c: (c.ended_at, _uid_order(c.call_id)))
    return out


# --- one call -> its record ---------------------------------------------------------------


@dataclass(slots=True)
class _Leg:
    """One row seen from the outside party: who it reached and whether they answered."""

    row: CdrRow
    agent: str | None  # the extension on the other side (through Local pairs)
    target: str | None  # the agent, else the outside number the leg dialled
    answered: bool  # a person answered it
    answered_at: float
    picked: bool = False  # its phone rang, and another phone picked the call up
    pickup: bool = False  # the leg of the phone that picked it up (it never rang)
    forward: str | None = None  # the outside number it dialled (a forward, a transfer out)
    joined: bool = False  # the conversation with another caller an agent joined it with


class _Call:
    """One call's rows, asked questions in the tracker's terms."""

    def __init__(self, call: CdrCall, rules: CallRules) -> None:
        self.call = call
        self.rules = rules
        self.by_channel: dict[str, list[CdrRow]] = {}
        for r in call.rows:
            self.by_channel.setdefault(r.channel, []).append(r)
        root = [r for r in call.rows if r.uniqueid and r.uniqueid == call.call_id]
        self.root = root or self.by_channel[call.rows[0].channel]
        self.partners = {j.channel: j for j in call.joined}

    def kind_a(self, row: CdrRow) -> tuple[ChannelKind, str | None]:
        kind, ext, _ = _kind_a(self.rules, row)
        return kind, ext

    def kind_b(self, row: CdrRow) -> tuple[ChannelKind | None, str | None]:
        """Party B's kind. A phone whose extension only its caller id tells (a
        ``phone_channel_pattern`` without a group) has it from the ``src`` of its own
        rows (it placed or transferred a call), else from the Local ``<ext>@...`` that
        dialled it; a phone only ever dialled directly has none in the CDR."""
        if not row.dstchannel:
            return None, None
        own = self.by_channel.get(row.dstchannel)
        kind, ext, _ = channel_kind(self.rules, row.dstchannel, "", own[0].src if own else "")
        if kind == PHONE and ext is None:
            by, local_ext = self.kind_a(row)
            ext = local_ext if by == LOCAL else None
        return kind, ext

    def reached(self, row: CdrRow, depth: int = 0) -> tuple[str | None, CdrRow | None, str | None]:
        """The extension party B of ``row`` stands for, the row where a person answered
        for it (None: nobody), and the outside number it dialled (a forward): a phone;
        through a Local pair, what its ``;2`` half reached (an outside number dialled by
        a Local, follow-me: the Local's extension's forward); an outside line."""
        kind, ext = self.kind_b(row)
        answered = row.disposition == ANSWERED
        if kind == PHONE:
            return ext, row if answered else None, None
        if kind == TRUNK:
            via_local = self.kind_a(row)
            agent = via_local[1] if via_local[0] == LOCAL else None
            return (
                agent,
                row if answered else None,
                _dialled_number(row, self.rules.default_country),
            )
        if kind == LOCAL and depth < 8:
            two = row.dstchannel[:-1] + "2" if row.dstchannel.endswith(";1") else ""
            legs = self.by_channel.get(two, [])
            found: str | None = None
            number = None
            for leg in sorted(legs, key=lambda r: r.disposition != ANSWERED):
                agent, leaf, dialled = self.reached(leg, depth + 1)
                if leaf is not None and answered:
                    return agent or ext, leaf, dialled
                found = found or agent
                number = number or dialled
            return found or ext, None, number
        return None, None, None

    def legs(self, anchor: str) -> list[_Leg]:
        """Every row the outside party's channel ``anchor`` took part in, in order (the
        join rows of a joined call too)."""
        out: list[_Leg] = []
        country = self.rules.default_country
        for r in sorted(self.call.rows + self.call.shared, key=_row_order):
            if anchor not in (r.channel, r.dstchannel):
                continue
            partner = self.partners.get(r.dstchannel if r.channel == anchor else r.channel)
            if partner is not None:  # the conversation with another caller, joined
                answered = r.disposition == ANSWERED
                out.append(
                    _Leg(
                        r,
                        None,
                        to_e164(partner.number, country),
                        answered,
                        r.answered_at if answered else r.end,
                        joined=True,
                    )
                )
                continue
            number = None
            if r.channel == anchor:
                agent, leaf, number = self.reached(r)
                target = agent
                kind = self.kind_b(r)[0]
                picked = kind == PHONE and self.picked(r)
                if picked:
                    leaf = None
                if kind == TRUNK and agent is None:
                    # forwarded outside: on behalf of the phone that rang before
                    target = number
                    agent = next(
                        (x.agent for x in reversed(out) if x.agent and not x.answered), None
                    )
            else:  # an outbound call's trunk, as party B
                agent = self.agent_a(r)
                leaf = r if r.disposition == ANSWERED else None
                target = agent
                picked = False
            at = leaf.answered_at if leaf is not None else r.end
            leg = _Leg(r, agent, target, leaf is not None, at, picked=picked, forward=number)
            before = out[-1] if out else None
            leg.pickup = (
                before is not None
                and before.picked
                and self.kind_b(r)[0] == PHONE
                and (r.lastapp, r.lastdata) == (before.row.lastapp, before.row.lastdata)
            )
            out.append(leg)
        return out

    def picked(self, row: CdrRow) -> bool:
        """The phone ``row`` dialled never answered: another phone picked the call up
        (directed or group pickup, an INVITE with Replaces). Asterisk then gives the
        ringing phone's channel a row of its own (``AppDial``, to the pickup code) that
        reached nobody, and the caller's next row goes to the picking phone."""
        own = self.by_channel.get(row.dstchannel, [])
        return bool(own) and all(not r.dstchannel and r.disposition != ANSWERED for r in own)

    def agent_a(self, row: CdrRow) -> str | None:
        kind, ext = self.kind_a(row)
        return ext if kind in (PHONE, LOCAL) else None

    def direction(self) -> Direction:
        first = self.root[0]
        inbound, internal = self.rules.inbound_contexts, self.rules.internal_contexts
        if self.kind_a(first)[0] == TRUNK or (
            first.dcontext in inbound and first.dcontext not in internal
        ):
            return "in"
        for r in self.call.rows:
            if self.kind_b(r)[0] == TRUNK or (r is not first and self.kind_a(r)[0] == TRUNK):
                return "out"
        return "internal"


def _dialled_number(row: CdrRow, country: str) -> str | None:
    """The outside number a leg dialled: from the ``Dial`` argument
    (``PJSIP/79031112233@trunk,60,tT``), else ``dst``."""
    for m in _NUMBER_RUN.finditer(row.lastdata):
        number = to_e164(m.group(0), country)
        if number:
            return number
    return to_e164(row.dst, country)


def _disposition(legs: Iterable[_Leg], root: Iterable[CdrRow]) -> Disposition:
    """Why an unanswered call was not answered, in the tracker's order (tracker_state)."""
    seen = {leg.row.disposition for leg in legs if leg.row.dstchannel}
    if seen & (_NO_ANSWER | {ANSWERED}):  # ANSWERED by no person: voicemail, an IVR
        return "no-answer"
    if seen & _BUSY:
        return "busy"
    if seen & _FAILED:
        return "failed"
    last = [r.disposition for r in root][-1]
    return "busy" if last in _BUSY else "failed" if last in _FAILED else "no-answer"


def _transfers(legs: list[_Leg]) -> tuple[Transfer, ...]:
    """A leg to someone else that begins once the current agent's leg is over (within
    the second both times are cut to): not a queue member or ring group phone that rang
    beside it."""
    out: list[Transfer] = []
    current: _Leg | None = None
    for leg in legs:
        if leg.target is None:
            continue
        if (
            current is not None
            and leg.target != current.agent
            and (leg.row.start >= current.row.end - 1)
        ):
            same_dialplan = (leg.row.lastapp, leg.row.lastdata) == (
                current.row.lastapp,
                current.row.lastdata,
            )
            kind: TransferKind = "attended" if leg.joined or same_dialplan else "blind"
            out.append(Transfer(current.agent, leg.target, kind))
        if (
            leg.answered
            and leg.agent is not None
            and (current is None or leg.agent != current.agent)
        ):
            current = leg
    return tuple(out)


def records_of(call: CdrCall, rules: CallRules, pbx: str = "default") -> list[CallRecord]:
    """The records the live tracker would have made of a group of rows (``group_calls``):
    one per call ``calls_apart`` finds in it. ValueError: a call has no id."""
    return [_record(part, rules, pbx) for part in calls_apart(call, rules)]


def _record(call: CdrCall, rules: CallRules, pbx: str) -> CallRecord:
    """The record the live tracker would have made of one call (see the module doc for
    what differs)."""
    if not call.call_id:
        raise ValueError("a CDR call without uniqueid or linkedid cannot be matched")
    c = _Call(call, rules)
    country = rules.default_country
    first = c.root[0]
    direction = c.direction()
    started = call.started_at
    ended = call.ended_at
    external: str | None = None
    did: str | None = None
    if direction == "in":
        anchor = first.channel
        external = to_e164(first.src, country)
        dialled = next((r.did for r in c.root if r.did), "") or next(
            (r.did for r in call.rows if r.did), ""
        )
        if not dialled:
            dialled = next((r.dst for r in c.root if r.dcontext in rules.inbound_contexts), "")
        did = to_e164(dialled, country)
        dialler = None
    else:
        dialler = c.agent_a(first)
        trunk_leg = next((r for r in call.rows if c.kind_b(r)[0] == TRUNK), None)
        anchor = trunk_leg.dstchannel if direction == "out" and trunk_leg else first.channel
        if direction == "out" and trunk_leg is not None:
            external = _dialled_number(trunk_leg, country)
    legs = c.legs(anchor)
    if direction == "out":
        answers = [leg for leg in legs if leg.answered and leg.row.dstchannel == anchor]
    else:
        answers = [
            leg for leg in legs if leg.answered and leg.row.channel == anchor and not leg.joined
        ]
    answers.sort(key=lambda leg: leg.answered_at)
    answered_at = answers[0].answered_at if answers else None
    extension = dialler
    forwarded_to = None
    if direction == "in":
        extension = answers[0].agent if answers else None
        # the outside number it was dialled on to before anyone answered (the last one)
        until = answers[0].row.start if answers else math.inf
        for leg in legs:
            if leg.forward and leg.row.channel == anchor and leg.row.start <= until:
                forwarded_to = leg.forward
    if direction == "out" and _click_to_call(c, first):
        started = first.answered_at  # the agent's pickup: the PBX dials out from then on
        answered_at = started if answered_at is not None else None
    # who had the outside party last: the agent of its last answered leg (None when that
    # was another outside party it was joined with)
    answered_legs = sorted((leg for leg in legs if leg.answered), key=lambda leg: leg.answered_at)
    final = answered_legs[-1].agent if answered_legs else None
    if answered_at is not None:
        answered_at = min(max(answered_at, started), ended)
    pickups = {id(leg.row) for leg in legs if leg.pickup}
    rang: list[str] = []
    for r in sorted(call.rows, key=lambda r: (r.start, _channel_seq(r.dstchannel))):
        kind, ext = c.kind_b(r)
        if kind == PHONE and ext and ext not in rang and id(r) not in pickups:
            rang.append(ext)
    reasons = _unknowns(c, first, direction, did, extension)
    return CallRecord(
        call_id=call.call_id,
        direction=direction,
        external=external if direction != "internal" else None,
        did=did if direction == "in" else None,
        extension=extension,
        answered=answered_at is not None,
        started_at=started,
        answered_at=answered_at,
        ended_at=ended,
        disposition="answered" if answered_at is not None else _disposition(legs, c.root),
        transfers=_transfers(legs),
        rang=tuple(rang),
        final_extension=final,
        flags=tuple(reasons),
        pbx=pbx,
        source="cdr",
        forwarded_to=forwarded_to,
        joined_with=tuple(j.call_id for j in call.joined),
        reasons=tuple(reasons.items()),
    )


def _unknowns(
    c: _Call, first: CdrRow, direction: Direction, did: str | None, extension: str | None
) -> dict[str, str]:
    """What the rows could not tell, flagged as the tracker flags it (flag -> why)."""
    out: dict[str, str] = {}
    kind, _, rule = _kind_a(c.rules, first)
    if direction == "internal" and rule == Rule.NONE:
        out["direction-guessed"] = (
            f"the call started on {first.channel}, which no [calls] rule makes a trunk or "
            "a phone; taken as internal"
        )
    if direction == "in" and did is None:
        out["did-unknown"] = (
            f"the CDR has no did for it, and the caller's dst {first.dst!r} (context "
            f"{first.dcontext!r}) is no number dialled in one of [calls] inbound_contexts"
        )
    if direction != "in" and extension is None and kind != TRUNK:
        out["extension-unknown"] = (
            f"the call was placed from {first.channel}, which no [calls] rule makes a phone"
        )
    return out


def _click_to_call(c: _Call, first: CdrRow) -> bool:
    """Originate rang the agent's phone first: its leg is party A, and its caller id is
    the number it dials (the bridge's ``[originate] caller_id`` default)."""
    return (
        c.kind_a(first)[0] == PHONE
        and c.kind_b(first)[0] == TRUNK
        and bool(first.src)
        and first.src == first.dst
        and not c.rules.is_extension(first.src)
    )


def _channel_seq(name: str) -> int:
    m = _CHANNEL_SEQ.search(name)
    return int(m.group(1), 16) if m else 0


SkipReason = Literal["no id", "known"]


def backfill(
    calls: Iterable[CdrCall],
    rules: CallRules,
    *,
    pbx: str = "default",
    skip: Collection[str] = (),
) -> tuple[list[CallRecord], dict[SkipReason, int]]:
    """The records of the calls the bridge did not see end, and how many calls were left
    out and why: "known" (one of their ids is in ``skip``: the tracker has the call live,
    so its CDR is not complete yet, or the live path reported it), "no id" (rows without
    ``uniqueid``: nothing to match the live path's call id with)."""
    out: list[CallRecord] = []
    skipped: dict[SkipReason, int] = {}
    for group in calls:
        parts = calls_apart(group, rules) if group.call_id else [group]
        for call in parts:
            reason: SkipReason | None = None
            if not call.call_id:
                reason = "no id"
            elif call.call_id in skip or any(i in skip for i in call.ids):
                reason = "known"
            if reason is not None:
                skipped[reason] = skipped.get(reason, 0) + 1
                continue
            out.append(_record(call, rules, pbx))
    return out, skipped
