"""Call-tracker behaviours with no recorded trace, on hand-made event sequences.

``Pbx`` writes events with the fields Asterisk 18-22 sends (channel snapshot headers,
Dest*/Transferer*/... prefixes, Timestamp), modelled on the recorded traces in
``pbxsim/traces`` and the Asterisk AMI event reference.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import pytest

from telephony.ami import Message
from telephony.records import Answered, CallFinished, CallRecord, CallStarted, Ringing, Update
from telephony.rules import CallRules
from telephony.tracker import CallTracker

STATES = {"0": "Down", "4": "Ring", "5": "Ringing", "6": "Up", "7": "Busy"}


@dataclass
class Chan:
    name: str
    uid: str
    linkedid: str
    cid: str
    context: str
    exten: str
    state: str = "0"
    connected: str = "<unknown>"


class Pbx:
    """Writes AMI events for a scenario and feeds them to a tracker as it goes."""

    def __init__(
        self,
        tracker: CallTracker | None = None,
        t0: float = 1_800_000_000.0,
        *,
        host_ahead_s: float = 0.0,
    ) -> None:
        """``host_ahead_s``: how far the bridge's clock (arrival times) is ahead of the
        PBX's (Timestamps)."""
        self.tracker = tracker or CallTracker()
        self.t = t0
        self.host_ahead_s = host_ahead_s
        self._uid = itertools.count(100)
        self._seq = itertools.count(0x20)
        self._bridge = itertools.count(1)
        self.updates: list[Update] = []

    # -- plumbing --
    def send(self, event: str, **headers: str) -> list[Update]:
        msg: Message = {"Event": event, "Privilege": "call,all", "Timestamp": f"{self.t:.6f}"}
        msg.update(headers)
        out = self.tracker.handle(msg, self.now)
        self.updates += out
        return out

    def wait(self, seconds: float) -> None:
        self.t += seconds

    @property
    def now(self) -> float:
        """The bridge's clock (self.t is the PBX's)."""
        return self.t + self.host_ahead_s

    @staticmethod
    def snap(ch: Chan | None, prefix: str = "") -> dict[str, str]:
        if ch is None:
            return {}
        return {
            f"{prefix}Channel": ch.name,
            f"{prefix}ChannelState": ch.state,
            f"{prefix}ChannelStateDesc": STATES.get(ch.state, "Unknown"),
            f"{prefix}CallerIDNum": ch.cid,
            f"{prefix}CallerIDName": "<unknown>",
            f"{prefix}ConnectedLineNum": ch.connected,
            f"{prefix}ConnectedLineName": "<unknown>",
            f"{prefix}Language": "en",
            f"{prefix}AccountCode": "",
            f"{prefix}Context": ch.context,
            f"{prefix}Exten": ch.exten,
            f"{prefix}Priority": "1",
            f"{prefix}Uniqueid": ch.uid,
            f"{prefix}Linkedid": ch.linkedid,
        }

    # -- channels --
    def channel(
        self,
        endpoint: str,
        *,
        context: str,
        exten: str = "s",
        cid: str = "",
        linked: Chan | None = None,
        state: str = "0",
    ) -> Chan:
        uid = f"{int(self.t)}.{next(self._uid)}"
        ch = Chan(
            f"{endpoint}-{next(self._seq):08x}",
            uid,
            linked.linkedid if linked else uid,
            cid or "<unknown>",
            context,
            exten,
            state,
        )
        self.send("Newchannel", **self.snap(ch))
        return ch

    def trunk_call(self, caller: str, did: str, context: str = "from-trunk") -> Chan:
        return self.channel("PJSIP/trunk", context=context, exten=did, cid=caller, state="4")

    def phone(self, ext: str, linked: Chan) -> Chan:
        return self.channel(f"PJSIP/{ext}", context="from-internal", cid=ext, linked=linked)

    def local(self, exten: str, context: str, linked: Chan | None) -> tuple[Chan, Chan]:
        seq = next(self._seq)
        base = f"Local/{exten}@{context}-{seq:08x}"
        lid = linked.linkedid if linked else None
        uid1 = f"{int(self.t)}.{next(self._uid)}"
        one = Chan(base + ";1", uid1, lid or uid1, "<unknown>", context, exten)
        two = Chan(
            base + ";2",
            f"{int(self.t)}.{next(self._uid)}",
            lid or uid1,
            "<unknown>",
            context,
            exten,
            "4",
        )
        self.send("Newchannel", **self.snap(one))
        self.send("Newchannel", **self.snap(two))
        self.send(
            "LocalBridge",
            **self.snap(one, "LocalOne"),
            **self.snap(two, "LocalTwo"),
            Context=context,
            Exten=exten,
            LocalOptimization="Yes",
        )
        return one, two

    # -- dialling --
    def dial(self, src: Chan | None, dest: Chan, dialstring: str) -> None:
        self.send("DialBegin", **self.snap(src), **self.snap(dest, "Dest"), DialString=dialstring)

    def ring(self, src: Chan | None, dest: Chan) -> None:
        dest.state = "5"
        self.send("Newstate", **self.snap(dest))
        self.send("DialState", **self.snap(src), **self.snap(dest, "Dest"), DialStatus="RINGING")

    def answer(self, src: Chan | None, dest: Chan) -> None:
        self.up(dest)
        self.send("DialEnd", **self.snap(src), **self.snap(dest, "Dest"), DialStatus="ANSWER")
        if src is not None:
            self.up(src)

    def dial_end(self, src: Chan | None, dest: Chan, status: str) -> None:
        self.send("DialEnd", **self.snap(src), **self.snap(dest, "Dest"), DialStatus=status)

    def up(self, ch: Chan) -> None:
        if ch.state != "6":
            ch.state = "6"
            self.send("Newstate", **self.snap(ch))

    def varset(self, ch: Chan, variable: str, value: str) -> None:
        self.send("VarSet", **self.snap(ch), Variable=variable, Value=value)

    # -- bridges --
    def bridge(self, *chans: Chan) -> str:
        bid = f"00000000-0000-4000-8000-{next(self._bridge):012d}"
        self.send("BridgeCreate", BridgeUniqueid=bid, BridgeType="basic")
        for n, ch in enumerate(chans, 1):
            self.enter(bid, ch, n)
        return bid

    def enter(self, bid: str, ch: Chan, count: int = 1) -> None:
        self.send(
            "BridgeEnter",
            BridgeUniqueid=bid,
            BridgeType="basic",
            BridgeNumChannels=str(count),
            **self.snap(ch),
        )

    def leave(self, bid: str, ch: Chan) -> None:
        self.send("BridgeLeave", BridgeUniqueid=bid, BridgeType="basic", **self.snap(ch))

    def hangup(self, ch: Chan, cause: int = 16, bridge: str | None = None) -> list[Update]:
        if bridge:
            self.leave(bridge, ch)
        self.send("HangupRequest", **self.snap(ch), Cause=str(cause))
        return self.send("Hangup", **self.snap(ch), Cause=str(cause), **{"Cause-txt": "x"})

    # -- results --
    def records(self) -> list[CallRecord]:
        return [u.record for u in self.updates if isinstance(u, CallFinished)]

    def record(self) -> CallRecord:
        (rec,) = self.records()
        return rec


