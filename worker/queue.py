"""Putting a call on arq's queue, atomically with the ledger that says what became of it.

Why not ``ArqRedis.enqueue_job``: it silently returns None for an id that is queued, running
or has a kept result, and it cannot tell "already delivered" from "never seen". Here one
Lua script, atomic in Redis, writes the arq job exactly as arq would (same keys, same
serialisation via ``arq.jobs.serialize_job``) together with the ledger, the pending set and
the counters, after checking the ledger: a call the ledger says is done (or dead, or dropped)
is not run again however often the listener hands it over. An inbound call is also noted
as its caller's first call if it is the earliest (``first_call.py``), before any worker can
run it. A script rather than
WATCH/MULTI: one round trip per call instead of five, and a batch of calls
(:func:`enqueue_calls`, the listener's hand-over) in one round trip for them all.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

from arq.constants import job_key_prefix, result_key_prefix, retry_key_prefix
from arq.jobs import serialize_job
from redis.asyncio import Redis

from telephony.records import log_tags

from . import keys, stats
from .first_call import note_of
from .ledger import FINAL, registered_script

log = logging.getLogger("worker.queue")

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


# KEYS: ledger, job, pending, dlq, counters, arq result, arq retry, queue, caller's first calls
# ARGV: requeue ("1"/""), record JSON, pbx, call id, now, ledger TTL s, job bytes,
#       job TTL ms, queue score, job id, first-call entry JSON ("": none), its start
_ENQUEUE_LUA = """
local final = {FINAL}
local state = redis.call('HGET', KEYS[1], 'state') or ''
local known = redis.call('EXISTS', KEYS[1]) == 1
local requeue = ARGV[1] == '1'
if final[state] and not (requeue and state ~= 'done') then
  return state
end
if redis.call('EXISTS', KEYS[2]) == 1 then
  return 'already-queued'
end
if not known then
  redis.call('HSET', KEYS[1], 'state', 'queued', 'record', ARGV[2], 'pbx', ARGV[3],
             'call_id', ARGV[4], 'first_seen', ARGV[5])
  redis.call('HINCRBY', KEYS[5], 'enqueued', 1)
else
  if requeue then
    redis.call('HDEL', KEYS[1], 'first_attempt', 'attempts', 'dead_at', 'dead_reason',
               'dead_login')
    redis.call('ZREM', KEYS[4], ARGV[10])
    redis.call('HINCRBY', KEYS[5], 'requeued', 1)
  else  -- the ledger knew it, arq had lost it: see worker/reconcile.py
    redis.call('HINCRBY', KEYS[5], 'recovered', 1)
  end
  redis.call('HSET', KEYS[1], 'state', 'queued')
end
redis.call('EXPIRE', KEYS[1], ARGV[6])
if ARGV[11] ~= '' then  -- kept as long as the caller has a ledger (see first_call.py)
  local cur = redis.call('HGET', KEYS[9], ARGV[3])
  local ok, known = pcall(cjson.decode, cur or '')
  local at = ok and type(known) == 'table' and tonumber(known['started_at'])
  if (not at) or tonumber(ARGV[12]) < at then
    redis.call('HSET', KEYS[9], ARGV[3], ARGV[11])
  end
  redis.call('EXPIRE', KEYS[9], ARGV[6])
