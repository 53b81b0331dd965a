"""A worker process: arq's Worker, configured for this pipeline, plus heartbeat and reconciler.

The arq settings that matter, and why:

- ``max_jobs`` (50): jobs in flight at once; each spends its time waiting on the CRM.
- ``job_timeout`` short (30 s) and arq's in-progress lock ``job_timeout + in_progress_grace_s``:
  a job on a SIGKILLed worker is re-run only when that lock expires, so this bounds how
  late a killed worker's calls are (under a minute by default).
- ``max_tries`` effectively unlimited: the retry budget is ours (time since the first
  attempt, worker/retry.py), arq's count of tries must never end a call early.
- ``keep_result=0``: arq keeps no results; the ledger is the record. (Kept results make
  arq refuse to enqueue the same id again, and ``keep_result_forever`` crashes the worker
  when retries run out, arq issue 531.)
- ``expires_extra_ms`` = retry budget + a day: a retrying job must outlive its budget.
- JSON job serialisation (worker/queue.py), shared with the handoff.
- Jobs are claimed in one Lua script per poll (:class:`ClaimingWorker`), not with arq's
  WATCH/MULTI per job id: several workers read the same head of the queue, and arq's way
  costs each of them four round trips per id, taken or not.
- SIGTERM or SIGINT: no new jobs, running ones get ``job_timeout`` to finish (so a deploy
  does not cut a CRM write in half), then the rest are cancelled and re-run elsewhere; a
  second signal cancels them at once. The signals are ours, not arq's: arq's handlers only
  reach a worker that is running, and while Redis is unreachable or refuses the password
  there is none (we are between attempts), so a stop request went unheard. Exit status 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import random
import signal
import socket
import time
from collections.abc import Callable
from typing import Any

from arq.constants import in_progress_key_prefix
from arq.utils import timestamp_ms
from arq.worker import Worker, func
from redis.exceptions import RedisError

from crm_client.redact import redact_url
from telephony.backoff import Backoff
from telephony.supervise import Supervisor

from . import keys, stats
from .crm_health import CrmTally, Recovered
from .jobs import RUNTIME_KEY, OnDelivered, Runtime, deliver_call
from .ledger import LedgerWrite
from .outbox import Outbox
from .policy import CrmTarget, WorkerConfig
from .queue import JOB_FUNCTION, dumps, loads, retry_now
from .reconcile import try_reconcile
from .redis_url import RedisAddress
from .replicas import ReplicaWait
from .steps import CrmApi

log = logging.getLogger("worker.app")

LATENCY_FLUSH_S = 1.0  # how often the CRM latencies counted in memory go to Redis
MAX_TRIES = 1_000_000_000  # arq's limit, out of the way: the budget is worker/retry.py's

ClientFactory = Callable[[CrmTarget], CrmApi]

# KEYS: the queue. ARGV: now (ms), in-progress lock TTL (ms), its key prefix, how many to
# claim at most, then job ids. A job is claimed when it is due and no worker holds it (the
# checks arq's start_jobs makes under WATCH); returns id, score, id, score...
_CLAIM_LUA = """
local now, ttl, prefix, limit = tonumber(ARGV[1]), ARGV[2], ARGV[3], tonumber(ARGV[4])
local out = {}
for i = 5, #ARGV do
  if #out >= 2 * limit then break end
  local id = ARGV[i]
  local score = redis.call('ZSCORE', KEYS[1], id)
  if score and tonumber(score) <= now and redis.call('EXISTS', prefix .. id) == 0 then
    redis.call('PSETEX', prefix .. id, ttl, '1')
    out[#out + 1] = id
    out[#out + 1] = score
  end
end
return out
"""


class ClaimingWorker(Worker):
    """arq's Worker, claiming the due jobs of one poll in a single atomic script.

    arq 0.28 has no public way to change how jobs are claimed, so ``start_jobs`` is
    replaced; polling, running, retrying and shutting down stay arq's. What it relies on
    (arq calls it only with a free slot; the semaphore, job count and task table that arq's
    completion callback and shutdown read; ``run_job``; the in-progress key) and that it
    claims exactly the jobs arq's own ``start_jobs`` would are pinned by
    tests/test_library_contracts.py, which fails on any other arq version.
    """

    _claim_script: Any = None

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        free = self.max_jobs - self.job_counter  # arq polls only when this is above 0
        if not job_ids or free <= 0:
            return
        if self._claim_script is None:
            self._claim_script = self.pool.register_script(_CLAIM_LUA)
        ttl_ms = int(self.in_progress_timeout_s * 1000)
        claimed = await self._claim_script(
            keys=[self.queue_name],
            args=[timestamp_ms(), ttl_ms, in_progress_key_prefix, free, *job_ids],
        )
        for i in range(0, len(claimed), 2):
            job_id, score = keys.text(claimed[i]), int(float(claimed[i + 1]))
            # arq's bookkeeping of a job it has claimed, as in its start_jobs: a slot of the
            # semaphore (free slots were counted: this does not wait) and of the count, both
            # given back by arq's callback when the job's task ends
            await self.sem.acquire()
            self.job_counter += 1
            t = self.loop.create_task(self.run_job(job_id, score))
            t.add_done_callback(lambda _: self._release_sem_dec_counter_on_complete())
            self.tasks[job_id] = t


def default_client_factory(target: CrmTarget) -> CrmApi:
    from crm_client.client import TelefumClient

    client: CrmApi = TelefumClient(target.url, timeout_s=target.timeout_s)
    return client


class WorkerService:
    """One worker: build it inside the running event loop, then ``await run()``."""

    def __init__(
        self,
        config: WorkerConfig,
        redis_url: str,
        *,
        worker_id: str | None = None,
        client_factory: ClientFactory | None = None,
        handle_signals: bool = True,
        burst: bool = False,
        on_delivered: OnDelivered | None = None,
        supervisor: Supervisor | None = None,
    ) -> None:
        self.config = config
        self.supervisor = supervisor or Supervisor()  # the service's, so /health sees ours
        self.on_delivered = on_delivered
        self.redis_url = redis_url
        self.worker_id = worker_id or stats.worker_id()
        self.client_factory = client_factory or default_client_factory
        self.handle_signals = handle_signals
        self.burst = burst
        self.runtime: Runtime | None = None
        self.worker: Worker | None = None
        self._stop = asyncio.Event()  # a signal asked us to stop
        self._tasks: list[asyncio.Task[None]] = []
        self._clients: dict[str, CrmApi] = {}
        # behind Sentinel, ledger and outbox writes wait for a replica (one for both, so a
        # replica that does not answer is waited for once, not by every write)
        self.replicas = ReplicaWait(RedisAddress.parse(redis_url).replicas_to_wait_for)
        # CRM answers still to be written to the ledger (memory and disk); outlives
        # worker rebuilds, and takes over what workers that died on this host left
        self.outbox = Outbox(
            redis_url,
            config.outbox_dir or None,
            supervisor=self.supervisor,
            on_landed=self._landed,
            replicas=self.replicas,
        )
        self.latencies = stats.LatencyTally()  # outlives a Runtime rebuilt after an outage
        self.answers = CrmTally()  # the same, for whether each CRM answers
        self._started = False  # the current arq worker got as far as on_startup

    def build(self) -> Worker:
        c = self.config
        # we retry the connection ourselves, with a clear log line (see run())
        settings = RedisAddress.parse(self.redis_url).arq_settings()
        worker = ClaimingWorker(
            functions=[
                func(
                    deliver_call,
                    name=JOB_FUNCTION,
                    timeout=c.job_timeout_s,
                    max_tries=MAX_TRIES,
                    keep_result=0,
                ),
            ],
            queue_name=c.queue_name,
            redis_settings=settings,
            on_startup=self._startup,
            on_shutdown=self._shutdown,
            handle_signals=False,  # ours: see _on_signal
            job_completion_wait=int(c.job_timeout_s),
            max_jobs=c.max_jobs,
            job_timeout=c.job_timeout_s,
            keep_result=0,
            poll_delay=c.poll_delay_s,
            max_tries=MAX_TRIES,
            health_check_interval=c.heartbeat_s,
            job_serializer=dumps,
            job_deserializer=loads,
            expires_extra_ms=int(c.job_expires_s * 1000),
            burst=self.burst,
        )
        # arq derives its in-progress lock from the job timeout plus a fixed 10 s.
        worker.in_progress_timeout_s = c.job_timeout_s + c.in_progress_grace_s
        self.worker = worker
        return worker

    async def _startup(self, ctx: dict[str, Any]) -> None:
        redis = ctx["redis"]
        targets = [self.config.crm, *self.config.crm_by_pbx.values()]
        for t in targets:
            if t.url not in self._clients:
                self._clients[t.url] = self.client_factory(t)
        self.runtime = Runtime(
            self.config,
            redis,
            self._clients,
            outbox=self.outbox,
            on_delivered=self.on_delivered,
            latencies=self.latencies,
            answers=self.answers,
            replicas=self.replicas,
        )
        self.runtime.redis_back_at = time.time()  # (re)connected: see Runtime.redis_back_at
        self._started = True
        ctx[RUNTIME_KEY] = self.runtime
        await self._stop_loops()  # a previous arq worker's, if its shutdown never ran
        self._tasks = [
            self.supervisor.spawn(name, functools.partial(loop, redis))
            for name, loop in (
                ("worker-heartbeat", self._heartbeat_loop),
                ("worker-reconciler", self._reconcile_loop),
                ("worker-latencies", self._latency_loop),
            )
        ]
        log.info(
            "worker %s started: queue %s, CRM %s, %d jobs at once",
            self.worker_id,
            self.config.queue_name,
            redact_url(self.config.crm.url),
            self.config.max_jobs,
        )

    async def _stop_loops(self) -> None:
        tasks, self._tasks = self._tasks, []
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t

    async def _shutdown(self, ctx: dict[str, Any]) -> None:
        await self._stop_loops()
        with contextlib.suppress(Exception):
            await self.latencies.flush(ctx["redis"])
        with contextlib.suppress(Exception):
            for back in await self.answers.flush(ctx["redis"], self.config.crm_failing_s):
                await self._crm_back(ctx["redis"], back)
        with contextlib.suppress(Exception):
            await stats.heartbeat_gone(ctx["redis"], self.worker_id)
        for client in self._clients.values():
            close = getattr(client, "close", None)
            if close is not None:
                with contextlib.suppress(Exception):
                    await close()
        self._clients.clear()

    async def _landed(self, redis: Any, w: LedgerWrite) -> None:
        if self.runtime is not None:
            await self.runtime.landed(redis, w)

    async def _heartbeat_loop(self, redis: Any) -> None:
        """Every ``heartbeat_s``; also notices Redis coming back after it hung or failed
        (no heartbeat went through for a while): ``Runtime.redis_back_at``."""
        last_ok = time.monotonic()
        while True:
            rt = self.runtime
            try:
                await stats.heartbeat(
                    redis,
                    self.worker_id,
                    {
                        "pid": os.getpid(),
                        "host": socket.gethostname(),
                        "running": rt.running if rt else 0,
                        "done": rt.done if rt else 0,
                        "queue": self.config.queue_name,
                        # this process's background tasks that fail: /health names them
                        "failing": "; ".join(
                            f"{t.name}: {t.last_error}" for t in self.supervisor.failing()
                        ),
                    },
                    ttl_s=3 * self.config.heartbeat_s,
                )
            except RedisError as err:
                log.debug("heartbeat not sent: %s", err)
            else:
                now = time.monotonic()
                if now - last_ok > 2 * self.config.heartbeat_s + 1.0 and rt is not None:
                    rt.redis_back_at = time.time()
                last_ok = now
            await asyncio.sleep(self.config.heartbeat_s)

    async def _latency_loop(self, redis: Any) -> None:
        """CRM latencies and answers to Redis; a failing CRM that answers again gets its
        waiting calls run now."""
        while True:
            await asyncio.sleep(LATENCY_FLUSH_S)
            try:
                await self.latencies.flush(redis)
                for back in await self.answers.flush(redis, self.config.crm_failing_s):
                    await self._crm_back(redis, back)
            except RedisError as err:  # kept, and sent with the next flush
                log.debug("CRM latencies not sent: %s", err)

    async def _crm_back(self, redis: Any, back: Recovered) -> None:
        """A CRM's failing streak ended: make its calls waiting for a retry due now."""

        def goes_there(job: str) -> bool:
            pbx = keys.split_job_id(job)[0]
            return self.config.crm_for(pbx).lock_scope == back.scope

        moved = await retry_now(redis, self.config.queue_name, only=goes_there)
        log.warning(
            "CRM %s answers again, after %d failed requests over %.0f s: %d waiting call(s) "
            "run now",
            back.url,
            back.failures,
            back.last_failure - back.since,
            moved,
        )

    async def _reconcile_loop(self, redis: Any) -> None:
        c = self.config
        # staggered, so that workers started together do not all try at once
        await asyncio.sleep(random.uniform(0.2, 1.0) * min(c.reconcile_s, 5.0))
        while True:
            try:
                n = await try_reconcile(
                    redis,
                    self.worker_id,
                    c.reconcile_s,
                    queue_name=c.queue_name,
                    expires_s=c.job_expires_s,
                    ledger_ttl_s=c.ledger_ttl_s,
                    grace_s=c.job_timeout_s,
                )
                if n:
                    log.warning("reconciler re-enqueued %d call(s) arq had lost", n)
            except RedisError as err:
                log.debug("reconcile skipped: %s", err)
            await asyncio.sleep(c.reconcile_s)

    async def run(self, *, retry_max_s: float = 5.0) -> None:
        """Run until SIGTERM/SIGINT (with ``handle_signals``) or cancellation; ride out
        Redis being unreachable."""
        loop = asyncio.get_running_loop()
        signals = (signal.SIGINT, signal.SIGTERM) if self.handle_signals else ()
        for sig in signals:
            loop.add_signal_handler(sig, self._on_signal, sig)
        self.outbox.start()  # takes over what a worker that died here left on disk
        try:
            await self._run(retry_max_s)
        finally:
            for sig in signals:
                loop.remove_signal_handler(sig)
            # a last chance for Redis; what is left stays on disk for the next worker
            await self.outbox.drain(timeout_s=1.0)

    def _on_signal(self, sig: signal.Signals) -> None:
        """The first signal: stop taking jobs, let running ones finish (arq's graceful
        stop), or stop waiting for Redis; a second one: cancel running jobs now."""
        first = not self._stop.is_set()
        self._stop.set()
        log.info("%s: stopping%s", sig.name, "" if first else " now")
        worker = self.worker
        if worker is not None and worker.main_task is not None and not worker.main_task.done():
            if first:
                worker.handle_sig_wait_for_completion(sig)
            else:
                worker.handle_sig(sig)

    async def _stopped_within(self, seconds: float) -> bool:
        """Sleep ``seconds``, or less if a signal asks us to stop (then True)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)
        return self._stop.is_set()

    async def _run(self, retry_max_s: float) -> None:
        backoff = Backoff(min(0.5, retry_max_s), retry_max_s)
        while not self._stop.is_set():
            worker = self.build()
            self._started = False
            try:
                await worker.async_run()
                if self.burst:
                    return
            except asyncio.CancelledError:
                await self._close(worker)
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise  # our caller stops us (telefum run)
                return  # a signal stopped the worker (_on_signal)
            except (RedisError, OSError) as err:
                if self._started:
                    backoff.reset()  # it had been running: a fresh outage, start over
                delay = backoff.next(time.monotonic())
                log.warning(
                    "Redis at %s unreachable (%s); retrying in %.1fs",
                    redact_url(self.redis_url),
                    err,
                    delay,
                )
                # Jobs still running may be waiting for the CRM's answer: they get it (and
                # keep it in the outbox), for arq's close() would cancel them
                running = [t for t in worker.tasks.values() if not t.done()]
                if running:
                    await asyncio.wait(running, timeout=self.config.job_timeout_s + 1)
                await self._close(worker)
                if await self._stopped_within(delay):
                    return
                continue
            await self._close(worker)
            return

    async def _close(self, worker: Worker) -> None:
        try:
            await asyncio.wait_for(worker.close(), self.config.job_timeout_s + 5)
        except Exception as err:  # Redis may be the reason we are closing
            log.debug("worker close: %s", err)
            if worker.on_shutdown and self._tasks:
                with contextlib.suppress(Exception):
                    await self._shutdown({"redis": worker._pool})


def run_worker(config: WorkerConfig, redis_url: str, **kwargs: Any) -> int:
    """Blocking: run one worker process until SIGINT/SIGTERM. Returns an exit code."""

    async def main() -> None:
        await WorkerService(config, redis_url, **kwargs).run()

    asyncio.run(main())
    return 0
