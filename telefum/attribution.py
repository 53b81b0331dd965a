"""Ad-source attribution: which tracking number brought which calls, and which were new.

The figures come from what the bridge delivered, not from the PBX's own view: the worker
calls :meth:`Attribution.record_delivery` once a call reached the CRM, saying whether a
contact was created for it. Each inbound call is one row in Redis, written once per call
(a retried job cannot count twice), plus the time each caller first called each tracking
number, so "first call" vs "repeat call" is right even when deliveries come out of order.
A new contact is credited to the tracking number it carries as ``x_pstn``: the one its
caller dialled first, which is another call's when a later call reached the CRM first
(``worker/first_call.py``).

Keys (``telefum:attr:`` prefix):

- ``calls``       hash  ``{pbx}:{call_id}`` -> JSON row (see :class:`AttributedCall`)
- ``by_time``     zset  ``{pbx}:{call_id}`` scored by the call's start (unix seconds)
- ``first_seen``  hash  ``{tracking number}|{caller}`` -> start of that caller's earliest call

The report itself (:func:`build_report`) is a pure function of the rows.
"""

from __future__ import annotations

import json
import re
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, timedelta, tzinfo
from typing import Any

from telephony.records import CallRecord
from worker.jobs import OnDelivered
from worker.ledger import LedgerEntry

PREFIX = "telefum:attr:"
NO_NUMBER = ""  # an inbound call whose tracking number the PBX did not say
UNLABELLED = "(no source)"

# Atomic and idempotent: the row is written only if absent; the first-seen time only moves
# earlier; old rows beyond the retention are trimmed a few at a time.
_RECORD_LUA = """
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
if ARGV[4] ~= '' then
  local cur = redis.call('HGET', KEYS[3], ARGV[4])
  if (not cur) or tonumber(ARGV[3]) < tonumber(cur) then
    redis.call('HSET', KEYS[3], ARGV[4], ARGV[3])
  end
end
local old = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[5], 'LIMIT', 0, 100)
for _, id in ipairs(old) do
  redis.call('ZREM', KEYS[2], id)
  redis.call('HDEL', KEYS[1], id)
end
return 1
"""


@dataclass(frozen=True)
class AttributedCall:
    """One delivered inbound call, as stored."""

    call_id: str
    pbx: str
    tracking_number: str  # the DID (E.164), or "" when unknown
    source: str  # the label of [sources] at delivery time
    caller: str | None  # E.164; None for an anonymous caller
    started_at: float
    answered: bool
    ring_s: float | None  # the wait: until answered, or until the caller gave up; None: unknown
    new_contact: bool  # the bridge created the CRM contact for this call
    contact_id: str | None = None
    extension: str | None = None
    # a new contact's x_pstn (its caller's first tracking number) and that number's label:
    # where the report counts the new contact; None: this call's own number
    contact_number: str | None = None
    contact_source: str | None = None
    first_call: bool | None = None  # filled when read: this caller's first call to this number

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("first_call")
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> AttributedCall:
        return cls(
            call_id=str(d["call_id"]),
            pbx=str(d.get("pbx", "default")),
            tracking_number=str(d.get("tracking_number") or NO_NUMBER),
            source=str(d.get("source") or UNLABELLED),
            caller=d.get("caller"),
            started_at=float(d["started_at"]),
            answered=bool(d["answered"]),
            ring_s=None if d.get("ring_s", 0.0) is None else float(d.get("ring_s", 0.0)),
            new_contact=bool(d.get("new_contact", False)),
            contact_id=d.get("contact_id"),
            extension=d.get("extension"),
            contact_number=d.get("contact_number"),
            contact_source=d.get("contact_source"),
        )

    @property
    def credited(self) -> tuple[str, str]:
        """The (tracking number, source) that counts this call's new contact."""
        if self.contact_number is None:
            return self.tracking_number, self.source
        return self.contact_number, self.contact_source or UNLABELLED


