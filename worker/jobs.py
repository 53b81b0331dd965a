"""The arq job: one finished call -> the CRM, resumable, with the retry decision applied.

A run reads the ledger first: a call already done (or dead, or dropped) is left alone, so
arq re-running a job (after a crash, or a duplicate enqueue that slipped through) is harmless.
Every failure ends in exactly one of: ``arq.Retry`` (transient, within the budget), the
dead-letter store (permanent or out of time), or, when even that bookkeeping fails because
Redis is away, ``arq.Retry`` again. No other exception leaves this function, because arq
would fail the job for good on one. A run whose addevent the CRM accepted is delivered,
whatever Redis does next: the answer waits in the outbox (worker/outbox.py) until Redis
takes it, and the delivery hook is told then.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from arq import Retry
from redis.asyncio import Redis
from redis.exceptions import RedisError

from telephony.records import CallRecord

from . import keys, stats
from . import ledger as ledger_mod
from .crm_health import CrmTally
from .dlq import dead_letter
from .first_call import FirstCalls
from .ledger import FINAL, CallLedger, LedgerWrite, PhoneLock
from .outbox import Outbox
from .plan import CallPlan, Skip, plan_call
from .policy import JOB_MARGIN_S, CrmTarget, WorkerConfig
from .replicas import ReplicaWait
from .retry import decide, describe, is_transient, may_have_acted
from .steps import CrmApi, Deadline, Steps

log = logging.getLogger("worker.jobs")


class BadRecord(ValueError):
    """The job's call record cannot be read: permanent (retrying reads the same bytes)."""


def parse_record(data: Any) -> CallRecord:
    try:
        return CallRecord.from_json(data)
    except Exception as err:
        raise BadRecord(f"call record cannot be read: {describe(err)}") from err


Planned = tuple[CallRecord, CrmTarget, CallPlan | Skip]
"""A job's call, its CRM and what to do, worked out before the run's first Redis round trip."""

OnDelivered = Callable[[CallRecord, ledger_mod.LedgerEntry], Awaitable[object]]
"""Told of each call the CRM holds (the service shell counts it for attribution). It may be
told twice of one call (a run killed right after delivery is redone), so it must be
idempotent; its failures are logged, never a reason to redo the call."""


