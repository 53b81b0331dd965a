"""Why a call record says what it says: which ``[calls]`` rule decided its direction, DID,
extension and answered, in words (``telefum replay --explain``, the admin's tool to fix
their settings).

Built once, when a call finishes, from what the tracker kept as small codes (``Because``)
and the channels it still holds: nothing is formatted while calls are up.
"""

from __future__ import annotations

from enum import IntEnum

from telephony.tracker_state import LOCAL, TRUNK, Call, Channel, Rule


class Because(IntEnum):
    """The event or rule behind a decision (``Call.dir_why``, ``Call.answer_why``)."""

    NONE = 0
    FIRST_TRUNK = 1  # direction in: the first channel is a trunk
    FIRST_CONTEXT = 2  # direction in: it was created in one of inbound_contexts
    CALLBACK = 3  # direction out: Originate dialled an outside line first
    TRUNK_LEG = 4  # direction out: a trunk leg joined a phone's call
    CLICK_TO_CALL = 5  # direction out: Originate rang the agent, then a trunk leg joined
    UP = 10  # answered: an agent's phone went Up
    FORWARD = 11  # answered: the Dial of a forward to an outside number ended ANSWER
    PICKUP = 12  # answered: a phone picked up a channel ringing for the call
    AGENT_CONNECT = 13  # answered: a queue's AgentConnect
    BRIDGED = 14  # answered: the caller was bridged with a phone
    CALLBACK_AGENT = 15  # answered: an agent answered a callback after the outside party
    OUTSIDE_UP = 16  # answered: the outside leg of an outbound call went Up
    REFUSED = 17  # not answered: the leg answered, its Dial then ended otherwise


def describe(ch: Channel) -> str:
    """What a channel is and which rule says so (rules.py's order)."""
    how, name, ext = ch.how, ch.name, ch.ext
    if how == Rule.LOCAL:
        return f"{name} (a Local channel" + (f" to {ext})" if ext else ")")
    if how == Rule.PHONES_TABLE:
        return f"{name} (the phone of {ext} by [calls] phones)"
    if how == Rule.PHONE_PATTERN:
        return f"{name} (the phone of {ext} by phone_channel_pattern)"
    if how == Rule.PHONE_PATTERN_CID:
        return f"{name} (a phone by phone_channel_pattern; {ext} by its caller ID)"
    if how == Rule.ENDPOINT:
        return f"{name} (the phone of {ext}: its endpoint matches extension_pattern)"
    if how == Rule.TRUNK_PATTERN:
        return f"{name} (a trunk: it matches trunk_channel_pattern)"
    if how == Rule.CALLER_ID:
        return f"{name} (the phone of {ext}: its caller ID matches extension_pattern)"
    if how == Rule.VIRTUAL:
        return f"{name} (never a phone: a {name.partition('/')[0]} channel)"
    return f"{name} (no [calls] rule makes it a phone or a trunk)"


def explain(call: Call) -> tuple[tuple[str, str], ...]:
    """``(decision, why)`` for direction, did (inbound calls), extension, answered."""
    first, leg = call.first, call.answer_leg
    direction = call.direction or "internal"
    out: list[tuple[str, str]] = []
    by = describe(first) if first is not None else "an unknown channel"
    dir_why = call.dir_why
    if dir_why == Because.FIRST_TRUNK:
        text = f"in: the first channel is {by}"
    elif dir_why == Because.FIRST_CONTEXT:
        text = (
            f"in: the first channel {first.name if first else ''} was created in "
            f"{call.first_context}, one of inbound_contexts"
        )
    elif dir_why == Because.CALLBACK:
        text = f"out: Originate dialled {by} first (a callback)"
    elif dir_why == Because.CLICK_TO_CALL:
        text = f"out: Originate rang {by} first, then a trunk leg was dialled (click-to-call)"
    elif dir_why == Because.TRUNK_LEG:
        text = f"out: a trunk leg joined the call placed from {by}"
    else:
        text = f"{direction}: no trunk leg joined the call placed from {by}"
    out.append(("direction", text))
    if direction == "in":
        if call.did is None:
            out.append(
                (
                    "did",
                    f"none: the first channel's Exten {call.did_exten!r} is not a "
                    "number and none of [calls] did_variables was set",
                )
            )
        elif call.did_var:
            out.append(("did", f"{call.did}: the dialplan set {call.did_var}"))
        else:
            out.append(("did", f"{call.did}: the number the first channel dialled (its Exten)"))
    answer = call.answer_why
    how = describe(leg) if leg is not None else ""
    name = leg.name if leg is not None else "?"
    if direction == "in":
        who = call.answered_by
        if call.answered_at is None:
            out.append(("extension", "none: nobody answered"))
        elif leg is not None and leg.kind == TRUNK:
            by_local = leg.parent is not None and leg.parent.kind == LOCAL
            out.append(
                (
                    "extension",
                    (
                        f"{who}: the call was forwarded to {leg.number or leg.name} by {who}'s "
                        + (
                            "follow-me (a Local channel to it dialled the number)"
                            if by_local
                            else "forward: it rang there last before the number was dialled"
                        )
                    )
                    if who
                    else f"none: it was forwarded to {leg.number or 'an outside number'} "
                    f"on {how}, before any extension rang",
                )
            )
        else:
            out.append(
                (
                    "extension",
                    f"{who}: {how}"
                    if who
                    else f"none: {how or 'the channel that answered'} maps to no extension",
                )
            )
    else:
        ext = call.dialler or call.first_agent
        out.append(
            (
                "extension",
                f"{ext}: {by} placed the call"
                if call.dialler
                else f"{ext}: {how} answered it"
                if ext
                else f"none: {by} maps to no extension",
            )
        )
    if call.answered_at is None:
        if answer == Because.REFUSED and leg is not None:
            text = (
                f"no: {leg.number or name} picked up, but its Dial ended {call.refused} "
                "(a confirmation refused or timed out) before the caller was put through"
            )
        else:
            text = "no: no agent and outside party were ever put through"
    elif answer == Because.UP:
        text = f"yes: {name} went Up"
    elif answer == Because.FORWARD:
        text = (
            f"yes: the caller's Dial of the forward to {leg.number if leg else '?'} "
            f"({name}) ended ANSWER: put through"
        )
    elif answer == Because.PICKUP:
        text = f"yes: {name} picked up a channel ringing for the call"
    elif answer == Because.AGENT_CONNECT:
        text = f"yes: AgentConnect: the queue put it through to {name}"
    elif answer == Because.BRIDGED:
        text = f"yes: the caller was bridged with {name}"
    elif answer == Because.CALLBACK_AGENT:
        text = f"yes: {name} answered the callback after the outside party did"
    else:
        text = f"yes: the outside leg {name} answered"
    out.append(("answered", text))
    return tuple(out)