CALLER, DID = "79161234567", "74951234567"


def test_unreachable_extension_is_a_failed_call_where_nothing_rang() -> None:
    # Dial() could not create the phone's channel (unregistered): no DialBegin at all,
    # only DIALSTATUS=CHANUNAVAIL; the dialplan then plays congestion and hangs up (34).
    pbx = Pbx()
    trunk = pbx.trunk_call(CALLER, DID)
    pbx.varset(trunk, "DIALSTATUS", "CHANUNAVAIL")
    pbx.wait(3)
    pbx.hangup(trunk, cause=34)
    rec = pbx.record()
    assert (rec.direction, rec.external, rec.did) == ("in", "+" + CALLER, "+" + DID)
    assert (rec.answered, rec.extension, rec.disposition, rec.rang) == (False, None, "failed", ())
    assert rec.ring_s == pytest.approx(3.0)


def test_unreachable_phone_reported_by_dial_end_is_failed() -> None:
    pbx = Pbx()
    trunk = pbx.trunk_call(CALLER, DID)
    p101 = pbx.phone("101", trunk)
    pbx.dial(trunk, p101, "101")
    pbx.wait(1)
    pbx.dial_end(trunk, p101, "CHANUNAVAIL")
    pbx.hangup(p101, cause=20)
    pbx.hangup(trunk, cause=34)
    rec = pbx.record()
    assert (rec.disposition, rec.answered, rec.rang) == ("failed", False, ("101",))


def test_ring_group_with_one_busy_phone_and_one_unanswered_is_missed() -> None:
    pbx = Pbx()
    trunk = pbx.trunk_call(CALLER, DID)
    one_a, two_a = pbx.local("101", "rg-members", trunk)
    one_b, two_b = pbx.local("102", "rg-members", trunk)
    pbx.dial(trunk, one_a, "101@rg-members")
    pbx.dial(trunk, one_b, "102@rg-members")
    p101, p102 = pbx.phone("101", trunk), pbx.phone("102", trunk)
    pbx.dial(two_a, p101, "101")
    pbx.dial(two_b, p102, "102")
    pbx.dial_end(two_a, p101, "BUSY")
    pbx.hangup(p101, cause=17)
    pbx.ring(two_b, p102)
    pbx.wait(20)
    pbx.dial_end(two_b, p102, "NOANSWER")
    for ch in (p102, two_b, one_b, two_a, one_a, trunk):
        pbx.hangup(ch, cause=19)
    rec = pbx.record()
    assert (rec.disposition, rec.extension, rec.rang) == ("no-answer", None, ("101", "102"))


def queue_call(pbx: Pbx) -> tuple[Chan, Chan, Chan]:
    trunk = pbx.trunk_call("79031234455", "74951234569")
    pbx.up(trunk)  # Answer() before Queue(): the PBX answers, no agent has yet
    pbx.wait(1)
    pbx.send("QueueCallerJoin", **pbx.snap(trunk), Queue="support", Position="1", Count="1")
    p101, p102 = pbx.phone("101", trunk), pbx.phone("102", trunk)
    for p in (p101, p102):
        pbx.send(
            "AgentCalled",
            **pbx.snap(trunk),
            **pbx.snap(p, "Dest"),
            Queue="support",
            Interface=p.name.rsplit("-", 1)[0],
            MemberName=p.cid,
        )
        pbx.dial(trunk, p, p.name.rsplit("-", 1)[0])
        pbx.ring(trunk, p)
    return trunk, p101, p102


def test_queue_abandon_is_a_missed_call_listing_the_agents_that_rang() -> None:
    pbx = Pbx()
    trunk, p101, p102 = queue_call(pbx)
    pbx.wait(9)
    for p in (p101, p102):
        pbx.dial_end(trunk, p, "CANCEL")
    pbx.send(
        "QueueCallerAbandon",
        **pbx.snap(trunk),
        Queue="support",
        Position="1",
        OriginalPosition="1",
        HoldTime="10",
    )
    pbx.hangup(p101, cause=16)
    pbx.hangup(p102, cause=16)
    pbx.hangup(trunk, cause=16)
    rec = pbx.record()
    assert (rec.direction, rec.answered, rec.disposition) == ("in", False, "no-answer")
    assert (rec.extension, rec.rang, rec.final_extension) == (None, ("101", "102"), None)
    assert rec.ring_s == pytest.approx(10.0, abs=0.01)
    assert rec.talk_s == 0.0
    pops = [u.extension for u in pbx.updates if isinstance(u, Ringing)]
    assert pops == ["101", "102"]
    assert not [u for u in pbx.updates if isinstance(u, Answered)]


def test_local_channel_optimisation_keeps_the_agent_and_the_call() -> None:
    pbx = Pbx()
    trunk = pbx.trunk_call(CALLER, DID)
    one, two = pbx.local("101", "from-queue", trunk)
    pbx.dial(trunk, one, "101@from-queue")
    p101 = pbx.phone("101", trunk)
    pbx.dial(two, p101, "PJSIP/101")
    pbx.ring(two, p101)
    pbx.wait(2)
    pbx.answer(two, p101)
    b2 = pbx.bridge(p101, two)
    pbx.answer(trunk, one)
    b1 = pbx.bridge(one, trunk)
    # The Local pair optimises itself out: 101's phone is moved into the caller's bridge.
    pbx.send(
        "LocalOptimizationBegin",
        **pbx.snap(one, "LocalOne"),
        **pbx.snap(two, "LocalTwo"),
        **pbx.snap(p101, "Source"),
        DestUniqueId=trunk.uid,
        Id="1",
    )
    pbx.leave(b2, p101)
    pbx.enter(b1, p101, 3)
    pbx.leave(b1, one)
    pbx.send(
        "LocalOptimizationEnd",
        **pbx.snap(one, "LocalOne"),
        **pbx.snap(two, "LocalTwo"),
        Success="Yes",
        Id="1",
    )
    assert pbx.hangup(one) == [] and pbx.hangup(two, bridge=b2) == []  # the call goes on
    pbx.wait(30)
    pbx.hangup(trunk, bridge=b1)
    pbx.hangup(p101, bridge=b1)
    rec = pbx.record()
    assert (rec.extension, rec.final_extension, rec.answered) == ("101", "101", True)
    assert (rec.ring_s, rec.talk_s) == (pytest.approx(2.0), pytest.approx(30.0))
    assert pbx.tracker.active_count == 0


def phone_call(pbx: Pbx, ext: str, number: str) -> Chan:
    """An extension picks up and dials (a phone-initiated call: state Ring)."""
    return pbx.channel(f"PJSIP/{ext}", context="from-internal", exten=number, cid=ext, state="4")


