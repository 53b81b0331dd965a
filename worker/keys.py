"""Every Redis key the bridge writes, in one place (arq's own keys are arq's business).

``telefum:ledger:{job_id}``      hash: the call's ledger (worker/ledger.py)
``telefum:errors:{job_id}``      list: JSON error history of the call, oldest first
``telefum:pending``              zset: job ids accepted and not yet delivered/dead, by enqueue time
``telefum:dlq``                  zset: dead-lettered job ids, by time of death
``telefum:lock:{crm}:{phone}``   the per-phone lock around find + addcont
``telefum:first-in:{phone}``     hash: a caller's earliest inbound call per PBX (first_call.py)
``telefum:stats:*``              counters, latency buckets, heartbeats (worker/stats.py)
"""

from __future__ import annotations

from typing import Any

PREFIX = "telefum:"
PENDING = PREFIX + "pending"
DLQ = PREFIX + "dlq"
RECONCILE_LOCK = PREFIX + "reconcile-lock"


def job_id(pbx: str, call_id: str) -> str:
    """The arq job id of a call: the same call enqueued twice is one job."""
    return f"call:{pbx}:{call_id}"


def ledger(job: str) -> str:
    return f"{PREFIX}ledger:{job}"


def errors(job: str) -> str:
    return f"{PREFIX}errors:{job}"


def phone_lock(scope: str, phone: str) -> str:
    return f"{PREFIX}lock:{scope}:{phone}"


def first_inbound(phone: str) -> str:
    return f"{PREFIX}first-in:{phone}"


def text(v: Any) -> str:
    """A Redis reply as text: our clients do not decode, so members and fields are bytes."""
    return v.decode() if isinstance(v, bytes) else str(v)
