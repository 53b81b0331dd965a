"""CRM answers Redis has not taken yet: held in memory and on the local disk until it does.

When the CRM has created a contact or an event and Redis then fails (down, refusing, hung),
forgetting the answer would make the next run of the call write again: the measured cause
of events written twice after a Redis outage. So the ledger write goes here instead
(``CallLedger._must_land``): :meth:`Outbox.record` appends it to a journal on disk
(``worker/spool.py``: fsync'd JSON lines) and keeps its job id in memory, and the run
carries on as a success. A supervised task writes the journal to Redis, in order, as soon
as Redis answers; a delivered call is then told to the delivery hook (``on_landed``).

The journal of one worker process is ``<directory>/<uuid>/``, locked (``flock``) while
the process lives. A worker that dies (SIGKILL, power loss) leaves its journal unlocked:
every worker on the same host with the same directory looks for such journals every
``adopt_every_s``, and one of them takes the answers over and writes them to Redis. A run
of the same call meanwhile waits (``steps.OutcomePending``) rather than write again.

Without a directory (tests, ``python -m worker`` without ``--outbox-dir``) the journal is
in a private temporary directory: it survives Redis, not the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import re
import shutil
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import IO

from redis.asyncio import Redis
from redis.exceptions import RedisError

from telephony.backoff import Backoff
from telephony.supervise import Supervisor

from . import keys
from .ledger import LedgerWrite, write
from .private_files import private_dir
from .redis_url import connect
from .replicas import ReplicaWait
from .spool import Spool

log = logging.getLogger("worker.outbox")

LOCK = "lock"
_JOURNAL = re.compile(r"[0-9a-f]{32}")  # a journal's folder (a uuid); anything else is left be
TASK = "outbox"  # the supervised task, as /health names it
WRITE_TIMEOUT_S = 5.0

OnLanded = Callable[[Redis, LedgerWrite], Awaitable[object]]


class Outbox:
    """One worker process's CRM answers on their way to Redis. ``redis``: a client to use,
    or a URL for a client of its own (it must outlive the worker's pool, rebuilt after an
    outage)."""

    def __init__(
        self,
        redis: Redis | str,
        directory: str | Path | None = None,
        *,
        supervisor: Supervisor | None = None,
        on_landed: OnLanded | None = None,
        adopt_every_s: float = 1.0,
        replicas: ReplicaWait | None = None,
    ) -> None:
        self.replicas = replicas  # behind Sentinel: an answer is forgotten once a replica has it
        self._redis = redis if isinstance(redis, Redis) else None
        self._url = redis if isinstance(redis, str) else None
        self._own_base = directory is None
        self.base = Path(directory) if directory is not None else None
        self.supervisor = supervisor or Supervisor()
        self.on_landed = on_landed
        self.adopt_every_s = adopt_every_s
        self._waiting: Counter[str] = Counter()  # job id -> answers not yet in Redis
        self._journal: Spool | None = None
        self._lock: IO[bytes] | None = None
        self.dir: Path | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()

    # --- what the runs use ------------------------------------------------------------------

    def record(self, w: LedgerWrite) -> None:
        """Keep ``w`` until Redis takes it: on disk (fsync'd) before this returns."""
        self._open()
        assert self._journal is not None
        self._journal.append([w.to_json()])
        self._waiting[w.job_id] += 1
        self._idle.clear()
        self._wake.set()

    def holds(self, job_id: str) -> bool:
        """Whether an answer for this call waits here for Redis."""
        return self._waiting[job_id] > 0

    @property
    def pending(self) -> int:
        """Answers not yet in Redis (this process's and those taken over)."""
        return self._journal.pending if self._journal is not None else 0

    # --- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Open this process's journal, take over what dead workers left, start writing
        (in a running event loop). ``record`` starts it too."""
        self._open()

    def _open(self) -> None:
        if self._journal is None:
            if self.base is None:
                self.base = Path(tempfile.mkdtemp(prefix="telefum-outbox-"))
            private_dir(self.base)
            # created under another name, then locked, then renamed: a journal another
            # worker can see is always locked by its owner while the owner lives
            tmp = self.base / f".new-{uuid.uuid4().hex}"
            tmp.mkdir(mode=0o700)
            lock = open(tmp / LOCK, "ab")  # noqa: SIM115 - held while we live
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self.dir = self.base / tmp.name.removeprefix(".new-")
            tmp.rename(self.dir)
            self._lock = lock
            self._journal = Spool(self.dir)
            self._adopt()
        if self._task is None or self._task.done():
            self._task = self.supervisor.spawn(TASK, self._run)

    async def drain(self, timeout_s: float) -> int:
        """On shutdown: give Redis ``timeout_s`` to take what waits, then stop. Returns how
        many answers are left: on disk, for the next worker on this host to take over."""
        if self._journal is None:
            return 0
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        left = self._journal.pending
        self._journal.close()
        self._journal = None
        if left:
            log.warning(
                "%d CRM answer(s) not yet in Redis are kept in %s for the next worker on this host",
                left,
                self.dir,
            )
        elif self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
        if self._lock is not None:
            self._lock.close()
            self._lock = None
        if self._own_base and not left and self.base is not None:
            shutil.rmtree(self.base, ignore_errors=True)
            self.base = None
        if self._url is not None and self._redis is not None:
            with contextlib.suppress(Exception):
                await self._redis.aclose()
            self._redis = None
        return left

    # --- the supervised task ----------------------------------------------------------------

    async def _run(self) -> None:
        """Journal -> Redis, in order; every ``adopt_every_s`` a look for dead workers'
        journals. A Redis failure waits and tries again; a disk failure ends this run (the
        supervisor logs it, names it in /health and starts it again)."""
        backoff = Backoff(0.05, 2.0)
        next_adopt = time.monotonic() + self.adopt_every_s
        outage_since: float | None = None
        while True:
            if time.monotonic() >= next_adopt:
                self._adopt()
                next_adopt = time.monotonic() + self.adopt_every_s
            journal = self._journal
            assert journal is not None
            items, pos = journal.read(100)
            if not items and pos == journal.cursor:
                self._idle.set()
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.adopt_every_s)
                continue
            writes = [LedgerWrite.from_json(item) for item in items]
            try:
                redis = self._client()
                for w in writes:
                    async with asyncio.timeout(WRITE_TIMEOUT_S):
                        await write(redis, w)
                if self.replicas is not None:
                    await self.replicas(
                        redis,
                        f"{len(writes)} CRM answer(s)",
                        "forgotten from the outbox without; a failover before it catches up "
                        "could let those calls' CRM writes be sent again",
                    )
            except (RedisError, OSError, TimeoutError) as err:
                if outage_since is None:
                    outage_since = time.monotonic()
                    log.warning("%d CRM answer(s) wait for Redis (%s)", journal.pending, err)
                await asyncio.sleep(backoff.next(time.monotonic()))
                continue
            journal.commit(pos, len(items))
            backoff.reset()
            self.supervisor.ok(TASK)
            if outage_since is not None:
                log.info(
                    "Redis took the CRM answers that waited for it (%.1f s)",
                    time.monotonic() - outage_since,
                )
                outage_since = None
            for w in writes:
                self._waiting[w.job_id] -= 1
                if self._waiting[w.job_id] <= 0:
                    del self._waiting[w.job_id]
                log.info(
                    "recorded a CRM answer after Redis came back", extra=keys.log_tags(w.job_id)
                )
                if w.done and self.on_landed is not None:
                    try:
                        await self.on_landed(redis, w)
                    except Exception as err:  # the call is in the CRM and on record
                        log.warning("delivery hook failed: %s", err, extra=keys.log_tags(w.job_id))

    def _client(self) -> Redis:
        if self._redis is None:
            assert self._url is not None
            self._redis = connect(self._url, socket_connect_timeout=1, socket_timeout=5)
        return self._redis

    def _adopt(self) -> None:
        """Take over the journals of workers that died here: what they held goes into ours
        (fsync'd), then their folder is removed."""
        assert self._journal is not None and self.base is not None
        for other in sorted(self.base.iterdir()):
            if other == self.dir or not _JOURNAL.fullmatch(other.name) or not other.is_dir():
                continue
            try:
                lock = open(other / LOCK, "rb")  # noqa: SIM115 - only a journal has one
            except OSError:
                continue
            with lock:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    continue  # its worker lives
                orphan = Spool(other)
                taken = 0
                while True:
                    items, pos = orphan.read(1000)
                    if not items and pos == orphan.cursor:
                        break
                    self._journal.append(items)
                    for item in items:
                        self._waiting[str(item.get("job_id"))] += 1
                    orphan.commit(pos, len(items))
                    taken += len(items)
                orphan.close()
                shutil.rmtree(other, ignore_errors=True)
            if taken:
                log.warning("took over %d CRM answer(s) a stopped worker left in %s", taken, other)
                self._idle.clear()
                self._wake.set()


def outbox_dir(spool_dir: str | Path) -> Path:
    """Where the workers of a host keep their outboxes: ``outbox/`` beside ``spool_dir``."""
    return Path(spool_dir).parent / "outbox"
