"""The health verdict from what was observed (pure core: plain values in, reasons out)."""

from __future__ import annotations

from typing import Any

from telefum.config import HealthSettings
from telefum.health import CrmRoute, LinkState, Snapshot, SpoolWatch, evaluate
from telephony.supervise import TaskState

CFG = HealthSettings(worker_heartbeat_max_age_s=30, spool_stall_s=60)
NOW = 1_000_000.0


def stats(workers: list[dict[str, Any]] | None = None, spool: int = 0) -> dict[str, Any]:
    return {
        "counters": {"enqueued": 3},
        "queue": {"depth": 4, "due": 1, "deferred": 3},
        "pending": 4,
        "dead_letters": 2,
        "workers": [{"id": "h:1", "age_s": 2.0, "running": 1}] if workers is None else workers,
        "spool": {"total": spool, "listeners": []},
        "crm_latency": {},
    }


def link(**kw: Any) -> LinkState:
    return LinkState(**({"pbx": "office", "connected": True, "last_event_at": NOW - 5} | kw))


def snap(**kw: Any) -> Snapshot:
    return Snapshot(**({"now": NOW, "links": (link(),), "stats": stats()} | kw))


def test_all_fine_is_healthy_with_the_details_ops_read() -> None:
    h = evaluate(snap(), CFG)
    assert h.ok and h.reasons == []
    body = h.to_json()
    assert body["status"] == "ok"
    assert body["ami"][0]["pbx"] == "office" and body["ami"][0]["last_event_age_s"] == 5.0
    assert body["queue"] == {
        "depth": 4,
        "due": 1,
        "retrying": 3,
        "in_progress": 1,
        "pending": 4,
        "dead_letters": 2,
    }
    assert body["workers"]["alive"] == 1
    assert body["spool"]["size"] == 0


def test_a_rejected_login_is_the_reason_not_just_a_down_link() -> None:
    h = evaluate(snap(links=(link(connected=False, login_error="Authentication failed"),)), CFG)
    assert not h.ok
    assert h.reasons == ["AMI login rejected: Authentication failed (pbx office)"]


def test_a_down_link_names_the_pbx_and_why() -> None:
    down = link(pbx="branch", connected=False, last_error="connection refused")
    h = evaluate(snap(links=(link(), down)), CFG)
    assert h.reasons == ["AMI link down: pbx branch (connection refused)"]


def test_event_age_fails_only_when_a_limit_is_set() -> None:
    quiet = snap(links=(link(last_event_at=NOW - 3600),))
    assert evaluate(quiet, CFG).ok
    strict = HealthSettings(max_event_age_s=600)
    h = evaluate(quiet, strict)
    assert h.reasons == ["AMI link silent: pbx office, no event for 3600 s (limit 600 s)"]
    assert evaluate(snap(links=(link(last_event_at=None),)), strict).reasons == [
        "AMI link silent: pbx office, no event yet (limit 600 s)"
    ]


def test_redis_unreachable_is_a_reason_and_worker_state_is_unknown() -> None:
    h = evaluate(snap(redis_error="Connection refused", stats=None), CFG)
    assert h.reasons == ["Redis unreachable: Connection refused"]
    assert h.details["workers"] is None and h.details["queue"] is None


def test_no_heartbeat_means_no_worker_alive() -> None:
    assert evaluate(snap(stats=stats(workers=[])), CFG).reasons == [
        "no worker alive: no heartbeat in the last 30 s"
    ]


def test_a_stale_heartbeat_does_not_count_as_alive() -> None:
    old = [{"id": "h:1", "age_s": 31.0, "running": 2}]
    h = evaluate(snap(stats=stats(workers=old)), CFG)
    assert not h.ok and h.details["queue"]["in_progress"] == 0


def test_a_spool_that_shrinks_is_draining_and_one_that_does_not_is_stuck() -> None:
    watch = SpoolWatch()
    assert evaluate(snap(now=NOW, spool_size=10), CFG, watch).ok
    assert evaluate(snap(now=NOW + 50, spool_size=8), CFG, watch).ok  # shrank
    assert evaluate(snap(now=NOW + 100, spool_size=8), CFG, watch).ok  # 50 s without progress
    h = evaluate(snap(now=NOW + 111, spool_size=9), CFG, watch)  # 61 s, and it grew
    assert h.reasons == ["spool not draining: 9 calls waiting, none handed over for 61 s"]
    assert evaluate(snap(now=NOW + 112, spool_size=0), CFG, watch).ok


def test_without_a_local_spool_the_published_spool_total_is_used() -> None:
    h = evaluate(snap(stats=stats(spool=7)), CFG, SpoolWatch())
    assert h.ok and h.details["spool"]["size"] == 7


def test_an_unreadable_spool_is_a_reason() -> None:
    h = evaluate(snap(spool_error="Permission denied"), CFG)
    assert h.reasons == ["spool unreadable: Permission denied"]


def test_every_problem_is_listed_at_once() -> None:
    h = evaluate(snap(links=(link(connected=False),), redis_error="timeout", stats=None), CFG)
    assert [r.split(":")[0] for r in h.reasons] == ["AMI link down", "Redis unreachable"]


