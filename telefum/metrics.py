"""``GET /metrics``: Prometheus text format, read at scrape time.

Nothing is counted twice here: the AMI figures are the listener's own counters, the pipeline
figures are the workers' counters in Redis (``worker.stats``, so separate worker processes and
machines add up), and the one thing only this process sees, calls finished by direction and
disposition, is :class:`CallCounts`. A scrape takes a :class:`telefum.health.Snapshot`
(the same reading ``/health`` uses) and turns it into metric families.

Metric names (stable: dashboards and alerts use them):

=========================================== ===================================================
``telefum_ami_link_up{pbx}``                1 when logged in to the PBX
``telefum_ami_login_rejected{pbx}``         1 when the PBX refused our login
``telefum_ami_last_event_age_seconds{pbx}`` since the last AMI event (absent before the first)
``telefum_ami_events_received_total{pbx}``  AMI events read
``telefum_ami_reconnects_total{pbx}``       logins after the first
``telefum_ami_malformed_total{pbx}``        malformed messages skipped
``telefum_calls_active{pbx}``               calls in progress (the tracker's)
``telefum_calls_finished_total{pbx,direction,disposition}``  finished calls seen here
``telefum_ami_gaps_total{pbx}``             gaps in the AMI event stream: link outages, and
                                            this listener's own restarts
``telefum_ami_gap_seconds_total{pbx}``      their length in all
``telefum_backfill_uncovered_gaps_total{pbx}``  gaps backfill could not cover (no source,
                                            calls in the CDR without uniqueid)
``telefum_backfill_calls_total{pbx,how}``   calls from the CDR: "found" (the bridge did not
                                            see them end), "completed" (it saw them in part:
                                            times from the CDR), "released" (seen in part, no
                                            CDR in time: delivered with its own times, flagged)
``telefum_backfill_calls_held{pbx}``        calls waiting for their CDR now
``telefum_backfill_reads_total{pbx,outcome}``  CDR reads: ok, failed
``telefum_backfill_up{pbx}``                1 when the last CDR read worked (absent: no source)
``telefum_backfill_bad_rows_total{pbx}``    CDR rows skipped as unusable
``telefum_redis_up``                        1 when Redis answered PING
``telefum_jobs_<counter>_total``            enqueued, succeeded, skipped, retried,
                                            dead_lettered, requeued, recovered,
                                            agent_login_fallbacks
``telefum_crm_contacts_created_total``      contacts the bridge created
``telefum_crm_events_created_total``        events the bridge logged
``telefum_queue_depth`` / ``_due`` / ``_retrying``  jobs in arq's queue
``telefum_jobs_pending``                    calls accepted, not yet delivered nor dead
``telefum_jobs_in_progress``                jobs running on live workers
``telefum_dead_letters``                    calls in the dead-letter store now
``telefum_workers_alive``                   workers with a fresh heartbeat
``telefum_worker_heartbeat_age_seconds{worker}``
``telefum_spool_size``                      calls in the local spool, waiting for Redis
``telefum_crm_request_duration_seconds{operation,outcome}``  histogram (find, addcont,
                                            addevent; ok, transient, permanent)
``telefum_limit_hits_total{limit}``         times a cap refused something (``telefum.limits``:
                                            tracked_calls, http_connections, http_idle_closed,
                                            http_header_timeout, http_host, sse_streams,
                                            crm_lookups)
=========================================== ===================================================
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.process_collector import ProcessCollector

from telefum import __version__
from telefum.health import HealthSettings, Snapshot
from telefum.limits import NAMES as LIMIT_NAMES
from telefum.limits import Limits

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# worker.stats counter -> metric name (without _total); unknown counters get a generic name
_COUNTER_METRICS = {
    "contacts_created": ("telefum_crm_contacts_created", "Contacts the bridge created in the CRM"),
    "events_created": ("telefum_crm_events_created", "Call events the bridge logged in the CRM"),
    "agent_login_fallbacks": (
        "telefum_jobs_agent_login_fallbacks",
        "Calls written with the service account: the CRM refused the agent's own login",
    ),
    "possible_duplicates": (
        "telefum_crm_possible_duplicates",
        "Events the CRM may hold twice: addevent sends of delivered calls that may have "
        "been carried out unanswered (a worker died, a timeout, a dropped connection)",
    ),
}


class FinishedCall(Protocol):
    @property
    def pbx(self) -> str: ...
    @property
    def direction(self) -> str: ...
    @property
    def disposition(self) -> str: ...


class CallCounts:
    """Calls finished in this process, by PBX, direction and disposition.

    The service calls :meth:`observe` with every finished call record (``CallFinished``).
    """

    def __init__(self) -> None:
        self._counts: Counter[tuple[str, str, str]] = Counter()

    def observe(self, record: FinishedCall) -> None:
        self._counts[(record.pbx, record.direction, record.disposition)] += 1

    def items(self) -> list[tuple[tuple[str, str, str], int]]:
        return sorted(self._counts.items())

    @property
    def total(self) -> int:
        return sum(self._counts.values())


def families(
    snap: Snapshot,
    calls: CallCounts | None = None,
    cfg: HealthSettings | None = None,
    limits: Limits | None = None,
) -> Iterator[Metric]:
    """The metric families of one reading."""
    cfg = cfg or HealthSettings()
    up = GaugeMetricFamily("telefum_ami_link_up", "1 when logged in to the PBX", labels=["pbx"])
    rejected = GaugeMetricFamily(
        "telefum_ami_login_rejected", "1 when the PBX refused the login", labels=["pbx"]
    )
    age = GaugeMetricFamily(
        "telefum_ami_last_event_age_seconds", "Seconds since the last AMI event", labels=["pbx"]
    )
    events = CounterMetricFamily("telefum_ami_events_received", "AMI events read", labels=["pbx"])
    reconnects = CounterMetricFamily(
        "telefum_ami_reconnects", "AMI logins after the first", labels=["pbx"]
    )
    malformed = CounterMetricFamily(
        "telefum_ami_malformed", "Malformed AMI messages skipped", labels=["pbx"]
    )
    active = GaugeMetricFamily("telefum_calls_active", "Calls in progress", labels=["pbx"])
    for link in snap.links:
        up.add_metric([link.pbx], 1.0 if link.connected else 0.0)
        rejected.add_metric([link.pbx], 1.0 if link.login_error else 0.0)
        if link.last_event_at is not None:
            age.add_metric([link.pbx], max(0.0, snap.now - link.last_event_at))
        events.add_metric([link.pbx], link.events_received)
        reconnects.add_metric([link.pbx], link.reconnects)
        malformed.add_metric([link.pbx], link.malformed)
        if link.active_calls is not None:
            active.add_metric([link.pbx], link.active_calls)
    yield from (up, rejected, age, events, reconnects, malformed, active)
    yield from _backfill(snap)

    finished = CounterMetricFamily(
        "telefum_calls_finished",
        "Finished calls seen by this process",
        labels=["pbx", "direction", "disposition"],
    )
    for labels, n in calls.items() if calls else []:
        finished.add_metric(list(labels), n)
    yield finished

    if snap.redis_checked:
        yield GaugeMetricFamily(
            "telefum_redis_up", "1 when Redis answered PING", value=0 if snap.redis_error else 1
        )

    if snap.stats is not None:
        yield from _pipeline(snap.stats, cfg)

    spool = snap.spool_size
    if spool is None and snap.stats is not None:
        spool = int(snap.stats.get("spool", {}).get("total", 0))
    if spool is not None:
        yield GaugeMetricFamily(
            "telefum_spool_size",
            "Finished calls in the local spool, waiting for Redis",
            value=spool,
        )
    if limits is not None:
        hits = CounterMetricFamily(
            "telefum_limit_hits",
            "Times a cap refused something (see telefum.limits)",
            labels=["limit"],
        )
        for name in sorted({*LIMIT_NAMES, *limits.hits}):
            hits.add_metric([name], limits.hits.get(name, 0))
        yield hits
    info = GaugeMetricFamily("telefum_build_info", "telefum-bridge version", labels=["version"])
    info.add_metric([__version__], 1)
    yield info


def _backfill(snap: Snapshot) -> Iterator[Metric]:
    gaps = CounterMetricFamily(
        "telefum_ami_gaps", "Gaps in the AMI event stream (outages, restarts)", labels=["pbx"]
    )
    seconds = CounterMetricFamily(
        "telefum_ami_gap_seconds", "Length of the gaps in the AMI event stream", labels=["pbx"]
    )
    uncovered = CounterMetricFamily(
        "telefum_backfill_uncovered_gaps", "Gaps backfill could not cover", labels=["pbx"]
    )
    calls = CounterMetricFamily(
        "telefum_backfill_calls",
        "Calls from the CDR by how they were used",
        labels=["pbx", "how"],
    )
    held = GaugeMetricFamily(
        "telefum_backfill_calls_held", "Calls waiting for their CDR", labels=["pbx"]
    )
    reads = CounterMetricFamily(
        "telefum_backfill_reads", "CDR reads by outcome", labels=["pbx", "outcome"]
    )
    up = GaugeMetricFamily("telefum_backfill_up", "1 when the last CDR read worked", labels=["pbx"])
    bad = CounterMetricFamily(
        "telefum_backfill_bad_rows", "CDR rows skipped as unusable", labels=["pbx"]
    )
    for b in snap.backfills:
        gaps.add_metric([b.pbx], b.gaps)
        seconds.add_metric([b.pbx], b.gap_seconds)
        uncovered.add_metric([b.pbx], b.uncovered_total)
        if b.state == "off":
            continue
        for how, n in (("found", b.found), ("completed", b.completed), ("released", b.released)):
            calls.add_metric([b.pbx, how], n)
        held.add_metric([b.pbx], b.held)
        reads.add_metric([b.pbx, "ok"], b.reads_ok)
        reads.add_metric([b.pbx, "failed"], b.reads_failed)
        up.add_metric([b.pbx], 1.0 if b.state == "ok" else 0.0)
        bad.add_metric([b.pbx], b.bad_rows)
    yield from (gaps, seconds, uncovered, calls, held, reads, up, bad)


def _pipeline(stats: dict[str, Any], cfg: HealthSettings) -> Iterator[Metric]:
    for name, value in sorted(stats.get("counters", {}).items()):
        metric, doc = _COUNTER_METRICS.get(name, (f"telefum_jobs_{name}", f"Jobs {name}"))
        yield CounterMetricFamily(metric, doc, value=value)
    q = stats.get("queue", {})
    yield GaugeMetricFamily("telefum_queue_depth", "Jobs in the queue", value=q.get("depth", 0))
    yield GaugeMetricFamily("telefum_queue_due", "Queued jobs ready to run", value=q.get("due", 0))
    yield GaugeMetricFamily(
        "telefum_queue_retrying", "Queued jobs waiting for a retry", value=q.get("deferred", 0)
    )
    yield GaugeMetricFamily(
        "telefum_jobs_pending",
        "Calls accepted, not yet delivered nor dead-lettered",
        value=stats.get("pending", 0),
    )
    yield GaugeMetricFamily(
        "telefum_dead_letters", "Calls in the dead-letter store", value=stats.get("dead_letters", 0)
    )
    workers = stats.get("workers", [])
    alive = [w for w in workers if w["age_s"] <= cfg.worker_heartbeat_max_age_s]
    yield GaugeMetricFamily(
        "telefum_workers_alive", "Workers with a fresh heartbeat", value=len(alive)
    )
    yield GaugeMetricFamily(
        "telefum_jobs_in_progress",
        "Jobs running on live workers",
        value=sum(int(w.get("running", 0)) for w in alive),
    )
    beat = GaugeMetricFamily(
        "telefum_worker_heartbeat_age_seconds",
        "Seconds since a worker's heartbeat",
        labels=["worker"],
    )
    for w in workers:
        beat.add_metric([w["id"]], w["age_s"])
    yield beat

    hist = HistogramMetricFamily(
        "telefum_crm_request_duration_seconds",
        "CRM request latency by operation and outcome",
        labels=["operation", "outcome"],
    )
    for op, outcomes in sorted(stats.get("crm_latency", {}).items()):
        for outcome, h in sorted(outcomes.items()):
            buckets = [(le if isinstance(le, str) else _le(le), float(n)) for le, n in h["buckets"]]
            hist.add_metric([op, outcome], buckets, sum_value=h["sum_s"])
    yield hist


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(float(bound))


class _SnapshotCollector:
    def __init__(
        self,
        snap: Snapshot,
        calls: CallCounts | None,
        cfg: HealthSettings,
        limits: Limits | None,
    ) -> None:
        self.snap, self.calls, self.cfg, self.limits = snap, calls, cfg, limits

    def collect(self) -> Iterator[Metric]:
        return families(self.snap, self.calls, self.cfg, self.limits)


def render(
    snap: Snapshot,
    calls: CallCounts | None = None,
    cfg: HealthSettings | None = None,
    *,
    process: bool = True,
    limits: Limits | None = None,
) -> bytes:
    """One scrape's body in the Prometheus text format."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_SnapshotCollector(snap, calls, cfg or HealthSettings(), limits))
    if process:
        ProcessCollector(registry=registry)
    return generate_latest(registry)