def test_internal_call_has_no_outside_party_and_is_by_the_caller() -> None:
    pbx = Pbx()
    p101 = phone_call(pbx, "101", "102")
    p102 = pbx.phone("102", p101)
    pbx.dial(p101, p102, "102")
    pbx.ring(p101, p102)
    pbx.wait(2)
    pbx.answer(p101, p102)
    b = pbx.bridge(p102, p101)
    pbx.wait(7)
    pbx.hangup(p102, bridge=b)
    pbx.hangup(p101, bridge=b)
    rec = pbx.record()
    assert (rec.direction, rec.external, rec.did) == ("internal", None, None)
    assert (rec.extension, rec.final_extension, rec.rang) == ("101", "102", ("102",))
    assert (rec.answered, rec.disposition) == (True, "answered")
    assert (rec.ring_s, rec.talk_s) == (pytest.approx(2.0), pytest.approx(7.0))
    started = [u for u in pbx.updates if isinstance(u, CallStarted)]
    assert [s.direction for s in started] == ["internal"]


def outbound(pbx: Pbx, number: str = "79031112233") -> tuple[Chan, Chan]:
    p101 = phone_call(pbx, "101", number)
    out = pbx.channel("PJSIP/trunk", context="from-trunk", linked=p101)
    pbx.dial(p101, out, f"{number}@trunk")
    return p101, out


@pytest.mark.parametrize(
    ("status", "cause", "rings", "disposition"),
    [
        ("BUSY", 17, True, "busy"),  # 180 Ringing, then 486 Busy Here
        ("BUSY", 17, False, "busy"),
        ("NOANSWER", 19, True, "no-answer"),  # Dial timeout
        ("CANCEL", 16, True, "no-answer"),  # the agent hung up first
        ("CONGESTION", 34, False, "failed"),
        ("CHANUNAVAIL", 38, False, "failed"),
    ],
)
def test_unanswered_outbound_call_disposition(
    status: str, cause: int, rings: bool, disposition: str
) -> None:
    pbx = Pbx()
    p101, out = outbound(pbx)
    if rings:
        pbx.ring(p101, out)
    pbx.wait(5)
    pbx.dial_end(p101, out, status)
    pbx.hangup(out, cause=cause)
    pbx.hangup(p101, cause=cause)
    rec = pbx.record()
    assert (rec.direction, rec.external, rec.extension) == ("out", "+79031112233", "101")
    assert (rec.answered, rec.disposition, rec.rang) == (False, disposition, ())
    assert rec.ring_s == pytest.approx(5.0)
    assert not [u for u in pbx.updates if isinstance(u, Ringing)]  # no screen pop to oneself


def test_outbound_number_dialled_in_national_format_is_e164() -> None:
    pbx = Pbx()
    p101, out = outbound(pbx, "89031112233")
    pbx.hangup(out, cause=16)
    pbx.hangup(p101, cause=16)
    assert pbx.record().external == "+79031112233"


def test_forwarding_to_an_outside_mobile_is_inbound_and_answered_by_no_extension() -> None:
    pbx = Pbx()
    trunk = pbx.trunk_call(CALLER, DID)
    mobile = pbx.channel("PJSIP/trunk", context="from-trunk", linked=trunk)
    pbx.dial(trunk, mobile, "79265556677@trunk")
    pbx.ring(trunk, mobile)
    pbx.wait(4)
    pbx.answer(trunk, mobile)
    b = pbx.bridge(mobile, trunk)
    pbx.wait(10)
    pbx.hangup(mobile, bridge=b)
    pbx.hangup(trunk, bridge=b)
    rec = pbx.record()
    assert (rec.direction, rec.external, rec.did) == ("in", "+" + CALLER, "+" + DID)
    assert (rec.answered, rec.disposition, rec.extension, rec.rang) == (True, "answered", None, ())
    assert (rec.ring_s, rec.talk_s) == (pytest.approx(4.0), pytest.approx(10.0))


def test_follow_me_to_a_mobile_is_answered_on_behalf_of_the_extension() -> None:
    # FreePBX follow-me: Local/FMGL-101#@followme dials 101's phone and mobile.
    pbx = Pbx()
    trunk = pbx.trunk_call(CALLER, DID)
    one, two = pbx.local("FMGL-101#", "followme", trunk)
    pbx.dial(trunk, one, "FMGL-101#@followme")
    p101 = pbx.phone("101", trunk)
    mobile = pbx.channel("PJSIP/trunk", context="from-trunk", linked=trunk)
    pbx.dial(two, p101, "PJSIP/101")
    pbx.dial(two, mobile, "79265556677@trunk")
    pbx.ring(two, p101)
    pbx.wait(6)
    pbx.answer(two, mobile)
    pbx.dial_end(two, p101, "CANCEL")
    pbx.hangup(p101, cause=26)
    pbx.answer(trunk, one)
    pbx.wait(10)
    for ch in (trunk, one, two, mobile):
        pbx.hangup(ch)
    rec = pbx.record()
    assert (rec.direction, rec.answered, rec.extension, rec.rang) == ("in", True, "101", ("101",))
    assert rec.ring_s == pytest.approx(6.0)


def test_phone_attended_transfer_merges_the_consultation_call_into_the_first() -> None:
    pbx = Pbx()
    trunk = pbx.trunk_call(CALLER, DID)
    a101 = pbx.phone("101", trunk)
    pbx.dial(trunk, a101, "101")
    pbx.ring(trunk, a101)
    pbx.wait(2)
    pbx.answer(trunk, a101)
    first_bridge = pbx.bridge(a101, trunk)
    pbx.wait(5)
    pbx.send("Hold", **pbx.snap(a101))
    # 101 puts the caller on hold and calls 102 from a second line: a call of its own.
    c101 = phone_call(pbx, "101", "102")
    c102 = pbx.phone("102", c101)
    pbx.dial(c101, c102, "102")
    pbx.ring(c101, c102)
    pbx.wait(3)
    pbx.answer(c101, c102)
    consult_bridge = pbx.bridge(c102, c101)
    assert len({u.call_id for u in pbx.updates if isinstance(u, CallStarted)}) == 2
    pbx.wait(4)
    # 101 completes the transfer: the caller is moved into the consultation bridge and
    # Asterisk gives 102's channel the caller's (older) Linkedid.
    pbx.leave(first_bridge, trunk)
    pbx.leave(consult_bridge, c101)
    pbx.enter(consult_bridge, trunk, 2)
    pbx.send(
        "AttendedTransfer",
        Result="Success",
        **pbx.snap(a101, "OrigTransferer"),
        OrigBridgeUniqueid=first_bridge,
        **pbx.snap(c101, "SecondTransferer"),
        SecondBridgeUniqueid=consult_bridge,
        **pbx.snap(trunk, "Transferee"),
        **pbx.snap(c102, "TransferTarget"),
        IsExternal="No",
        DestType="Bridge",
        DestBridgeUniqueid=consult_bridge,
    )
    c102.linkedid = trunk.linkedid
    pbx.send("NewConnectedLine", **pbx.snap(c102))
    pbx.hangup(a101, bridge=first_bridge)
    pbx.hangup(c101)
    pbx.wait(20)
    pbx.hangup(trunk, bridge=consult_bridge)
    pbx.hangup(c102, bridge=consult_bridge)
    rec = pbx.record()  # one call: the consultation is not reported on its own
    assert rec.call_id == trunk.linkedid
    assert (rec.direction, rec.extension, rec.final_extension) == ("in", "101", "102")
    assert [t.to_json() for t in rec.transfers] == [
        {"from": "101", "to": "102", "kind": "attended"}
    ]
    assert rec.rang == ("101", "102")
    assert (rec.ring_s, rec.talk_s) == (pytest.approx(2.0), pytest.approx(32.0))
    assert pbx.tracker.active_count == 0 and pbx.tracker._channels == {}


