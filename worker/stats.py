"""Pipeline counters kept in Redis, so the HTTP process can show what separate workers did.

Writers: the handoff (enqueued, spool size), the jobs (the rest), the worker processes
(heartbeats). Reader: :func:`read_stats`, for ``/metrics``, ``/health`` and ``telefum status``.

Keys::

    telefum:stats:counters                  hash  counter name -> int (monotonic)
    telefum:stats:crm:{op}:{outcome}         hash  bucket upper bound -> count (NOT cumulative),
                                                   plus "count" and "sum" (seconds)
    telefum:stats:workers                   set   worker ids that sent a heartbeat
    telefum:stats:worker:{id}               hash  ts, pid, host, running, done, failing (its
                                                   failing background tasks) (TTL: 3 beats)
    telefum:stats:listeners                 set   listener ids that published a spool size
    telefum:stats:spool:{id}                hash  ts, size (TTL)
    telefum:stats:crms, :crm-state:{scope}  whether each CRM answers (worker/crm_health.py)
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from . import keys

COUNTERS = keys.PREFIX + "stats:counters"
WORKERS = keys.PREFIX + "stats:workers"
LISTENERS = keys.PREFIX + "stats:listeners"
_CRM = keys.PREFIX + "stats:crm:"

COUNTER_NAMES = (
    "enqueued",  # calls accepted into the queue (a call enqueued twice counts once)
    "succeeded",  # calls whose event is in the CRM
    "skipped",  # calls not logged by policy (missed/internal/no outside number)
    "retried",  # runs that ended in a retry (transient failure)
    "dead_lettered",  # calls moved to the dead-letter store
    "requeued",  # dead letters requeued by ops
    "contacts_created",
    "events_created",
    "possible_duplicates",  # sends of delivered calls' addevent that may have acted unanswered
    "recovered",  # calls re-enqueued by the reconciler after arq lost their job
    "agent_login_fallbacks",  # writes sent with the service account: the agent's was refused
)
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, float("inf"))


def _bucket_name(le: float) -> str:
    return "+Inf" if le == float("inf") else repr(le)


def incr_in(pipe: Pipeline, name: str, n: int = 1) -> None:
    """Add a counter increment to a pipeline (so it commits with what it counts)."""
    pipe.hincrby(COUNTERS, name, n)


async def incr(redis: Redis, name: str, n: int = 1) -> None:
    await redis.hincrby(COUNTERS, name, n)  # type: ignore[misc]


class LatencyTally:
    """CRM request latencies counted in memory and added to the histograms in Redis in one
    round trip every second or so (``flush``) instead of with each call: three histogram
    commands per request were a tenth of a worker's Redis work. A worker killed between
    flushes loses at most that second of latency figures, never a call nor a counter."""

    def __init__(self) -> None:
        # (op, outcome) -> bucket name -> requests, plus "count" and the seconds summed
        self._counts: dict[tuple[str, str], dict[str, int]] = {}
        self._sums: dict[tuple[str, str], float] = {}

    def __bool__(self) -> bool:
        return bool(self._counts)

    def observe(self, op: str, outcome: str, seconds: float) -> None:
        le = next(b for b in BUCKETS if seconds <= b)
        counts = self._counts.setdefault((op, outcome), {})
        for name in (_bucket_name(le), "count"):
            counts[name] = counts.get(name, 0) + 1
        self._sums[(op, outcome)] = self._sums.get((op, outcome), 0.0) + seconds

    async def flush(self, redis: Redis) -> None:
        """Add what was counted since the last flush to Redis; if Redis fails, it stays
        counted here for the next flush."""
        if not self._counts:
            return
        counts, sums = self._counts, self._sums
        self._counts, self._sums = {}, {}
        try:
            async with redis.pipeline(transaction=True) as p:
                for (op, outcome), fields in counts.items():
                    key = f"{_CRM}{op}:{outcome}"
                    for name, n in fields.items():
                        p.hincrby(key, name, n)
                    p.hincrbyfloat(key, "sum", sums[(op, outcome)])
                await p.execute()
        except BaseException:
            for k, fields in counts.items():  # put back, with what came in meanwhile
                mine = self._counts.setdefault(k, {})
                for name, n in fields.items():
                    mine[name] = mine.get(name, 0) + n
                self._sums[k] = self._sums.get(k, 0.0) + sums[k]
            raise


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


async def heartbeat(redis: Redis, wid: str, info: dict[str, Any], ttl_s: float) -> None:
    key = f"{keys.PREFIX}stats:worker:{wid}"
    async with redis.pipeline(transaction=True) as p:
        p.hset(key, mapping={k: str(v) for k, v in ({"ts": time.time()} | info).items()})
        p.pexpire(key, int(ttl_s * 1000))
        p.sadd(WORKERS, wid)
        await p.execute()


async def heartbeat_gone(redis: Redis, wid: str) -> None:
    """A worker stopping cleanly says so at once (instead of waiting for the TTL)."""
    async with redis.pipeline(transaction=True) as p:
        p.delete(f"{keys.PREFIX}stats:worker:{wid}")
        p.srem(WORKERS, wid)
        await p.execute()


async def publish_spool(redis: Redis, listener: str, size: int, ttl_s: float) -> None:
    key = f"{keys.PREFIX}stats:spool:{listener}"
    async with redis.pipeline(transaction=True) as p:
        p.hset(key, mapping={"ts": str(time.time()), "size": str(size)})
        p.pexpire(key, int(ttl_s * 1000))
        p.sadd(LISTENERS, listener)
        await p.execute()


async def read_stats(redis: Redis, queue_name: str = "telefum:queue") -> dict[str, Any]:
    """Everything above as one dict. Shape (stable; add keys only)::

        {"counters": {name: int for every name in COUNTER_NAMES},
         "queue": {"depth": int,          # jobs in arq's queue (due + deferred)
                   "due": int,            # of which ready to run now
                   "deferred": int},      # of which waiting for a retry (or a defer)
         "pending": int,                  # calls accepted and not yet delivered nor dead
         "dead_letters": int,
         "workers": [{"id": str, "age_s": float, "pid": str, "host": str, "failing": str,
                      "running": int, "done": int}],          # live heartbeats only
         "spool": {"total": int,
                   "listeners": [{"id": str, "size": int, "age_s": float}]},
         "crm_latency": {op: {outcome: {"buckets": [[le, cumulative count], ...,
                                                    ["+Inf", count]],
                                        "count": int, "sum_s": float}}},
         "crm": [{"scope": str, "url": str, "failing_since": float | None, ...}]}
                                          # each CRM's answers: worker/crm_health.py

    ``le`` is a float except the last, "+Inf"; buckets are cumulative, as Prometheus wants.
    """
    now = time.time()
    async with redis.pipeline(transaction=False) as p:
        p.hgetall(COUNTERS)
        p.zcard(queue_name)
        p.zcount(queue_name, "-inf", int(now * 1000))
        p.zcard(keys.PENDING)
        p.zcard(keys.DLQ)
        p.smembers(WORKERS)
        p.smembers(LISTENERS)
        raw_counters, depth, due, pending, dead, wids, lids = await p.execute()
    counters = {name: 0 for name in COUNTER_NAMES}
    counters.update({keys.text(k): int(v) for k, v in raw_counters.items()})

    wids = sorted(keys.text(w) for w in wids)
    lids = sorted(keys.text(x) for x in lids)
    latency_keys = [keys.text(k) async for k in redis.scan_iter(match=_CRM + "*", count=100)]
    async with redis.pipeline(transaction=False) as p:
        for w in wids:
            p.hgetall(f"{keys.PREFIX}stats:worker:{w}")
        for x in lids:
            p.hgetall(f"{keys.PREFIX}stats:spool:{x}")
        for k in latency_keys:
            p.hgetall(k)
        rows = await p.execute()

    workers, gone = [], []
    for w, raw in zip(wids, rows[: len(wids)], strict=True):
        h = {keys.text(k): keys.text(v) for k, v in raw.items()}
        if not h:
            gone.append(w)
            continue
        workers.append(
            {
                "id": w,
                "age_s": round(now - float(h.get("ts", now)), 3),
                "pid": h.get("pid", ""),
                "host": h.get("host", ""),
                "running": int(h.get("running", 0)),
                "done": int(h.get("done", 0)),
                "failing": h.get("failing", ""),  # its background tasks that fail, and why
            }
        )
    listeners, lgone = [], []
    for x, raw in zip(lids, rows[len(wids) : len(wids) + len(lids)], strict=True):
        h = {keys.text(k): keys.text(v) for k, v in raw.items()}
        if not h:
            lgone.append(x)
            continue
        listeners.append(
            {
                "id": x,
                "size": int(h.get("size", 0)),
                "age_s": round(now - float(h["ts"]), 3),
            }
        )
    if gone or lgone:  # tidy the member sets of heartbeats that expired
        async with redis.pipeline(transaction=False) as p:
            if gone:
                p.srem(WORKERS, *gone)
            if lgone:
                p.srem(LISTENERS, *lgone)
            await p.execute()

    latency: dict[str, dict[str, Any]] = {}
    for k, raw in zip(latency_keys, rows[len(wids) + len(lids) :], strict=True):
        op, _, outcome = k[len(_CRM) :].partition(":")
        h = {keys.text(a): keys.text(b) for a, b in raw.items()}
        cum, buckets = 0, []
        for le in BUCKETS:
            cum += int(h.get(_bucket_name(le), 0))
            buckets.append(["+Inf" if le == float("inf") else le, cum])
        latency.setdefault(op, {})[outcome] = {
            "buckets": buckets,
            "count": int(h.get("count", 0)),
            "sum_s": float(h.get("sum", 0.0)),
        }

    from .crm_health import read_states  # (it imports the ledger, which imports us)

    return {
        "counters": counters,
        "queue": {"depth": int(depth), "due": int(due), "deferred": int(depth) - int(due)},
        "pending": int(pending),
        "dead_letters": int(dead),
        "workers": workers,
        "spool": {"total": sum(x["size"] for x in listeners), "listeners": listeners},
        "crm_latency": latency,
        "crm": await read_states(redis),
    }
