"""The bridge's own record of each call in Redis: what the CRM has already accepted.

arq is the queue, not the ledger: it forgets a job when it ends, re-runs a job after a
crash without saying what the last run did, and expires jobs on its own clock. So every
step's result is written here *before* the next step starts, and a run of the job reads it
first and resumes where the last run stopped.

Hash ``telefum:ledger:{job_id}`` (all values strings):

=================  ==========================================================================
state              queued | running | retrying | done | dead | dropped
record             the call record, JSON (``CallRecord.to_json``): requeue needs no arq job
pbx, call_id       for listing
first_seen         unix time of the first enqueue
first_attempt      unix time of the first run since the last (re)queue: the retry budget's start
attempts           runs since the last (re)queue
contact_id         the CRM contact the event goes on (found or created)
contact_typecont   its typecont
contact_created    "1" if we created it (addcont), "0" if found
contact_sent_at    set just before addcont: a later run knows it may have been created
contact_did        with it: the tracking number (E.164) sent as the new contact's x_pstn
event_id           idev of the event: once set, the call is in the CRM
event_sent_at      set just before addevent, removed when that run records its failure: a
                   later run that still finds it knows a run died (or lost Redis) mid-addevent
event_sent_by      with it: the run that set it (a random token per run)
event_unsent_by    a run whose mark may have reached Redis (the write failed or hung, and a
                   hung Redis carries it out later) but that never sent addevent: its mark
                   means nothing (written through the outbox, so it gets there too)
event_uncertain    how many addevent sends of this call failed in a way the CRM may have
                   acted on (a timeout, a dropped connection, a run that died mid-request):
                   added to ``possible_duplicates`` when the call is delivered
outcome            delivered | skipped (when state is done)
skip_reason        why a call was not logged
done_at, dead_at, dead_reason, dead_login (whose CRM login the fatal request used)
=================  ==========================================================================
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from dataclasses import dataclass
from typing import Any, Protocol

from redis.asyncio import Redis
from redis.exceptions import RedisError

from crm_client.errors import Transient

from . import keys, stats
from .replicas import ReplicaWait

# How long a CRM answer's ledger write may take before the outbox keeps it instead: a hung
# Redis (SIGSTOP, a full disk under AOF) must not hold the run until arq's timeout
LEDGER_WRITE_S = 2.0

QUEUED, RUNNING, RETRYING, DONE, DEAD, DROPPED = (
    "queued",
    "running",
    "retrying",
    "done",
    "dead",
    "dropped",
)
FINAL = frozenset({DONE, DEAD, DROPPED})  # an enqueue never restarts these (requeue does)
ERRORS_KEPT = 50

log = logging.getLogger("worker.ledger")


@dataclass
class LedgerEntry:
    job_id: str
    fields: dict[str, str]

    def get(self, name: str, default: str = "") -> str:
        return self.fields.get(name, default)

    @property
    def exists(self) -> bool:
        return bool(self.fields)

    @property
    def state(self) -> str:
        return self.get("state")

    @property
    def attempts(self) -> int:
        return int(self.get("attempts", "0") or 0)

    @property
    def first_attempt(self) -> float | None:
        v = self.get("first_attempt")
        return float(v) if v else None

    @property
    def contact_id(self) -> str | None:
        return self.get("contact_id") or None

    @property
    def event_id(self) -> str | None:
        return self.get("event_id") or None

    @property
    def record(self) -> dict[str, Any] | None:
        raw = self.get("record")
        return json.loads(raw) if raw else None


def registered_script(redis: Redis, attr: str, lua: str) -> Any:
    """A Lua script registered once per client (kept on it as ``attr``), run by its SHA."""
    script = getattr(redis, attr, None)
    if script is None:
        script = redis.register_script(lua)
        setattr(redis, attr, script)
    return script


async def load(redis: Redis, job_id: str) -> LedgerEntry:
    raw = await redis.hgetall(keys.ledger(job_id))  # type: ignore[misc]
    return LedgerEntry(job_id, {keys.text(k): keys.text(v) for k, v in raw.items()})


# KEYS: the ledger [, the per-phone lock]. ARGV: now, TTL s, lock token, lock TTL ms, then
# the final states. The entry as it was and whether the lock was taken; unless the entry is
# final, the run is begun in the same step (state running, one more attempt, the budget's
# start if none yet) and, when a lock is named and the call has no contact yet, the lock is
# tried (SET NX PX, as redis-py's Lock takes it): one round trip where there were three.
_LOAD_AND_BEGIN_LUA = """
local fields = redis.call('HGETALL', KEYS[1])
local state = redis.call('HGET', KEYS[1], 'state')
for i = 5, #ARGV do
  if state == ARGV[i] then return {fields, 0} end