def test_aborted_attended_transfer_leaves_the_caller_with_the_first_agent() -> None:
    # AMI Atxfer: the consultation leg shares the caller's Linkedid; 102 answers, then
    # 101 cancels and goes back to the caller, who never talks to 102.
    pbx = Pbx()
    trunk = pbx.trunk_call(CALLER, DID)
    a101 = pbx.phone("101", trunk)
    pbx.dial(trunk, a101, "101")
    pbx.wait(2)
    pbx.answer(trunk, a101)
    b = pbx.bridge(a101, trunk)
    pbx.wait(5)
    one, two = pbx.local("102", "from-internal", trunk)
    pbx.dial(None, one, "102@from-internal")  # the dial API: no calling channel
    p102 = pbx.phone("102", trunk)
    pbx.dial(two, p102, "102")
    pbx.answer(two, p102)
    consult = pbx.bridge(p102, two)
    pbx.leave(b, a101)
    side = pbx.bridge(one, a101)
    pbx.hangup(one, bridge=side)
    pbx.hangup(two, bridge=consult)
    pbx.hangup(p102, bridge=consult)
    pbx.enter(b, a101, 2)
    pbx.hangup(trunk, bridge=b)
    pbx.hangup(a101, bridge=b)
    rec = pbx.record()
    assert (rec.direction, rec.extension, rec.final_extension, rec.transfers) == (
        "in",
        "101",
        "101",
        (),
    )
    assert rec.ring_s == pytest.approx(2.0)  # not mistaken for a click-to-call start


def test_blind_transfer_to_an_outside_number_names_it_in_e164() -> None:
    pbx = Pbx()
    trunk = pbx.trunk_call(CALLER, DID)
    p101 = pbx.phone("101", trunk)
    pbx.dial(trunk, p101, "101")
    pbx.answer(trunk, p101)
    b = pbx.bridge(p101, trunk)
    pbx.send(
        "BlindTransfer",
        Result="Success",
        **pbx.snap(p101, "Transferer"),
        **pbx.snap(trunk, "Transferee"),
        BridgeUniqueid=b,
        IsExternal="Yes",
        Context="from-internal",
        Extension="89265556677",
    )
    pbx.hangup(p101, bridge=b)
    pbx.leave(b, trunk)
    mobile = pbx.channel("PJSIP/trunk", context="from-trunk", linked=trunk)
    pbx.dial(trunk, mobile, "79265556677@trunk")
    pbx.answer(trunk, mobile)
    b2 = pbx.bridge(mobile, trunk)
    pbx.hangup(trunk, bridge=b2)
    pbx.hangup(mobile, bridge=b2)
    rec = pbx.record()
    assert rec.direction == "in" and rec.extension == "101"
    assert [t.to_json() for t in rec.transfers] == [
        {"from": "101", "to": "+79265556677", "kind": "blind"}
    ]


def test_click_to_call_through_a_local_channel_is_the_agents_outbound_call() -> None:
    # Originate Channel=Local/101@from-internal Exten=79031112233: the Local rings 101's
    # phone, and once 101 answers it dials the outside number.
    pbx = Pbx()
    one, two = pbx.local("101", "from-internal", None)
    pbx.dial(None, one, "Local/101@from-internal")
    p101 = pbx.phone("101", one)
    pbx.dial(two, p101, "101")
    pbx.ring(two, p101)
    pbx.wait(3)
    pbx.answer(two, p101)
    pbx.answer(None, one)
    out = pbx.channel("PJSIP/trunk", context="from-trunk", linked=one)
    pbx.dial(one, out, "79031112233@trunk")
    pbx.ring(one, out)
    pbx.wait(4)
    pbx.answer(one, out)
    pbx.wait(6)
    for ch in (out, one, two, p101):
        pbx.hangup(ch)
    rec = pbx.record()
    assert (rec.direction, rec.extension, rec.external) == ("out", "101", "+79031112233")
    assert (rec.ring_s, rec.talk_s, rec.rang) == (pytest.approx(4.0), pytest.approx(6.0), ())
    assert not [u for u in pbx.updates if isinstance(u, Ringing)]


def test_click_to_call_the_agent_never_picks_up_is_not_an_outbound_call() -> None:
    pbx = Pbx()
    p101 = pbx.channel("PJSIP/101", context="from-internal", cid="101")
    pbx.dial(None, p101, "101")
    pbx.ring(None, p101)
    pbx.wait(30)
    pbx.dial_end(None, p101, "NOANSWER")
    pbx.hangup(p101, cause=19)
    rec = pbx.record()
    assert rec.direction != "out" and rec.external is None
    assert (rec.answered, rec.extension) == (False, "101")


def test_caller_hanging_up_in_the_ivr_is_a_missed_call() -> None:
    pbx = Pbx()
    trunk = pbx.trunk_call("+7 (916) 123-45-67", DID)
    pbx.up(trunk)  # IVR answers
    pbx.wait(12)
    pbx.hangup(trunk)
    rec = pbx.record()
    assert (rec.external, rec.answered, rec.disposition, rec.ring_s) == (
        "+79161234567",
        False,
        "no-answer",
        pytest.approx(12.0),
    )


def test_busy_application_without_dialling_is_busy() -> None:
    pbx = Pbx()
    trunk = pbx.trunk_call(CALLER, DID)
    trunk.state = "7"
    pbx.send("Newstate", **pbx.snap(trunk))
    pbx.hangup(trunk, cause=17)
    assert pbx.record().disposition == "busy"


def test_anonymous_caller_has_no_external_number() -> None:
    pbx = Pbx()
    trunk = pbx.trunk_call("anonymous", DID)
    pbx.hangup(trunk)
    rec = pbx.record()
    assert (rec.direction, rec.external, rec.did) == ("in", None, "+" + DID)


