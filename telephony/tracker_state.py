"""The call tracker's working state: one ``Channel`` per live Asterisk channel, one
``Call`` per group of channels (a Linkedid, or several after an attended transfer), and
the one place where a finished ``Call`` becomes a ``CallRecord``.

Kept apart from the event handlers (``tracker.py``) so that what is remembered about a
call, and how it turns into the public record, reads in one screen.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import IntEnum

from telephony.records import CallRecord, Direction, Disposition, Transfer
from telephony.rules import CallRules


class ChannelKind(IntEnum):
    """What a channel is, from its name and the context it was created in (see CallRules)."""

    TRUNK = 0  # an outside line: the caller of an inbound call, the callee of an outbound one
    PHONE = 1  # an extension's phone
    LOCAL = 2  # half of a Local channel pair (ring groups, queues, follow-me, originate)
    OTHER = 3  # anything else (Snoop, Announcer, ConfBridge...): part of the call, never an agent


class Rule(IntEnum):
    """Which [calls] rule classified a channel (rules.py, in the order they are tried)."""

    LOCAL = 0  # Local/<exten>@<context>
    PHONES_TABLE = 1  # [calls] phones maps its endpoint
    PHONE_PATTERN = 2  # phone_channel_pattern, extension from the pattern
    PHONE_PATTERN_CID = 3  # phone_channel_pattern, extension from the caller ID
    ENDPOINT = 4  # the endpoint matches extension_pattern
    TRUNK_PATTERN = 5  # trunk_channel_pattern
    VIRTUAL = 6  # a technology that is never a phone (ConfBridge, Snoop...)
    CALLER_ID = 7  # none of the above, but its caller ID is an extension
    NONE = 8  # no rule says what it is


# The kinds as plain names, for the tracker's per-event tests: a module global is several
# times cheaper to read than ``ChannelKind.PHONE`` (an attribute of the enum class).
TRUNK = ChannelKind.TRUNK
PHONE = ChannelKind.PHONE
LOCAL = ChannelKind.LOCAL
OTHER = ChannelKind.OTHER

# Channel technologies that are never a person's phone.
_VIRTUAL_TECHS = frozenset(
    {
        "Snoop",
        "Announcer",
        "CBAnn",
        "CBRec",
        "Recorder",
        "Bridge",
        "Message",
        "Multicast",
        "UnicastRTP",
        "AudioSocket",
        "ConfBridge",
        "Parked",
        "Surrogate",
    }
)
_TRAILING_DIGITS = re.compile(r"([0-9]+)#?$")


def channel_kind(
    rules: CallRules, name: str, context: str, callerid: str
) -> tuple[ChannelKind, str | None, Rule]:
    """What a channel is (TRUNK, PHONE, LOCAL, OTHER), the extension it stands for and the
    rule that said so, by the [calls] rules in the order rules.py documents: from its name,
    the context it was created in and its caller id. The tracker asks it of every new
    channel; the CDR mapping (telephony/cdr.py) of the channels a CDR row names."""
    tech, _, rest = name.partition("/")
    is_ext = rules.is_extension
    if tech == "Local":
        exten = rest.rpartition(";")[0].partition("@")[0]
        if is_ext(exten):
            return LOCAL, exten, Rule.LOCAL
        m = _TRAILING_DIGITS.search(exten)  # FreePBX follow-me: Local/FMGL-101#@...
        return LOCAL, (m.group(1) if m and is_ext(m.group(1)) else None), Rule.LOCAL
    endpoint = rest.rpartition("-")[0] or rest
    if rules.phones or rules.phone_re is not None:
        phone, ext, rule = rules.configured_phone(name, endpoint, callerid)
        if phone:
            how = (
                Rule.PHONES_TABLE
                if rule.startswith("[calls] phones")
                else (Rule.PHONE_PATTERN_CID if rule.endswith("caller ID") else Rule.PHONE_PATTERN)
            )
            return PHONE, ext, how
    if is_ext(endpoint):
        return PHONE, endpoint, Rule.ENDPOINT
    if context not in rules.internal_contexts and rules.is_trunk_channel(name):
        return TRUNK, None, Rule.TRUNK_PATTERN
    if tech in _VIRTUAL_TECHS:
        return OTHER, None, Rule.VIRTUAL
    if is_ext(callerid):
        return PHONE, callerid, Rule.CALLER_ID
    return OTHER, None, Rule.NONE


# DialEnd statuses, as Asterisk's DIALSTATUS spells them.
NO_ANSWER_STATUSES = frozenset({"NOANSWER", "CANCEL"})
BUSY_STATUSES = frozenset({"BUSY"})
FAILED_STATUSES = frozenset({"CHANUNAVAIL", "CONGESTION", "INVALIDARGS"})
# Q.850 hangup causes that mean "could not reach" rather than "nobody picked up".
BUSY_CAUSES = frozenset({17})
FAILED_CAUSES = frozenset({1, 2, 3, 20, 27, 28, 34, 38, 41, 42, 44, 58, 88})


@dataclass(slots=True, eq=False)
class Channel:
    """One live Asterisk channel. ``origin`` marks the originating side of a call: the
    caller's own channel, and for click-to-call the agent's leg the PBX rang first."""

    uid: str
    name: str
    kind: ChannelKind
    ext: str | None  # the extension this channel stands for (phone, or Local/<ext>@...)
    how: int  # which [calls] rule made it what it is (``Rule``), for the explanations
    call: Call
    # the ";2" half of a Local pair: it runs <exten>@<context> and dials on (the phone)
    onward_half: bool = False
    origin: bool = False
    parent: Channel | None = None  # the channel that dialled it (for ";2": its ";1")
    sibling: Channel | None = None  # the other half of a Local pair
    answered_child: Channel | None = None  # the leg this channel dialled that answered
    has_rung: bool = False  # seen ringing (DialState RINGING or Newstate Ringing)
    up: bool = False
    dial_status: str | None = None  # how the dial *to* this channel ended
    bridge: str | None = None
    number: str | None = None  # a dialled outside leg's number (E.164)


@dataclass(slots=True, eq=False)
class Call:
    """A call being built. Turned into a ``CallRecord`` once, by ``build_record``."""

    id: str  # the first Linkedid
    first: Channel | None
    started_at: float
    linkedids: tuple[str, ...] = ()  # every Linkedid folded into this call (id first)
    channels: dict[str, Channel] = field(default_factory=dict)  # live channels by Uniqueid
    direction: Direction | None = None  # None: a phone's call, not yet known to go outside
    originated: bool = False  # Originate (click-to-call): the PBX rang the agent first
    dial_started: bool = False  # an originated call has begun dialling its real target
    anchor: Channel | None = None  # the outside party's channel (the first one if internal)
    external: str | None = None
    did: str | None = None
    dialler: str | None = None  # extension that placed an outbound/internal call
    answered_by: str | None = None  # who answered an inbound call
    first_agent: str | None = None  # first extension leg that answered (any direction)
    answered_at: float | None = None
    ended_at: float | None = None
    rang: list[str] = field(default_factory=list)  # extensions that rang, in order (the record's)
    ringing_sent_to: tuple[str, ...] = ()  # extensions a Ringing update went out for
    transfers: tuple[Transfer, ...] = ()
    final_ext: str | None = None
    started_sent: bool = False
    saw_no_answer: bool = False
    saw_busy: bool = False
    saw_failed: bool = False
    dialstatus: str | None = None  # the last DIALSTATUS the dialplan saw
    first_cause: int | None = None  # hangup cause of the first channel
    flags: tuple[str, ...] = ()
    # An inbound call whose first channel was created Down (chan_sip creates every channel
    # Down): not announced until it shows it is a caller (Ring, a dial, the dialplan) and not
    # a channel that Originate is about to dial (a callback).
    awaiting: bool = False
    unlinked: bool = False  # created by an event without Linkedid (Asterisk 13.0-13.4)
    answer_leg: Channel | None = None  # the leg whose answer made the call answered
    connected: bool = False  # the outside party shared a bridge with an agent
    forwarded_to: str | None = None  # outside number an inbound call was dialled on to
    joined_with: tuple[str, ...] = ()  # ids of calls an agent joined this one with
    # What ``explain`` needs, kept as codes (explain.Because) and references, not text.
    dir_why: int = 0
    answer_why: int = 0
    did_var: str | None = None  # the [calls] did_variables entry that gave the DID
    did_exten: str | None = None  # the first channel's Exten, when it gave no DID
    first_context: str | None = None  # its context, when that made the call inbound
    refused: str | None = None  # how a refused leg's Dial ended (answer_why REFUSED)
    reasons: dict[str, str] | None = None  # flag -> why the tracker cannot tell

    def has_outside_party(self) -> bool:
        """The call has a trunk channel of its own: a caller, or the callee of an outbound
        call. Two such calls are never folded into one (a join keeps both)."""
        anchor = self.anchor
        return anchor is not None and anchor.kind == TRUNK

    def flag(self, name: str, reason: str) -> None:
        """Mark what the tracker could not tell, and why (the record's flags/reasons)."""
        if name not in self.flags:
            self.flags += (name,)
        if self.reasons is None:
            self.reasons = {}
        self.reasons[name] = reason

    def note_status(self, status: str) -> None:
        """Remember how one dial attempt ended (for the unanswered disposition)."""
        if status in NO_ANSWER_STATUSES:
            self.saw_no_answer = True
        elif status in BUSY_STATUSES:
            self.saw_busy = True
        elif status in FAILED_STATUSES:
            self.saw_failed = True


def disposition_of(call: Call) -> Disposition:
    """Answered, or why not. A leg that rang out decides before a busy one, a busy one
    before an unreachable one (a ring group where one phone is busy and another rang
    unanswered is a missed call); with no dialled leg at all, the dialplan's DIALSTATUS
    and the caller's hangup cause (17 busy, 34 congestion...) say."""
    if call.answered_at is not None:
        return "answered"
    if call.saw_no_answer:
        return "no-answer"
    if call.saw_busy:
        return "busy"
    if call.saw_failed:
        return "failed"
    status = call.dialstatus
    if status in BUSY_STATUSES:
        return "busy"
    if status in FAILED_STATUSES:
        return "failed"
    if status is None or status not in NO_ANSWER_STATUSES:
        cause = call.first_cause
        if cause in BUSY_CAUSES:
            return "busy"
        if cause in FAILED_CAUSES:
            return "failed"
    return "no-answer"


def build_record(call: Call, pbx: str, explain: tuple[tuple[str, str], ...] = ()) -> CallRecord:
    """The public record of a finished call (``telefum replay``, docs/architecture.md)."""
    direction: Direction = call.direction or "internal"
    answered = call.answered_at is not None
    if direction == "in":
        extension = call.answered_by
        external, did = call.external, call.did
    elif direction == "out":
        extension = call.dialler or call.first_agent
        external, did = call.external, None
    else:
        extension = call.dialler
        external, did = None, None
    final = call.final_ext
    if final is None and answered and not call.joined_with:
        final = extension if direction != "internal" else call.first_agent
    ended = call.ended_at if call.ended_at is not None else call.started_at
    started = min(call.started_at, ended)
    answered_at = call.answered_at
    if answered_at is not None:
        answered_at = min(max(answered_at, started), ended)
    return CallRecord(
        call_id=call.id,
        direction=direction,
        external=external,
        did=did,
        extension=extension,
        answered=answered,
        started_at=started,
        answered_at=answered_at,
        ended_at=ended,
        disposition=disposition_of(call),
        transfers=call.transfers,
        rang=tuple(call.rang),
        final_extension=final,
        flags=call.flags,
        pbx=pbx,
        forwarded_to=call.forwarded_to if direction == "in" else None,
        joined_with=call.joined_with,
        reasons=tuple(call.reasons.items()) if call.reasons else (),
        explain=explain,
    )
