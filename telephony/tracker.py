"""The call tracker: AMI messages in, live updates and finished call records out.

A pure, synchronous state machine: no I/O and no clock of its own (the caller says when
each message arrived, and ``expire``/``reconcile`` are told the time), so a recorded trace
always replays to the same records.

How it reads Asterisk (13 to 22, chan_pjsip/chan_sip, FreePBX or plain dialplans); each rule
rests on what Asterisk itself does, never on names of one installation:

- Channels are grouped into calls by ``Linkedid``; a channel is looked up by its
  ``Uniqueid`` afterwards. Asterisk gives every channel of a basic bridge the oldest
  Linkedid among them: a call with no outside party of its own (a consultation call, a
  pickup, a parked call's retrieval) is folded into the call it joined; two calls that each
  have an outside party stay two calls, *joined* (``joined_with``). A dialled channel
  belongs to the call that dialled it (Asterisk 13.0-13.4 send no Linkedid at all).
- What a channel *is* comes from ``CallRules`` (rules.py): a phone (by the ``phones`` table,
  ``phone_channel_pattern``, an endpoint shaped like an extension, or its caller ID), a trunk
  (``trunk_channel_pattern``, not created in an internal context), a Local half, or other.
- Direction: a call whose first channel is a trunk, or was created in an inbound context, is
  inbound; but a first channel that Originate dials (``DialBegin`` with no calling channel:
  the dial API, Asterisk 12+) is the PBX calling out: a trunk there is a callback (outbound),
  a phone or Local there is the agent's leg of a click-to-call, the call starts when the PBX
  dials out of it. Never the channel's first state: chan_sip creates every channel Down, so
  an inbound call is announced (``CallStarted``) once its first channel shows it is a caller.
  A phone's call becomes outbound when a trunk leg joins it, and is internal otherwise.
- Answered means an outside party and an agent were connected. Inbound: an agent's phone
  going Up; an outside leg the call was forwarded to only when the caller's Dial reports it
  ANSWER (after any ``U()``/``M()`` confirmation; a refusal ends the Dial CONTINUE, BUSY...:
  not answered); a pickup (``Pickup``, or a Dial answered by a channel it never dialled:
  INVITE with Replaces) by the picker; a queue's ``AgentConnect``; the caller bridged with a
  phone. Outbound: the outside leg going Up; for a callback, the agent answering after it.
- Who had the caller last comes from bridges: whoever shares a bridge with the outside
  party's channel (through Local pairs to the phone behind them).
- Where the rules cannot tell (a channel no rule classifies, a DID or transfer target
  nowhere in the events), the record says so in ``flags`` and ``reasons``; ``explain`` says
  which rule decided direction, DID, extension and answered.

One small handler per AMI event, looked up in a table; events not in the table (VarSet
aside, about two thirds of a real stream) cost one dict lookup, and nothing at all when the
codec is told ``events``/``variables`` (as the listener does): it then never decodes them.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Callable, Iterable

from telephony.ami import Message, event_time
from telephony.explain import Because, describe, explain
from telephony.pbxclock import PbxClock
from telephony.phones import to_e164
from telephony.records import (
    GAP,
    RING_UNKNOWN,
    Answered,
    CallFinished,
    CallRefused,
    CallStarted,
    Ringing,
    Transfer,
    Update,
)
from telephony.rules import CallRules
from telephony.tracker_state import (
    BUSY_CAUSES,
    FAILED_CAUSES,
    LOCAL,
    OTHER,
    PHONE,
    TRUNK,
    Call,
    Channel,
    ChannelKind,
    Rule,
    build_record,
    channel_kind,
)

log = logging.getLogger(__name__)

__all__ = ["CallTracker"]

Handler = Callable[[Message, float], "list[Update] | None"]

_STATE_DOWN = "0"
_STATE_RINGING = "5"
_STATE_UP = "6"
_STATE_BUSY = "7"
_NUMBER_RUN = re.compile(r"\+?[0-9]{5,}")
_HOLDING = "holding_bridge"  # parking lots, holding bridges: callers there hear no one


class CallTracker:
    """Builds calls from AMI events. ``handle`` never raises on malformed input."""

    def __init__(self, rules: CallRules | None = None, pbx: str = "default") -> None:
        """``pbx``: the ``[[ami]]`` name every record of this tracker carries."""
        self.rules = rules if rules is not None else CallRules()
        self._country = self.rules.default_country
        self._inbound = frozenset(self.rules.inbound_contexts)
        self._internal = frozenset(self.rules.internal_contexts)
        self._did_vars = frozenset(self.rules.did_variables)
        self._variables = frozenset({"DIALSTATUS"}) | self._did_vars
        self._pbx = pbx
        self._max_calls = self.rules.max_active_calls
        self._max_channels = self.rules.max_channels
        self.clock = PbxClock()  # the PBX's clock, from Timestamps against arrival times
        self._calls: dict[str, Call] = {}  # call id -> call
        self._by_linkedid: dict[str, Call] = {}  # every Linkedid of a live call -> call
        self._channels: dict[str, Channel] = {}  # Uniqueid -> live channel
        self._local_ones: dict[str, Channel] = {}  # ";1" names waiting for their ";2"
        self._bridges: dict[str, list[Channel]] = {}  # BridgeUniqueid -> channels in it
        self._handlers: dict[str | None, Handler] = {
            "Newchannel": self._on_newchannel,
            "Newstate": self._on_newstate,
            "NewCallerid": self._on_newcallerid,
            "DialBegin": self._on_dialbegin,
            "DialState": self._on_dialstate,
            "DialEnd": self._on_dialend,
            "Hangup": self._on_hangup,
            "BridgeEnter": self._on_bridgeenter,
            "BridgeLeave": self._on_bridgeleave,
            "BridgeMerge": self._on_bridgemerge,
            "BridgeDestroy": self._on_bridgedestroy,
            "LocalBridge": self._on_localbridge,
            "BlindTransfer": self._on_blindtransfer,
            "AttendedTransfer": self._on_attendedtransfer,
            "Pickup": self._on_pickup,
            "AgentConnect": self._on_agentconnect,
            "VarSet": self._on_varset,
            # LocalOptimizationBegin/End need nothing of their own: the bridge moves that
            # carry them out arrive as BridgeEnter/BridgeLeave, the Local halves hang up.
        }

    # --- public API -----------------------------------------------------------------

    @property
    def events(self) -> frozenset[str]:
        """The AMI events the tracker reads (``AmiCodec(events=...)``): any other event
        would cost one dict lookup here, but a whole decode in the codec."""
        return frozenset(name for name in self._handlers if name)

    @property
    def variables(self) -> frozenset[str]:
        """The ``VarSet`` variables the tracker reads (``AmiCodec(variables=...)``):
        DIALSTATUS and the ``[calls] did_variables``."""
        return self._variables

    @property
    def did_variables(self) -> tuple[str, ...]:
        """``[calls] did_variables``: the listener asks an adopted call's channel for them."""
        return self.rules.did_variables

    @property
    def active_count(self) -> int:
        """Calls in progress (not yet reported)."""
        return len(self._calls)

    @property
    def live_ids(self) -> frozenset[str]:
        """Every Linkedid and Uniqueid of the calls in progress. A CDR call holding one of
        them is not over (its CDR rows are not all written): backfill leaves it to the live
        path (``telephony.cdr.backfill(skip=...)``)."""
        return frozenset(self._by_linkedid).union(self._channels)

    @property
    def clock_offset(self) -> float | None:
        """Seconds this host's clock is ahead of the PBX's (None: the PBX sends no
        Timestamp, and call times are arrival times)."""
        return self.clock.offset

    def handle(self, msg: Message, arrived: float) -> list[Update]:
        """Feed one AMI message (``arrived``: when it came in, Unix seconds)."""
        handler = self._handlers.get(msg.get("Event"))
        if handler is None:
            return []
        try:
            return handler(msg, arrived) or []
        except Exception:  # a malformed message must never stop the tracker
            log.warning(
                "tracker: skipping %s message it could not use", msg.get("Event"), exc_info=True
            )
            return []

    def feed(self, messages: Iterable[Message], arrived: float = 0.0) -> list[Update]:
        """Every update for a batch of messages (convenience for traces and tests)."""
        out: list[Update] = []
        handle = self.handle
        for msg in messages:
            out += handle(msg, arrived)
        return out

    def expire(self, now: float) -> list[Update]:
        """Close calls that never hung up within ``max_call_age_s`` (flag "stale"). Calls
        are aged on the PBX's clock: ``now`` (ours) is moved by the offset its events show."""
        now = self.clock.pbx_time(now)
        limit = now - self.rules.max_call_age_s
        out: list[Update] = []
        for call in [c for c in self._calls.values() if c.started_at < limit]:
            out += self._finish(call, now, ("stale",))
        return out

    def reconcile(
        self, snapshot: Iterable[Message], now: float, since: float | None = None
    ) -> list[Update]:
        """Line our state up with the PBX after an AMI reconnect.

        ``snapshot``: the ``CoreShowChannel`` events answering ``CoreShowChannels``.
        ``since``: when the link was last known up (its last message before the gap, on
        the clock of ``now``); None: not known, taken as ``now``.
        Calls with no live channel left ended while we were away: reported once, flagged
        "reconciled" and "gap", ended ``since``: the last moment the bridge knew them up,
        never the reconnect (a gap must not inflate a call; its CDR, when there is a backfill
        source, has the true end). Channels gone from surviving calls are dropped. Live
        channels we never saw (a restarted listener) are adopted, so their call is reported
        when it ends (flagged "adopted": its start is known only to the second; one
        already answered is flagged "ring-unknown": when it was answered is not known).
        ``now`` and ``since`` are this host's clock; the records get the PBX's
        (``PbxClock``).
        """
        gap_end = now if since is None else min(since, now)
        now, gap_end = self.clock.pbx_time(now), self.clock.pbx_time(gap_end)
        live: dict[str, Message] = {}
        for msg in snapshot:
            uid = msg.get("Uniqueid")
            if (
                uid
                and msg.get("Channel")
                and msg.get("Event", "CoreShowChannel") == ("CoreShowChannel")
            ):
                live[uid] = msg
        out: list[Update] = []
        for call in list(self._calls.values()):
            for uid in [u for u in call.channels if u not in live]:
                self._drop_channel(call.channels[uid])
            if not call.channels:
                call.flag("reconciled", "it ended while the AMI link was down")
                call.flag(GAP, "its end is the link's last sign of life before the outage")
                out += self._finish(call, max(gap_end, call.started_at), ())
                continue
            for ch in list(call.channels.values()):
                shown = live[ch.uid]
                if shown.get("ChannelState") == _STATE_UP and not ch.up:
                    answered = self._up(ch, now) or []
                    if any(isinstance(u, Answered) for u in answered):  # talk: a lower bound
                        call.flag(
                            GAP,
                            "answered while the AMI link was down: taken as "
                            "answered at the reconnect",
                        )
                    out += answered
                bridge = shown.get("BridgeId") or None
                if bridge != ch.bridge:  # moved (a transfer) while we were away
                    self._leave_bridge(ch)
                    if bridge:
                        out += self._enter_bridge(ch, bridge, now) or []
        unknown = [m for uid, m in live.items() if uid not in self._channels]
        unknown.sort(key=_age_order)
        for msg in unknown:
            out += self._adopt(msg, now)
        return out

    # --- channels and calls ---------------------------------------------------------

    def _time(self, msg: Message, arrived: float) -> float:
        """``event_time``, and a sample of the PBX's clock (on a call's first and last
        events: enough to follow it, cheap on the hot path)."""
        stamp = msg.get("Timestamp")
        if stamp:
            try:
                t = float(stamp)
            except ValueError:
                return arrived
            self.clock.observe(t, arrived)
            return t
        return arrived

    def _e164(self, raw: str | None) -> str | None:
        """An outside number in E.164, or None (empty, not a number, or an extension)."""
        if not raw or self.rules.is_extension(raw):
            return None
        return to_e164(raw, self._country)

    def _classify(
        self, name: str, context: str, callerid: str
    ) -> tuple[ChannelKind, str | None, Rule]:
        kind, ext, how = channel_kind(self.rules, name, context, callerid)
        return kind, (sys.intern(ext) if ext else None), how  # "101" is shared by its calls

    def _channel(self, msg: Message) -> Channel | None:
        """The live channel a message is about; notices when Asterisk has moved it to
        another call's Linkedid (it gives a bridge's channels the oldest one)."""
        uid = msg.get("Uniqueid")
        if not uid:
            return None
        ch = self._channels.get(uid)
        if ch is not None:
            lid = msg.get("Linkedid")
            if lid and lid != ch.call.id and lid not in ch.call.linkedids:
                self._relink(ch.call, lid)
        return ch

    def _relink(self, call: Call, lid: str) -> None:
        """A channel of ``call`` now carries Linkedid ``lid``. Fold a call with no outside
        party of its own into the one it joined; keep two calls with outside parties apart
        (joined); never fold a caller's call into an agent's long-lived call."""
        other = self._by_linkedid.get(lid)
        if other is None:
            call.linkedids += (lid,)
            self._by_linkedid[lid] = call
        elif other is not call:
            mine, theirs = call.has_outside_party(), other.has_outside_party()
            if mine and theirs:
                self._join(call, other)
                call.linkedids += (lid,)  # seen; the Linkedid stays the other call's
            elif mine:
                call.linkedids += (lid,)
            else:
                self._merge(other, call)

    def _merge(self, keep: Call, gone: Call) -> None:
        """Fold ``gone`` into ``keep`` (a consultation call, a pickup): one call, ``keep``'s
        id; ``gone``'s own first channel is a leg of ``keep`` from now on."""
        for ch in gone.channels.values():
            ch.call = keep
            keep.channels[ch.uid] = ch
        if gone.first is not None and gone.first.call is keep:
            gone.first.origin = False
        for lid in gone.linkedids:
            if self._by_linkedid.get(lid) is gone:
                self._by_linkedid[lid] = keep
        keep.linkedids += tuple(lid for lid in gone.linkedids if lid not in keep.linkedids)
        for ext in gone.rang:
            if ext not in keep.rang:
                keep.rang.append(ext)
        keep.ringing_sent_to += tuple(
            ext for ext in gone.ringing_sent_to if ext not in keep.ringing_sent_to
        )
        keep.transfers += gone.transfers
        keep.flags += tuple(f for f in gone.flags if f not in keep.flags)  # "overflow" too
        if keep.first_agent is None:
            keep.first_agent = gone.first_agent
        self._calls.pop(gone.id, None)
        gone.channels = {}

    def _fold(self, a: Call, b: Call) -> Call:
        """Fold one of two calls into the other: into the one with an outside party, else
        into the older. Returns the call kept."""
        a_out, b_out = a.has_outside_party(), b.has_outside_party()
        if (b_out and not a_out) or (a_out == b_out and b.started_at < a.started_at):
            a, b = b, a
        self._merge(a, b)
        return a

    def _join(self, a: Call, b: Call) -> None:
        """Two calls that each have an outside party were connected to each other (an agent
        joined them): both stay, each naming the other; nobody of ours had them last."""
        if b.id in a.joined_with:
            return
        a.joined_with += (b.id,)
        b.joined_with += (a.id,)
        a.final_ext = b.final_ext = None

    def _move(self, ch: Channel, to: Call) -> None:
        """A dialled channel that landed in a call of its own (no Linkedid: Asterisk 13.0 to
        13.4) belongs to the call that dialled it; its Local sibling comes along."""
        for moving in (ch, ch.sibling):
            if moving is None or moving.call is to:
                continue
            old = moving.call
            old.channels.pop(moving.uid, None)
            moving.call = to
            moving.origin = False
            to.channels[moving.uid] = moving
            if not old.channels:
                self._calls.pop(old.id, None)
                for lid in old.linkedids:
                    if self._by_linkedid.get(lid) is old:
                        del self._by_linkedid[lid]
                old.first = old.anchor = None

    def _on_newchannel(self, msg: Message, arrived: float) -> list[Update] | None:
        uid = msg.get("Uniqueid")
        name = msg.get("Channel")
        if not uid or not name or uid in self._channels:
            return None
        t = self._time(msg, arrived)
        linkedid = msg.get("Linkedid")
        lid = linkedid or uid
        context = msg.get("Context", "")
        call = self._by_linkedid.get(lid)
        if len(self._channels) >= self._max_channels or (
            call is None and len(self._calls) >= self._max_calls
        ):
            return [self._refuse(call, lid, name, t)]
        kind, ext, how = self._classify(name, context, msg.get("CallerIDNum", ""))
        new_call = call is None
        if call is None:
            call = Call(id=lid, first=None, started_at=t, linkedids=(lid,))
            call.unlinked = linkedid is None
            self._calls[lid] = call
            self._by_linkedid[lid] = call
        ch = Channel(uid, name, kind, ext, how, call)
        self._channels[uid] = ch
        call.channels[uid] = ch
        if kind == LOCAL:
            self._pair_local(ch)
        if new_call:
            return self._begin(call, ch, msg)
        if kind == TRUNK and call.direction != "in":
            # Not the number yet: a new leg's caller id may be our own outbound CID.
            return self._goes_outside(call, ch, None, t)
        return None

    def _refuse(self, call: Call | None, lid: str, name: str, t: float) -> CallRefused:
        """Full: the channel is not tracked. Nothing tracked is dropped: a channel of a
        tracked call leaves it flagged "overflow"; a new call is refused whole."""
        if call is not None and "overflow" not in call.flags:
            call.flags += ("overflow",)
        return CallRefused(
            call.id if call is not None else lid,
            name,
            call is None,
            t,
            len(self._calls),
            self._pbx,
        )

    def _pair_local(self, ch: Channel) -> None:
        name = ch.name
        if name.endswith(";2"):
            ch.onward_half = True
            one = self._local_ones.pop(name[:-1] + "1", None)
            if one is not None:
                self._link_halves(one, ch)
        else:
            self._local_ones[name] = ch

    def _link_halves(self, one: Channel, two: Channel) -> None:
        """Pair a Local channel's ";1" and ";2" halves (AMI's LocalOne and LocalTwo)."""
        one.sibling, two.sibling = two, one
        two.onward_half = True
        if two.parent is None:
            two.parent = one
        if one.origin:
            two.origin = True
        if two.call is not one.call and two.call.unlinked:
            self._move(two, one.call)

    def _begin(self, call: Call, ch: Channel, msg: Message) -> list[Update] | None:
        """The first channel of a new call: an outside line, or an inbound context, makes it
        an inbound call (unless Originate dials it: ``_originated``)."""
        call.first = call.anchor = ch
        ch.origin = True
        context = msg.get("Context", "")
        inbound_context = context in self._inbound
        if (ch.kind == TRUNK or inbound_context) and context not in self._internal:
            call.direction = "in"
            call.external = self._e164(msg.get("CallerIDNum"))
            exten = msg.get("Exten", "")
            call.did = self._e164(exten)
            if call.did is None:
                call.did_exten = exten
            if ch.kind == TRUNK:
                call.dir_why = Because.FIRST_TRUNK
            else:
                call.dir_why = Because.FIRST_CONTEXT
                call.first_context = context
            if msg.get("ChannelState") == _STATE_DOWN:
                call.awaiting = True  # chan_sip: Down until it rings; or Originate's channel
                return None
            return [self._started(call)]
        call.dialler = self._agent(ch)
        return None

    def _confirm_inbound(self, call: Call) -> list[Update]:
        """The Down first channel showed it is a caller (it rings, dials, runs the dialplan)."""
        call.awaiting = False
        return [] if call.started_sent else [self._started(call)]

    def _originated(self, call: Call, ch: Channel, msg: Message) -> None:
        """Originate dials the call's first channel (DialBegin with no calling channel): the
        PBX calls out. A trunk there is a callback (outbound, the agent comes after); a phone
        or Local there is the agent's leg of a click-to-call."""
        ch.origin = True
        call.originated = True
        if ch.kind != TRUNK:
            return
        call.awaiting = False
        call.direction = "out"
        number = self._dialled_number(msg)
        call.external = number
        call.did = None
        call.dir_why = Because.CALLBACK
        if number is None:
            call.flag(
                "number-unknown",
                f"the callback's dial string {msg.get('DialString', '')!r} holds no outside number",
            )

    def _started(self, call: Call) -> CallStarted:
        call.started_sent = True
        return CallStarted(
            call.id,
            call.direction or "internal",
            call.external,
            call.did,
            call.started_at,
            self._pbx,
        )

    def _goes_outside(
        self, call: Call, trunk: Channel, msg: Message | None, t: float
    ) -> list[Update] | None:
        """A trunk leg joined a phone's call: it is an outbound call."""
        if call.direction == "out" and call.external is not None:
            return None
        call.direction = "out"
        if call.anchor is None or call.anchor.kind != TRUNK:
            call.anchor = trunk
        first = call.first
        if call.dialler is None and first is not None:
            call.dialler = self._agent(first)
        if msg is not None and call.external is None:
            call.external = self._dialled_number(msg)
        if not call.dir_why:
            call.dir_why = Because.CLICK_TO_CALL if call.originated else Because.TRUNK_LEG
        if call.external is not None and not call.started_sent:
            return [self._started(call)]
        return None

    def _dialled_number(self, msg: Message) -> str | None:
        """The outside number of a dial: the DialString (``79031112233@trunk``,
        ``trunk/79031112233``), else the new leg's caller id or extension."""
        for m in _NUMBER_RUN.finditer(msg.get("DialString", "")):
            number = self._e164(m.group(0))
            if number:
                return number
        for key in ("DestCallerIDNum", "DestExten", "CallerIDNum", "Exten"):
            number = self._e164(msg.get(key))
            if number:
                return number
        return None

    def _agent(self, ch: Channel | None, depth: int = 0) -> str | None:
        """The extension a channel stands for: a phone's own; for a Local half, the phone
        its ";2" reached (else the Local's exten); for an outside leg an inbound call was
        forwarded to, the extension whose forward it is (``_forward_owner``)."""
        if ch is None or depth > 8:
            return None
        kind = ch.kind
        if kind in (PHONE, TRUNK):
            return ch.ext
        if kind == LOCAL:
            onward = ch if ch.onward_half else ch.sibling
            if onward is not None:
                child = onward.answered_child
                if child is not None and child is not ch:
                    found = self._agent(child, depth + 1)
                    if found:
                        return found
                if onward.bridge is not None:
                    for peer in self._bridges.get(onward.bridge, ()):
                        if peer is not onward and peer.kind == PHONE:
                            return peer.ext
            return ch.ext
        return None

    def _forward_owner(self, call: Call, src: Channel | None) -> str | None:
        """Whose forward an outside leg of an inbound call is: the extension of the Local
        channel that dialled it (FreePBX follow-me, Local/FMGL-101#@...), else the last
        extension that rang before (forward on no answer), else nobody's."""
        if src is not None and src.kind == LOCAL and src.ext:
            return src.ext
        return call.rang[-1] if call.rang else None

    # --- dialling, ringing, answering -----------------------------------------------

    def _on_dialbegin(self, msg: Message, arrived: float) -> list[Update] | None:
        dest = self._channels.get(msg.get("DestUniqueid", ""))
        if dest is None:
            return None
        call = dest.call
        src = self._channel(msg)
        if src is None:
            if dest is call.first:
                # Dialled by Originate itself (no calling channel). (Asterisk's dial API,
                # e.g. Atxfer's Local leg, also dials with no calling channel, but never a
                # call's first channel.)
                self._originated(call, dest, msg)
                return None
        else:
            if src.call is not call and not dest.up and dest.bridge is None:
                self._move(dest, src.call)
                call = src.call
            if dest.parent is None:
                dest.parent = src
            if src.origin and src.kind == LOCAL and src.onward_half:
                dest.origin = True
        if dest.origin:
            return None
        t = event_time(msg, arrived)
        out: list[Update] = []
        if call.awaiting:  # the first channel runs a dialplan that dials: a caller
            out += self._confirm_inbound(call)
        if call.originated and not call.dial_started and call.first is not None:
            call.dial_started = True
            if call.first.kind != TRUNK and call.answered_at is None:
                call.started_at = t  # click-to-call starts when the outside number is dialled
        if dest.kind == TRUNK:
            if call.direction != "in":
                out += self._goes_outside(call, dest, msg, t) or ()
            else:  # an inbound call dialled on to an outside number: forwarded, one call
                dest.number = self._dialled_number(msg)
                dest.ext = self._forward_owner(call, src)
                if call.answered_at is None and dest.number:
                    call.forwarded_to = dest.number
        elif dest.kind == PHONE:
            if dest.ext and dest.ext not in call.rang:
                call.rang.append(dest.ext)
            if call.direction is None:
                call.direction = "internal"
        if not call.started_sent and call.direction is not None and not call.awaiting:
            out.append(self._started(call))
        return out

    def _on_dialstate(self, msg: Message, arrived: float) -> list[Update] | None:
        if msg.get("DialStatus") != "RINGING":
            return None
        dest = self._channels.get(msg.get("DestUniqueid", ""))
        if dest is None:
            return None
        return self._ringing(dest, event_time(msg, arrived))

    def _on_dialend(self, msg: Message, arrived: float) -> list[Update] | None:
        dest = self._channels.get(msg.get("DestUniqueid", ""))
        if dest is None:
            return None
        status = msg.get("DialStatus", "")
        src = self._channel(msg)
        if status == "ANSWER":
            t = event_time(msg, arrived)
            out: list[Update] = []
            if src is not None:
                src.answered_child = dest
                if dest.call is not src.call:
                    # Answered by a channel this Dial never dialled: the ringing channel was
                    # replaced by a picker's (Pickup, INVITE with Replaces).
                    out += self._picked_up(src.call, dest, t)
            out += self._up(dest, t, connected=True) or ()
            return out
        if not dest.origin:
            dest.dial_status = status
            call = dest.call
            call.note_status(status)
            if (
                dest.up
                and not call.connected
                and (dest is call.answer_leg or call.answered_at is None)
            ):  # picked up, then refused before being put through (a U()/M() confirmation)
                self._unanswer(call, dest, status)
        return None

    def _on_newstate(self, msg: Message, arrived: float) -> list[Update] | None:
        ch = self._channel(msg)
        if ch is None:
            return None
        call = ch.call
        state = msg.get("ChannelState")
        out: list[Update] | None = None
        if call.awaiting and ch is call.first and state != _STATE_DOWN:
            out = self._confirm_inbound(call)  # chan_sip: Down -> Ring once the PBX runs it
        if state == _STATE_UP:
            return _plus(out, self._up(ch, event_time(msg, arrived)))
        if state == _STATE_RINGING:
            return _plus(out, self._ringing(ch, event_time(msg, arrived)))
        if state == _STATE_BUSY and ch is call.first:
            call.dialstatus = call.dialstatus or "BUSY"
        return out

    def _ringing(self, ch: Channel, t: float) -> list[Update] | None:
        if ch.has_rung:
            return None
        ch.has_rung = True
        call = ch.call
        if ch.kind != PHONE or ch.origin or not ch.ext:
            return None
        ext = ch.ext
        if ext not in call.rang:
            call.rang.append(ext)
        if ext in call.ringing_sent_to:
            return None
        call.ringing_sent_to += (ext,)
        out: list[Update] = []
        if call.awaiting:
            out += self._confirm_inbound(call)
        if not call.started_sent:
            if call.direction is None:
                call.direction = "internal"
            out.append(self._started(call))
        out.append(
            Ringing(
                call.id, ext, call.external, call.did, call.direction or "internal", t, self._pbx
            )
        )
        return out

    def _up(self, ch: Channel, t: float, connected: bool = False) -> list[Update] | None:
        """A channel went Up (``connected``: the Dial that called it says ANSWER, i.e. the
        caller is put through to it): is that the call being answered, and by whom?"""
        first_time = not ch.up
        ch.up = True
        call = ch.call
        kind = ch.kind
        if first_time and kind == PHONE and not ch.origin and call.first_agent is None:
            call.first_agent = ch.ext
        if call.answered_at is not None or kind in (LOCAL, OTHER):
            return None
        if not first_time and not connected:
            return None
        direction = call.direction
        if direction == "out":
            if kind == TRUNK:
                if ch is call.first:
                    return None  # a callback's outside party picked up; no agent yet
                why = Because.OUTSIDE_UP
            elif (
                call.originated
                and not ch.origin
                and call.first is not None
                and call.first.kind == TRUNK
                and call.first.up
            ):
                why = Because.CALLBACK_AGENT
            else:
                return None
        elif ch.origin:
            return None
        elif direction == "in":
            if kind == TRUNK:
                if not connected:
                    return None  # a forward's leg: connected only when its Dial says ANSWER
                why = Because.FORWARD
            else:
                why = Because.UP
        elif kind != PHONE:
            return None
        else:
            why = Because.UP
        return self._answered(call, ch, t, why)

    def _answered(self, call: Call, ch: Channel, t: float, why: Because) -> list[Update]:
        call.answered_at = t
        call.answer_leg = ch
        call.answer_why = why
        out: list[Update] = []
        if call.direction == "in":
            call.answered_by = who = self._agent(ch)
        else:
            if call.direction is None:
                call.direction = "internal"
            who = call.dialler
            if call.direction == "out" and who is None:
                call.first_agent = call.first_agent or self._agent(ch)
                who = call.first_agent
        if call.awaiting:
            out += self._confirm_inbound(call)
        if not call.started_sent:
            out.append(self._started(call))
        out.append(Answered(call.id, who, t, self._pbx))
        return out

    def _unanswer(self, call: Call, leg: Channel, status: str) -> None:
        """A leg that picked up was refused before the caller was put through (its Dial
        ended ``status``: a U()/M() confirmation said no): not answered (after all)."""
        call.answered_at = None
        call.answered_by = None
        call.answer_leg = leg
        call.answer_why = Because.REFUSED
        call.refused = status

    def _picked_up(self, call: Call, picker: Channel, t: float) -> list[Update]:
        """``picker`` took over a channel ringing for ``call`` (call pickup): it is a leg of
        ``call`` now, and answered it."""
        if picker.call is not call:
            other = picker.call
            if other.has_outside_party():
                return []  # another caller's own channel: not a pickup we can model
            self._merge(call, other)
        picker.origin = False
        if not picker.up:
            return []  # counted when it goes Up
        if picker.kind == PHONE and call.first_agent is None:
            call.first_agent = picker.ext
        if call.answered_at is not None or call.direction == "out":
            return []
        return self._answered(call, picker, t, Because.PICKUP)

    def _on_pickup(self, msg: Message, arrived: float) -> list[Update] | None:
        """``Pickup``: Channel took over the ringing TargetChannel (Pickup(), PickupChan(),
        a pickup feature code)."""
        target = self._channels.get(msg.get("TargetUniqueid", ""))
        picker = self._channels.get(msg.get("Uniqueid", ""))
        if target is None or picker is None:
            return None
        return self._picked_up(target.call, picker, event_time(msg, arrived))

    def _on_agentconnect(self, msg: Message, arrived: float) -> list[Update] | None:
        """A queue member took the call (normally already seen as their phone going Up)."""
        dest = self._channels.get(msg.get("DestUniqueid", ""))
        if dest is None or dest.call.answered_at is not None:
            return None
        call = dest.call
        if call.direction != "in":
            return None
        dest.up = True
        return self._answered(call, dest, event_time(msg, arrived), Because.AGENT_CONNECT)

    def _on_newcallerid(self, msg: Message, arrived: float) -> list[Update] | None:
        ch = self._channel(msg)
        call = ch.call if ch is not None else None
        if (
            call is not None
            and ch is call.first
            and call.direction == "in"
            and (call.external is None)
        ):  # the caller id came after the channel (some trunks set it in the dialplan)
            call.external = self._e164(msg.get("CallerIDNum"))
        return None

    def _on_varset(self, msg: Message, arrived: float) -> list[Update] | None:
        var = msg.get("Variable")
        ch = self._channels.get(msg.get("Uniqueid", ""))
        if ch is None:
            return None
        call = ch.call
        out = self._confirm_inbound(call) if call.awaiting and ch is call.first else None
        if var == "DIALSTATUS":
            value = msg.get("Value")
            if value:
                call.dialstatus = value
        elif var in self._did_vars and call.did is None and call.direction == "in":
            call.did = self._e164(msg.get("Value"))
            if call.did:
                call.did_var = var
        return out

    # --- bridges: who is talking to whom --------------------------------------------

    def _on_bridgeenter(self, msg: Message, arrived: float) -> list[Update] | None:
        ch = self._channel(msg)
        bid = msg.get("BridgeUniqueid")
        if ch is None or not bid:
            return None
        if msg.get("BridgeTechnology") == _HOLDING:
            self._enter_holding(ch, bid)
            return None
        return self._enter_bridge(ch, bid, event_time(msg, arrived))

    def _enter_holding(self, ch: Channel, bid: str) -> None:
        """A holding bridge (a parking lot, Asterisk's MOH holding bridge): the callers in
        it talk to no one, so it is tracked for moves but decides nothing."""
        if ch.bridge is not None and ch.bridge != bid:
            self._leave_bridge(ch)
        ch.bridge = bid

    def _enter_bridge(self, ch: Channel, bid: str, t: float) -> list[Update] | None:
        if ch.bridge is not None and ch.bridge != bid:
            self._leave_bridge(ch)
        members = self._bridges.setdefault(bid, [])
        if ch not in members:
            members.append(ch)
        ch.bridge = bid
        return self._bridged(members, t)

    def _bridged(self, members: list[Channel], t: float) -> list[Update] | None:
        """Whoever shares a bridge with a call's outside party is now its agent; another
        call's outside party there means an agent joined the two calls."""
        out: list[Update] | None = None
        for anchor in members:
            call = anchor.call
            if anchor is not call.anchor:
                continue
            agent_peer: Channel | None = None
            agent = None
            for peer in members:
                if peer is anchor:
                    continue
                found = self._agent(peer)
                if found:
                    agent_peer, agent = peer, found
                elif (
                    peer is peer.call.anchor
                    and peer.call is not call
                    and (call.has_outside_party() and peer.call.has_outside_party())
                ):
                    self._join(call, peer.call)
            if agent_peer is None:
                continue
            call.final_ext = agent
            call.connected = True
            if (
                call.answered_at is None
                and call.direction == "in"
                and (agent_peer.kind == PHONE or agent_peer.kind == TRUNK)
            ):  # picked up by a phone that never rang for it (a pickup, an agent's bridge)
                out = (out or []) + self._answered(call, agent_peer, t, Because.BRIDGED)
        return out

    def _on_bridgeleave(self, msg: Message, arrived: float) -> list[Update] | None:
        ch = self._channels.get(msg.get("Uniqueid", ""))
        if ch is not None and ch.bridge == msg.get("BridgeUniqueid"):
            self._leave_bridge(ch)
        return None

    def _leave_bridge(self, ch: Channel) -> None:
        bid = ch.bridge
        ch.bridge = None
        if bid is None:
            return
        members = self._bridges.get(bid)
        if members is not None:
            if ch in members:
                members.remove(ch)
            if not members:
                del self._bridges[bid]

    def _on_bridgemerge(self, msg: Message, arrived: float) -> list[Update] | None:
        src = self._bridges.pop(msg.get("FromBridgeUniqueid", ""), None)
        to_id = msg.get("ToBridgeUniqueid")
        if not src or not to_id:
            return None
        members = self._bridges.setdefault(to_id, [])
        for ch in src:
            ch.bridge = to_id
            if ch not in members:
                members.append(ch)
        return self._bridged(members, event_time(msg, arrived))

    def _on_bridgedestroy(self, msg: Message, arrived: float) -> list[Update] | None:
        members = self._bridges.pop(msg.get("BridgeUniqueid", ""), None)
        for ch in members or ():
            ch.bridge = None
        return None

    def _on_localbridge(self, msg: Message, arrived: float) -> list[Update] | None:
        one = self._channels.get(msg.get("LocalOneUniqueid", ""))
        two = self._channels.get(msg.get("LocalTwoUniqueid", ""))
        if one is not None and two is not None and one.sibling is None:
            self._local_ones.pop(one.name, None)
            self._link_halves(one, two)
        return None

    # --- transfers ------------------------------------------------------------------

    def _on_blindtransfer(self, msg: Message, arrived: float) -> list[Update] | None:
        if msg.get("Result", "Success") != "Success":
            return None
        transferee = self._channels.get(msg.get("TransfereeUniqueid", ""))
        transferer = self._channels.get(msg.get("TransfererUniqueid", ""))
        holder = transferee or transferer
        if holder is None:
            return None
        src = self._agent(transferer) or self._ext_or_none(msg.get("TransfererCallerIDNum"))
        target = msg.get("Extension", "")
        dst = target if self.rules.is_extension(target) else (self._e164(target) or target or None)
        holder.call.transfers += (Transfer(src, dst, "blind"),)
        return None

    def _on_attendedtransfer(self, msg: Message, arrived: float) -> list[Update] | None:
        if msg.get("Result", "Success") != "Success":
            return None
        get = self._channels.get
        transferee = get(msg.get("TransfereeUniqueid", ""))
        orig = get(msg.get("OrigTransfererUniqueid", ""))
        second = get(msg.get("SecondTransfererUniqueid", ""))
        target, how = self._transfer_target(msg, transferee, orig, second)
        main = transferee or orig or second or target
        if main is None:
            return None
        call = main.call
        joined: Call | None = None
        for other in (orig, second, target):
            if other is None or other.call is call:
                continue
            if call.has_outside_party() and other.call.has_outside_party():
                joined = other.call  # two callers put through to each other: both stay
                self._join(call, joined)
            else:  # the consultation call folds into the call it transferred
                call = self._fold(call, other.call)
        src = self._agent(orig) or self._ext_or_none(msg.get("OrigTransfererCallerIDNum"))
        if joined is not None:
            call.transfers += (Transfer(src, joined.external, "attended"),)
            joined.transfers += (Transfer(src, call.external, "attended"),)
            return None
        dst = self._agent(target) or self._ext_or_none(msg.get("TransferTargetCallerIDNum"))
        if dst is None and target is not None and target.kind == TRUNK:
            dst = target.number
        call.transfers += (Transfer(src, dst, "attended"),)
        if dst is None:
            call.flag(
                "transfer-target-unknown",
                f"AttendedTransfer names no target and none could be worked out ({how})",
            )
        elif call.answered_at is not None:
            call.final_ext = dst
        return None

    def _transfer_target(
        self,
        msg: Message,
        transferee: Channel | None,
        orig: Channel | None,
        second: Channel | None,
    ) -> tuple[Channel | None, str]:
        """The channel an attended transfer went to. Asterisk names it (TransferTarget*)
        only when it knows it: not for a transfer completed while the target still rang
        (blonde: DestType App or Link) nor for some external (SIP REFER) transfers. Then:
        the other channel of the second bridge, else what the second transferer dialled,
        else who is in the bridge the transfer ended in besides the transferee."""
        named = self._channels.get(msg.get("TransferTargetUniqueid", ""))
        if named is not None:
            return named, "TransferTarget"
        skip = {c for c in (transferee, orig, second) if c is not None}
        for ch in self._bridges.get(msg.get("SecondBridgeUniqueid", ""), ()):
            if ch not in skip:
                return ch, "the second bridge"
        if second is not None:
            dialled = [c for c in second.call.channels.values() if c.parent is second]
            if dialled:
                dialled.sort(key=lambda c: (c.up, c.has_rung))
                return dialled[-1], "the consultation leg's dial"
        for ch in self._bridges.get(msg.get("DestBridgeUniqueid", ""), ()):
            if ch not in skip:
                return ch, "the bridge the transfer ended in"
        return None, f"DestType {msg.get('DestType', '?')}"

    def _ext_or_none(self, value: str | None) -> str | None:
        return value if value and self.rules.is_extension(value) else None

    # --- the end of channels and calls ----------------------------------------------

    def _on_hangup(self, msg: Message, arrived: float) -> list[Update] | None:
        ch = self._channels.get(msg.get("Uniqueid", ""))
        if ch is None:
            return None
        call = ch.call
        try:
            cause: int | None = int(msg.get("Cause", ""))
        except ValueError:
            cause = None
        if ch is call.first:
            call.first_cause = cause
        elif not ch.origin and ch.dial_status is None and not ch.up and ch.kind in (PHONE, TRUNK):
            if cause in BUSY_CAUSES:
                call.saw_busy = True
            elif ch.has_rung:
                call.saw_no_answer = True
            elif cause in FAILED_CAUSES:
                call.saw_failed = True
        self._drop_channel(ch)
        if not call.channels:
            return self._finish(call, self._time(msg, arrived), ())
        return None

    def _drop_channel(self, ch: Channel) -> None:
        self._channels.pop(ch.uid, None)
        ch.call.channels.pop(ch.uid, None)
        if ch.bridge is not None:
            self._leave_bridge(ch)
        if ch.kind == LOCAL and not ch.onward_half and self._local_ones.get(ch.name) is ch:
            del self._local_ones[ch.name]

    def _finish(self, call: Call, t: float, flags: tuple[str, ...]) -> list[Update]:
        """Report the call and forget everything about it."""
        for ch in list(call.channels.values()):
            self._drop_channel(ch)
        for lid in call.linkedids:
            if self._by_linkedid.get(lid) is call:
                del self._by_linkedid[lid]
        self._calls.pop(call.id, None)
        call.ended_at = t
        if flags:
            call.flags = tuple(dict.fromkeys(call.flags + flags))
        self._conclude(call)
        out: list[Update] = []
        if not call.started_sent:
            out.append(self._started(call))
        out.append(CallFinished(build_record(call, self._pbx, explain(call))))
        # Break the call <-> channel references so nothing lingers for the cycle collector.
        call.first = call.anchor = call.answer_leg = None
        return out

    def _conclude(self, call: Call) -> None:
        """The last word on what the events could not tell (flags and reasons)."""
        first = call.first
        direction = call.direction or "internal"
        if not call.dir_why and first is not None and first.how == Rule.NONE:
            call.flag(
                "direction-guessed",
                f"the call started on {first.name}, which no "
                f"[calls] rule makes a trunk or a phone; taken as {direction}",
            )
        if direction == "in" and call.did is None and "adopted" not in call.flags:
            call.flag(
                "did-unknown",
                f"the first channel's Exten {call.did_exten!r} is not a "
                "number and none of [calls] did_variables was set",
            )
        if (
            direction != "in"
            and call.dialler is None
            and (first is not None and first.kind != TRUNK)
            and (direction == "internal" or call.first_agent is None)
        ):
            call.flag("extension-unknown", f"the call was placed from {describe(first)}")

    # --- after a reconnect ----------------------------------------------------------

    def _adopt(self, msg: Message, now: float) -> list[Update]:
        """Take over a live channel we never saw created (listener restarted mid-call).
        ``now``: on the PBX's clock already."""
        uid = msg["Uniqueid"]
        lid = msg.get("Linkedid") or uid
        t = now - _duration_s(msg.get("Duration", ""))
        fake = dict(msg)
        fake["Event"] = "Newchannel"
        fake.pop("Timestamp", None)  # ``t`` is the start: no sample of the PBX's clock
        fake["Linkedid"] = lid
        known = lid in self._by_linkedid
        out = self._on_newchannel(fake, t) or []
        ch = self._channels.get(uid)
        if ch is None:
            return out
        call = ch.call
        if not known:
            call.flags = ("adopted",)
            if call.awaiting:  # it is up and running: no Originate is about to dial it
                out += self._confirm_inbound(call)
        elif ch.kind == PHONE and ch.ext and not ch.origin and ch.ext not in call.rang:
            call.rang.append(ch.ext)
        if msg.get("ChannelState") == _STATE_UP:
            answered = self._up(ch, t) or []
            if any(isinstance(u, Answered) for u in answered):
                call.flag(
                    RING_UNKNOWN,
                    "found answered after a restart: answered_at is the "
                    "earliest it can have been (its leg's start)",
                )
            out += answered
        bridge = msg.get("BridgeId")
        if bridge:
            out += self._enter_bridge(ch, bridge, now) or []
        return out


def _plus(a: list[Update] | None, b: list[Update] | None) -> list[Update] | None:
    """Two handlers' updates in order (either may be None: most events produce none)."""
    if not a:
        return b
    return a + b if b else a


def _duration_s(text: str) -> float:
    """CoreShowChannel ``Duration``: ``HH:MM:SS`` (or plain seconds)."""
    try:
        if ":" in text:
            total = 0
            for part in text.split(":"):
                total = total * 60 + int(part)
            return float(total)
        return float(text) if text else 0.0
    except ValueError:
        return 0.0


def _age_order(msg: Message) -> tuple[float, int]:
    """Oldest channel first (longest Duration, then lowest unique id sequence), so an
    adopted call's first channel is the one that started it."""
    seq = msg.get("Uniqueid", "").rpartition(".")[2]
    number = seq.isascii() and seq.isdigit()
    return (-_duration_s(msg.get("Duration", "")), int(seq) if number else 0)