def test_malformed_messages_are_skipped_without_raising() -> None:
    tracker = CallTracker()
    junk: list[Message] = [
        {},
        {"Response": "Success", "ActionID": "1"},
        {"Event": "Newchannel"},
        {"Event": "Newchannel", "Uniqueid": "1.1"},  # no channel name
        {"Event": "Hangup", "Uniqueid": "nope", "Cause": "abc"},
        {"Event": "DialBegin", "DestUniqueid": "missing"},
        {"Event": "BridgeEnter", "Uniqueid": "", "BridgeUniqueid": "b"},
        {"Event": "AttendedTransfer", "Result": "Success"},
        {"Event": "BridgeMerge", "FromBridgeUniqueid": "x"},
        {"Event": "SomethingNew", "Uniqueid": "1.1"},
        {
            "Event": "Newchannel",
            "Uniqueid": "2.1",
            "Channel": "PJSIP/trunk-1",
            "Timestamp": "not-a-time",
            "ChannelState": "4",
            "Context": "from-trunk",
        },
        {"Event": "Newstate", "Uniqueid": "2.1", "ChannelState": None},  # type: ignore[dict-item]
        {"Event": "Hangup", "Uniqueid": "2.1", "Cause": "??"},
    ]
    out: list[Update] = []
    for msg in junk:
        out += tracker.handle(msg, 5.0)
    (finished,) = [u for u in out if isinstance(u, CallFinished)]
    assert finished.record.started_at == 5.0  # a bad Timestamp falls back to arrival
    assert tracker.active_count == 0 and tracker._channels == {}


# --- direction: by the [calls] rules, never by a channel's first state --------------------


def sip_trunk_call(
    pbx: Pbx,
    caller: str = CALLER,
    did: str = DID,
    endpoint: str = "SIP/provider",
    context: str = "from-trunk",
) -> Chan:
    """chan_sip's inbound call: the channel is created Down, then set to Ring when the PBX
    starts running it (chan_sip.c handle_request_invite)."""
    trunk = pbx.channel(endpoint, context=context, exten=did, cid=caller, state="0")
    trunk.state = "4"
    pbx.send("Newstate", **pbx.snap(trunk))
    return trunk


def answered_by_101(pbx: Pbx, trunk: Chan, ring_s: float = 2, talk_s: float = 5) -> None:
    p101 = pbx.phone("101", trunk)
    pbx.dial(trunk, p101, "SIP/101")
    pbx.ring(trunk, p101)
    pbx.wait(ring_s)
    pbx.answer(trunk, p101)
    b = pbx.bridge(p101, trunk)
    pbx.wait(talk_s)
    pbx.hangup(trunk, bridge=b)
    pbx.hangup(p101, bridge=b)


def test_chan_sip_inbound_call_created_down_is_inbound_by_the_trunk_rule() -> None:
    pbx = Pbx()
    trunk = sip_trunk_call(pbx)
    answered_by_101(pbx, trunk)
    rec = pbx.record()
    assert (rec.direction, rec.external, rec.did) == ("in", "+" + CALLER, "+" + DID)
    assert (rec.extension, rec.answered, rec.ring_s) == ("101", True, pytest.approx(2.0))


def test_inbound_call_created_down_is_announced_once_it_rings_not_before() -> None:
    pbx = Pbx()
    trunk = pbx.channel("SIP/provider", context="from-trunk", exten=DID, cid=CALLER)
    assert pbx.updates == []  # Down: a caller, or a channel Originate is about to dial
    trunk.state = "4"
    (started,) = pbx.send("Newstate", **pbx.snap(trunk))
    assert isinstance(started, CallStarted)
    assert (started.direction, started.external, started.did) == ("in", "+" + CALLER, "+" + DID)


def test_callback_originate_to_an_outside_number_first_is_an_outbound_call_by_the_agent() -> None:
    # Originate Channel=SIP/provider/79031112233 Context=from-internal Exten=101: the
    # outside number rings first (created Down, dialled with no calling channel).
    pbx = Pbx()
    out = pbx.channel("SIP/provider", context="from-trunk", exten="s", cid="74951234567")
    pbx.dial(None, out, "provider/79031112233")
    pbx.ring(None, out)
    pbx.wait(3)
    pbx.answer(None, out)
    p101 = pbx.phone("101", out)
    pbx.dial(out, p101, "SIP/101")
    pbx.ring(out, p101)
    pbx.wait(2)
    pbx.answer(out, p101)
    b = pbx.bridge(p101, out)
    pbx.wait(10)
    pbx.hangup(out, bridge=b)
    pbx.hangup(p101, bridge=b)
    rec = pbx.record()
    assert (rec.direction, rec.external, rec.did, rec.extension) == (
        "out",
        "+79031112233",
        None,
        "101",
    )
    assert (rec.answered, rec.talk_s) == (True, pytest.approx(10.0))


def test_callback_the_agent_never_answers_is_not_answered() -> None:
    pbx = Pbx()
    out = pbx.channel("SIP/provider", context="from-trunk", exten="s")
    pbx.dial(None, out, "provider/79031112233")
    pbx.wait(3)
    pbx.answer(None, out)  # the customer picks up...
    p101 = pbx.phone("101", out)
    pbx.dial(out, p101, "SIP/101")
    pbx.ring(out, p101)
    pbx.wait(20)
    pbx.dial_end(out, p101, "NOANSWER")  # ...but no agent does
    pbx.hangup(p101, cause=19)
    pbx.hangup(out)
    rec = pbx.record()
    assert (rec.direction, rec.answered, rec.disposition) == ("out", False, "no-answer")


def test_chan_sip_phone_call_created_down_is_not_taken_for_a_click_to_call() -> None:
    # chan_sip creates a phone's own call Down too: its start is the phone's INVITE, not
    # the moment the dialplan dials out (as it is for Originate's click-to-call).
    pbx = Pbx()
    p101 = pbx.channel("SIP/101", context="from-internal", exten="79031112233", cid="101")
    p101.state = "4"
    pbx.send("Newstate", **pbx.snap(p101))
    pbx.wait(2)  # e.g. a prompt, or overlap dialling, before the trunk is dialled
    out = pbx.channel("SIP/provider", context="from-trunk", linked=p101)
    pbx.dial(p101, out, "provider/79031112233")
    pbx.wait(3)
    pbx.answer(p101, out)
    pbx.wait(4)
    pbx.hangup(out)
    pbx.hangup(p101)
    rec = pbx.record()
    assert (rec.direction, rec.extension, rec.external) == ("out", "101", "+79031112233")
    assert (rec.ring_s, rec.talk_s) == (pytest.approx(5.0), pytest.approx(4.0))


# --- answered: an outside party and an agent were connected --------------------------------


def forward_to_mobile(pbx: Pbx, dial_end: str, wait_after_answer: float = 6) -> tuple[Chan, Chan]:
    """101 rings 5 s unanswered, then Dial(SIP/provider/79265556677,,U(confirm)): the
    mobile answers; a Gosub on its leg asks its owner to accept (press 1)."""
    trunk = pbx.trunk_call(CALLER, DID)
    p101 = pbx.phone("101", trunk)
    pbx.dial(trunk, p101, "PJSIP/101")
    pbx.ring(trunk, p101)
    pbx.wait(5)
    pbx.dial_end(trunk, p101, "NOANSWER")
    pbx.hangup(p101, cause=0)
    mobile = pbx.channel("PJSIP/trunk", context="from-trunk", linked=trunk)
    pbx.dial(trunk, mobile, "79265556677@trunk")
    pbx.ring(trunk, mobile)
    pbx.wait(2)
    pbx.up(mobile)  # the mobile's owner picked up: the prompt plays
    pbx.wait(wait_after_answer)
    pbx.dial_end(trunk, mobile, dial_end)
    return trunk, mobile


