"""The safety net under arq: calls the ledger still owes the CRM but arq no longer has.

arq loses a job, by design, when: its key expires (a day after enqueue by default, even
mid-retry: we set a longer ``_expires``, but workers may be down for longer); its run ends
in an exception other than ``Retry`` (arq's job timeout, an error while Redis flickered);
its worker died and the job key expired meanwhile. The ledger does not forget: every call
accepted is in ``telefum:pending`` until it is done or dead. Every ``reconcile_s`` one
worker (a short Redis lock elects it) re-enqueues the pending calls that have no arq job
and are not running. Re-enqueueing is the ordinary idempotent enqueue, so a race with a job
that just finished only finds the ledger saying "done".
"""

from __future__ import annotations

import logging
import time

from arq.constants import in_progress_key_prefix, job_key_prefix
from redis.asyncio import Redis

from . import keys
from .dlq import dead_letter
from .ledger import FINAL, load
from .queue import QUEUED, enqueue_call

log = logging.getLogger("worker.reconcile")


async def reconcile_once(
    redis: Redis,
    *,
    queue_name: str,
    expires_s: float,
    ledger_ttl_s: float,
    grace_s: float = 0.0,
    limit: int = 500,
) -> int:
    """One sweep; returns how many calls were put back on the queue."""
    cutoff = time.time() - grace_s
    members = await redis.zrangebyscore(keys.PENDING, "-inf", cutoff, start=0, num=limit)
    recovered = 0
    for raw in members:
        jid = keys.text(raw)
        async with redis.pipeline(transaction=False) as p:
            p.exists(job_key_prefix + jid)
            p.exists(in_progress_key_prefix + jid)
            has_job, running = await p.execute()
        if has_job or running:
            continue
        entry = await load(redis, jid)
        if not entry.exists or entry.state in FINAL:
            await redis.zrem(keys.PENDING, jid)
            continue
        try:
            record = entry.record
        except ValueError:
            record = None
        if record is None:
            await dead_letter(redis, jid, "permanent: the ledger lost the call record")
            continue
        outcome = await enqueue_call(
            redis, record, queue_name=queue_name, expires_s=expires_s, ledger_ttl_s=ledger_ttl_s
        )
        if outcome == QUEUED:
            recovered += 1
            log.warning(
                "re-enqueued a call arq had lost (ledger state %s)",
                entry.state,
                extra=keys.log_tags(jid),
            )
    return recovered


async def try_reconcile(
    redis: Redis, owner: str, every_s: float, **kwargs: float | str | int
) -> int | None:
    """Sweep if no other worker did within ``every_s``; None when another one had the turn."""
    got = await redis.set(keys.RECONCILE_LOCK, owner, nx=True, px=int(every_s * 900))
    if not got:
        return None
    return await reconcile_once(redis, **kwargs)  # type: ignore[arg-type]