class Attribution:
    """The attribution store in Redis (``redis.asyncio.Redis``)."""

    def __init__(
        self,
        redis: Any,
        *,
        sources: Mapping[str, str] | None = None,
        retention_days: float = 400.0,
        prefix: str = PREFIX,
    ) -> None:
        self._redis = redis
        self._sources = dict(sources or {})
        self._retention_s = retention_days * 86400.0
        self.calls_key = prefix + "calls"
        self.by_time_key = prefix + "by_time"
        self.first_seen_key = prefix + "first_seen"
        self._script = redis.register_script(_RECORD_LUA)

    async def record_delivery(
        self,
        record: CallRecord,
        *,
        contact_created: bool,
        contact_id: str | None = None,
        source: str | None = None,
        contact_did: str | None = None,
    ) -> bool:
        """Count one delivered call; True if counted now, False if already counted or not
        inbound. Call it after the call's job succeeded (a retry of the same call is a no-op).

        ``source``: the label the event carried; None looks the tracking number up in
        ``[sources]``. ``contact_did``: the tracking number the created contact got as
        ``x_pstn`` ("" none), when it may differ from this call's (the ledger says).
        """
        if record.direction != "in":
            return False
        did = record.did or NO_NUMBER
        label = source if source is not None else self._sources.get(did, UNLABELLED)
        contact_number = contact_source = None
        if contact_created and contact_did is not None and contact_did != did:
            contact_number = contact_did or NO_NUMBER
            contact_source = self._sources.get(contact_number, UNLABELLED)
        row = AttributedCall(
            call_id=record.call_id,
            pbx=record.pbx,
            tracking_number=did,
            source=label or UNLABELLED,
            caller=record.external,
            started_at=record.started_at,
            answered=record.answered,
            ring_s=record.ring_s,
            new_contact=contact_created,
            contact_id=contact_id,
            extension=record.extension,
            contact_number=contact_number,
            contact_source=contact_source,
        )
        member = f"{record.pbx}:{record.call_id}"
        first_key = f"{did}|{record.external}" if record.external else ""
        cutoff = record.ended_at - self._retention_s
        added = await self._script(
            keys=[self.calls_key, self.by_time_key, self.first_seen_key],
            args=[
                member,
                json.dumps(row.to_json(), ensure_ascii=False),
                repr(float(record.started_at)),
                first_key,
                repr(cutoff),
            ],
        )
        return bool(added)

    async def calls(self, since: float, until: float) -> list[AttributedCall]:
        """The delivered calls that started in ``[since, until)``, oldest first."""
        members = await self._redis.zrangebyscore(self.by_time_key, since, f"({until}")
        if not members:
            return []
        raw = await self._redis.hmget(self.calls_key, members)
        rows = [AttributedCall.from_json(json.loads(r)) for r in raw if r is not None]
        keys = sorted({f"{r.tracking_number}|{r.caller}" for r in rows if r.caller})
        firsts = dict(zip(keys, await self._redis.hmget(self.first_seen_key, keys), strict=True))
        out = []
        for r in rows:
            first = None
            if r.caller:
                seen = firsts.get(f"{r.tracking_number}|{r.caller}")
                first = seen is None or float(seen) >= r.started_at
            out.append(_with_first(r, first))
        return out

    async def report(self, since: float, until: float, tz: tzinfo | None = None) -> dict[str, Any]:
        return build_report(
            await self.calls(since, until),
            since=since,
            until=until,
            tz=tz,
            sources=self._sources,
        )


def _with_first(r: AttributedCall, first: bool | None) -> AttributedCall:
    d = asdict(r)
    d["first_call"] = first
    return AttributedCall(**d)


# --- the report (pure) --------------------------------------------------------------------

FIGURES = (
    "calls",
    "answered",
    "missed",
    "new_contacts",
    "first_calls",
    "repeat_calls",
    "median_wait_s",
)


def figures(calls: Iterable[AttributedCall], new_contacts: int) -> dict[str, Any]:
    """The marketer's figures for a set of calls, and the new contacts credited to them.

    ``missed``: not answered (gave up, busy, failed). ``new_contacts``: contacts the bridge
    created whose ``x_pstn`` is this number (see :attr:`AttributedCall.credited`).
    ``first_calls``/``repeat_calls``: the caller's first call to this tracking number ever
    (as far as the bridge's store goes back), or a later one; anonymous callers are neither.
    ``median_wait_s``: how long callers rang before they were answered or gave up.
    """
    cs = list(calls)
    waits = [c.ring_s for c in cs if c.ring_s is not None]  # None: found answered, wait unknown
    return {
        "calls": len(cs),
        "answered": sum(1 for c in cs if c.answered),
        "missed": sum(1 for c in cs if not c.answered),
        "new_contacts": new_contacts,
        "first_calls": sum(1 for c in cs if c.first_call is True),
        "repeat_calls": sum(1 for c in cs if c.first_call is False),
        "median_wait_s": round(statistics.median(waits), 1) if waits else None,
    }


