"""Is each CRM answering? What the workers saw, for ``/health``; and the cue to run the
waiting calls at once when a failing CRM answers again.

Each worker counts its CRM requests' outcomes in memory, per CRM (:class:`CrmTally`, fed
by ``steps.Steps``), and adds them to Redis about once a second with the latencies
(``app.py``): one script per CRM merges what every worker saw into::

    telefum:stats:crms               set   the CRMs (their lock scope) that have a state
    telefum:stats:crm-state:{scope}  hash  url (redacted); ok_at: the newest success;
                                           the current failure streak, absent when none:
                                           since (its first failure), fail_at (its latest),
                                           fails (how many), error (the latest, redacted)

A failure here is a transient one (no answer, a timeout, HTTP 5xx or 429, an unreadable
answer): the CRM was not there. A permanent answer (a refused login, a rejected request) is
the CRM answering, and changes nothing here. A streak is every failure since the newest
success; it is *failing* once its failures span ``failing_s`` (``[health] crm_failing_s``):
ops see it in ``/health`` (``telefum.health``). The flush that ends a failing streak (a
success newer than its latest failure) returns it, and that worker makes the CRM's waiting
calls due now (``queue.retry_now``), whose backoff may have grown to 10 minutes.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from crm_client.redact import redact_url

from . import keys
from .ledger import registered_script

CRMS = keys.PREFIX + "stats:crms"
STATE_TTL_S = 7 * 86400  # a CRM no worker has asked for a week is forgotten


def state_key(scope: str) -> str:
    return f"{keys.PREFIX}stats:crm-state:{scope}"


@dataclass
class _Seen:
    """One CRM as one worker saw it since its last flush: the newest success, and the
    failures after it."""

    url: str
    ok_at: float | None = None
    first: float | None = None
    last: float | None = None
    fails: int = 0
    error: str = ""

    def then(self, later: _Seen) -> _Seen:
        """This (older) and ``later`` as one: for a flush that failed."""
        if later.ok_at is not None:
            return later
        if later.fails == 0:
            return self
        return _Seen(
            later.url,
            self.ok_at,
            self.first if self.fails else later.first,
            later.last,
            self.fails + later.fails,
            later.error,
        )


@dataclass(frozen=True)
class Recovered:
    """A failing streak that a success ended: the CRM answers again."""

    scope: str
    url: str
    since: float
    last_failure: float
    failures: int


# KEYS: the state hash, the set of CRMs. ARGV: scope, url, this worker's newest success
# ("" none), its failures after it: first, last ("" none), count, latest error; failing_s,
# TTL s. Returns the failing streak a success of this worker ended ({since, last, fails}),
# else "". A stored streak cut by a newer success keeps only what is known to come after
# it (its latest failure); the same for this worker's.
_MERGE_LUA = """
local cur = redis.call('HMGET', KEYS[1], 'ok_at', 'since', 'fail_at', 'fails', 'error')
local ok = tonumber(cur[1]) or 0
local since, last = tonumber(cur[2]), tonumber(cur[3])
local fails, err = tonumber(cur[4]) or 0, cur[5] or ''
local new_ok = math.max(ok, tonumber(ARGV[3]) or 0)
local ended = ''
if since and last then
  if last <= new_ok then
    if last - since >= tonumber(ARGV[8]) then
      ended = {string.format('%.3f', since), string.format('%.3f', last), tostring(fails)}
    end
    since, last, fails, err = nil, nil, 0, ''
  elseif since <= new_ok then
    since, fails = last, 1
  end
end
local b_first, b_last, b_count = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]) or 0
if b_first and b_last and b_last > new_ok then
  if b_first <= new_ok then b_first, b_count = b_last, 1 end
  if since then
    since, fails = math.min(since, b_first), fails + b_count
    if b_last >= last then last, err = b_last, ARGV[7] end
  else
    since, last, fails, err = b_first, b_last, b_count, ARGV[7]
  end
end
redis.call('HSET', KEYS[1], 'url', ARGV[2])
if new_ok > 0 then redis.call('HSET', KEYS[1], 'ok_at', string.format('%.3f', new_ok)) end
if since then
  redis.call('HSET', KEYS[1], 'since', string.format('%.3f', since),
             'fail_at', string.format('%.3f', last), 'fails', tostring(fails), 'error', err)
else
  redis.call('HDEL', KEYS[1], 'since', 'fail_at', 'fails', 'error')
