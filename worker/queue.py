"""Putting a call on arq's queue, atomically with the ledger that says what became of it.

Why not ``ArqRedis.enqueue_job``: it silently returns None for an id that is queued, running
or has a kept result, and it cannot tell "already delivered" from "never seen". Here one
MULTI/EXEC (under WATCH) writes the arq job exactly as arq would (same keys, same
serialisation via ``arq.jobs.serialize_job``) together with the ledger, the pending set and
the counters, after checking the ledger: a call the ledger says is done (or dead, or dropped)
is not run again however often the listener hands it over.
"""

from __future__ import annotations

import json
import time
from typing import Any

from arq.constants import job_key_prefix, result_key_prefix, retry_key_prefix
from arq.jobs import serialize_job
from redis.asyncio import Redis
from redis.exceptions import WatchError

from . import keys, stats
from .ledger import FINAL

JOB_FUNCTION = "deliver_call"

# Outcomes of enqueue_call
QUEUED = "queued"  # a new job is on the queue
ALREADY_QUEUED = "already-queued"  # the call's job is queued, retrying or running
# ... or the ledger's final state: "done", "dead", "dropped"


def dumps(data: dict[str, Any]) -> bytes:
    """arq job serializer: JSON, readable with redis-cli, no pickle from the network."""
    return json.dumps(data, ensure_ascii=False, default=repr).encode()


def loads(raw: bytes) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(raw)
    return out


def job_id_of(record: dict[str, Any]) -> str:
    """The job id of a record (``call:{pbx}:{call_id}``); ValueError when it has no call id."""
    call_id = record.get("call_id") if isinstance(record, dict) else None
    if not isinstance(call_id, str) or not call_id:
        raise ValueError("call record without a call_id")
    pbx = record.get("pbx") or "default"
    if not isinstance(pbx, str):
        raise ValueError(f"call record {call_id}: pbx is not a string")
    return keys.job_id(pbx, call_id)


async def enqueue_call(
    redis: Redis,
    record: dict[str, Any],
    *,
    queue_name: str,
    expires_s: float,
    ledger_ttl_s: float,
    requeue: bool = False,
    defer_s: float = 0.0,
) -> str:
    """Queue one finished call unless it is already queued or finished.

    ``requeue=True`` (ops, from the dead-letter store) also restarts a dead or dropped call
    with a fresh retry budget; the ledger's contact and event ids stay, so nothing the CRM
    already has is sent again. Returns ``QUEUED``, ``ALREADY_QUEUED`` or the final state.
    """
    jid = job_id_of(record)
    lkey, jkey = keys.ledger(jid), job_key_prefix + jid
    for _ in range(20):
        async with redis.pipeline(transaction=True) as pipe:
            try:
                await pipe.watch(lkey, jkey)
                state_b, known = await _state(pipe, lkey)
                state = state_b or ""
                if state in FINAL and not (requeue and state != "done"):
                    await pipe.reset()
                    return state
                if await pipe.exists(jkey):
                    await pipe.reset()
                    return ALREADY_QUEUED
                now = time.time()
                enqueue_ms = int(now * 1000)
                job = serialize_job(JOB_FUNCTION, (record,), {}, None, enqueue_ms, serializer=dumps)
                pipe.multi()
                fields = {"state": "queued"}
                if not known:
                    fields |= {
                        "record": json.dumps(record, ensure_ascii=False),
                        "pbx": record.get("pbx") or "default",
                        "call_id": record["call_id"],
                        "first_seen": repr(now),
                    }
                    stats.incr_in(pipe, "enqueued")
                elif requeue:
                    pipe.hdel(lkey, "first_attempt", "attempts", "dead_at", "dead_reason")
                    pipe.zrem(keys.DLQ, jid)
                    stats.incr_in(pipe, "requeued")
                else:  # the ledger knew it, arq had lost it: see worker/reconcile.py
                    stats.incr_in(pipe, "recovered")
                pipe.hset(lkey, mapping=fields)
                pipe.expire(lkey, int(ledger_ttl_s))
                pipe.zadd(keys.PENDING, {jid: now}, nx=True)
                # arq refuses an id with a kept result; and its try counter must start over
                pipe.delete(result_key_prefix + jid, retry_key_prefix + jid)
                pipe.psetex(jkey, int((expires_s + defer_s) * 1000), job)
                pipe.zadd(queue_name, {jid: enqueue_ms + int(defer_s * 1000)})
                await pipe.execute()
                return QUEUED
            except WatchError:
                continue  # the ledger or the job changed under us: look again
    raise RuntimeError(f"could not enqueue {jid}: it kept changing under us")


async def _state(pipe: Any, lkey: str) -> tuple[str | None, bool]:
    state = await pipe.hget(lkey, "state")
    known = bool(await pipe.exists(lkey))
    if isinstance(state, bytes):
        state = state.decode()
    return state, known
