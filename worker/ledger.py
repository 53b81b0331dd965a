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
event_uncertain    "1": an addevent failed in a way the CRM may have acted on (timeout)
outcome            delivered | skipped (when state is done)
skip_reason        why a call was not logged
done_at, dead_at, dead_reason, dead_login (whose CRM login the fatal request used)
=================  ==========================================================================
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from telephony.backoff import Backoff

from . import keys, stats
from .redis_url import connect

QUEUED, RUNNING, RETRYING, DONE, DEAD, DROPPED = (
    "queued", "running", "retrying", "done", "dead", "dropped",
)  # fmt: skip
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


class Outbox:
    """Ledger writes that must land: what the CRM has just accepted (a contact, an event).

    If Redis fails right after the CRM said yes, forgetting the answer would make the next
    run write again (a duplicate event). So the write is kept trying in the background, past
    the end of the job, until Redis takes it (or ``give_up_s``); the next run of the call
    meanwhile waits for it (see ``Steps.settle_s``).
    """

    def __init__(self, redis_url: str | None = None, give_up_s: float = 3600.0) -> None:
        # Its own client when given a URL: the worker's pool may be closed and rebuilt
        # while Redis is away, and these writes must outlive that.
        self.redis_url = redis_url
        self.give_up_s = give_up_s
        self._tasks: set[asyncio.Task[None]] = set()
        self._redis: Redis | None = None

    @property
    def pending(self) -> int:
        return len(self._tasks)

    def keep_trying(self, write: Callable[[Redis | None], Awaitable[None]], job_id: str) -> None:
        task = asyncio.create_task(self._retry(write, job_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _retry(self, write: Callable[[Redis | None], Awaitable[None]], job_id: str) -> None:
        if self.redis_url and self._redis is None:
            self._redis = connect(self.redis_url, socket_connect_timeout=1, socket_timeout=5)
        deadline = time.monotonic() + self.give_up_s
        backoff = Backoff(0.05, 2.0)
        while True:
            await asyncio.sleep(backoff.next(time.monotonic()))
            try:
                await write(self._redis)
            except RedisError:
                if time.monotonic() > deadline:
                    log.error(
                        "gave up recording a CRM answer in the ledger", extra=keys.log_tags(job_id)
                    )
                    return
                continue
            log.info("recorded a CRM answer after Redis came back", extra=keys.log_tags(job_id))
            return

    async def drain(self, timeout_s: float) -> int:
        """On shutdown: give pending writes a last chance; how many were left undone."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout_s)
        left = len(self._tasks)
        for t in list(self._tasks):
            t.cancel()
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None
        return left


class CallLedger:
    """One call's ledger during one run of its job; every write is awaited, in order."""

    def __init__(
        self, redis: Redis, entry: LedgerEntry, ttl_s: float, outbox: Outbox | None = None
    ) -> None:
        self.redis = redis
        self.entry = entry
        self.key = keys.ledger(entry.job_id)
        self.ttl_s = int(ttl_s)
        self.outbox = outbox
        self.sent_event_this_run = False
        self.phone_lock: PhoneLock | None = None  # taken by load_and_begin, not yet released

    @property
    def job_id(self) -> str:
        return self.entry.job_id

    async def _hset(self, values: dict[str, str], *, counters: dict[str, int] | None = None,
                    done: bool = False, redis: Redis | None = None,
                    release: tuple[str, bytes] | None = None) -> None:  # fmt: skip
        async with (redis or self.redis).pipeline(transaction=True) as tr:
            tr.hset(self.key, mapping=values)
            tr.expire(self.key, self.ttl_s)
            if done:
                tr.zrem(keys.PENDING, self.job_id)
            if counters:
                # once per call: a write whose answer was lost (Redis went away mid-reply)
                # is written again by the outbox, and must not count the call twice
                args = [x for name, n in counters.items() for x in (name, str(n))]
                tr.eval(_COUNT_ONCE_LUA, 2, self.key, stats.COUNTERS, *args)
            if release is not None:
                tr.eval(_RELEASE_LOCK_LUA, 1, *release)  # type: ignore[arg-type]
            await tr.execute()
        self.entry.fields.update(values)

    async def _must_land(
        self, values: dict[str, str], *, counters: dict[str, int] | None = None,
        done: bool = False, also: dict[str, str] | None = None,
        release: tuple[str, bytes] | None = None,
    ) -> None:  # fmt: skip
        """Write ``values`` (with ``counters``, ``done``); if Redis fails, the outbox keeps
        writing them in the background. ``also`` and ``release`` go with the first try
        only: they are not worth keeping a write alive for."""
        try:
            await self._hset(values | (also or {}), counters=counters, done=done,
                             release=release)  # fmt: skip
        except RedisError:
            if self.outbox is not None:
                self.outbox.keep_trying(
                    lambda redis: self._hset(values, counters=counters, done=done, redis=redis),
                    self.job_id,
                )
            raise

    def begun(self, now: float) -> None:
        """Bring the copy up to date after ``load_and_begin`` began this run in Redis."""
        self.entry.fields["state"] = RUNNING
        self.entry.fields["attempts"] = str(self.entry.attempts + 1)
        self.entry.fields.setdefault("first_attempt", repr(now))

    async def contact_sending(self, now: float, did: str = "") -> None:
        await self._hset({"contact_sent_at": repr(now), "contact_did": did})

    async def contact_known(
        self, contact_id: str, typecont: str, *, created: bool,
        event_sending_at: float | None = None, release: tuple[str, bytes] | None = None,
    ) -> None:  # fmt: skip
        """The contact the event goes on. Since addevent comes next, its "sending" mark
        (``event_sending``) may come along (``event_sending_at``), and so may the release of
        the per-phone lock (``release``: its key and token): one round trip, not three.
        Only the contact must land if Redis fails; the rest is not retried (the lock
        expires; no addevent is sent without its mark)."""
        values = {"contact_id": contact_id, "contact_typecont": typecont,
                  "contact_created": "1" if created else "0"}  # fmt: skip
        counters = {"contacts_created": 1} if created else None
        mark = {"event_sent_at": repr(event_sending_at)} if event_sending_at is not None else {}
        await self._must_land(values, counters=counters, also=mark, release=release)
        if mark:
            self.sent_event_this_run = True

    async def event_sending(self, now: float) -> None:
        await self._hset({"event_sent_at": repr(now)})
        self.sent_event_this_run = True

    async def event_created(self, event_id: str, now: float) -> None:
        # The call is in the CRM from here on: state, outcome and the pending set change in
        # the same transaction, so a crash after this line leaves nothing to redo.
        await self._must_land(
            {"event_id": event_id, "state": DONE, "outcome": "delivered", "done_at": repr(now)},
            counters={"events_created": 1, "succeeded": 1},
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
                    tr.hset(self.key, "event_uncertain", "1")
            await tr.execute()
        if retrying:
            self.entry.fields["state"] = RETRYING

