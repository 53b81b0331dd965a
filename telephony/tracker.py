"""The call tracker: AMI messages in, live updates and finished call records out.

A pure, synchronous state machine: no I/O and no clock of its own (the caller says when
each message arrived, and ``expire``/``reconcile`` are told the time), so a recorded trace
always replays to the same records.

How it reads Asterisk (12 to 22, chan_pjsip/chan_sip, FreePBX or plain dialplans):

- Channels are grouped into calls by ``Linkedid``; a channel is looked up by its
  ``Uniqueid`` afterwards, so a Linkedid that Asterisk rewrites when it bridges two calls
  (transfers, pickups) merges them, as does ``AttendedTransfer``. The call keeps its first id.
- What a channel *is* comes from ``CallRules``: a trunk (its name matches the trunk
  pattern and it was not created in an internal context), a phone (its endpoint or caller
  id is an extension), a Local half (``Local/<exten>@<context>-<seq>;1|2``), or other.
- Direction is decided by the call's first channel: a trunk, or a channel in an inbound
  context, makes it inbound; a phone's call becomes outbound when a trunk leg joins, and
  is internal otherwise. ``Originate`` (click-to-call) rings the agent's own phone first:
  that leg is the "origin side"; the call starts when the PBX dials out of it.
- Answered means a person answered: for inbound calls a phone (or a forwarded outside
  leg) going Up - never the PBX answering the trunk itself for an IVR or a queue; for
  outbound calls the trunk leg going Up.
- Who had the caller last comes from bridges: whoever shares a bridge with the outside
  party's channel (through Local pairs to the phone behind them).

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
from telephony.phones import to_e164
from telephony.records import (
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
    build_record,
    channel_kind,
)

log = logging.getLogger(__name__)

__all__ = ["VARIABLES", "CallTracker"]

Handler = Callable[[Message, float], "list[Update] | None"]

_STATE_RINGING = "5"
_STATE_UP = "6"
_STATE_BUSY = "7"
# The only VarSet variables ``_on_varset`` reads (about half a real stream is VarSet).
VARIABLES = frozenset({"DIALSTATUS", "FROM_DID", "__FROM_DID"})
_NUMBER_RUN = re.compile(r"\+?[0-9]{5,}")


class CallTracker:
    """Builds calls from AMI events. ``handle`` never raises on malformed input."""

    def __init__(self, rules: CallRules | None = None, pbx: str = "default") -> None:
        """``pbx``: the ``[[ami]]`` name every record of this tracker carries."""
        self.rules = rules if rules is not None else CallRules()
        self._country = self.rules.default_country
        self._inbound = frozenset(self.rules.inbound_contexts)
        self._internal = frozenset(self.rules.internal_contexts)
        self._pbx = pbx
        self._max_calls = self.rules.max_active_calls
        self._max_channels = self.rules.max_channels
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
        """The ``VarSet`` variables the tracker reads (``AmiCodec(variables=...)``)."""
        return VARIABLES

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

    def handle(self, msg: Message, arrived: float) -> list[Update]:
        """Feed one AMI message (``arrived``: when it came in, Unix seconds)."""
        handler = self._handlers.get(msg.get("Event"))
        if handler is None:
            return []
        try:
            return handler(msg, arrived) or []
        except Exception:  # a malformed message must never stop the tracker
            log.warning("tracker: skipping %s message it could not use", msg.get("Event"),
                        exc_info=True)
            return []

    def feed(self, messages: Iterable[Message], arrived: float = 0.0) -> list[Update]:
        """Every update for a batch of messages (convenience for traces and tests)."""
        out: list[Update] = []
        handle = self.handle
        for msg in messages:
            out += handle(msg, arrived)
        return out

    def expire(self, now: float) -> list[Update]:
        """Close calls that never hung up within ``max_call_age_s`` (flag "stale")."""
        limit = now - self.rules.max_call_age_s
        out: list[Update] = []
        for call in [c for c in self._calls.values() if c.started_at < limit]:
            out += self._finish(call, now, ("stale",))
        return out

    def reconcile(self, snapshot: Iterable[Message], now: float) -> list[Update]:
        """Line our state up with the PBX after an AMI reconnect.

        ``snapshot``: the ``CoreShowChannel`` events answering ``CoreShowChannels``.
        Calls with no live channel left ended while we were away: reported once, flagged
        "reconciled", ended ``now``. Channels gone from surviving calls are dropped. Live
        channels we never saw (a restarted listener) are adopted, so their call is reported
        when it ends (flagged "adopted": its start is known only to the second).
        """
        live: dict[str, Message] = {}
        for msg in snapshot:
            uid = msg.get("Uniqueid")
            if uid and msg.get("Channel") and msg.get("Event", "CoreShowChannel") == (
                "CoreShowChannel"
            ):
                live[uid] = msg
        out: list[Update] = []
        for call in list(self._calls.values()):
            for uid in [u for u in call.channels if u not in live]:
                self._drop_channel(call.channels[uid])
            if not call.channels:
                out += self._finish(call, now, ("reconciled",))
                continue
            for ch in list(call.channels.values()):
                shown = live[ch.uid]
                if shown.get("ChannelState") == _STATE_UP and not ch.up:
                    out += self._up(ch, now) or []
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

    def _classify(
        self, name: str, context: str, callerid: str
    ) -> tuple[ChannelKind, str | None]:
        kind, ext = channel_kind(self.rules, name, context, callerid)
        return kind, (sys.intern(ext) if ext else None)  # "101" is shared by all its calls

    def _channel(self, msg: Message) -> Channel | None:
        """The live channel a message is about; merges calls when Asterisk has moved the
        channel to another call's Linkedid (it propagates the oldest one on bridging)."""
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
        other = self._by_linkedid.get(lid)
        if other is None:
            call.linkedids += (lid,)
            self._by_linkedid[lid] = call
        elif other is not call:
            keep, gone = (other, call) if other.started_at <= call.started_at else (call, other)
            self._merge(keep, gone)

    def _merge(self, keep: Call, gone: Call) -> None:
        """Fold ``gone`` into ``keep`` (attended transfer): one call, ``keep``'s id."""
        for ch in gone.channels.values():
            ch.call = keep
            keep.channels[ch.uid] = ch
        for lid in gone.linkedids:
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

    def _on_newchannel(self, msg: Message, arrived: float) -> list[Update] | None:
        uid = msg.get("Uniqueid")
        name = msg.get("Channel")
        if not uid or not name or uid in self._channels:
            return None
        t = event_time(msg, arrived)
        lid = msg.get("Linkedid") or uid
        context = msg.get("Context", "")
        call = self._by_linkedid.get(lid)
        if len(self._channels) >= self._max_channels or (
            call is None and len(self._calls) >= self._max_calls
        ):
            return [self._refuse(call, lid, name, t)]
        kind, ext = self._classify(name, context, msg.get("CallerIDNum", ""))
        new_call = call is None
        if call is None:
            call = Call(id=lid, first=None, started_at=t, linkedids=(lid,))
            self._calls[lid] = call
            self._by_linkedid[lid] = call
        ch = Channel(uid, name if kind == LOCAL else "", kind, ext, call)
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
            call.id if call is not None else lid, name, call is None, t, len(self._calls),
            self._pbx,
        )  # fmt: skip

    def _pair_local(self, ch: Channel) -> None:
        name = ch.name
        if name.endswith(";2"):
            ch.onward_half = True
            one = self._local_ones.pop(name[:-1] + "1", None)
            if one is not None:
                self._link_halves(one, ch)
        else:
            self._local_ones[name] = ch

    @staticmethod
    def _link_halves(one: Channel, two: Channel) -> None:
        """Pair a Local channel's ";1" and ";2" halves (AMI's LocalOne and LocalTwo)."""
        one.sibling, two.sibling = two, one
        two.onward_half = True
        if two.parent is None:
            two.parent = one
        if one.origin:
            two.origin = True

    def _begin(self, call: Call, ch: Channel, msg: Message) -> list[Update] | None:
        """The first channel of a new call decides what kind of call it is."""
        call.first = ch
        call.anchor = ch
        ch.origin = True
        context = msg.get("Context", "")
        down = msg.get("ChannelState") == "0"  # created by Originate, not by a caller
        if ch.kind == TRUNK and down:
            # Callback: Originate rang the outside number first, then an agent.
            call.direction = "out"
            call.originated = True
            call.external = to_e164(msg.get("Exten"), self._country)
            return None
        if (ch.kind == TRUNK or context in self._inbound) and context not in self._internal:
            call.direction = "in"
            call.external = to_e164(msg.get("CallerIDNum"), self._country)
            call.did = to_e164(msg.get("Exten"), self._country)
            return [self._started(call)]
        call.originated = down
        call.dialler = self._agent(ch)
        return None

    def _started(self, call: Call) -> CallStarted:
        call.started_sent = True
        return CallStarted(
            call.id, call.direction or "internal", call.external, call.did, call.started_at,
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
        if call.dialler is None and call.first is not None:
            call.dialler = self._agent(call.first)
        if msg is not None and call.external is None:
            call.external = self._dialled_number(msg)
        if call.external is not None and not call.started_sent:
            return [self._started(call)]
        return None

    def _dialled_number(self, msg: Message) -> str | None:
        """The outside number of a dial: the DialString (``79031112233@trunk``,
        ``trunk/79031112233``), else the new leg's caller id or extension."""
        country = self._country
        for m in _NUMBER_RUN.finditer(msg.get("DialString", "")):
            number = to_e164(m.group(0), country)
            if number:
                return number
        for key in ("DestCallerIDNum", "DestExten", "CallerIDNum", "Exten"):
            number = to_e164(msg.get(key), country)
            if number:
                return number
        return None

    def _agent(self, ch: Channel | None, depth: int = 0) -> str | None:
        """The extension a channel stands for: a phone's own; for a Local half, the phone
        its ";2" reached (else the Local's exten); for a forwarded outside leg, the
        extension of the Local that dialled it (follow-me)."""
        if ch is None or depth > 8:
            return None
        kind = ch.kind
        if kind == PHONE:
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
        if kind == TRUNK and ch.parent is not None and ch.parent.kind == LOCAL:
            return ch.parent.ext
        return None

    # --- dialling, ringing, answering -----------------------------------------------

    def _on_dialbegin(self, msg: Message, arrived: float) -> list[Update] | None:
        dest = self._channels.get(msg.get("DestUniqueid", ""))
        if dest is None:
            return None
        call = dest.call
        src = self._channel(msg)
        if src is None and dest is call.first:
            # Dialled by Originate itself (no calling channel): the agent's own leg of a
            # click-to-call. (Asterisk's dial API, e.g. Atxfer's Local leg, also dials with
            # no calling channel, but never a call's first channel.)
            dest.origin = True
            call.originated = True
            return None
        if src is not None:
            if dest.parent is None:
                dest.parent = src
            if src.origin and src.kind == LOCAL and src.onward_half:
                dest.origin = True
        if dest.origin:
            return None
        t = event_time(msg, arrived)
        out: list[Update] = []
        if call.originated and not call.dial_started and call.first is not None:
            call.dial_started = True
            if call.first.kind != TRUNK and call.answered_at is None:
                call.started_at = t  # click-to-call starts when the outside number is dialled
        if dest.kind == TRUNK:
            if call.direction != "in":
                out += self._goes_outside(call, dest, msg, t) or ()
        elif dest.kind == PHONE:
            if dest.ext and dest.ext not in call.rang:
                call.rang.append(dest.ext)
            if call.direction is None:
                call.direction = "internal"
        if not call.started_sent and call.direction is not None:
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
            if src is not None:
                src.answered_child = dest
            return self._up(dest, event_time(msg, arrived))
        if not dest.origin:
            dest.dial_status = status
            dest.call.note_status(status)
        return None

    def _on_newstate(self, msg: Message, arrived: float) -> list[Update] | None:
        ch = self._channel(msg)
        if ch is None:
            return None
        state = msg.get("ChannelState")
        if state == _STATE_UP:
            return self._up(ch, event_time(msg, arrived))
        if state == _STATE_RINGING:
            return self._ringing(ch, event_time(msg, arrived))
        if state == _STATE_BUSY and ch is ch.call.first:
            ch.call.dialstatus = ch.call.dialstatus or "BUSY"
        return None

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
        if not call.started_sent:
            if call.direction is None:
                call.direction = "internal"
            out.append(self._started(call))
        out.append(
            Ringing(call.id, ext, call.external, call.did, call.direction or "internal", t,
                    self._pbx)
        )
        return out

    def _up(self, ch: Channel, t: float) -> list[Update] | None:
        """A channel went Up: is that the call being answered, and by whom?"""
        if ch.up:
            return None
        ch.up = True
        call = ch.call
        kind = ch.kind
        if kind == PHONE and not ch.origin and call.first_agent is None:
            call.first_agent = ch.ext
        if call.answered_at is not None or kind in (LOCAL, OTHER):
            return None
        direction = call.direction
        if direction == "out":
            if kind != TRUNK:
                return None
        elif ch.origin:
            return None
        elif direction == "in":
            pass  # a phone, or an outside leg the call was forwarded to
        elif kind != PHONE:
            return None
        return self._answered(call, ch, t)

    def _answered(self, call: Call, ch: Channel, t: float) -> list[Update]:
        call.answered_at = t
        out: list[Update] = []
        if call.direction == "in":
            call.answered_by = self._agent(ch)
            who = call.answered_by
        else:
            if call.direction is None:
                call.direction = "internal"
            who = call.dialler
        if not call.started_sent:
            out.append(self._started(call))
        out.append(Answered(call.id, who, t, self._pbx))
        return out

    def _on_agentconnect(self, msg: Message, arrived: float) -> list[Update] | None:
        """A queue member took the call (normally already seen as their phone going Up)."""
        dest = self._channels.get(msg.get("DestUniqueid", ""))
        if dest is None or dest.call.answered_at is not None:
            return None
        call = dest.call
        if call.direction != "in":
            return None
        dest.up = True
        return self._answered(call, dest, event_time(msg, arrived))

    def _on_newcallerid(self, msg: Message, arrived: float) -> list[Update] | None:
        ch = self._channel(msg)
        call = ch.call if ch is not None else None
        if call is not None and ch is call.first and call.direction == "in" and (
            call.external is None
        ):  # the caller id came after the channel (some trunks set it in the dialplan)
            call.external = to_e164(msg.get("CallerIDNum"), self._country)
        return None

    def _on_varset(self, msg: Message, arrived: float) -> list[Update] | None:
        var = msg.get("Variable")
        if var == "DIALSTATUS":
            ch = self._channels.get(msg.get("Uniqueid", ""))
            value = msg.get("Value")
            if ch is not None and value:
                ch.call.dialstatus = value
        elif var in ("FROM_DID", "__FROM_DID"):
            ch = self._channels.get(msg.get("Uniqueid", ""))
            if ch is not None and ch.call.did is None and ch.call.direction == "in":
                ch.call.did = to_e164(msg.get("Value"), self._country)
        return None

    # --- bridges: who is talking to whom --------------------------------------------

    def _on_bridgeenter(self, msg: Message, arrived: float) -> list[Update] | None:
        ch = self._channel(msg)
        bid = msg.get("BridgeUniqueid")
        if ch is None or not bid:
            return None
        return self._enter_bridge(ch, bid, event_time(msg, arrived))

    def _enter_bridge(self, ch: Channel, bid: str, t: float) -> list[Update] | None:
        if ch.bridge is not None and ch.bridge != bid:
            self._leave_bridge(ch)
        members = self._bridges.setdefault(bid, [])
        if ch not in members:
            members.append(ch)
        ch.bridge = bid
        return self._bridged(members, t)

    def _bridged(self, members: list[Channel], t: float) -> list[Update] | None:
        """Whoever shares a bridge with a call's outside party is now its agent."""
        out: list[Update] | None = None
        for anchor in members:
            call = anchor.call
            if anchor is not call.anchor:
                continue
            for peer in members:
                if peer is anchor:
                    continue
                agent = self._agent(peer)
                if not agent:
                    continue
                call.final_ext = agent
                if call.answered_at is None and peer.kind == PHONE and not peer.origin and (
                    call.direction == "in"
                ):  # picked up by a phone that never rang for it (call pickup)
                    out = (out or []) + self._answered(call, peer, t)
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
        dst = target if self.rules.is_extension(target) else (
            to_e164(target, self._country) or target or None
        )
        holder.call.transfers += (Transfer(src, dst, "blind"),)
        return None

    def _on_attendedtransfer(self, msg: Message, arrived: float) -> list[Update] | None:
        if msg.get("Result", "Success") != "Success":
            return None
        get = self._channels.get
        transferee = get(msg.get("TransfereeUniqueid", ""))
        orig = get(msg.get("OrigTransfererUniqueid", ""))
        second = get(msg.get("SecondTransfererUniqueid", ""))
        target = get(msg.get("TransferTargetUniqueid", ""))
        main = (transferee or orig or second or target)
        if main is None:
            return None
        call = main.call
        for other in (orig, second, target):
            if other is not None and other.call is not call:
                keep, gone = (
                    (call, other.call)
                    if call.started_at <= other.call.started_at
                    else (other.call, call)
                )
                self._merge(keep, gone)
                call = keep
        src = self._agent(orig) or self._ext_or_none(msg.get("OrigTransfererCallerIDNum"))
        dst = self._agent(target) or self._ext_or_none(msg.get("TransferTargetCallerIDNum"))
        call.transfers += (Transfer(src, dst, "attended"),)
        if dst is not None and call.answered_at is not None:
            call.final_ext = dst
        return None

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
        elif not ch.origin and ch.dial_status is None and not ch.up and ch.kind in (
            PHONE, TRUNK
        ):
            if cause in BUSY_CAUSES:
                call.saw_busy = True
            elif ch.has_rung:
                call.saw_no_answer = True
            elif cause in FAILED_CAUSES:
                call.saw_failed = True
        self._drop_channel(ch)
        if not call.channels:
            return self._finish(call, event_time(msg, arrived), ())
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
        out: list[Update] = []
        if not call.started_sent:
            out.append(self._started(call))
        out.append(CallFinished(build_record(call, self._pbx)))
        # Break the call <-> channel references so nothing lingers for the cycle collector.
        call.first = call.anchor = None
        return out

    # --- after a reconnect ----------------------------------------------------------

    def _adopt(self, msg: Message, now: float) -> list[Update]:
        """Take over a live channel we never saw created (listener restarted mid-call)."""
        uid = msg["Uniqueid"]
        lid = msg.get("Linkedid") or uid
        t = now - _duration_s(msg.get("Duration", ""))
        fake = dict(msg)
        fake["Event"] = "Newchannel"
        fake["Timestamp"] = repr(t)
        fake["Linkedid"] = lid
        known = lid in self._by_linkedid
        out = self._on_newchannel(fake, t) or []
        ch = self._channels.get(uid)
        if ch is None:
            return out
        call = ch.call
        if not known:
            call.flags = ("adopted",)
        elif ch.kind == PHONE and ch.ext and not ch.origin and ch.ext not in call.rang:
            call.rang.append(ch.ext)
        if msg.get("ChannelState") == _STATE_UP:
            out += self._up(ch, t) or []
        bridge = msg.get("BridgeId")
        if bridge:
            out += self._enter_bridge(ch, bridge, now) or []
        return out


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
