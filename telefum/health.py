"""Is the bridge fine? The answer ``GET /health`` and ``telefum status`` give.

Pure core: :func:`evaluate` turns a :class:`Snapshot` (what was observed, with the time)
into a :class:`Health` (ok or not, the reasons, the details as JSON). The thin I/O shell,
:func:`observe`, reads the AMI links, pings Redis and reads the worker statistics
(``worker.stats.read_stats``). Tests drive the core with plain values and the shell with a
real Redis and a real listener.

Healthy means all of: every AMI link logged in (and, if ``[health] max_event_age_s`` is set,
an event seen recently), Redis answering PING, at least one worker heartbeat fresher than
``[health] worker_heartbeat_max_age_s``, and the spool empty or shrinking.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import pydantic
from pydantic import ConfigDict, Field

from crm_client.redact import redact_text
from telephony.pbxclock import SKEW_WARN_S


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
class Snapshot:
    """Everything health looks at, observed at ``now`` (unix seconds)."""

    now: float
    links: tuple[LinkState, ...] = ()
    redis_error: str | None = None  # None: PING answered (or no Redis in this process)
    redis_checked: bool = True
    stats: dict[str, Any] | None = None  # worker.stats.read_stats(); None if unreadable
    spool_size: int | None = None  # this process's spool; None: take the stats' total
    spool_error: str | None = None  # the spool could not be read


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

    def to_json(self) -> dict[str, Any]:
        return {"status": "ok" if self.ok else "unhealthy", "reasons": self.reasons, **self.details}


def evaluate(
    snap: Snapshot, cfg: HealthSettings, spool_watch: SpoolWatch | None = None
) -> Health:
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
        ami.append({
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
                link.pbx_clock_offset_s is not None and abs(link.pbx_clock_offset_s) > SKEW_WARN_S
            ),
        })  # fmt: skip

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
                "no worker alive: no heartbeat in the last "
                f"{cfg.worker_heartbeat_max_age_s:g} s"
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

    details = {
        "ami": ami,
        "redis": redis,
        "workers": workers,
        "queue": queue,
        "spool": spool,
        "checked_at": snap.now,
    }
    return Health(ok=not reasons, reasons=reasons, details=details)


# async (redis) -> dict, e.g. worker.stats.read_stats
StatsReader = Callable[[Any], Awaitable[dict[str, Any]]]


async def observe(
    links: Sequence[AmiLinkView],
    redis: RedisPing | None,
    cfg: HealthSettings,
    *,
    read_stats: StatsReader | None = None,
    spool_size: Callable[[], int] | None = None,
    clock: Callable[[], float] = time.time,
) -> Snapshot:
    """Read the world once (bounded by ``cfg.redis_timeout_s``) into a :class:`Snapshot`."""
    from worker.stats import read_stats as default_reader

    reader: StatsReader = read_stats or default_reader
    redis_error: str | None = None
    stats: dict[str, Any] | None = None
    if redis is not None:
        try:
            await asyncio.wait_for(redis.ping(), cfg.redis_timeout_s)
            stats = await asyncio.wait_for(reader(redis), cfg.redis_timeout_s)
        except TimeoutError:
            redis_error = f"no answer within {cfg.redis_timeout_s:g} s"
        except Exception as err:  # any client error means "not reachable" to ops
            redis_error = _short(err)
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
    )


def _short(err: BaseException) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return redact_text(text)[:200]