class Runtime:
    """What the jobs of one worker process share: Redis, the CRM clients, the config."""

    def __init__(
        self,
        config: WorkerConfig,
        redis: Redis,
        clients: Mapping[str, CrmApi],  # CRM url -> client
        *,
        rng: random.Random | None = None,
        outbox: Outbox | None = None,
        on_delivered: OnDelivered | None = None,
        latencies: stats.LatencyTally | None = None,
        answers: CrmTally | None = None,
        replicas: ReplicaWait | None = None,
    ) -> None:
        self.config = config
        self.replicas = replicas  # behind Sentinel: ledger writes wait for a replica
        self.on_delivered = on_delivered
        self.redis = redis
        self.clients = clients
        self.outbox = outbox or Outbox(redis)
        if self.outbox.on_landed is None:
            self.outbox.on_landed = self.landed
        # Wall clock when this process last found Redis back (started, reconnected, or
        # answering again after hanging): a run that finds another run's addevent
        # unrecorded waits ``settle_s`` from here too, so that an outbox that waited out
        # the outage (here or in another worker) writes the answer first.
        self.redis_back_at = 0.0
        self.rng = rng or random.Random()
        self.backoff = config.retry.backoff(self.rng)  # when Redis fails the bookkeeping
        self.running = 0
        self.done = 0
        # CRM latencies, sent to Redis by the worker process (app.py) every second
        self.latencies = latencies if latencies is not None else stats.LatencyTally()
        # whether each CRM answers: sent with the latencies (worker/crm_health.py)
        self.answers = answers if answers is not None else CrmTally()

    def steps_for(self, target: CrmTarget) -> Steps:
        return Steps(
            self.redis,
            self.clients[target.url],
            lock_scope=target.lock_scope,
            crm_timeout_s=target.timeout_s,
            lock_ttl_s=self.config.job_timeout_s,
            settle_s=self.config.job_timeout_s + self.config.in_progress_grace_s,
            latencies=self.latencies,
            first_calls=FirstCalls(self.redis, self.config),
            not_before=self.redis_back_at,
            answer_waiting=self.outbox.holds,
            crm_url=target.url,
            answers=self.answers,
        )

    async def deliver(self, record_data: Any, job_id: str) -> str:
        self.running += 1
        try:
            return await self._deliver(record_data, job_id)
        finally:
            self.running -= 1
            self.done += 1

    async def _deliver(self, record_data: Any, job_id: str) -> str:
        tags = keys.log_tags(job_id)
        now = time.time()
        try:
            planned: Planned | Exception = self._plan(record_data)
        except Exception as err:  # the run reports it, once it has a ledger to record it in
            planned = err
        lock = self._phone_lock(planned)
        try:
            entry, locked = await ledger_mod.load_and_begin(
                self.redis, job_id, now, self.config.ledger_ttl_s, lock
            )
        except RedisError as err:  # nothing begun: arq would fail the job for good on this
            delay = self.backoff.delay(1)
            log.warning(
                "ledger unreachable (%s): retrying in %.1fs", describe(err), delay, extra=tags
            )
            raise Retry(defer=delay) from err
        record = record_data if isinstance(planned, Exception) else planned[0]
        if entry.state in FINAL:
            if entry.get("outcome") == "delivered":
                await self._tell_delivered(record, entry)  # the last run may have died first
            return f"nothing to do: already {entry.state}"
        led = CallLedger(self.redis, entry, self.config.ledger_ttl_s, self.outbox, self.replicas)
        led.begun(now)
        led.phone_lock = lock if locked else None
        deadline = Deadline(self.config.job_timeout_s - JOB_MARGIN_S)
        steps: Steps | None = None
        try:
            try:
                async with asyncio.timeout(deadline.remaining()):
                    if not isinstance(planned, Exception):
                        steps = self.steps_for(planned[1])
                    outcome = await self._run(planned, led, deadline, steps)
            except Exception as err:
                if led.answer_kept and led.entry.event_id:  # in the CRM; its answer is safe
                    log.info(
                        "call delivered: event %s; its ledger write waits for Redis in "
                        "the outbox (%s)",
                        led.entry.event_id,
                        describe(err),
                        extra=tags,
                    )
                    return f"delivered: event {led.entry.event_id} (ledger write pending)"
                # a CRM request failed: whose login it used (the dead letter names it)
                login = steps.in_flight if steps is not None else None
                return await self._failed(err, led, tags, login)
        finally:
            if led.phone_lock is not None:  # taken, and the steps never came to use it
                with contextlib.suppress(RedisError, OSError, TimeoutError):
                    async with asyncio.timeout(ledger_mod.LEDGER_WRITE_S):
                        await ledger_mod.release_phone_lock(self.redis, led.phone_lock)
        if led.answer_kept:  # the outbox tells the hook once Redis has the answer
            return outcome
        if led.entry.get("outcome") == "delivered":  # in the CRM and on record: now tell
            await self._tell_delivered(record, led.entry)
        return outcome

    async def landed(self, redis: Redis, w: LedgerWrite) -> None:
        """The outbox wrote a delivered call's answer: tell the delivery hook now."""
        if self.on_delivered is None:
            return
        entry = await ledger_mod.load(redis, w.job_id)
        if entry.record is not None:
            await self.on_delivered(parse_record(entry.record), entry)

    def _plan(self, record_data: Any) -> Planned:
        record = parse_record(record_data)
        target = self.config.crm_for(record.pbx)
        plan = plan_call(record, self.config.calls, target, self.config.sources)
        return record, target, plan

    def _phone_lock(self, planned: Planned | Exception) -> PhoneLock | None:
        """The per-phone lock this run takes with its ledger read, if it may create a
        contact (a round trip saved per call: see ``ledger.load_and_begin``)."""
        if isinstance(planned, Exception):
            return None
        _, target, plan = planned
        if isinstance(plan, Skip) or plan.create is None:
            return None
        return PhoneLock(
            keys.phone_lock(target.lock_scope, plan.phone),
            uuid.uuid4().hex.encode(),
            self.config.job_timeout_s,
        )

    async def _run(
        self,
        planned: Planned | Exception,
        led: CallLedger,
        deadline: Deadline,
        steps: Steps | None,
    ) -> str:
        if isinstance(planned, Exception):
            raise planned
        assert steps is not None  # made with every plan
        record, _, plan = planned
        tags = record.log_tags
        if isinstance(plan, Skip):
            await led.skipped(plan.reason, time.time())
            log.info("call not logged: %s", plan.reason, extra=tags)
            return f"skipped: {plan.reason}"
        event_id = await steps.deliver(plan, led, deadline)
        if event_id is None:
            reason = (
                f"no CRM contact has {plan.phone}, and contacts are not created "
                f"for {record.direction} calls"
            )
            await led.skipped(reason, time.time())
            log.info("call not logged: %s", reason, extra=tags)
            return f"skipped: {reason}"
        created = led.entry.get("contact_created") == "1"
        log.info(
            "call delivered: event %s on contact %s%s (attempt %d)%s",
            event_id,
            led.entry.contact_id,
            " (created)" if created else "",
            led.entry.attempts,
            "; its ledger write waits for Redis in the outbox" if led.answer_kept else "",
            extra=tags,
        )
        return f"delivered: event {event_id}"

    async def _tell_delivered(self, record: Any, entry: ledger_mod.LedgerEntry) -> None:
        """Run the delivery hook. Redis away: ``Retry``, and the re-run (which finds the
        call done) tells it again; any other failure is logged, never a reason to redo."""
        if self.on_delivered is None:
            return
        try:
            call = record if isinstance(record, CallRecord) else parse_record(record)
            await self.on_delivered(call, entry)
        except RedisError as err:
            delay = self.backoff.delay(entry.attempts)
            log.warning(
                "delivery hook: Redis unreachable (%s); again in %.1fs",
                describe(err),
                delay,
                extra=keys.log_tags(entry.job_id),
            )
            raise Retry(defer=delay) from err
        except Exception as err:
            log.warning(
                "delivery hook failed: %s", describe(err), extra=keys.log_tags(entry.job_id)
            )

    async def _failed(
        self, err: Exception, led: CallLedger, tags: dict[str, str], login: str | None = None
    ) -> str:
        """``login``: whose login the failed CRM request used (``Steps.in_flight``), named
        in a dead letter's reason."""
        now = time.time()
        attempt = led.entry.attempts
        if isinstance(err, TimeoutError) and not str(err):
            err = TimeoutError(
                f"the run took longer than {self.config.job_timeout_s - JOB_MARGIN_S:g}s"
            )
        decision = decide(
            err,
            attempt=attempt,
            first_attempt_at=led.entry.first_attempt or now,
            now=now,
            policy=self.config.retry,
            rng=self.rng,
        )
        reason = f"{decision.reason}; {login}" if login and not decision.retry else decision.reason
        history = {
            "at": now,
            "attempt": attempt,
            "error": type(err).__name__,
            "message": describe(err),
            "transient": is_transient(err),
            "action": f"retry in {decision.delay_s:.1f}s" if decision.retry else "dead letter",
        }
        try:
            await led.add_error(
                history, retrying=decision.retry, event_uncertain=may_have_acted(err)
            )
            if not decision.retry:
                await dead_letter(self.redis, led.job_id, reason, now, login=login)
        except Exception as bookkeeping:
            # Redis went away while we wrote down the failure: arq retries the job later,
            # and the ledger (whatever reached it) tells that run where to resume.
            delay = self.backoff.delay(attempt)
            log.warning(
                "could not record a failure (%s): retrying in %.1fs",
                describe(bookkeeping),
                delay,
                extra=tags,
            )
            raise Retry(defer=delay) from err
        if decision.retry:
            log.info(
                "call not delivered yet, retry %d in %.1fs: %s",
                attempt,
                decision.delay_s,
                decision.reason,
                extra=tags,
            )
            raise Retry(defer=decision.delay_s) from err
        log.error("call dead-lettered: %s", reason, extra=tags)
        return f"dead-lettered: {reason}"


RUNTIME_KEY = "telefum"


async def deliver_call(ctx: dict[str, Any], record: dict[str, Any]) -> str:
    """The arq job function (registered as ``deliver_call``)."""
    runtime: Runtime = ctx[RUNTIME_KEY]
    return await runtime.deliver(record, ctx["job_id"])