def test_forward_to_a_mobile_whose_owner_does_not_accept_is_not_answered() -> None:
    pbx = Pbx()
    trunk, mobile = forward_to_mobile(pbx, "CONTINUE")  # GOSUB_RESULT=CONTINUE
    pbx.hangup(mobile)
    pbx.hangup(trunk, cause=19)
    rec = pbx.record()
    assert (rec.direction, rec.answered, rec.extension, rec.disposition) == (
        "in",
        False,
        None,
        "no-answer",
    )
    assert (rec.forwarded_to, rec.talk_s) == ("+79265556677", 0.0)
    assert not [u for u in pbx.updates if isinstance(u, Answered)]


def test_forward_to_a_mobile_is_answered_when_the_caller_is_put_through() -> None:
    pbx = Pbx()
    trunk, mobile = forward_to_mobile(pbx, "ANSWER", wait_after_answer=1.5)
    pbx.up(trunk)
    b = pbx.bridge(mobile, trunk)
    pbx.wait(8)
    pbx.hangup(trunk, bridge=b)
    pbx.hangup(mobile, bridge=b)
    rec = pbx.record()
    # One inbound call, credited to 101 (its forward on no answer), answered at the accept.
    assert (rec.direction, rec.answered, rec.extension, rec.final_extension) == (
        "in",
        True,
        "101",
        "101",
    )
    assert (rec.rang, rec.forwarded_to) == (("101",), "+79265556677")
    assert (rec.ring_s, rec.talk_s) == (pytest.approx(8.5), pytest.approx(8.0))


def test_phone_refused_by_a_screening_gosub_after_picking_up_is_not_answered() -> None:
    # Dial(PJSIP/101,,U(screen)): 101 picks up, hears who calls, declines (CONTINUE).
    pbx = Pbx()
    trunk = pbx.trunk_call(CALLER, DID)
    p101 = pbx.phone("101", trunk)
    pbx.dial(trunk, p101, "PJSIP/101")
    pbx.ring(trunk, p101)
    pbx.wait(3)
    pbx.up(p101)
    pbx.wait(4)
    pbx.dial_end(trunk, p101, "CONTINUE")
    pbx.hangup(p101)
    pbx.wait(1)
    pbx.hangup(trunk)
    rec = pbx.record()
    assert (rec.answered, rec.extension, rec.disposition) == (False, None, "no-answer")
    assert rec.ring_s == pytest.approx(8.0)


def test_click_to_call_whose_outside_number_is_busy_is_not_answered_and_busy() -> None:
    pbx = Pbx()
    p101 = pbx.channel("SIP/101", context="from-internal", exten="s", cid="101")
    pbx.dial(None, p101, "SIP/101")
    pbx.ring(None, p101)
    pbx.wait(2)
    pbx.answer(None, p101)  # the agent answered their own leg
    out = pbx.channel("SIP/provider", context="from-trunk", linked=p101)
    pbx.dial(p101, out, "provider/79031112233")
    pbx.wait(1)
    pbx.dial_end(p101, out, "BUSY")
    pbx.hangup(out, cause=17)
    pbx.hangup(p101)
    rec = pbx.record()
    assert (rec.direction, rec.extension, rec.external) == ("out", "101", "+79031112233")
    assert (rec.answered, rec.disposition) == (False, "busy")


# --- pickups: answered by the picker ------------------------------------------------------


def ringing_101(pbx: Pbx) -> tuple[Chan, Chan]:
    trunk = pbx.trunk_call(CALLER, DID)
    p101 = pbx.phone("101", trunk)
    pbx.dial(trunk, p101, "PJSIP/101")
    pbx.ring(trunk, p101)
    pbx.wait(3)
    return trunk, p101


def picked_up_ends(pbx: Pbx, trunk: Chan, p102: Chan, p101: Chan) -> CallRecord:
    pbx.send("DialEnd", **pbx.snap(trunk), **pbx.snap(p102, "Dest"), DialStatus="ANSWER")
    pbx.hangup(p101, cause=26)
    pbx.up(trunk)
    b = pbx.bridge(p102, trunk)
    pbx.wait(6)
    pbx.hangup(p102, bridge=b)
    pbx.hangup(trunk, bridge=b)
    return pbx.record()


def test_directed_pickup_is_answered_by_the_picker() -> None:
    # 102 dials *8101: PickupChan(PJSIP/101) takes over 101's ringing channel.
    pbx = Pbx()
    trunk, p101 = ringing_101(pbx)
    p102 = pbx.channel("PJSIP/102", context="from-internal", exten="*8101", cid="102", state="4")
    pbx.up(p102)
    pbx.wait(0.5)
    pbx.send("Pickup", **pbx.snap(p102), **pbx.snap(p101, "Target"))
    rec = picked_up_ends(pbx, trunk, p102, p101)
    assert (rec.direction, rec.answered, rec.extension, rec.final_extension) == (
        "in",
        True,
        "102",
        "102",
    )
    assert (rec.rang, rec.ring_s, rec.talk_s) == (("101",), pytest.approx(3.5), pytest.approx(6.0))
    assert pbx.tracker.active_count == 0 and len(pbx.records()) == 1


def test_pickup_by_invite_with_replaces_is_answered_by_the_picker() -> None:
    # No Pickup event: 102's INVITE with Replaces makes a channel of its own (a "call" to
    # 101) that Asterisk swaps in for the ringing one; the caller's Dial names it ANSWER.
    pbx = Pbx()
    trunk, p101 = ringing_101(pbx)
    p102 = pbx.channel("PJSIP/102", context="from-internal", exten="101", cid="102", state="4")
    pbx.up(p102)
    rec = picked_up_ends(pbx, trunk, p102, p101)
    assert (rec.answered, rec.extension, rec.final_extension, rec.ring_s) == (
        True,
        "102",
        "102",
        pytest.approx(3.0),
    )
    assert len(pbx.records()) == 1  # 102's own "call to 101" is not a call of its own


# --- transfers: the target worked out when Asterisk does not name it -----------------------


def consultation(pbx: Pbx) -> tuple[Chan, Chan, Chan, Chan, str, str]:
    """A caller talks to 101; 101 calls 102 on a second line (a call of its own)."""
    trunk = pbx.trunk_call(CALLER, DID)
    a101 = pbx.phone("101", trunk)
    pbx.dial(trunk, a101, "101")
    pbx.answer(trunk, a101)
    first = pbx.bridge(a101, trunk)
    pbx.wait(5)
    c101 = phone_call(pbx, "101", "102")
    c102 = pbx.phone("102", c101)
    pbx.dial(c101, c102, "102")
    pbx.ring(c101, c102)
    return trunk, a101, c101, c102, first, ""