end
redis.call('EXPIRE', KEYS[1], ARGV[9])
redis.call('SADD', KEYS[2], ARGV[1])
return ended
"""


def _arg(v: float | None) -> str:
    return "" if v is None else repr(v)


class CrmTally:
    """The outcomes of one worker's CRM requests, per CRM, sent with :meth:`flush`. A worker
    killed between flushes loses that second of outcomes, never a call."""

    def __init__(self) -> None:
        self._seen: dict[str, _Seen] = {}  # lock scope -> what was seen

    def ok(self, scope: str, url: str, at: float | None = None) -> None:
        seen = self._seen.get(scope)
        if seen is None:
            seen = self._seen[scope] = _Seen(url)
        seen.ok_at = time.time() if at is None else at
        seen.first, seen.last, seen.fails, seen.error = None, None, 0, ""

    def failed(self, scope: str, url: str, error: str, at: float | None = None) -> None:
        seen = self._seen.get(scope)
        if seen is None:
            seen = self._seen[scope] = _Seen(url)
        at = time.time() if at is None else at
        if seen.first is None:
            seen.first = at
        seen.last, seen.error = at, error
        seen.fails += 1

    async def flush(self, redis: Redis, failing_s: float) -> list[Recovered]:
        """Merge what was seen since the last flush into Redis (one round trip); the failing
        streaks a success of this worker ended. Redis failing: kept for the next flush."""
        if not self._seen:
            return []
        seen, self._seen = self._seen, {}
        script = registered_script(redis, "_telefum_crm_merge", _MERGE_LUA)
        try:
            async with redis.pipeline(transaction=False) as pipe:
                for scope, s in seen.items():
                    await script(
                        keys=[state_key(scope), CRMS],
                        args=[
                            scope,
                            redact_url(s.url),
                            _arg(s.ok_at),
                            _arg(s.first),
                            _arg(s.last),
                            s.fails,
                            s.error,
                            failing_s,
                            STATE_TTL_S,
                        ],
                        client=pipe,
                    )
                answers = await pipe.execute()
        except BaseException:
            for scope, s in seen.items():  # put back, before what came in meanwhile
                later = self._seen.get(scope)
                self._seen[scope] = s if later is None else s.then(later)
            raise
        out = []
        for (scope, s), ended in zip(seen.items(), answers, strict=True):
            if isinstance(ended, list) and len(ended) == 3:
                since, last, fails = (keys.text(v) for v in ended)
                out.append(
                    Recovered(scope, redact_url(s.url), float(since), float(last), int(fails))
                )
        return out


async def read_states(redis: Redis) -> list[dict[str, Any]]:
    """Every CRM's state, for ``worker.stats.read_stats`` (its ``"crm"`` key)::

        [{"scope": str, "url": str (redacted), "last_ok_at": float | None,
          "failing_since": float | None, "last_failure_at": float | None,
          "failures": int, "last_error": str | None}]

    ``failing_since`` is None when the CRM's latest request succeeded (no streak).
    """
    scopes = sorted(keys.text(s) for s in await redis.smembers(CRMS))  # type: ignore[misc]
    if not scopes:
        return []
    async with redis.pipeline(transaction=False) as p:
        for scope in scopes:
            p.hgetall(state_key(scope))
        rows = await p.execute()
    out, gone = [], []
    for scope, raw in zip(scopes, rows, strict=True):
        h = {keys.text(k): keys.text(v) for k, v in raw.items()}
        if not h:
            gone.append(scope)
            continue
        out.append(
            {
                "scope": scope,
                "url": h.get("url", ""),
                "last_ok_at": float(h["ok_at"]) if h.get("ok_at") else None,
                "failing_since": float(h["since"]) if h.get("since") else None,
                "last_failure_at": float(h["fail_at"]) if h.get("fail_at") else None,
                "failures": int(h.get("fails") or 0),
                "last_error": h.get("error") or None,
            }
        )
    if gone:
        await redis.srem(CRMS, *gone)  # type: ignore[misc]
    return out


async def waiting_by_pbx(redis: Redis) -> dict[str, int]:
    """Calls accepted and not yet delivered nor dead (the pending set), by PBX: how many
    wait for each CRM when PBXs have CRMs of their own."""
    out: Counter[str] = Counter()
    async for member, _ in redis.zscan_iter(keys.PENDING, count=1000):
        out[keys.split_job_id(keys.text(member))[0]] += 1
    return dict(out)
