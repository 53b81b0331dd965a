"""Every Redis key the bridge writes, in one place (arq's own keys are arq's business).

``telefum:ledger:{job_id}``      hash: the call's ledger (worker/ledger.py)
``telefum:errors:{job_id}``      list: JSON error history of the call, oldest first
``telefum:pending``              zset: job ids accepted and not yet delivered/dead, by enqueue time
``telefum:dlq``                  zset: dead-lettered job ids, by time of death
``telefum:lock:{crm}:{phone}``   the per-phone lock around find + addcont
``telefum:first-in:{phone}``     hash: a caller's earliest inbound call per PBX (first_call.py)
``telefum:stats:*``              counters, latency buckets, heartbeats (worker/stats.py), whether
                                 each CRM answers (worker/crm_health.py)
"""

from __future__ import annotations

import logging
from typing import Any

from telephony.records import log_tags as call_log_tags

PREFIX = "telefum:"
PENDING = PREFIX + "pending"
DLQ = PREFIX + "dlq"
RECONCILE_LOCK = PREFIX + "reconcile-lock"
REPLICATION_MARK = PREFIX + "replication-mark"  # written to wait for a replica (replicas.py)


def job_id(pbx: str, call_id: str) -> str:
    """The arq job id of a call: the same call enqueued twice is one job."""
    return f"call:{pbx}:{call_id}"


def split_job_id(job: str) -> tuple[str, str]:
    """``call:{pbx}:{call_id}`` -> (pbx, call_id). A PBX name has no ":" (config checks it);
    a call id may. Anything else: ("", job) (never raises: used to tag log lines)."""
    kind, sep, rest = job.partition(":")
    pbx, sep2, call_id = rest.partition(":")
    if kind != "call" or not sep or not sep2 or not pbx or not call_id:
        return "", job
    return pbx, call_id


def log_tags(job: str) -> dict[str, str]:
    """The tags of a log line about the call of job ``job``: ``call_id=<linkedid> pbx=<name>``,
    the form every line about a call has (``telephony.records.log_tags``), never the job id."""
    pbx, call_id = split_job_id(job)
    return call_log_tags(call_id, pbx)


class ArqLineTags(logging.Filter):
    """Gives arq's own lines about a job (``job call:office:1.1 expired``, ``call:office:1.1:
    deliver_call failed``) the tags of every line about a call: install it on the handlers."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith("arq") and "call_id" not in record.__dict__:
            for arg in record.args if isinstance(record.args, tuple) else ():
                if isinstance(arg, str) and arg.startswith("call:"):
                    pbx, call_id = split_job_id(arg.removesuffix(":deliver_call"))
                    if pbx:
                        record.__dict__.update(call_log_tags(call_id, pbx))
                        break
        return True


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