def test_a_failing_background_task_is_a_reason_with_its_error_and_how_long() -> None:
    task = TaskState(
        "handoff-drainer",
        failures=4,
        failing_since=NOW - 12,
        last_error="OSError: [Errno 24] Too many open files",
    )
    h = evaluate(snap(failing=(task,)), CFG)
    assert not h.ok
    assert h.reasons == [
        "background task handoff-drainer failing for 12 s (4 failure(s)): "
        "OSError: [Errno 24] Too many open files"
    ]
    assert h.to_json()["tasks"] == {
        "failing": [
            {
                "task": "handoff-drainer",
                "failures": 4,
                "failing_s": 12.0,
                "error": "OSError: [Errno 24] Too many open files",
            }
        ]
    }


def test_a_live_workers_failing_task_is_a_reason_a_gone_workers_is_not() -> None:
    workers = [
        {"id": "h:1", "age_s": 2.0, "running": 0, "failing": "worker-reconciler: KeyError: x"},
        {"id": "h:2", "age_s": 99.0, "running": 0, "failing": "worker-heartbeat: boom"},
        {"id": "h:3", "age_s": 1.0, "running": 0, "failing": ""},
    ]
    h = evaluate(snap(stats=stats(workers)), CFG)
    assert h.reasons == ["worker h:1: background task failing: worker-reconciler: KeyError: x"]


ROUTE = CrmRoute("a1b2c3", "https://crm.example.com/rest", ("office",))
ERROR = "TransientCrmError: find https://crm.example.com/rest: HTTP 503: Service Unavailable"


def crm_state(
    since: float | None,
    last: float | None,
    fails: int = 0,
    scope: str = "a1b2c3",
    ok: float | None = NOW - 600,
) -> dict[str, Any]:
    """A CRM's state as ``worker.crm_health.read_states`` gives it."""
    return {
        "scope": scope,
        "url": "https://crm.example.com/rest",
        "last_ok_at": ok,
        "failing_since": since,
        "last_failure_at": last,
        "failures": fails,
        "last_error": ERROR if fails else None,
    }


def with_crm(
    *states: dict[str, Any], routes: tuple[CrmRoute, ...] = (ROUTE,), **kw: Any
) -> Snapshot:
    return snap(stats=stats() | {"crm": list(states), "pending": 150}, crms=routes, **kw)


def test_a_crm_failing_past_the_limit_is_degraded_naming_it_since_when_and_the_calls_waiting() -> (
    None
):
    h = evaluate(with_crm(crm_state(NOW - 250, NOW - 12, fails=37)), CFG)
    assert not h.ok and h.degraded and h.to_json()["status"] == "degraded"
    assert h.reasons == [
        "CRM https://crm.example.com/rest failing since 1970-01-12T13:42:30.000Z (4.2 min: "
        f"37 requests failed, none succeeded): 150 calls waiting; last error 12 s ago: {ERROR}"
    ]
    [crm] = h.details["crm"]
    assert crm["failing"] is True and crm["waiting"] == 150 and crm["failures"] == 37


def test_crm_failures_spanning_less_than_the_limit_or_none_are_no_reason() -> None:
    cfg = HealthSettings(crm_failing_s=60)
    for state in (
        crm_state(NOW - 250, NOW - 250, fails=1),  # one failure, then nothing yet
        crm_state(NOW - 50, NOW - 1, fails=9),  # failing for less than a minute
        crm_state(None, None, ok=NOW - 1),  # answering
    ):
        h = evaluate(with_crm(state), cfg)
        assert h.ok and h.to_json()["status"] == "ok", state
        assert h.details["crm"][0]["failing"] is False


def test_a_failing_crm_beside_a_broken_part_of_the_bridge_is_unhealthy() -> None:
    h = evaluate(
        with_crm(crm_state(NOW - 250, NOW - 12, fails=37), links=(link(connected=False),)), CFG
    )
    assert h.to_json()["status"] == "unhealthy"
    assert [r.split(":")[0] for r in h.reasons] == ["AMI link down", "CRM https"]


def test_with_several_crms_each_counts_the_calls_of_its_own_pbxs() -> None:
    branch = CrmRoute("d4e5f6", "https://branch.example.com/rest", ("branch", "depot"))
    h = evaluate(
        with_crm(
            crm_state(NOW - 250, NOW - 12, fails=37),
            crm_state(None, None, scope="d4e5f6"),
            routes=(ROUTE, branch),
            waiting_by_pbx={"office": 5, "branch": 7, "depot": 1},
        ),
        CFG,
    )
    assert [c["waiting"] for c in h.details["crm"]] == [5, 8]
    assert "5 calls waiting" in h.reasons[0] and len(h.reasons) == 1


def test_a_crm_no_longer_configured_is_left_out() -> None:
    h = evaluate(with_crm(crm_state(NOW - 250, NOW - 12, fails=37, scope="old")), CFG)
    assert h.ok and h.details["crm"][0]["failing"] is False


def test_a_pbx_clock_off_by_more_than_a_minute_is_shown_but_keeps_the_bridge_healthy() -> None:
    # Calls are aged on the PBX's own clock, so nothing breaks; ops should still fix NTP.
    h = evaluate(snap(links=(link(pbx_clock_offset_s=43200.04),)), CFG)
    assert h.ok
    ami = h.to_json()["ami"][0]
    assert (ami["pbx_clock_offset_s"], ami["pbx_clock_skewed"]) == (43200.0, True)
    fine = evaluate(snap(links=(link(pbx_clock_offset_s=0.2),)), CFG).to_json()["ami"][0]
    assert fine["pbx_clock_skewed"] is False
