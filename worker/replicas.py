"""Waiting for a Redis replica behind Sentinel before forgetting what only Redis now holds.

A failover promotes a replica: what the old primary took and no replica had yet is gone. So
the listener waits for a replica before it forgets a batch of calls from its spool
(``handoff.py``), a worker before its record of a CRM write counts as kept (``ledger.py``:
lost, a re-run would send that write again), and the outbox before it forgets an answer.

``WAIT`` counts only the writes of the connection it is sent on, and a pooled client sends
each command on whichever connection is free. So the wait writes a mark and waits on one
connection (a pipeline): replication is one ordered stream, and a replica that has the mark
has everything the primary took before it, whichever connection wrote it.

With no replica answering, waiting on every write would stall everything: after a
shortfall it does not wait again for ``skip_s``, and says so.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from redis.asyncio import Redis

from . import keys

log = logging.getLogger("telefum.redis")


class ReplicaWait:
    """``await wait(redis, what, risk)``: until ``replicas`` replicas have every write the
    primary took so far, at most ``timeout_s``; True when they confirmed. ``replicas`` 0
    (a lone Redis): returns False at once, nothing sent."""

    def __init__(
        self,
        replicas: int,
        timeout_s: float = 1.0,
        skip_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.replicas = replicas
        self.timeout_s = timeout_s
        self.skip_s = skip_s
        self._clock = clock
        self._skip_until = 0.0  # no replica confirmed lately: not waiting until then

    async def __call__(self, redis: Redis, what: str, risk: str) -> bool:
        """Connection errors propagate: the caller decides what an unconfirmed write
        means for it. ``what`` and ``risk`` make the warning of a shortfall."""
        if not self.replicas or self._clock() < self._skip_until:
            return False
        async with redis.pipeline(transaction=False) as pipe:
            pipe.set(keys.REPLICATION_MARK, repr(time.time()), px=60_000)
            pipe.execute_command("WAIT", self.replicas, int(self.timeout_s * 1000))
            _, acked = await pipe.execute()
        if int(acked) >= self.replicas:
            return True
        self._skip_until = self._clock() + self.skip_s
        log.warning(
            "no Redis replica confirmed %s within %.1f s: %s (not waiting again for %.0f s)",
            what,
            self.timeout_s,
            risk,
            self.skip_s,
        )
        return False
