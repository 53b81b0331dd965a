"""Real recordings (Asterisk 22 / 20) as other versions or AMI setups would have sent them.

No Asterisk 13 (nor a PBX without ``timestampevents``) runs here; what they send is in
Asterisk's own source, which these transforms follow (``git show <tag>:<file>``):

- ``DialState`` exists from 14.0 (``main/manager_channels.c``): 13 has no DialState event,
  a dialled channel's ringing shows only as its ``Newstate`` Ringing.
- The channel snapshot headers carry ``Linkedid`` from 13.5 on
  (``ast_manager_build_channel_state_string_prefix``, ``main/manager_channels.c``); 13.0 to
  13.4 send none.
- ``AttendedTransfer`` names the target (``TransferTarget*``) only when Asterisk passes it
  or the consultation is bridged (``ast_attended_transfer_message_create``,
  ``main/stasis_bridges.c``, 12.5 to 22): a SIP REFER transfer completed while the target
  still rings (blonde) comes without it, as the Asterisk 13 corpus of issue 12 shows.
- ``manager.conf`` ``timestampevents = no`` (the default): no ``Timestamp`` header at all.
- ``eventfilter = !Event: Newexten`` (the volume cut docs/ami.md suggests): ``VarSet`` but
  no ``Newexten``.
- An AMI user with ``read = call`` only gets neither the ``dialplan`` class (``Newexten``,
  ``VarSet``) nor ``agent`` (``AgentConnect``, ``QueueCallerJoin``...): events are kept by
  their ``Privilege`` header, which names their class.

``derive()`` writes a transformed trace and its arrival times (one read per message, at the
time the original read arrived); the files and their manifest entries ("synthetic": true)
are committed in ``pbxsim/traces``, and ``test_tracker_traces`` checks they still are what
these functions make of their source.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from telephony.ami import AmiCodec, Message, encode

Transform = Callable[[Message], Message | None]


def no_dial_state(msg: Message) -> Message | None:
    """Asterisk 13: no DialState event (14.0+)."""
    return None if msg.get("Event") == "DialState" else msg


def no_transfer_target(msg: Message) -> Message | None:
    """An AttendedTransfer that names no target (TransferTarget* absent)."""
    if msg.get("Event") != "AttendedTransfer":
        return msg
    return {k: v for k, v in msg.items() if not k.startswith("TransferTarget")}


def no_linkedid(msg: Message) -> Message | None:
    """Asterisk 13.0 to 13.4: no Linkedid in any channel snapshot."""
    return {k: v for k, v in msg.items() if not k.endswith("Linkedid")}


def no_timestamp(msg: Message) -> Message | None:
    """timestampevents = no."""
    return {k: v for k, v in msg.items() if k != "Timestamp"}


def no_newexten(msg: Message) -> Message | None:
    """``eventfilter = !Event: Newexten`` (docs/ami.md): VarSet without Newexten."""
    return None if msg.get("Event") == "Newexten" else msg


def call_class_only(msg: Message) -> Message | None:
    """An AMI user with read = call: events of the call class only (answers kept)."""
    if "Event" not in msg or "ActionID" in msg:
        return msg
    classes = msg.get("Privilege", "").split(",")
    return msg if "call" in classes else None


ASTERISK_13 = (no_dial_state, no_transfer_target)
ASTERISK_13_0 = (no_dial_state, no_transfer_target, no_linkedid)


def transformed(msg: Message, steps: tuple[Transform, ...]) -> Message | None:
    out: Message | None = msg
    for step in steps:
        if out is None:
            return None
        out = step(out)
    return out


def derive(traces: Path, source: str, target: str, steps: tuple[Transform, ...]) -> bytes:
    """Write ``target`` (and its ``.timing.jsonl``) from the recording ``source``; returns
    the bytes written. The banner line is kept."""
    data = (traces / source).read_bytes()
    banner = data[: data.index(b"\r\n") + 2]
    codec = AmiCodec()
    out, timing, offset = [banner], [], 0
    reads = (traces / source.replace(".ami", ".timing.jsonl")).read_text().splitlines()
    for line in reads:
        read = json.loads(line)
        chunk = data[read["offset"] : read["offset"] + read["len"]]
        for msg in codec.feed(chunk):
            kept = transformed(msg, steps)
            if kept is None:
                continue
            wire = encode(kept)
            out.append(wire)
            size = len(wire) + (len(banner) if offset == 0 else 0)  # the banner: 1st read
            timing.append(
                {"offset": offset, "len": size, "t": read["t"], "wallclock": read["wallclock"]}
            )
            offset += size
    blob = b"".join(out)
    (traces / target).write_bytes(blob)
    (traces / target.replace(".ami", ".timing.jsonl")).write_text(
        "".join(json.dumps(t) + "\n" for t in timing)
    )
    return blob
