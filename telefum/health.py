"""Is the bridge fine? The answer ``GET /health`` and ``telefum status`` give.

Pure core: :func:`evaluate` turns a :class:`Snapshot` (what was observed, with the time)
into a :class:`Health` (ok or not, the reasons, the details as JSON). The thin I/O shell,
:func:`observe`, reads the AMI links, pings Redis and reads the worker statistics
(``worker.stats.read_stats``). Tests drive the core with plain values and the shell with a
real Redis and a real listener.

Healthy means all of: every AMI link logged in (and, if ``[health] max_event_age_s`` is set,
an event seen recently), Redis answering PING, at least one worker heartbeat fresher than
``[health] worker_heartbeat_max_age_s``, the spool empty or shrinking, every backfill source
readable as configured, no gap in the AMI event stream in the last ``[health]
gap_alert_s`` that backfill could not cover, no background task of this process or of a
live worker failing (``telephony.supervise``), and every CRM answering. A CRM is failing
when its requests have all failed (no answer, timeout, 5xx, 429; ``worker.crm_health``)
over at least ``[health] crm_failing_s`` with none succeeding: then the verdict is
*degraded* (the bridge keeps every call and delivers it once the CRM answers), still 503,
since 200 means fine; a broken part of the bridge is *unhealthy*.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import pydantic
from pydantic import ConfigDict, Field

from crm_client.redact import redact_text, redact_url
from telephony.backfill import BackfillStatus
from telephony.pbxclock import SKEW_WARN_S
from telephony.records import iso_utc
from telephony.supervise import TaskState

if TYPE_CHECKING:
    from telefum.config import Settings


@pydantic.dataclasses.dataclass(frozen=True, config=ConfigDict(extra="forbid"))
class HealthSettings:
    """When ``GET /health`` says 503 (``[health]``)."""

    # 0: report the age of the last AMI event but never fail on it (a quiet PBX is fine)
    max_event_age_s: float = Field(default=0.0, ge=0, strict=True)
    # a worker whose last heartbeat is older than this is gone
    worker_heartbeat_max_age_s: float = Field(default=30.0, ge=1, strict=True)
    # a spool that holds calls and has not shrunk for this long is stuck
    spool_stall_s: float = Field(default=60.0, ge=1, strict=True)
    redis_timeout_s: float = Field(default=2.0, ge=0.1, strict=True)
    # a CRM whose requests all fail (no answer, timeout, 5xx, 429) over this long, with none
    # succeeding in between, makes /health "degraded"; and, answering again, gets its
    # waiting calls run at once
    crm_failing_s: float = Field(default=60.0, ge=1, strict=True)
    # a gap in the AMI event stream that the [backfill] source could not cover (its CDR
    # unreadable, calls without uniqueid) is a reason this long after it closed; 0: listed,
    # never a reason (without a source gaps are listed, never reasons)
    gap_alert_s: float = Field(default=900.0, ge=0, strict=True)


class AmiLinkView(Protocol):
    """What health and metrics read of a listener (``telephony.listener.AmiListener``)."""

    pbx: str
    connected: bool
    last_event_at: float | None  # wall clock (time.time()) of the last event
    events_received: int
    reconnects: int
    login_error: str | None

    @property
    def malformed(self) -> int: ...


class RedisPing(Protocol):
    def ping(self, **kwargs: Any) -> Any: ...  # awaitable (redis.asyncio.Redis.ping)


@dataclass(frozen=True)
class LinkState:
    """One AMI link as observed at one moment (a plain copy: the core stays pure)."""

    pbx: str
    connected: bool
    last_event_at: float | None = None
    events_received: int = 0
    reconnects: int = 0
    login_error: str | None = None
    last_error: str | None = None
    malformed: int = 0
    active_calls: int | None = None
    pbx_clock_offset_s: float | None = None  # this host's clock minus the PBX's (Timestamps)

    @classmethod
    def of(cls, link: AmiLinkView) -> LinkState:
        tracker = getattr(link, "tracker", None)
        active = getattr(tracker, "active_count", None)
        offset = getattr(tracker, "clock_offset", None)
        return cls(
            pbx=link.pbx,
            connected=bool(link.connected),
            last_event_at=link.last_event_at,
            events_received=int(link.events_received),
            reconnects=int(link.reconnects),
            login_error=link.login_error,
            last_error=getattr(link, "last_error", None),
            malformed=int(link.malformed),
            active_calls=int(active) if isinstance(active, int) else None,
            pbx_clock_offset_s=float(offset) if isinstance(offset, (int, float)) else None,
        )


@dataclass(frozen=True)
class CrmRoute:
    """One configured CRM: its lock scope (the workers' name for it in Redis), its URL
    with any password masked, and the PBXs whose calls go to it."""

    scope: str
    url: str
    pbxs: tuple[str, ...]


def crm_routes(settings: Settings) -> tuple[CrmRoute, ...]:
    """The CRMs calls go to: the global ``[crm]`` (when a PBX uses it), each PBX's own."""
    routes: dict[str, tuple[str, list[str]]] = {}
    for ami in settings.ami:
        target = settings.crm_for(ami.name)
        routes.setdefault(target.lock_scope, (target.url, []))[1].append(ami.name)
    return tuple(
        CrmRoute(scope, redact_url(url), tuple(pbxs)) for scope, (url, pbxs) in routes.items()
    )


@dataclass(frozen=True)
class Snapshot:
    """Everything health looks at, observed at ``now`` (unix seconds)."""

    now: float
    links: tuple[LinkState, ...] = ()
    redis_error: str | None = None  # None: PING answered (or no Redis in this process)
    redis_checked: bool = True
    stats: dict[str, Any] | None = None  # worker.stats.read_stats(); None if unreadable
    spool_size: int | None = None  # this process's spool; None: take the stats' total
    spool_error: str | None = None  # the spool could not be read
    failing: tuple[TaskState, ...] = ()  # this process's background tasks that fail
    crms: tuple[CrmRoute, ...] = ()  # the configured CRMs, whose state is in the stats
    waiting_by_pbx: Mapping[str, int] | None = None  # pending calls by PBX (several CRMs)
    backfills: tuple[BackfillStatus, ...] = ()  # one per PBX this process listens to


class SpoolWatch:
    """Remembers when the spool last shrank, to tell "draining" from "stuck".

    A spool that holds calls is fine while it shrinks (the hand-over to Redis runs); it is
    stuck when it has not shrunk for ``stall_s``. Observations come from health checks.
    """

    def __init__(self) -> None:
        self._last_size = 0
        self._progress_at: float | None = None

    def observe(self, size: int, now: float) -> float:
        """Seconds since the spool last made progress (0 when empty or just shrank)."""
        if size == 0 or size < self._last_size or self._progress_at is None:
            self._progress_at = now
        self._last_size = size
        return 0.0 if size == 0 else max(0.0, now - self._progress_at)


@dataclass
class Health:
    ok: bool
    reasons: list[str]
    details: dict[str, Any] = field(default_factory=dict)
    degraded: bool = False  # not ok only because a CRM fails: the bridge itself is fine

    @property
    def status(self) -> str:
        """``ok``, ``degraded`` (a CRM fails, calls wait safely) or ``unhealthy``."""
        return "ok" if self.ok else "degraded" if self.degraded else "unhealthy"

    def to_json(self) -> dict[str, Any]:
        return {"status": self.status, "reasons": self.reasons, **self.details}


def evaluate(snap: Snapshot, cfg: HealthSettings, spool_watch: SpoolWatch | None = None) -> Health:
    """The verdict and its reasons, from what was observed. No I/O, no clock."""
    reasons: list[str] = []
    ami = []
    for link in snap.links:
        age = None if link.last_event_at is None else round(snap.now - link.last_event_at, 3)
        if link.login_error:
            reasons.append(f"AMI login rejected: {link.login_error} (pbx {link.pbx})")
        elif not link.connected:
            why = f" ({link.last_error})" if link.last_error else ""
            reasons.append(f"AMI link down: pbx {link.pbx}{why}")
        elif cfg.max_event_age_s > 0 and (age is None or age > cfg.max_event_age_s):
            seen = "no event yet" if age is None else f"no event for {age:.0f} s"
            reasons.append(
                f"AMI link silent: pbx {link.pbx}, {seen} (limit {cfg.max_event_age_s:g} s)"
            )
        ami.append(
            {
                "pbx": link.pbx,
                "connected": link.connected,
                "last_event_age_s": age,
                "events_received": link.events_received,
                "reconnects": link.reconnects,
                "login_error": link.login_error,
                "last_error": link.last_error,
                "malformed": link.malformed,
                "active_calls": link.active_calls,
                "pbx_clock_offset_s": (
                    None if link.pbx_clock_offset_s is None else round(link.pbx_clock_offset_s, 1)
                ),
                "pbx_clock_skewed": (
                    link.pbx_clock_offset_s is not None
                    and abs(link.pbx_clock_offset_s) > SKEW_WARN_S
                ),
            }
        )

    redis: dict[str, Any] = {"checked": snap.redis_checked, "ok": snap.redis_error is None}
    if snap.redis_error is not None:
        redis["error"] = snap.redis_error
        reasons.append(f"Redis unreachable: {snap.redis_error}")

    stats = snap.stats
    workers: dict[str, Any] | None = None
    queue: dict[str, Any] | None = None
    if stats is not None:
        max_age = cfg.worker_heartbeat_max_age_s
        beats = [w for w in stats.get("workers", []) if w["age_s"] <= max_age]
        workers = {
            "alive": len(beats),
            "heartbeats": stats.get("workers", []),
        }
        if not beats:
            reasons.append(
                f"no worker alive: no heartbeat in the last {cfg.worker_heartbeat_max_age_s:g} s"
            )
        q = stats.get("queue", {})
        queue = {
            "depth": q.get("depth", 0),
            "due": q.get("due", 0),
            "retrying": q.get("deferred", 0),
            "in_progress": sum(int(w.get("running", 0)) for w in beats),
            "pending": stats.get("pending", 0),
            "dead_letters": stats.get("dead_letters", 0),
        }

    spool_size = snap.spool_size
    if spool_size is None and stats is not None:
        spool_size = int(stats.get("spool", {}).get("total", 0))
    spool: dict[str, Any] | None = None
    if spool_size is not None:
        stalled = spool_watch.observe(spool_size, snap.now) if spool_watch else 0.0
        draining = spool_size == 0 or stalled < cfg.spool_stall_s
        spool = {"size": spool_size, "draining": draining, "stalled_s": round(stalled, 1)}
        if not draining:
            reasons.append(
                f"spool not draining: {spool_size} calls waiting, none handed over "
                f"for {stalled:.0f} s"
            )

    if snap.spool_error is not None:
        reasons.append(f"spool unreadable: {snap.spool_error}")
        spool = {"size": None, "error": snap.spool_error}

    tasks = []
    for task in snap.failing:
        since = 0.0 if task.failing_since is None else max(0.0, snap.now - task.failing_since)
        reasons.append(
            f"background task {task.name} failing for {since:.0f} s "
            f"({task.failures} failure(s)): {redact_text(task.last_error or '')}"
        )
        tasks.append(
            {
                "task": task.name,
                "failures": task.failures,
                "failing_s": round(since, 1),
                "error": task.last_error,
            }
        )
    for w in (workers or {}).get("heartbeats", []):
        if w.get("failing") and w["age_s"] <= cfg.worker_heartbeat_max_age_s:
            reasons.append(f"worker {w['id']}: background task failing: {w['failing']}")

    backfill = [_backfill(b, snap.now, cfg, reasons) for b in snap.backfills]
    crm, failing = _crms(snap, cfg)
    details = {
        "ami": ami,
        "backfill": backfill,
        "redis": redis,
        "workers": workers,
        "queue": queue,
        "spool": spool,
        "tasks": {"failing": tasks},
        "crm": crm,
        "checked_at": snap.now,
    }
    degraded = bool(failing) and not reasons
    reasons += failing
    return Health(ok=not reasons, reasons=reasons, details=details, degraded=degraded)


def _crms(snap: Snapshot, cfg: HealthSettings) -> tuple[list[dict[str, Any]] | None, list[str]]:
    """Each configured CRM as the workers saw it, and a reason per failing one."""
    stats = snap.stats
    if stats is None or not snap.crms:
        return None, []
    states = {s["scope"]: s for s in stats.get("crm", [])}
    out, reasons = [], []
    for route in snap.crms:
        st = states.get(route.scope, {})
        since, last = st.get("failing_since"), st.get("last_failure_at")
        failing = since is not None and last is not None and last - since >= cfg.crm_failing_s
        if len(snap.crms) == 1:
            waiting: int | None = int(stats.get("pending", 0))
        elif snap.waiting_by_pbx is not None:
            waiting = sum(snap.waiting_by_pbx.get(p, 0) for p in route.pbxs)
        else:
            waiting = None
        ok_at = st.get("last_ok_at")
        out.append(
            {
                "url": route.url,
                "pbx": list(route.pbxs),
                "failing": failing,
                "failing_since": since,
                "failures": st.get("failures", 0),
                "last_error": st.get("last_error"),
                "last_error_age_s": None if last is None else round(snap.now - last, 3),
                "last_ok_age_s": None if ok_at is None else round(snap.now - ok_at, 3),
                "waiting": waiting,
            }
        )
        if failing:
            assert since is not None and last is not None
            calls = "calls waiting: unknown" if waiting is None else f"{waiting} calls waiting"
            reasons.append(
                f"CRM {route.url} failing since {iso_utc(since)} ({_span(snap.now - since)}: "
                f"{st.get('failures', 0)} requests failed, none succeeded): {calls}; last "
                f"error {_span(snap.now - last)} ago: {st.get('last_error') or 'unknown'}"
            )
    return out, reasons


def _span(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _backfill(
    b: BackfillStatus, now: float, cfg: HealthSettings, reasons: list[str]
) -> dict[str, Any]:
    """One PBX's backfill as /health shows it; its reasons: a source misconfigured, and
    the gaps in the event stream its source could not cover (for ``gap_alert_s`` after
    they closed: calls that began and ended in one may be missing). Without a source
    (``kind = "none"``) the gaps are listed, not reasons: a PBX restart is no fault of the
    bridge, and nothing could cover them."""
    if b.state == "misconfigured":
        reasons.append(f"backfill cannot read the CDR: pbx {b.pbx}, {b.source}: {b.last_error}")
    for gap in b.uncovered if b.state != "off" else ():
        if cfg.gap_alert_s > 0 and now - gap.until <= cfg.gap_alert_s:
            reasons.append(
                f"AMI gap not backfilled: pbx {b.pbx}, {gap.seconds:.1f} s from "
                f"{iso_utc(gap.since)}: {gap.why}"
            )
    return {
        "pbx": b.pbx,
        "source": b.source,
        "state": b.state,
        "last_error": b.last_error,
        "gaps": b.gaps,
        "gap_seconds": b.gap_seconds,
        "uncovered_gaps": [
            {
                "from": iso_utc(g.since),
                "to": iso_utc(g.until),
                "seconds": round(g.seconds, 1),
                "why": g.why,
            }
            for g in b.uncovered
        ],
        "calls_found": b.found,
        "calls_completed": b.completed,
        "calls_released": b.released,
        "calls_held": b.held,
        "pending_windows": b.pending_windows,
        "bad_rows": b.bad_rows,
        "calls_without_id": b.no_id,
    }


# async (redis) -> dict, e.g. worker.stats.read_stats
StatsReader = Callable[[Any], Awaitable[dict[str, Any]]]


async def observe(
    links: Sequence[AmiLinkView],
    redis: RedisPing | None,
    cfg: HealthSettings,
    *,
    read_stats: StatsReader | None = None,
    spool_size: Callable[[], int] | None = None,
    backfills: Callable[[], Sequence[BackfillStatus]] | None = None,
    clock: Callable[[], float] = time.time,
    failing: Callable[[], Sequence[TaskState]] | None = None,
    crms: Sequence[CrmRoute] = (),
) -> Snapshot:
    """Read the world once (bounded by ``cfg.redis_timeout_s``) into a :class:`Snapshot`.
    ``crms``: the configured CRMs (:func:`crm_routes`); with several, a CRM that fails
    has its waiting calls counted by PBX."""
    from worker.crm_health import waiting_by_pbx
    from worker.stats import read_stats as default_reader

    reader: StatsReader = read_stats or default_reader
    redis_error: str | None = None
    stats: dict[str, Any] | None = None
    waiting: dict[str, int] | None = None
    if redis is not None:
        try:
            await asyncio.wait_for(redis.ping(), cfg.redis_timeout_s)
            stats = await asyncio.wait_for(reader(redis), cfg.redis_timeout_s)
        except TimeoutError:
            redis_error = f"no answer within {cfg.redis_timeout_s:g} s"
        except Exception as err:  # any client error means "not reachable" to ops
            redis_error = _short(err)
    if (
        stats is not None
        and len(crms) > 1
        and any(s.get("failing_since") for s in stats.get("crm", []))
    ):
        with contextlib.suppress(Exception):  # unknown, said as such
            count: Any = waiting_by_pbx  # takes the redis.asyncio.Redis behind RedisPing
            waiting = await asyncio.wait_for(count(redis), cfg.redis_timeout_s)
    size, spool_error = None, None
    if spool_size is not None:
        try:
            size = int(spool_size())
        except Exception as err:  # a broken spool is a reason, not a crash
            spool_error = _short(err)
    return Snapshot(
        now=clock(),
        links=tuple(LinkState.of(link) for link in links),
        redis_error=redis_error,
        redis_checked=redis is not None,
        stats=stats,
        spool_size=size,
        spool_error=spool_error,
        failing=tuple(failing()) if failing is not None else (),
        crms=tuple(crms),
        waiting_by_pbx=waiting,
        backfills=tuple(backfills()) if backfills is not None else (),
    )


def _short(err: BaseException) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return redact_text(text)[:200]
