"""The dead-letter store: calls that could not reach the CRM, kept for ops to look at and act on.

arq has none (a failed job's result expires and is gone), so it lives in our keys: the
zset ``telefum:dlq`` (job id -> time of death) and, per call, the ledger (record, reason) and
the error history (every failed attempt: time, error class, redacted message).

Requeue puts the call back on the queue with a fresh retry budget. The ledger stays: a
contact already created or found is reused, an event already accepted is not sent again.
Drop forgets the call for good (its ledger says "dropped", so a later hand-over of the same
call by the listener does not bring it back).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis

from . import keys, stats
from .ledger import DEAD, DROPPED, error_history, load
from .queue import QUEUED, enqueue_call


@dataclass
class DeadLetter:
    id: str  # the job id, call:{pbx}:{call_id}
    call_id: str
    pbx: str
    dead_at: float
    reason: str
    attempts: int
    first_seen: float | None
    record: dict[str, Any] | None
    contact_id: str | None  # the contact found/created before it died, if any
    errors: list[dict[str, Any]] = field(default_factory=list)
    login: str | None = None  # whose CRM login the failed request used (never a password)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "call_id": self.call_id,
            "pbx": self.pbx,
            "dead_at": self.dead_at,
            "reason": self.reason,
            "attempts": self.attempts,
            "first_seen": self.first_seen,
            "contact_id": self.contact_id,
            "record": self.record,
            "errors": self.errors,
            "login": self.login,
        }


async def dead_letter(
    redis: Redis, job_id: str, reason: str, now: float | None = None, *, login: str | None = None
) -> None:
    """Move a call to the store (one transaction: ledger, dlq set, pending set, counter).
    ``login``: whose login the failed CRM request used (``login "ivan" (agent 101's own)``)."""
    now = time.time() if now is None else now
    lkey = keys.ledger(job_id)
    fields = {"state": DEAD, "dead_at": repr(now), "dead_reason": reason, "dead_login": login or ""}
    async with redis.pipeline(transaction=True) as tr:
        tr.hset(lkey, mapping=fields)
        tr.zadd(keys.DLQ, {job_id: now})
        tr.zrem(keys.PENDING, job_id)
        stats.incr_in(tr, "dead_lettered")
        await tr.execute()


async def count(redis: Redis) -> int:
    return int(await redis.zcard(keys.DLQ))


async def ids(redis: Redis, limit: int | None = None) -> list[str]:
    end = -1 if limit is None else limit - 1
    return [keys.text(m) for m in await redis.zrange(keys.DLQ, 0, end)]


async def get(redis: Redis, job_id: str, *, with_errors: bool = True) -> DeadLetter | None:
    score = await redis.zscore(keys.DLQ, job_id)
    if score is None:
        return None
    entry = await load(redis, job_id)
    try:
        record = entry.record
    except ValueError:
        record = None
    return DeadLetter(
        id=job_id,
        call_id=entry.get("call_id") or job_id.rsplit(":", 1)[-1],
        pbx=entry.get("pbx") or "",
        dead_at=float(score),
        reason=entry.get("dead_reason") or "(no reason recorded)",
        attempts=entry.attempts,
        first_seen=float(entry.get("first_seen")) if entry.get("first_seen") else None,
        record=record,
        contact_id=entry.contact_id,
        errors=await error_history(redis, job_id) if with_errors else [],
        login=entry.get("dead_login") or None,
    )


async def list_dead(
    redis: Redis, limit: int | None = None, *, with_errors: bool = True
) -> list[DeadLetter]:
    """Oldest first."""
    out = []
    for jid in await ids(redis, limit):
        dl = await get(redis, jid, with_errors=with_errors)
        if dl is not None:
            out.append(dl)
    return out


async def resolve(redis: Redis, given: str) -> str | None:
    """A dead letter's job id from what ops typed: the job id, ``pbx:call_id`` or the call id."""
    for cand in (given, f"call:{given}"):
        if await redis.zscore(keys.DLQ, cand) is not None:
            return cand
    pattern = f"call:*:{_glob_escape(given)}"
    matches = [keys.text(m) async for m, _ in redis.zscan_iter(keys.DLQ, match=pattern)]
    return matches[0] if len(matches) == 1 else None


def _glob_escape(s: str) -> str:
    return "".join(f"\\{c}" if c in "*?[]\\" else c for c in s)


async def requeue(
    redis: Redis, job_id: str, *, queue_name: str, expires_s: float, ledger_ttl_s: float
) -> str:
    """Back on the queue: ``queued``, or why not (``not-found``, ``done``, ...)."""
    entry = await load(redis, job_id)
    record = None
    with contextlib.suppress(ValueError):
        record = entry.record
    if record is None:
        return "not-found" if not entry.exists else "no-record"
    if entry.state not in (DEAD, DROPPED):
        # not (any more) dead: tidy a stale dlq member, and leave the call alone
        await redis.zrem(keys.DLQ, job_id)
        return entry.state or "not-found"
    async with redis.pipeline(transaction=True) as tr:  # a marker in the history
        tr.rpush(keys.errors(job_id), json.dumps({"at": time.time(), "requeued": True}))
        tr.expire(keys.errors(job_id), int(ledger_ttl_s))
        await tr.execute()
    return await enqueue_call(
        redis,
        record,
        queue_name=queue_name,
        expires_s=expires_s,
        ledger_ttl_s=ledger_ttl_s,
        requeue=True,
    )


async def requeue_all(
    redis: Redis,
    *,
    queue_name: str,
    expires_s: float,
    ledger_ttl_s: float,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, int]:
    """Requeue every dead letter; ``progress(done, total)`` after each. Outcome -> count."""
    todo = await ids(redis)
    outcomes: dict[str, int] = {}
    for i, jid in enumerate(todo, 1):
        outcome = await requeue(
            redis, jid, queue_name=queue_name, expires_s=expires_s, ledger_ttl_s=ledger_ttl_s
        )
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        if progress:
            progress(i, len(todo))
    return outcomes


async def drop(redis: Redis, job_id: str) -> bool:
    """Forget a dead letter for good. False if it was not in the store."""
    async with redis.pipeline(transaction=True) as tr:
        tr.zrem(keys.DLQ, job_id)
        tr.exists(keys.ledger(job_id))
        removed, has_ledger = await tr.execute()
    if removed and has_ledger:
        await redis.hset(  # type: ignore[misc]
            keys.ledger(job_id), mapping={"state": DROPPED, "dropped_at": repr(time.time())}
        )
    return bool(removed)


__all__ = [
    "QUEUED",
    "DeadLetter",
    "count",
    "dead_letter",
    "drop",
    "get",
    "ids",
    "list_dead",
    "requeue",
    "requeue_all",
    "resolve",
]