def attended_transfer(
    pbx: Pbx, trunk: Chan, a101: Chan, c101: Chan, first: str, second: str, **dest: str
) -> None:
    """AttendedTransfer as Asterisk 13 sends it for a SIP REFER: no TransferTarget*."""
    pbx.send(
        "AttendedTransfer",
        Result="Success",
        **pbx.snap(a101, "OrigTransferer"),
        OrigBridgeUniqueid=first,
        **pbx.snap(c101, "SecondTransferer"),
        SecondBridgeUniqueid=second,
        **pbx.snap(trunk, "Transferee"),
        IsExternal="Yes",
        **dest,
    )


def test_attended_transfer_without_target_headers_names_the_target_from_the_second_bridge() -> None:
    pbx = Pbx()
    trunk, a101, c101, c102, first, _ = consultation(pbx)
    pbx.answer(c101, c102)
    consult = pbx.bridge(c102, c101)
    pbx.wait(3)
    attended_transfer(
        pbx, trunk, a101, c101, first, consult, DestType="Bridge", DestBridgeUniqueid=consult
    )
    pbx.leave(first, trunk)
    pbx.leave(consult, c101)
    pbx.enter(consult, trunk, 2)
    pbx.hangup(a101, bridge=first)
    pbx.hangup(c101)
    pbx.wait(10)
    pbx.hangup(trunk, bridge=consult)
    pbx.hangup(c102, bridge=consult)
    rec = pbx.record()
    assert [t.to_json() for t in rec.transfers] == [
        {"from": "101", "to": "102", "kind": "attended"}
    ]
    assert (rec.final_extension, rec.flags) == ("102", ())


def test_blonde_transfer_without_target_headers_names_whom_the_consultation_leg_dialled() -> None:
    # 101 completes the transfer while 102 still rings: the caller takes over the ringing
    # Dial (DestType App, DestApp Dial); no second bridge exists yet.
    pbx = Pbx()
    trunk, a101, c101, c102, first, _ = consultation(pbx)
    pbx.wait(2)
    attended_transfer(pbx, trunk, a101, c101, first, "", DestType="App", DestApp="Dial")
    pbx.hangup(a101, bridge=first)
    pbx.wait(4)
    pbx.answer(c101, c102)
    pbx.hangup(c101)
    b = pbx.bridge(c102, trunk)
    pbx.wait(10)
    pbx.hangup(trunk, bridge=b)
    pbx.hangup(c102, bridge=b)
    rec = pbx.record()
    assert [t.to_json() for t in rec.transfers] == [
        {"from": "101", "to": "102", "kind": "attended"}
    ]
    assert (rec.extension, rec.final_extension) == ("101", "102")


def test_attended_transfer_whose_target_cannot_be_worked_out_is_flagged_with_a_reason() -> None:
    pbx = Pbx()
    trunk, a101, c101, c102, first, _ = consultation(pbx)
    pbx.hangup(c102, cause=16)  # the consultation leg is gone before the transfer
    attended_transfer(pbx, trunk, a101, c101, first, "", DestType="Fail")
    pbx.hangup(c101)
    pbx.hangup(a101, bridge=first)
    pbx.hangup(trunk)
    rec = pbx.record()
    assert [t.to_json() for t in rec.transfers] == [{"from": "101", "to": None, "kind": "attended"}]
    assert rec.flags == ("transfer-target-unknown",)
    assert "names no target" in dict(rec.reasons)["transfer-target-unknown"]


# --- two callers joined by an agent ---------------------------------------------------------


def test_two_callers_an_agent_joins_stay_two_calls_that_name_each_other() -> None:
    pbx = Pbx()
    a = pbx.trunk_call(CALLER, DID)
    a101 = pbx.phone("101", a)
    pbx.dial(a, a101, "101")
    pbx.answer(a, a101)
    ba = pbx.bridge(a101, a)
    pbx.wait(5)
    c = pbx.trunk_call("79262230026", "74951234569")
    c101 = pbx.phone("101", c)
    pbx.dial(c, c101, "101")
    pbx.answer(c, c101)
    bc = pbx.bridge(c101, c)
    pbx.wait(3)
    pbx.leave(ba, a)
    pbx.leave(bc, c101)
    pbx.enter(bc, a, 2)
    pbx.send(
        "AttendedTransfer",
        Result="Success",
        **pbx.snap(a101, "OrigTransferer"),
        OrigBridgeUniqueid=ba,
        **pbx.snap(c101, "SecondTransferer"),
        SecondBridgeUniqueid=bc,
        **pbx.snap(a, "Transferee"),
        **pbx.snap(c, "TransferTarget"),
        IsExternal="Yes",
        DestType="Bridge",
        DestBridgeUniqueid=bc,
    )
    pbx.hangup(a101, bridge=ba)
    pbx.hangup(c101)
    pbx.wait(10)
    c.linkedid = a.linkedid  # Asterisk gives the bridge the older Linkedid
    pbx.leave(bc, c)
    pbx.hangup(a, bridge=bc)
    pbx.hangup(c)
    one, other = sorted(pbx.records(), key=lambda r: r.started_at)
    assert (one.call_id, other.call_id) == (a.linkedid, c.uid)
    assert (one.joined_with, other.joined_with) == ((other.call_id,), (one.call_id,))
    assert [t.to_json() for t in one.transfers] == [
        {"from": "101", "to": "+79262230026", "kind": "attended"}
    ]
    assert [t.to_json() for t in other.transfers] == [
        {"from": "101", "to": "+" + CALLER, "kind": "attended"}
    ]
    for rec in (one, other):
        assert (rec.direction, rec.extension, rec.answered, rec.final_extension) == (
            "in",
            "101",
            True,
            None,
        )
    assert (one.talk_s, other.talk_s) == (pytest.approx(18.0), pytest.approx(13.0))


def test_callers_parked_in_one_holding_bridge_are_not_joined() -> None:
    pbx = Pbx()
    calls = [pbx.trunk_call(f"7916123456{i}", DID) for i in range(2)]
    lot = "00000000-0000-4000-8000-00000000park"
    for n, ch in enumerate(calls, 1):
        pbx.up(ch)
        pbx.send(
            "BridgeEnter",
            BridgeUniqueid=lot,
            BridgeType="holding",
            BridgeTechnology="holding_bridge",
            BridgeNumChannels=str(n),
            **pbx.snap(ch),
        )
    pbx.wait(30)
    for ch in calls:
        pbx.hangup(ch, bridge=lot)
    assert [r.joined_with for r in pbx.records()] == [(), ()]


# --- phones named by account: [calls] phones, phone_channel_pattern ------------------------

ACCOUNTS = {"150010001": "201", "150010002": "202"}


