"""The listener's side of the pipeline: finished calls -> spool on disk -> arq queue in Redis.

``submit(record)`` never blocks the listener's event loop: it appends to a buffer and
returns. A writer task puts buffered calls in the spool (one fsync per batch, in a worker
thread; at most one batch per ``linger_s``, so a busy PBX's calls share fsyncs, spool reads
and Redis round trips while a lone call is written at once); a drainer task hands spooled
calls to Redis in order (worker/queue.py: one job per call, id ``call:{pbx}:{call_id}``,
with its ledger), then moves the spool's cursor. While Redis is down the drainer retries
with backoff and calls accumulate on disk; a restarted listener replays what its
predecessor had not handed over.

What is and isn't guaranteed:

- A call is durable once the writer has fsync'd it (normally within ``linger_s`` of
  ``submit``; ``await flush()`` waits for it). A crash of the listener before that loses
  the calls still in the buffer, as it loses the calls the tracker was still following.
- Once durable, a call reaches Redis at least once, in submission order; duplicates (after
  a crash between enqueue and cursor save) are absorbed by the job id and the ledger.
- Calls in Redis are as durable as Redis is: run it with appendonly (the compose file does).
  Behind Sentinel (``replicas`` 1, ``worker/redis_url.py``) a batch leaves the spool only
  once a replica has it too (``worker/replicas.py``), so a primary that dies right after
  taking it loses none: the batch is handed over again, to the new primary. With no replica
  answering within ``replica_timeout_s`` it goes on without (logged), and asks again a
  while later.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from crm_client.redact import redact_url
from telephony.backoff import Backoff
from telephony.records import CallRecord
from telephony.supervise import Supervisor

from . import stats
from .policy import DEFAULT_QUEUE
from .queue import dumps, enqueue_calls, job_id_of
from .redis_url import connect
from .replicas import ReplicaWait
from .spool import Spool

log = logging.getLogger("worker.handoff")

WRITER, DRAINER = "handoff-writer", "handoff-drainer"  # the background tasks, as /health names them


class Handoff:
    def __init__(
        self,
        redis_url: str,
        spool_dir: str | Path,
        *,
        queue_name: str = DEFAULT_QUEUE,
        job_expires_s: float = 2 * 86400.0,
        ledger_ttl_s: float = 30 * 86400.0,
        listener_id: str | None = None,
        retry_max_s: float = 2.0,
        publish_every_s: float = 2.0,
        batch: int = 100,
        linger_s: float = 0.025,
        replicas: int = 0,
        replica_timeout_s: float = 1.0,
        supervisor: Supervisor | None = None,
    ) -> None:
        self.redis_url = redis_url
        self.spool_dir = Path(spool_dir)
        self.queue_name = queue_name
        self.job_expires_s = job_expires_s
        self.ledger_ttl_s = ledger_ttl_s
        self.listener_id = listener_id or stats.worker_id()
        self.retry_max_s = retry_max_s
        self.publish_every_s = publish_every_s
        self.batch = batch
        self.linger_s = linger_s
        self.replicas = ReplicaWait(replicas, replica_timeout_s)
        self.supervisor = supervisor or Supervisor()  # the service's, so /health sees ours

        self.redis_ok = False  # the last attempt to reach Redis worked
        self.last_error = ""

        self._buffer: list[dict[str, Any]] = []
        self._submitted = 0
        self._written = 0
        self._closing = False
        self._spool: Spool | None = None
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="telefum-spool")
        self._wake_writer = asyncio.Event()
        self._wake_drainer = asyncio.Event()
        self._progress = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._redis: Redis | None = None

    # --- the listener's API ----------------------------------------------------------------

    async def start(self) -> None:
        """Open the spool (what a previous run left is handed over first) and start."""
        loop = asyncio.get_running_loop()
        self._spool = await loop.run_in_executor(self._io, Spool, self.spool_dir)
        if self._spool.pending:
            log.info("spool holds %d call(s) from before: handing them over", self._spool.pending)
        self._redis = connect(self.redis_url, socket_connect_timeout=1.0, socket_timeout=5.0)
        self._tasks = [
            self.supervisor.spawn(WRITER, self._writer),
            self.supervisor.spawn(DRAINER, self._drainer),
        ]

    def submit(self, record: CallRecord | dict[str, Any]) -> None:
        """Queue a finished call for the CRM. Never blocks; safe to call before ``start``."""
        if self._closing:
            raise RuntimeError("handoff is closed")
        data = record.to_json() if isinstance(record, CallRecord) else dict(record)
        self._buffer.append({"record": data, "spooled_at": time.time()})
        self._submitted += 1
        self._wake_writer.set()

    @property
    def spool_size(self) -> int:
        """Calls not yet in Redis (on disk or about to be)."""
        return (self._spool.pending if self._spool else 0) + len(self._buffer)

    async def flush(self, timeout_s: float = 10.0) -> None:
        """Wait until every call submitted so far is fsync'd in the spool."""
        target = self._submitted
        async with asyncio.timeout(timeout_s):
            while self._written < target:
                self._progress.clear()
                await self._progress.wait()

    async def wait_drained(self, timeout_s: float = 10.0) -> bool:
        """Wait until every call submitted so far is in Redis; False on timeout."""
        try:
            async with asyncio.timeout(timeout_s):
                while self._buffer or self._written < self._submitted or self.spool_size:
                    self._progress.clear()
                    await self._progress.wait()
        except TimeoutError:
            return False
        return True

    async def close(self, drain_timeout_s: float = 2.0) -> None:
        """Stop: write everything to disk, hand over what Redis takes within the timeout."""
        if self._closing:
            return
        self._closing = True
        if self._tasks:
            with contextlib.suppress(TimeoutError):
                await self.flush(timeout_s=max(drain_timeout_s, 5.0))
            await self.wait_drained(drain_timeout_s)
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        if self._spool is not None:
            await asyncio.get_running_loop().run_in_executor(self._io, self._spool.close)
        if self._redis is not None:
            with contextlib.suppress(Exception):
                await self._redis.aclose()
        self._io.shutdown(wait=True)
        left = self.spool_size
        if left:
            log.info("handoff stopped with %d call(s) in the spool %s", left, self.spool_dir)

    # --- tasks -----------------------------------------------------------------------------

    async def _writer(self) -> None:
        """Buffered calls -> the spool. An OSError (disk full, no file descriptor left)
        leaves them in the buffer and ends this run: the supervisor logs it, names it in
        /health and starts it again, which writes them then."""
        loop = asyncio.get_running_loop()
        assert self._spool is not None
        last_write = float("-inf")
        while True:
            if not self._buffer:
                await self._wake_writer.wait()
            since = loop.time() - last_write
            if since < self.linger_s and len(self._buffer) < self.batch and not self._closing:
                await asyncio.sleep(self.linger_s - since)  # let a busy moment's calls gather
            self._wake_writer.clear()
            last_write = loop.time()
            while self._buffer:
                items = self._buffer[:]
                await loop.run_in_executor(self._io, self._spool.append, items)
                del self._buffer[: len(items)]
                self._written += len(items)
                self._progress.set()
                self._wake_drainer.set()
            self.supervisor.ok(WRITER)

    async def _drainer(self) -> None:
        """Spooled calls -> Redis, in order. Redis away: kept in the spool, tried again with
        backoff. The spool failing (an OSError reading it or moving its cursor) ends this
        run: the supervisor logs it, names it in /health and starts it again."""
        loop = asyncio.get_running_loop()
        spool, redis = self._spool, self._redis
        assert spool is not None and redis is not None
        backoff = Backoff(min(0.05, self.retry_max_s), self.retry_max_s)
        outage_since: float | None = None
        last_publish = 0.0
        while True:
            items, pos = await loop.run_in_executor(self._io, spool.read, self.batch)
            try:
                if items:
                    await self._hand_over(redis, items)
                    self.redis_ok = True
            except (RedisError, OSError) as err:
                outage_since = self._redis_away(err, outage_since)
                await asyncio.sleep(backoff.next(time.monotonic()))
                continue
            if items or pos != spool.cursor:  # (only unreadable lines: skip past them)
                await loop.run_in_executor(self._io, spool.commit, pos, len(items))
                self._progress.set()
            try:
                now = time.monotonic()
                if now - last_publish >= self.publish_every_s or (items and not spool.pending):
                    await stats.publish_spool(
                        redis, self.listener_id, self.spool_size, 3 * self.publish_every_s
                    )
                    last_publish = now
            except (RedisError, OSError) as err:
                outage_since = self._redis_away(err, outage_since)
                await asyncio.sleep(backoff.next(time.monotonic()))
                continue
            self.supervisor.ok(DRAINER)
            self.redis_ok = True
            if outage_since is not None:
                log.info(
                    "Redis is back after %.1fs; spooled calls are being handed over",
                    time.monotonic() - outage_since,
                )
                outage_since = None
            backoff.reset()
            if not items:
                self._wake_drainer.clear()
                if not spool.pending:
                    self._progress.set()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.publish_every_s):
                        await self._wake_drainer.wait()

    def _redis_away(self, err: Exception, since: float | None) -> float:
        """Note a failed attempt; log the outage at its start. When it started (monotonic)."""
        self.redis_ok = False
        self.last_error = str(err)
        self._progress.set()
        if since is not None:
            return since
        log.warning(
            "Redis at %s unreachable (%s): keeping calls in the spool %s",
            redact_url(self.redis_url),
            err,
            self.spool_dir,
        )
        return time.monotonic()

    async def _hand_over(self, redis: Redis, items: list[dict[str, Any]]) -> None:
        """A batch of spooled calls to Redis in one round trip (worker/queue.py)."""
        good: list[dict[str, Any]] = []
        for item in items:
            record = item.get("record")
            try:
                job_id_of(record)  # type: ignore[arg-type]
                dumps(record)  # type: ignore[arg-type]
            except (ValueError, TypeError, AttributeError) as err:
                # a record no job could use: set it aside for a human, never drop it silently
                assert self._spool is not None
                spool = self._spool
                line = repr(item).encode()
                await asyncio.get_running_loop().run_in_executor(
                    self._io, spool.reject_line, line, f"not a call record: {err}"
                )
                continue
            good.append(record)  # type: ignore[arg-type]
        await enqueue_calls(
            redis,
            good,
            queue_name=self.queue_name,
            expires_s=self.job_expires_s,
            ledger_ttl_s=self.ledger_ttl_s,
        )
        # a connection error here: the batch stays in the spool and is handed over again
        await self.replicas(
            redis,
            f"{len(good)} call(s)",
            "handed over without; a failover before it catches up could lose them",
        )