end
redis.call('HINCRBY', KEYS[1], 'attempts', 1)
redis.call('HSET', KEYS[1], 'state', 'running')
redis.call('HSETNX', KEYS[1], 'first_attempt', ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
local locked = 0
if #KEYS > 1 and not redis.call('HGET', KEYS[1], 'contact_id') then
  if redis.call('SET', KEYS[2], ARGV[3], 'NX', 'PX', ARGV[4]) then locked = 1 end
end
return {fields, locked}
"""


@dataclass(frozen=True)
class PhoneLock:
    """The per-phone lock a run may take with its ``load_and_begin`` (see worker/steps.py)."""

    key: str
    token: bytes
    ttl_s: float


async def load_and_begin(
    redis: Redis, job_id: str, now: float, ttl_s: float, lock: PhoneLock | None = None
) -> tuple[LedgerEntry, bool]:
    """The ledger entry as it was before this run (``load``), and, unless it is final,
    this run begun in it (state running, one more attempt, the budget's start), atomically;
    with ``lock``, also whether the per-phone lock was taken (only for a begun run whose
    call has no contact yet; someone else holding it is not an error: the steps wait for it).
    The entry returned is as it was; ``CallLedger.begun`` brings the copy up to date."""
    script = registered_script(redis, "_telefum_load_begin", _LOAD_AND_BEGIN_LUA)
    names = [keys.ledger(job_id)] + ([lock.key] if lock else [])
    token = lock.token if lock else b""
    ttl_ms = int(lock.ttl_s * 1000) if lock else 0
    raw, locked = await script(
        keys=names, args=[repr(now), int(ttl_s), token, ttl_ms, *sorted(FINAL)]
    )
    it = iter(raw)
    fields = {keys.text(k): keys.text(v) for k, v in zip(it, it, strict=True)}
    return LedgerEntry(job_id, fields), bool(locked)


# KEYS: the ledger, the counters. ARGV: counter name, increment, ...; each counted only if
# this call never counted it
_COUNT_ONCE_LUA = """
for i = 1, #ARGV, 2 do
  if redis.call('HSETNX', KEYS[1], 'counted:' .. ARGV[i], '1') == 1 then
    redis.call('HINCRBY', KEYS[2], ARGV[i], ARGV[i + 1])
  end
end
return 0
"""

# The per-phone lock's release (as redis-py's Lock does it): delete it only if still ours.
_RELEASE_LOCK_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


async def release_phone_lock(redis: Redis, lock: PhoneLock) -> None:
    """Release a lock ``load_and_begin`` took that the run never used (it failed or skipped
    before the steps); if Redis is away, the lock expires on its own."""
    try:
        await redis.eval(_RELEASE_LOCK_LUA, 1, lock.key, lock.token)  # type: ignore[misc, arg-type]
    except RedisError as err:
        log.warning("could not release the phone lock %s (%s); it expires", lock.key, err)


async def error_history(redis: Redis, job_id: str) -> list[dict[str, Any]]:
    out = []
    for raw in await redis.lrange(keys.errors(job_id), 0, -1):  # type: ignore[misc]
        try:
            out.append(json.loads(raw))
        except ValueError:
            out.append({"message": keys.text(raw)})
    return out


@dataclass(frozen=True)
class LedgerWrite:
    """One write to a call's ledger (``values``; ``counters`` counted once per call; ``done``:
    the call leaves the pending set). What the outbox keeps, in memory and on disk, when it
    records an answer the CRM gave and Redis did not take (worker/outbox.py)."""

    job_id: str
    values: dict[str, str]
    counters: dict[str, int] | None = None
    done: bool = False
    ttl_s: int = 30 * 86400  # the ledger entry's TTL, renewed by the write

    def to_json(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "values": self.values,
            "counters": self.counters,
            "done": self.done,
            "ttl_s": self.ttl_s,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> LedgerWrite:
        values = {str(k): str(v) for k, v in d["values"].items()}
        return cls(
            str(d["job_id"]),
            values,
            d.get("counters"),
            bool(d.get("done")),
            int(d.get("ttl_s") or 30 * 86400),
        )


async def write(redis: Redis, w: LedgerWrite, *, release: tuple[str, bytes] | None = None) -> None:
    """``w`` in one transaction (with the release of the per-phone lock ``release``: its key
    and token). Writing it twice is harmless: the values are the same, the counters count
    once per call."""
    key = keys.ledger(w.job_id)
    async with redis.pipeline(transaction=True) as tr:
        tr.hset(key, mapping=w.values)
        tr.expire(key, w.ttl_s)
        if w.done:
            tr.zrem(keys.PENDING, w.job_id)
        if w.counters:
            # once per call: a write whose answer was lost (Redis went away mid-reply)
            # is written again by the outbox, and must not count the call twice
            args = [x for name, n in w.counters.items() for x in (name, str(n))]
            tr.eval(_COUNT_ONCE_LUA, 2, key, stats.COUNTERS, *args)
        if release is not None:
            tr.eval(_RELEASE_LOCK_LUA, 1, *release)  # type: ignore[arg-type]
        await tr.execute()


class KeepAnswer(Protocol):
    """Where a CRM answer goes when Redis does not take it (worker/outbox.py's Outbox)."""

    def record(self, w: LedgerWrite) -> None: ...


class LedgerPending(Transient):
    """The CRM's answer is safe in the outbox, but the next step needs it in Redis first
    (addevent needs its "sending" mark there): a later run goes on. Nothing was lost."""

    may_have_acted = False


class CallLedger:
    """One call's ledger during one run of its job; every write is awaited, in order."""

    def __init__(
        self,
        redis: Redis,
        entry: LedgerEntry,
        ttl_s: float,
        outbox: KeepAnswer | None = None,
        replicas: ReplicaWait | None = None,
    ) -> None:
        self.redis = redis
        self.replicas = replicas
        self.entry = entry
        self.key = keys.ledger(entry.job_id)
        self.ttl_s = int(ttl_s)
        self.outbox = outbox
        self.sent_event_this_run = False
        self.phone_lock: PhoneLock | None = None  # taken by load_and_begin, not yet released
        self.answer_kept = False  # a CRM answer of this run waits for Redis in the outbox
        self.run = uuid.uuid4().hex[:16]  # this run, in the marks it writes

    @property
    def job_id(self) -> str:
        return self.entry.job_id

    async def _hset(
        self, values: dict[str, str], *, counters: dict[str, int] | None = None, done: bool = False
    ) -> None:
        await write(self.redis, LedgerWrite(self.job_id, values, counters, done, self.ttl_s))
        self.entry.fields.update(values)
        await self._replicated()

    async def _replicated(self) -> None:
        """Behind Sentinel, until a replica has this run's ledger writes (a mark lost in a
        failover would let a re-run send a CRM write again). Best effort: the write is
        taken, and a connection error now is the next write's to meet."""
        if self.replicas is None:
            return
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            await self.replicas(
                self.redis,
                f"the ledger of {self.job_id}",
                "a failover before it catches up could let its CRM writes be sent again",
            )

    async def _must_land(
        self,
        values: dict[str, str],
        *,
        counters: dict[str, int] | None = None,
        done: bool = False,
        also: dict[str, str] | None = None,
        release: tuple[str, bytes] | None = None,
        if_kept: dict[str, str] | None = None,
    ) -> bool:
        """Write what the CRM has just accepted. True when Redis took it; False when it
        failed or took longer than ``LEDGER_WRITE_S`` (a hung Redis): then the outbox has
        it, in memory and on disk, and writes it once Redis answers, and this run goes on
        without Redis. ``also`` and ``release`` go with the first try only: they are not
        worth keeping (no addevent is sent without its mark; the lock expires); ``if_kept``
        goes with the kept write only."""
        w = LedgerWrite(self.job_id, values | (if_kept or {}), counters, done, self.ttl_s)
        first = LedgerWrite(self.job_id, values | (also or {}), counters, done, self.ttl_s)
        try:
            async with asyncio.timeout(LEDGER_WRITE_S):
                await write(self.redis, first, release=release)
        except (RedisError, OSError, TimeoutError) as err:
            if self.outbox is None:
                raise
            self.outbox.record(w)
            self.answer_kept = True
            self.entry.fields.update(values)
            log.warning(
                "Redis did not take a CRM answer (%s): kept for it in the outbox",
                _short(err),
                extra=keys.log_tags(self.job_id),
            )
            return False
        except asyncio.CancelledError:  # the run is stopped: the answer must not go with it
            if self.outbox is not None:
                self.outbox.record(w)
                self.answer_kept = True
                self.entry.fields.update(values)
                log.warning(
                    "the run stopped before Redis took a CRM answer: kept for it in the outbox",
                    extra=keys.log_tags(self.job_id),
                )
            raise
        self.entry.fields.update(first.values)
        await self._replicated()
        return True

    def begun(self, now: float) -> None:
        """Bring the copy up to date after ``load_and_begin`` began this run in Redis."""
        self.entry.fields["state"] = RUNNING
        self.entry.fields["attempts"] = str(self.entry.attempts + 1)
        self.entry.fields.setdefault("first_attempt", repr(now))

    async def contact_sending(self, now: float, did: str = "") -> None:
        await self._hset({"contact_sent_at": repr(now), "contact_did": did})

    async def contact_known(
        self,
        contact_id: str,
        typecont: str,
        *,
        created: bool,
        event_sending_at: float | None = None,
        release: tuple[str, bytes] | None = None,
    ) -> None:
        """The contact the event goes on. Since addevent comes next, its "sending" mark
        (``event_sending``) may come along (``event_sending_at``), and so may the release of
        the per-phone lock (``release``: its key and token): one round trip, not three.
        Only the contact must land if Redis fails; the rest is not retried (the lock
        expires; no addevent is sent without its mark)."""
        values = {
            "contact_id": contact_id,
            "contact_typecont": typecont,
            "contact_created": "1" if created else "0",
        }
        counters = {"contacts_created": 1} if created else None
        mark = self._event_mark(event_sending_at) if event_sending_at is not None else {}
        void = {"event_unsent_by": self.run} if mark else None
        if not await self._must_land(
            values, counters=counters, also=mark, release=release, if_kept=void
        ):
            raise LedgerPending(
                f"contact {contact_id} is known; its ledger write waits for Redis in the outbox"
            )
        if mark:
            self.sent_event_this_run = True

    def _event_mark(self, now: float) -> dict[str, str]:
        return {"event_sent_at": repr(now), "event_sent_by": self.run}

    async def event_sending(self, now: float, *, after_unanswered: bool = False) -> None:
        """The mark that addevent is about to be sent. ``after_unanswered``: it replaces the
        mark of a run whose send was never answered (it died while the CRM processed it),
        which makes one more send the CRM may have carried out (``event_uncertain``), in the
        same transaction. If writing it fails, it may still land (a hung Redis carries it out
        later) though nothing was sent: the outbox then writes that this run sent nothing
        (``event_unsent_by``)."""
        mark = self._event_mark(now)
        try:
            async with self.redis.pipeline(transaction=True) as tr:
                tr.hset(self.key, mapping=mark)
                if after_unanswered:
                    tr.hincrby(self.key, "event_uncertain", 1)
                tr.expire(self.key, self.ttl_s)
                await tr.execute()
        except BaseException:
            if self.outbox is not None:
                self.outbox.record(
                    LedgerWrite(self.job_id, {"event_unsent_by": self.run}, ttl_s=self.ttl_s)
                )
            raise
        self.entry.fields.update(mark)
        if after_unanswered:
            self.entry.fields["event_uncertain"] = str(self.uncertain_sends + 1)
        self.sent_event_this_run = True

    @property
    def uncertain_sends(self) -> int:
        """Earlier addevent sends of this call the CRM may have carried out unanswered."""
        return int(self.entry.get("event_uncertain") or 0)

    def event_mark(self) -> float | None:
        """When a run that may have sent addevent marked it; None if no mark, or if the
        run that wrote it is known to have sent nothing."""
        sent = self.entry.get("event_sent_at")
        by = self.entry.get("event_sent_by")
        if not sent or (by and by == self.entry.get("event_unsent_by")):
            return None
        return float(sent)

    async def event_created(self, event_id: str, now: float) -> bool:
        """The call is in the CRM from here on: state, outcome and the pending set change in
        the same transaction, so a crash after it leaves nothing to redo; so does the count
        of the sends before this one that the CRM may have carried out too (each a possible
        duplicate event). False: Redis did not take it, the outbox did (the run is a
        success all the same)."""
        counters = {"events_created": 1, "succeeded": 1}
        if self.uncertain_sends:
            counters["possible_duplicates"] = self.uncertain_sends
        return await self._must_land(
            {"event_id": event_id, "state": DONE, "outcome": "delivered", "done_at": repr(now)},
            counters=counters,
            done=True,
        )

    async def skipped(self, reason: str, now: float) -> None:
        await self._hset(
            {"state": DONE, "outcome": "skipped", "skip_reason": reason, "done_at": repr(now)},
            counters={"skipped": 1},
            done=True,
        )

    async def add_error(
        self, entry: dict[str, Any], *, retrying: bool, event_uncertain: bool = False
    ) -> None:
        """Record a failed run. If this run sent addevent and failed, the failure is now on
        record: the marker that says "a run may have died mid-addevent" is replaced by
        ``event_uncertain`` when the CRM may have acted (timeout, dropped connection)."""
        ekey = keys.errors(self.job_id)
        async with self.redis.pipeline(transaction=True) as tr:
            tr.rpush(ekey, json.dumps(entry, ensure_ascii=False))
            tr.ltrim(ekey, -ERRORS_KEPT, -1)
            tr.expire(ekey, self.ttl_s)
            if retrying:
                tr.hset(self.key, "state", RETRYING)
                stats.incr_in(tr, "retried", 1)
            if self.sent_event_this_run and not self.entry.event_id:
                tr.hdel(self.key, "event_sent_at")
                if event_uncertain:
                    tr.hincrby(self.key, "event_uncertain", 1)
            await tr.execute()
        if retrying:
            self.entry.fields["state"] = RETRYING


def _short(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}"[:200]