end
redis.call('ZADD', KEYS[3], 'NX', ARGV[5], ARGV[10])
-- arq refuses an id with a kept result; and its try counter must start over
redis.call('DEL', KEYS[6], KEYS[7])
redis.call('PSETEX', KEYS[2], ARGV[8], ARGV[7])
redis.call('ZADD', KEYS[8], ARGV[9], ARGV[10])
return 'queued'
""".replace("{FINAL}", "{" + ", ".join(f"['{x}'] = true" for x in sorted(FINAL)) + "}")


def _script_call(
    record: dict[str, Any],
    *,
    queue_name: str,
    expires_s: float,
    ledger_ttl_s: float,
    requeue: bool,
    defer_s: float,
) -> tuple[list[str], list[Any]]:
    """The script's keys and arguments for one call (ValueError: no usable call id)."""
    jid = job_id_of(record)
    now = time.time()
    enqueue_ms = int(now * 1000)
    job = serialize_job(JOB_FUNCTION, (record,), {}, None, enqueue_ms, serializer=dumps)
    note = note_of(record)
    caller, first, first_at = note if note else ("", "", 0.0)
    keys_ = [
        keys.ledger(jid),
        job_key_prefix + jid,
        keys.PENDING,
        keys.DLQ,
        stats.COUNTERS,
        result_key_prefix + jid,
        retry_key_prefix + jid,
        queue_name,
        keys.first_inbound(caller),
    ]
    args = [
        "1" if requeue else "",
        json.dumps(record, ensure_ascii=False),
        record.get("pbx") or "default",
        record["call_id"],
        repr(now),
        int(ledger_ttl_s),
        job,
        int((expires_s + defer_s) * 1000),
        enqueue_ms + int(defer_s * 1000),
        jid,
        first,
        repr(first_at),
    ]
    return keys_, args


def _script(redis: Redis) -> Any:
    return registered_script(redis, "_telefum_enqueue", _ENQUEUE_LUA)


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
    ValueError: the record has no usable call id.
    """
    keys_, args = _script_call(
        record,
        queue_name=queue_name,
        expires_s=expires_s,
        ledger_ttl_s=ledger_ttl_s,
        requeue=requeue,
        defer_s=defer_s,
    )
    return keys.text(await _script(redis)(keys=keys_, args=args))


async def enqueue_calls(
    redis: Redis,
    records: list[dict[str, Any]],
    *,
    queue_name: str,
    expires_s: float,
    ledger_ttl_s: float,
) -> list[str]:
    """:func:`enqueue_call` for several calls in one round trip (each call atomic on its
    own); the outcomes in order. A call not queued (a replayed or re-spooled call id) gets
    an info line saying why. ValueError before anything is sent: a record has no usable
    call id (check them with :func:`job_id_of` first)."""
    calls = [
        _script_call(
            r,
            queue_name=queue_name,
            expires_s=expires_s,
            ledger_ttl_s=ledger_ttl_s,
            requeue=False,
            defer_s=0.0,
        )
        for r in records
    ]
    if not calls:
        return []
    script = _script(redis)
    async with redis.pipeline(transaction=False) as pipe:
        for keys_, args in calls:
            await script(keys=keys_, args=args, client=pipe)  # queued, not sent yet
        outcomes = [keys.text(v) for v in await pipe.execute()]
    for record, outcome in zip(records, outcomes, strict=True):
        if outcome != QUEUED:  # a replay, or the spool handing a call over again
            log.info(
                "call handed over again, not queued: %s",
                _NOT_AGAIN.get(outcome, outcome),
                extra=log_tags(record["call_id"], record.get("pbx") or "default"),
            )
    return outcomes


_NOT_AGAIN = {
    ALREADY_QUEUED: "its job is already queued, retrying or running",
    "done": "already done (delivered, or not logged by policy)",
    "dead": "it is in the dead letters (telefum dlq requeue delivers it)",
    "dropped": "it was dropped from the dead letters (telefum dlq drop)",
}


async def retry_now(
    redis: Redis, queue_name: str, *, only: Callable[[str], bool] | None = None
) -> int:
    """Make every call waiting for a retry due now (``only``: those whose job id it
    accepts); how many. For when the CRM is back and the backoff (up to 10 minutes) would
    make the last calls wait. A job that ends meanwhile is not brought back (``ZADD XX``); a
    run that fails again backs off from its attempt count, as before."""
    now_ms = int(time.time() * 1000)
    waiting = [keys.text(m) for m in await redis.zrangebyscore(queue_name, f"({now_ms}", "+inf")]
    chosen = [job for job in waiting if only is None or only(job)]
    moved = 0
    for i in range(0, len(chosen), 1000):
        moved += int(
            await redis.zadd(
                queue_name, dict.fromkeys(chosen[i : i + 1000], now_ms), xx=True, ch=True
            )
        )
    return moved