def build_report(
    calls: Iterable[AttributedCall],
    *,
    since: float,
    until: float,
    tz: tzinfo | None = None,
    sources: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Totals, per tracking number and source, and per day (in ``tz``; local by default).

    A new contact counts on the day of the call that created it, for the number it carries
    (:attr:`AttributedCall.credited`). Every number of ``sources`` (``[sources]``) has a row,
    with zeros when it had no calls: a campaign that brought nobody shows as such.
    """
    cs = sorted(calls, key=lambda c: c.started_at)
    zone = tz if tz is not None else datetime.now().astimezone().tzinfo or UTC
    per_number: dict[tuple[str, str], list[AttributedCall]] = defaultdict(list)
    per_day: dict[tuple[str, str, str], list[AttributedCall]] = defaultdict(list)
    credits: Counter[tuple[str, str]] = Counter()
    day_credits: Counter[tuple[str, str, str]] = Counter()
    for c in cs:
        day = datetime.fromtimestamp(c.started_at, zone).date().isoformat()
        per_number[(c.tracking_number, c.source)].append(c)
        per_day[(day, c.tracking_number, c.source)].append(c)
        if c.new_contact:
            credits[c.credited] += 1
            day_credits[(day, *c.credited)] += 1
    rows = set(per_number) | set(credits)
    listed = {n for n, _ in rows}
    rows |= {(n, label) for n, label in (sources or {}).items() if n not in listed}
    numbers = [
        {"tracking_number": n, "source": s, **figures(per_number.get((n, s), ()), credits[(n, s)])}
        for n, s in rows
    ]
    numbers.sort(key=lambda r: (-r["calls"], r["tracking_number"], r["source"]))
    days = [
        {
            "day": d,
            "tracking_number": n,
            "source": s,
            **figures(per_day.get((d, n, s), ()), day_credits[(d, n, s)]),
        }
        for d, n, s in sorted(set(per_day) | set(day_credits))
    ]
    return {
        "since": _iso(since, zone),
        "until": _iso(until, zone),
        "tz": str(zone),
        "period_days": _days(since, until, zone),
        "totals": figures(cs, sum(credits.values())),
        "numbers": numbers,
        "days": days,
    }


def _days(since: float, until: float, zone: tzinfo, limit: int = 400) -> list[str]:
    """Every day of the period (a chart's x axis shows the quiet days too)."""
    first = datetime.fromtimestamp(since, zone).date()
    last = datetime.fromtimestamp(max(since, until), zone).date()
    span = min((last - first).days, limit)
    return [(first + timedelta(days=i)).isoformat() for i in range(span + 1)]


def _iso(ts: float, zone: tzinfo) -> str:
    return datetime.fromtimestamp(ts, zone).isoformat(timespec="seconds")


_AGO = re.compile(r"^([0-9]+(?:\.[0-9]+)?)\s*([mhdw])$")
_UNIT_S = {"m": 60.0, "h": 3600.0, "d": 86400.0, "w": 7 * 86400.0}


def parse_since(text: str, now: float, tz: tzinfo | None = None) -> float:
    """``7d``, ``24h``, ``30m``, ``2w`` before ``now``; or a date (``2026-11-01``: its
    midnight in ``tz``, local by default) or a date-time (``2026-11-01T09:00``). Unix
    seconds; ValueError with a clear message otherwise."""
    s = text.strip().lower()
    m = _AGO.match(s)
    if m:
        return _in_range(now - float(m.group(1)) * _UNIT_S[m.group(2)], text)
    zone = tz if tz is not None else datetime.now().astimezone().tzinfo or UTC
    try:
        if len(s) == 10:
            d = date.fromisoformat(s)
            return _in_range(datetime(d.year, d.month, d.day, tzinfo=zone).timestamp(), text)
        dt = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"expected a period such as 7d, 24h, 30m or a date such as 2026-11-01, got {text!r}"
        ) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=zone)
    return _in_range(dt.timestamp(), text)


_LATEST = datetime(9999, 12, 30, tzinfo=UTC).timestamp()  # a day short: any zone's date fits


def _in_range(ts: float, text: str) -> float:
    """``ts`` if a report can start or end there (1970 to 9999), else a ValueError."""
    if not 0.0 <= ts <= _LATEST:  # also NaN (a period of 1e400 days)
        raise ValueError(
            f"{text.strip()[:40]!r} is outside what a report covers (1970-01-01 to 9999-12-30): "
            "give a shorter period or a date"
        )
    return ts


def attribution_hook(redis: Any, sources: dict[str, str]) -> OnDelivered:
    """The worker's delivery hook: count each delivered inbound call for the report.

    ``record_delivery`` writes a call once, so the worker telling it twice is harmless.
    """
    attribution = Attribution(redis, sources=sources)

    async def on_delivered(record: CallRecord, entry: LedgerEntry) -> None:
        await attribution.record_delivery(
            record,
            contact_created=entry.get("contact_created") == "1",
            contact_id=entry.contact_id,
            contact_did=entry.fields.get("contact_did"),
        )

    return on_delivered