def hosted_call(pbx: Pbx) -> None:
    """A hosted PBX: phones are SIP accounts in a per-customer context the admin did not
    list as internal; the caller reaches 201, who blind-transfers to 202."""
    trunk = sip_trunk_call(pbx)
    p201 = pbx.channel("SIP/150010001", context="cust42-phones", cid="201", linked=trunk)
    pbx.dial(trunk, p201, "SIP/150010001")
    pbx.ring(trunk, p201)
    pbx.wait(2)
    pbx.answer(trunk, p201)
    b = pbx.bridge(p201, trunk)
    pbx.send(
        "BlindTransfer",
        Result="Success",
        **pbx.snap(p201, "Transferer"),
        **pbx.snap(trunk, "Transferee"),
        BridgeUniqueid=b,
        IsExternal="Yes",
        Context="cust42-phones",
        Extension="202",
    )
    pbx.hangup(p201, bridge=b)
    pbx.leave(b, trunk)
    p202 = pbx.channel("SIP/150010002", context="cust42-phones", cid="79161234567", linked=trunk)
    pbx.dial(trunk, p202, "SIP/150010002")
    pbx.ring(trunk, p202)
    pbx.answer(trunk, p202)
    b2 = pbx.bridge(p202, trunk)
    pbx.wait(5)
    pbx.hangup(trunk, bridge=b2)
    pbx.hangup(p202, bridge=b2)


def test_phones_named_by_account_are_mapped_to_extensions_by_the_phones_table() -> None:
    pbx = Pbx(CallTracker(CallRules(phones=ACCOUNTS)))
    hosted_call(pbx)
    rec = pbx.record()
    assert (rec.direction, rec.extension, rec.final_extension, rec.rang) == (
        "in",
        "201",
        "202",
        ("201", "202"),
    )
    assert [t.to_json() for t in rec.transfers] == [{"from": "201", "to": "202", "kind": "blind"}]


def test_phone_channel_pattern_makes_phones_with_the_extension_from_its_group() -> None:
    # SIP/1500100NN is extension 2NN: the pattern's group "ext" can only give digits of the
    # name, so this one maps accounts whose tail is the extension's: SIP/9000201-...
    rules = CallRules(phone_channel_pattern=r"^SIP/9000(?P<ext>\d{3})-")
    pbx = Pbx(CallTracker(rules))
    trunk = sip_trunk_call(pbx)
    p = pbx.channel("SIP/9000201", context="cust42-phones", cid="Reception", linked=trunk)
    pbx.dial(trunk, p, "SIP/9000201")
    pbx.answer(trunk, p)
    pbx.hangup(trunk)
    pbx.hangup(p)
    assert (pbx.record().extension, pbx.record().direction) == ("201", "in")


def test_phone_channel_pattern_without_a_group_takes_the_extension_from_the_caller_id() -> None:
    pbx = Pbx(CallTracker(CallRules(phone_channel_pattern=r"^SIP/15001\d{4}-")))
    hosted_call(pbx)
    rec = pbx.record()
    # 202's leg carries the caller's number as caller ID: it is a phone, but of whom?
    assert (rec.extension, rec.rang) == ("201", ("201",))
    assert [t.to_json() for t in rec.transfers] == [{"from": "201", "to": "202", "kind": "blind"}]


def test_a_phones_entry_that_is_no_extension_is_refused_when_the_settings_load() -> None:
    with pytest.raises(ValueError, match="must be an extension"):
        CallRules(phones={"150010001": "reception"})


def test_the_did_comes_from_a_configured_did_variable_when_the_exten_is_no_number() -> None:
    # A hosted dialplan: the trunk lands on "s" and the dialplan keeps the DID in CALLED.
    pbx = Pbx(CallTracker(CallRules(did_variables=("CALLED",))))
    trunk = pbx.trunk_call(CALLER, "s")
    pbx.varset(trunk, "FROM_DID", "74951230000")  # not the configured variable
    pbx.varset(trunk, "CALLED", "74951234567")
    answered_by_101(pbx, trunk)
    rec = pbx.record()
    assert (rec.did, rec.flags) == ("+" + DID, ())
    assert ("did", "+74951234567: the dialplan set CALLED") in rec.explain
    assert pbx.tracker.variables == {"DIALSTATUS", "CALLED"}


def test_a_caller_put_through_to_an_agents_standing_call_keeps_a_call_of_its_own() -> None:
    # app_agent_pool: the agent's phone has been up in its own (older) call since login;
    # AgentRequest bridges a caller to it, and Asterisk gives the caller's channel the
    # agent's older Linkedid. The caller's call must not vanish into the agent's.
    pbx = Pbx()
    agent = phone_call(pbx, "101", "*8888")  # AgentLogin
    pbx.up(agent)
    pbx.wait(600)
    trunk = pbx.trunk_call(CALLER, DID)
    pbx.up(trunk)
    pbx.wait(2)
    trunk.linkedid = agent.linkedid
    b = pbx.bridge(agent, trunk)
    pbx.wait(30)
    pbx.leave(b, agent)
    (finished,) = pbx.hangup(trunk, bridge=b)[-1:]
    assert isinstance(finished, CallFinished)
    rec = finished.record
    assert (rec.call_id, rec.direction, rec.answered, rec.extension) == (
        trunk.uid,
        "in",
        True,
        "101",
    )
    assert (rec.ring_s, rec.talk_s) == (pytest.approx(2.0), pytest.approx(30.0))
    assert pbx.tracker.active_count == 1  # the agent is still logged in


# --- what the rules cannot tell is flagged, with the reason ---------------------------------

EXPLICIT_TRUNKS = CallRules(trunk_channel_pattern=r"^PJSIP/trunk-")


def test_a_call_from_a_channel_no_rule_classifies_is_flagged_direction_guessed() -> None:
    pbx = Pbx(CallTracker(EXPLICIT_TRUNKS))
    alice = pbx.channel("PJSIP/alice", context="cust42", exten="102", cid="Alice", state="4")
    p102 = pbx.phone("102", alice)
    pbx.dial(alice, p102, "PJSIP/102")
    pbx.answer(alice, p102)
    pbx.hangup(p102)
    pbx.hangup(alice)
    rec = pbx.record()
    assert (rec.direction, rec.flags) == ("internal", ("direction-guessed", "extension-unknown"))
    reasons = dict(rec.reasons)
    assert "PJSIP/alice-" in reasons["direction-guessed"]
    assert "no [calls] rule makes a trunk or a phone" in reasons["direction-guessed"]


def test_an_outbound_call_from_a_channel_no_rule_maps_to_an_extension_is_flagged() -> None:
    pbx = Pbx(CallTracker(EXPLICIT_TRUNKS))
    alice = pbx.channel(
        "PJSIP/alice", context="cust42", exten="79031112233", cid="Alice", state="4"
    )
    out = pbx.channel("PJSIP/trunk", context="from-trunk", linked=alice)
    pbx.dial(alice, out, "79031112233@trunk")
    pbx.answer(alice, out)
    pbx.hangup(out)
    pbx.hangup(alice)
    rec = pbx.record()
    assert (rec.direction, rec.external, rec.extension) == ("out", "+79031112233", None)
    assert rec.flags == ("extension-unknown",)
    assert "PJSIP/alice-" in dict(rec.reasons)["extension-unknown"]
