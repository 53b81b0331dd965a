"""The CRM steps of one call (find -> addcont -> addevent), each resumable from the ledger.

Order of writes, and why:

1. No contact in the ledger: take the per-phone lock (only when this call may create a
   contact; normally taken with the run's first ledger read, ``ledger.load_and_begin``),
   ``find``; found -> ledger; else look up the caller's first call (``first_call.py``: the
   contact gets its tracking number), mark ``contact_sent_at``, ``addcont``, ledger; release
   the lock. A retried run that lacks a contact id runs ``find`` again first, so a
   contact the CRM created while we never got its answer is found, not created twice; and
   two calls from the same new number, run at once, wait for each other on the lock: one
   contact, two events. The lock expires (a killed worker does not hold it for ever) after
   longer than find + addcont can take.
2. No event in the ledger: mark ``event_sent_at``, ``addevent``, ledger (state done).

Logins: ``find`` goes as the service account (a lookup has no author); ``addcont`` and
``addevent`` as the call's author, the agent's own login when one is configured, and as the
service account when the CRM refuses that login (``_as_author``: logged and counted).

When step 1 learns the contact, its ledger write also releases the lock and, if there is
time left to start addevent, carries step 2's mark: one Redis round trip instead of three
(the worker's CPU goes mostly to round trips).

What is guaranteed and what is not:

- A contact is created at most once per phone number and CRM, as long as the CRM's ``find``
  sees a contact once ``addcont`` has answered (true of the reference CRM and any CRM with
  a normal database).
- An event is sent twice only if the CRM accepted ``addevent`` and its answer never
  reached the worker's ledger or outbox: the worker was killed (SIGKILL, power loss) while
  the CRM processed the request (or in the milliseconds between its answer and the outbox's
  fsync), or the request timed out / lost its connection after the CRM had acted. TelefUM
  has no idempotency key and no way to list events, so that window cannot be closed: we
  choose a possible duplicate over a lost call, log it when the re-send happens, and count
  it (``possible_duplicates``) with the call's delivery: every send of a delivered call
  that may have been carried out unanswered is counted once, and nothing else is. A Redis
  outage right after the CRM's answer does not cause one: the answer waits in the outbox
  (memory and disk, ``worker/outbox.py``), and a run that finds the mark of another run's
  addevent waits for it: at once when the answer waits in its own process, else
  ``settle_s`` from the mark and from Redis coming back (``not_before``). A mark whose
  run is known to have sent nothing (its write failed, and a hung Redis may carry it out
  later) is void (``event_unsent_by``): no count.
- A write is never started with less time left than the CRM timeout, so our own deadline
  does not cut a request the CRM may be processing (see ``Deadline``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

from redis.asyncio import Redis
from redis.exceptions import LockError

from crm_client.errors import PermanentCrmError, Transient
from crm_client.types import Credentials, FindResult

from . import keys, stats
from .crm_health import CrmTally
from .first_call import FirstCalls
from .ledger import CallLedger
from .plan import CallPlan
from .retry import describe, is_transient

log = logging.getLogger("worker.steps")

T = TypeVar("T")


class CrmApi(Protocol):
    """What the steps need from ``crm_client.TelefumClient`` (a fake in unit tests)."""

    async def find(self, phone: str, creds: Credentials) -> FindResult: ...

    async def add_contact(
        self, phone: str, name: str, typecont: str, x_pstn: str, creds: Credentials
    ) -> str: ...

    async def add_event(
        self, contact_id: str, typecont: str, subj: str, desc: str, creds: Credentials
    ) -> str: ...


class DeadlineNear(Transient, TimeoutError):
    """Too little time left in this run to start a CRM write: retry at once, in a new run.
    Nothing was sent."""

    may_have_acted = False


class OutcomePending(Transient):
    """Another run's addevent answer may still be on its way to the ledger: look later.
    Nothing was sent by this run."""

    may_have_acted = False

    def __init__(self, wait_s: float) -> None:
        super().__init__(
            f"a run that sent addevent may still record the CRM's answer; looking again in "
            f"{wait_s:.1f}s"
        )
        self.retry_after = wait_s


class Deadline:
    def __init__(self, seconds: float) -> None:
        self.at = time.monotonic() + seconds

    def remaining(self) -> float:
        return self.at - time.monotonic()

    def require(self, seconds: float, what: str) -> None:
        if self.remaining() < seconds:
            raise DeadlineNear(f"not starting {what}: {self.remaining():.1f}s left in this run")


class Steps:
    def __init__(
        self,
        redis: Redis,
        crm: CrmApi,
        *,
        lock_scope: str,
        crm_timeout_s: float,
        lock_ttl_s: float,
        settle_s: float = 0.0,
        latencies: stats.LatencyTally | None = None,
        first_calls: FirstCalls | None = None,
        not_before: float = 0.0,
        answer_waiting: Callable[[str], bool] | None = None,
        crm_url: str = "",
        answers: CrmTally | None = None,
    ) -> None:
        self.redis = redis
        self.not_before = not_before  # see Runtime.redis_back_at
        self.answer_waiting = answer_waiting or (lambda job_id: False)
        self.crm_url = crm_url
        self.answers = answers if answers is not None else CrmTally()
        self.first_calls = first_calls
        self.latencies = latencies if latencies is not None else stats.LatencyTally()
        self.settle_s = settle_s
        self.crm = crm
        self.lock_scope = lock_scope
        self.crm_timeout_s = crm_timeout_s
        self.lock_ttl_s = lock_ttl_s
        self.in_flight: str | None = None  # whose login the CRM request under way uses
        self.agent_rejected = False  # the CRM refused the agent's own login in this run

    async def _timed(self, op: str, call: Callable[[], Awaitable[T]]) -> T:
        """Run a CRM request; its latency goes to the stats (``stats.LatencyTally``), and
        whether the CRM answered to the CRM's state (``crm_health.CrmTally``)."""
        t0 = time.monotonic()
        outcome = "ok"
        try:
            result = await call()
        except Exception as err:
            outcome = "transient" if is_transient(err) else "permanent"
            if outcome == "transient":
                self.answers.failed(self.lock_scope, self.crm_url, describe(err))
            raise
        finally:
            self.latencies.observe(op, outcome, time.monotonic() - t0)
        self.answers.ok(self.lock_scope, self.crm_url)
        return result

    async def _request(
        self, op: str, plan: CallPlan, creds: Credentials, call: Callable[[], Awaitable[T]]
    ) -> T:
        """A CRM request on ``creds``; while it runs, ``in_flight`` says whose login it uses
        (a failure the job dead-letters names it)."""
        self.in_flight = plan.whose(creds)
        result = await self._timed(op, call)
        self.in_flight = None
        return result

    async def _as_author(
        self,
        op: str,
        plan: CallPlan,
        deadline: Deadline,
        send: Callable[[Credentials], Awaitable[T]],
    ) -> T:
        """A write (addcont, addevent) as the call's author: the agent's own login when one is
        configured. The CRM rejecting that login (wrong password) does not cost the call: it
        is written with the service account instead, logged and counted
        (``agent_login_fallbacks``), and the rest of this run stays on the service account."""
        service = plan.lookup
        creds = service if self.agent_rejected else plan.credentials
        try:
            return await self._request(op, plan, creds, lambda: send(creds))
        except PermanentCrmError as err:
            if err.kind != "auth" or plan.agent is None or creds == service:
                raise
            rejected, why = plan.whose(creds), err.description or err.message
        self.agent_rejected = True
        self.in_flight = None
        log.warning(
            "the CRM refused %s (it said: %s); %s goes with the service account's login %r "
            "instead, so the CRM shows that account as its author: fix the password in "
            '[crm.agents."%s"]',
            rejected,
            why,
            op,
            service.login,
            plan.agent,
            extra=plan.record.log_tags,
        )
        await stats.incr(self.redis, "agent_login_fallbacks")
        deadline.require(self.crm_timeout_s, op)
        try:
            return await self._request(op, plan, service, lambda: send(service))
        finally:
            if self.in_flight is not None:  # failed too: the dead letter names both
                self.in_flight = f"{self.in_flight}, after {rejected} was rejected"

    async def deliver(self, plan: CallPlan, ledger: CallLedger, deadline: Deadline) -> str | None:
        """Run what the ledger says is still to do; the event id, or None when there is no
        contact to log on (nobody found, and creating one is off for this kind of call)."""
        if ledger.entry.contact_id is None:
            if plan.create is None:
                await self._find(plan, ledger, deadline)
            else:
                await self._find_or_create(plan, ledger, deadline)
            if ledger.entry.contact_id is None:
                return None
        return await self._add_event(plan, ledger, deadline)

    def _event_mark(self, deadline: Deadline) -> float | None:
        """When a contact has just become known, addevent comes next: its "sending" mark
        goes with the contact's ledger write, if there is time left to start addevent."""
        return time.time() if deadline.remaining() >= self.crm_timeout_s else None

    async def _find(
        self,
        plan: CallPlan,
        ledger: CallLedger,
        deadline: Deadline,
        release: tuple[str, bytes] | None = None,
        created: bool = False,
    ) -> bool:
        """Look the phone up; a match goes to the ledger (with ``release``, the per-phone
        lock is released in the same write; ``created``: the match is the contact a previous
        run of this call created)."""
        lookup = plan.lookup
        found = await self._request("find", plan, lookup, lambda: self.crm.find(plan.phone, lookup))
        if not found.contacts:
            return False
        # Several matches: the event goes on the first, in the CRM's own order (the CRM
        # knows best which card is the main one); the others are listed in the log.
        first = found.contacts[0]
        if len(found.contacts) > 1:
            log.info(
                "%d contacts match %s; logging on the first (id %s), others: %s",
                len(found.contacts),
                plan.phone,
                first.id,
                ", ".join(c.id for c in found.contacts[1:]),
                extra=keys.log_tags(ledger.job_id),
            )
        await ledger.contact_known(
            first.id,
            first.typecont or "contact",
            created=created,
            event_sending_at=self._event_mark(deadline),
            release=release,
        )
        return True

    async def _find_or_create(self, plan: CallPlan, ledger: CallLedger, deadline: Deadline) -> None:
        assert plan.create is not None
        lock = self.redis.lock(
            keys.phone_lock(self.lock_scope, plan.phone),
            timeout=self.lock_ttl_s,
            sleep=0.02,
            blocking_timeout=max(1.0, min(self.lock_ttl_s, deadline.remaining() - 1.0)),
        )
        taken = ledger.phone_lock
        if taken is not None and taken.key == lock.name:  # taken with this run's ledger read
            lock.local.token = taken.token
            ledger.phone_lock = None  # released below, or with the contact's ledger write
        elif not await lock.acquire():
            raise LockError(f"phone {plan.phone} is locked by another call for too long")
        token = lock.local.token
        held = (str(lock.name), bytes(token)) if token is not None else None
        # A previous run that sent addcont and died: the contact find shows now is the one it
        # created (under this lock nobody else creates one for this phone), and it counts so.
        sent_before = bool(ledger.entry.get("contact_sent_at"))
        try:
            if await self._find(plan, ledger, deadline, release=held, created=sent_before):
                held = None  # released with the ledger write
                return
            if sent_before:
                log.info(
                    "a previous run sent addcont for %s and died; find shows nothing, "
                    "so creating it now",
                    plan.phone,
                    extra=keys.log_tags(ledger.job_id),
                )
            new = plan.create
            if self.first_calls is not None:
                new = await self.first_calls.contact_for(plan.record, new)
            deadline.require(self.crm_timeout_s, "addcont")
            await ledger.contact_sending(time.time(), did=new.did)
            contact_id = await self._as_author(
                "addcont",
                plan,
                deadline,
                lambda creds: self.crm.add_contact(
                    plan.phone, new.name, new.typecont, new.x_pstn, creds
                ),
            )
            await ledger.contact_known(
                str(contact_id),
                new.typecont,
                created=True,
                event_sending_at=self._event_mark(deadline),
                release=held,
            )
            held = None
        finally:
            if held is not None:  # not released with a ledger write (an error came first)
                try:
                    await lock.release()
                except LockError:  # expired meanwhile: the ledger is written, nothing to undo
                    log.warning(
                        "phone lock for %s expired before release",
                        plan.phone,
                        extra=keys.log_tags(ledger.job_id),
                    )

    async def _add_event(self, plan: CallPlan, ledger: CallLedger, deadline: Deadline) -> str:
        if ledger.entry.event_id:
            return ledger.entry.event_id
        if ledger.sent_event_this_run:  # marked with the contact just now (contact_known)
            return await self._send_event(plan, ledger, deadline)
        sent = ledger.event_mark()
        resend = ""  # why the CRM may already hold this event
        unanswered = sent is not None  # a run's send that nobody recorded the end of
        if sent is not None:
            # A run sent addevent and never recorded how it ended: it died, or Redis failed
            # it. If the CRM answered it, the answer waits in that worker's outbox (in
            # memory and on disk; a dead worker's is taken over by another on its host)
            # until Redis takes it: here, look again soon; elsewhere, give it ``settle_s``
            # from the mark, and from Redis coming back (the outbox waited it out too).
            if self.answer_waiting(ledger.job_id):
                raise OutcomePending(1.0)
            wait = max(sent, self.not_before) + self.settle_s - time.time()
            if wait > 0:
                raise OutcomePending(wait)
            resend = (
                "a run sent addevent and its answer never reached the ledger (the worker "
                "died, or lost the connection, while the CRM processed it)"
            )
        elif ledger.uncertain_sends:
            resend = (
                "the last addevent got no answer the CRM may have acted on (timeout or a "
                "dropped connection)"
            )
        deadline.require(self.crm_timeout_s, "addevent")
        # the unanswered send is counted with the new mark (ledger.event_sending), and
        # added to possible_duplicates when the call is delivered (ledger.event_created)
        await ledger.event_sending(time.time(), after_unanswered=unanswered)
        if resend:
            log.warning(
                "%s: sending again, the CRM may show this call twice",
                resend,
                extra=keys.log_tags(ledger.job_id),
            )
        return await self._send_event(plan, ledger, deadline)

    async def _send_event(self, plan: CallPlan, ledger: CallLedger, deadline: Deadline) -> str:
        contact_id = ledger.entry.get("contact_id")
        typecont = ledger.entry.get("contact_typecont") or "contact"
        event_id = await self._as_author(
            "addevent",
            plan,
            deadline,
            lambda creds: self.crm.add_event(
                contact_id, typecont, plan.subject, plan.description, creds
            ),
        )
        await ledger.event_created(str(event_id), time.time())
        return str(event_id)
