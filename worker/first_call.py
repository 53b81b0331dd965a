"""Each caller's first inbound call, so a new contact's source does not depend on delivery order.

A contact is created by whichever of a caller's calls reaches ``find`` first, and TelefUM has
no call to change a contact afterwards. When the caller's first call is delayed (retried, or
dead-lettered and requeued later) a later call would create the contact with *its* tracking
number. So every inbound call is noted here when it is queued (``worker/queue.py``, in the
same atomic step as its ledger, before any worker can run it), and a run that is about to
create a contact gives it the tracking number of the caller's earliest call that the bridge
knows of, on any PBX whose calls go to the same CRM.

Hash ``telefum:first-in:{caller E.164}``: PBX name -> JSON ``{"started_at", "did",
"call_id"}`` of that caller's earliest inbound call with a tracking number on that PBX. Its
TTL is the ledger's, renewed whenever one of the caller's calls is queued or requeued, so it
outlives every ledger of the caller's calls: a call that can still be delivered has its
first call on record.

Every inbound call counts, also one the policy does not log (a missed call with
``log_missed = false``): the caller dialled that number all the same.

Not covered: a call still in progress (not yet handed over) when a later call from the same
number is delivered; a caller whose earliest call came in before the bridge kept this record.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from redis.asyncio import Redis

from telephony.records import CallRecord

from . import keys
from .plan import NewContact, new_contact
from .policy import WorkerConfig

log = logging.getLogger("worker.first_call")


@dataclass(frozen=True)
class FirstCall:
    pbx: str
    call_id: str
    did: str  # E.164
    started_at: float


def note_of(record: Mapping[str, Any]) -> tuple[str, str, float] | None:
    """What the enqueue script notes for a call record (``CallRecord.to_json`` form): the
    caller, the JSON entry and the start; None for a call that is not inbound, has no outside
    number or no tracking number, or cannot be read (the worker dead-letters that one)."""
    try:
        if record.get("direction") != "in":
            return None
        caller, did = record.get("external"), record.get("did")
        if not (isinstance(caller, str) and caller and isinstance(did, str) and did):
            return None
        started = datetime.strptime(str(record["started_at"]), "%Y-%m-%dT%H:%M:%S.%fZ")
    except (AttributeError, KeyError, ValueError):
        return None
    at = started.replace(tzinfo=UTC).timestamp()
    entry = {"started_at": at, "did": did, "call_id": str(record.get("call_id"))}
    return caller, json.dumps(entry), at


async def first_calls(redis: Redis, caller: str) -> list[FirstCall]:
    """The caller's earliest inbound call per PBX, as noted; unreadable entries left out."""
    raw = await redis.hgetall(keys.first_inbound(caller))  # type: ignore[misc]
    out = []
    for pbx, value in raw.items():
        try:
            d = json.loads(value)
            out.append(
                FirstCall(keys.text(pbx), str(d["call_id"]), str(d["did"]), float(d["started_at"]))
            )
        except (ValueError, KeyError, TypeError):
            continue
    return out


class FirstCalls:
    """The lookup the CRM steps make just before ``addcont``."""

    def __init__(self, redis: Redis, config: WorkerConfig) -> None:
        self.redis = redis
        self.config = config

    async def contact_for(self, record: CallRecord, planned: NewContact) -> NewContact:
        """The contact to create for ``record``'s caller: as its earliest known inbound call
        to this CRM would have created it (that call's tracking number as ``x_pstn``, and in
        the name's ``{did}``, ``{source}``, ``{date}``), else ``planned``."""
        if not record.external:
            return planned
        target = self.config.crm_for(record.pbx)
        same_crm = [
            f
            for f in await first_calls(self.redis, record.external)
            if self.config.crm_for(f.pbx).lock_scope == target.lock_scope
        ]
        if not same_crm:
            return planned
        first = min(same_crm, key=lambda f: f.started_at)
        if first.started_at >= record.started_at or (first.pbx, first.call_id) == (
            record.pbx,
            record.call_id,
        ):
            return planned
        as_first = replace(record, did=first.did, started_at=first.started_at)
        contact = new_contact(as_first, self.config.calls, target) or planned
        if contact.did != planned.did:
            log.info(
                "new contact for %s gets x_pstn %s, the number of its first call %s (pbx %s); "
                "this call dialled %s",
                record.external,
                first.did,
                first.call_id,
                first.pbx,
                record.did or "no tracking number",
                extra=record.log_tags,
            )
        return contact
