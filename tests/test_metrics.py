"""Metric families from one reading (pure): names, labels and values ops build on."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from telefum.health import LinkState, Snapshot
from telefum.limits import Limits
from telefum.metrics import CallCounts, render
from telephony.backfill import BackfillStatus
from telephony.records import CallRecord
from worker.stats import COUNTER_NAMES

ROOT = Path(__file__).resolve().parent.parent

NOW = 2_000_000.0


def samples(body: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(body.decode())
        for s in fam.samples
    }


def stats() -> dict[str, Any]:
    return {
        "counters": {
            "enqueued": 5,
            "succeeded": 3,
            "retried": 4,
            "dead_lettered": 1,
            "contacts_created": 2,
            "events_created": 3,
        },
        "queue": {"depth": 2, "due": 0, "deferred": 2},
        "pending": 2,
        "dead_letters": 1,
        "workers": [
            {"id": "a:1", "age_s": 1.5, "running": 2},
            {"id": "b:7", "age_s": 99.0, "running": 5},
        ],
        "spool": {"total": 4, "listeners": []},
        "crm_latency": {
            "addevent": {
                "transient": {
                    "buckets": [[0.1, 1], [1.0, 3], ["+Inf", 4]],
                    "count": 4,
                    "sum_s": 7.5,
                }
            }
        },
    }


def record(direction: str, disposition: str, pbx: str = "office") -> CallRecord:
    return CallRecord(
        call_id="1.1",
        direction=direction,
        external="+79161234567",
        did=None,  # type: ignore[arg-type]
        extension="101",
        answered=disposition == "answered",
        started_at=NOW - 10,
        answered_at=None,
        ended_at=NOW,
        disposition=disposition,
        pbx=pbx,  # type: ignore[arg-type]
    )


def test_every_figure_ops_asked_for_is_exported() -> None:
    calls = CallCounts()
    for rec in (record("in", "answered"), record("in", "answered"), record("out", "busy")):
        calls.observe(rec)
    links = (
        LinkState("office", True, NOW - 2.5, events_received=120, reconnects=1, active_calls=3),
        LinkState("branch", False, None, login_error="Authentication failed"),
    )
    m = samples(render(Snapshot(now=NOW, links=links, stats=stats()), calls, process=False))

    def v(name: str, **labels: str) -> float | None:
        return m.get((name, tuple(sorted(labels.items()))))

    assert v("telefum_ami_link_up", pbx="office") == 1
    assert v("telefum_ami_link_up", pbx="branch") == 0
    assert v("telefum_ami_login_rejected", pbx="branch") == 1
    assert v("telefum_ami_last_event_age_seconds", pbx="office") == 2.5
    assert v("telefum_ami_last_event_age_seconds", pbx="branch") is None  # no event yet
    assert v("telefum_ami_events_received_total", pbx="office") == 120
    assert v("telefum_ami_reconnects_total", pbx="office") == 1
    assert v("telefum_calls_active", pbx="office") == 3
    fin = "telefum_calls_finished_total"
    assert v(fin, pbx="office", direction="in", disposition="answered") == 2
    assert v(fin, pbx="office", direction="out", disposition="busy") == 1
    assert v("telefum_jobs_enqueued_total") == 5
    assert v("telefum_jobs_succeeded_total") == 3
    assert v("telefum_jobs_retried_total") == 4
    assert v("telefum_jobs_dead_lettered_total") == 1
    assert v("telefum_crm_contacts_created_total") == 2
    assert v("telefum_queue_depth") == 2 and v("telefum_queue_retrying") == 2
    assert v("telefum_dead_letters") == 1
    assert v("telefum_workers_alive") == 1  # b:7's heartbeat is 99 s old
    assert v("telefum_jobs_in_progress") == 2
    assert v("telefum_worker_heartbeat_age_seconds", worker="b:7") == 99.0
    assert v("telefum_spool_size") == 4
    h = "telefum_crm_request_duration_seconds"
    assert v(f"{h}_bucket", operation="addevent", outcome="transient", le="1.0") == 3
    assert v(f"{h}_bucket", operation="addevent", outcome="transient", le="+Inf") == 4
    assert v(f"{h}_count", operation="addevent", outcome="transient") == 4
    assert v(f"{h}_sum", operation="addevent", outcome="transient") == 7.5
    assert v("telefum_redis_up") == 1


def test_with_redis_down_only_what_this_process_knows_is_exported() -> None:
    body = render(
        Snapshot(
            now=NOW,
            links=(LinkState("office", True),),
            redis_error="refused",
            stats=None,
            spool_size=6,
        ),
        process=False,
    )
    m = samples(body)
    assert m[("telefum_redis_up", ())] == 0
    assert m[("telefum_spool_size", ())] == 6
    assert not any(name.startswith("telefum_jobs_") for name, _ in m)


def test_process_metrics_are_included_by_default() -> None:
    body = render(Snapshot(now=NOW)).decode()
    assert "process_resident_memory_bytes" in body  # read from /proc on Linux
    assert "telefum_build_info" in body


def test_possible_duplicates_are_exported_under_the_name_ops_docs_give() -> None:
    full = stats()
    full["counters"]["possible_duplicates"] = 2
    m = samples(render(Snapshot(now=NOW, stats=full), process=False))
    assert m[("telefum_crm_possible_duplicates_total", ())] == 2
    ops = (ROOT / "docs" / "operations.md").read_text()
    assert "`telefum_crm_possible_duplicates_total`" in ops


def test_every_exported_metric_is_listed_in_the_ops_docs() -> None:
    """docs/operations.md's table names each family (``x_{a,b}_total`` is two names,
    ``x{label}`` one)."""
    ops = (ROOT / "docs" / "operations.md").read_text()
    documented: set[str] = set()
    for name in re.findall(r"`(telefum_[a-z_{},]+)`", ops):
        head, brace, rest = name.partition("{")
        if not brace:
            documented.add(name)
            continue
        group, _, tail = rest.partition("}")
        if not tail or tail.startswith("{"):  # name{labels}
            documented.add(head)
        else:  # name_{a,b}_total: one name per part
            documented |= {f"{head}{part}{tail.partition('{')[0]}" for part in group.split(",")}
    full = stats()
    full["counters"] |= {name: 1 for name in COUNTER_NAMES}
    links = (LinkState("office", True, NOW - 1, active_calls=1),)
    calls = CallCounts()
    calls.observe(record("in", "answered"))
    backfill = BackfillStatus(
        pbx="office",
        source="csv Master.csv",
        state="ok",
        last_error=None,
        gaps=1,
        gap_seconds=3.0,
        uncovered=(),
        uncovered_total=0,
        found=1,
        completed=1,
        released=0,
        held=0,
        pending_windows=0,
        reads_ok=2,
        reads_failed=0,
        bad_rows=0,
        no_id=0,
    )
    snap = Snapshot(now=NOW, links=links, stats=full, spool_size=0, backfills=(backfill,))
    body = render(snap, calls, process=False, limits=Limits())
    exported = {
        fam.name + ("_total" if fam.type == "counter" else "")
        for fam in text_string_to_metric_families(body.decode())
    }
    assert sorted(exported - documented) == []
