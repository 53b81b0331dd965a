"""Backfill wired to the AMI link: the simulated PBX writes Master.csv as Asterisk's
cdr_csv does, the real listener and tracker follow it over TCP, and the Backfiller reads
the CDR at start and after each gap (telephony/backfill.py). What reaches the hand-over
is collected as it would be submitted."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from pbxsim.rebase import rebase
from pbxsim.server import load_trace
from telefum.health import HealthSettings, Snapshot, evaluate
from telefum.metrics import render
from telephony.ami import Message
from telephony.backfill import Backfiller, complete
from telephony.cdr_settings import CdrSourceSettings
from telephony.listener import AmiListener
from telephony.records import CallFinished, CallRecord, Update
from telephony.rules import CallRules
from telephony.supervise import Supervisor
from telephony.tracker import CallTracker
from tests.support.cdr_rows import csv_line
from tests.support.pbx import PBX_SECRET, PBX_USER, FaultyPbx
from tests.test_listener import T01, T03, direct_records, until

SETTLE_S = 0.4


def live_trace(path: Path, *, shift: float, ids: int) -> list[Message]:
    """A recording moved to start ``shift`` seconds from now (by whole seconds, so that its
    CDR times stay cut to the second as Asterisk cuts them), with its own ids."""
    events = load_trace(path)
    return rebase(
        events,
        time_offset=round(time.time() - float(events[0]["Timestamp"]) + shift),
        id_offset=ids,
    )


@dataclass
class Rig:
    """A listener, its tracker and its backfill, wired as telefum.service wires them."""

    listener: AmiListener
    backfill: Backfiller
    tracker: CallTracker
    submitted: list[CallRecord] = field(default_factory=list)

    def on_update(self, update: Update) -> None:
        if isinstance(update, CallFinished) and not self.backfill.hold(update.record):
            self.submitted.append(update.record)

    async def calls(self, n: int, timeout: float = 5.0) -> list[CallRecord]:
        await until(lambda: len(self.submitted) >= n, timeout)
        return self.submitted[:n]

    async def stop(self) -> None:
        await self.listener.stop()
        await self.backfill.stop()


MakeRig = Callable[..., Any]


@pytest.fixture
async def rig(pbx_sim: FaultyPbx, tmp_path: Path) -> AsyncIterator[MakeRig]:
    """``await rig()``: a started rig on the simulator, whose Master.csv is
    ``tmp_path/Master.csv``; keyword arguments go to the source settings and Backfiller."""
    csv = tmp_path / "Master.csv"
    pbx_sim.cdr_csv = csv
    rigs: list[Rig] = []

    async def make(
        *, path: Path | None = csv, state: Path | None = tmp_path, wait: bool = True, **kw: Any
    ) -> Rig:
        source = {k: kw.pop(k) for k in ("kind", "margin_s") if k in kw}
        settings = CdrSourceSettings(
            **{"kind": "csv", "path": str(path), "timezone": "UTC", **source}
        )
        tracker = CallTracker(CallRules(), pbx="test")
        r = Rig(None, None, tracker)  # type: ignore[arg-type]
        r.listener = AmiListener(
            "127.0.0.1",
            pbx_sim.port,
            PBX_USER,
            PBX_SECRET,
            tracker,
            r.on_update,
            ping_interval=30.0,
            reconnect_min=0.01,
            reconnect_max=0.1,
            pbx="test",
            expire_interval=3600.0,
        )
        options: dict[str, Any] = {"settle_s": SETTLE_S, "retry_max_s": 1.0, **kw}
        r.backfill = Backfiller(
            settings,
            tracker.rules,
            r.submitted.append,
            pbx="test",
            state_dir=state,
            live_ids=lambda: tracker.live_ids,
            alive=lambda: r.listener.last_data_at if r.listener.connected else None,
            **options,
        )
        r.listener.on_session = r.backfill.on_session
        rigs.append(r)
        await r.backfill.start()
        await r.listener.start()
        if wait:
            await r.listener.wait_for_session(1, timeout=5)
        return r

    yield make
    for r in rigs:
        await r.stop()


async def cut(pbx: FaultyPbx) -> None:
    pbx.refuse_connections = True
    await pbx.drop_clients()


def close_to(record: CallRecord, truth: dict[str, Any], keys: tuple[str, ...]) -> None:
    got = record.to_json()
    for k in keys:
        assert got[k] == truth[k], k
    for k in ("started_at", "answered_at", "ended_at"):
        if truth[k] is None:
            assert getattr(record, k) is None, k
        else:
            want = CallRecord.from_json(truth)
            assert abs(getattr(record, k) - getattr(want, k)) < 1.0, k


SAME = ("call_id", "direction", "external", "extension", "answered", "disposition")


# --- after a cut link ----------------------------------------------------------------------


async def test_a_call_that_began_and_ended_while_the_link_was_cut_comes_from_the_cdr(
    pbx_sim: FaultyPbx, rig: MakeRig
) -> None:
    """Issue 15: a call that started and ended in the gap was lost."""
    r = await rig()
    talk = live_trace(T01, shift=-7.5, ids=60_000)  # the whole call, over by now
    await cut(pbx_sim)
    await pbx_sim.send(talk)
    await asyncio.sleep(0.3)
    pbx_sim.refuse_connections = False
    await r.listener.wait_for_session(2, timeout=5)

    (record,) = await r.calls(1)
    # Master.csv of a dialplan that leaves the inbound context first has no DID (backfill.md)
    assert record.source == "cdr" and record.flags == ("did-unknown",)
    close_to(record, direct_records(talk)[0], SAME)
    await asyncio.sleep(2 * SETTLE_S)  # the second read finds it again: not resubmitted
    assert len(r.submitted) == 1
    status = r.backfill.status()
    assert (status.found, status.gaps, status.uncovered, status.state) == (1, 1, (), "ok")


async def test_a_call_that_ended_in_the_gap_takes_its_end_from_the_cdr(
    pbx_sim: FaultyPbx, rig: MakeRig
) -> None:
    r = await rig()
    talk = live_trace(T01, shift=0.0, ids=61_000)  # answered at 2 s, ends at 7 s
    t0 = float(talk[0]["Timestamp"])
    before = [m for m in talk if float(m["Timestamp"]) - t0 < 3.0]
    await pbx_sim.play([(float(m["Timestamp"]) - t0, m) for m in before], speed=1.0)
    await r.listener.ping()
    await cut(pbx_sim)
    await asyncio.sleep(1.0)
    await pbx_sim.send(talk[len(before) :])  # it ends while nobody listens
    pbx_sim.refuse_connections = False
    await r.listener.wait_for_session(2, timeout=5)

    (record,) = await r.calls(1)
    truth = direct_records(talk)[0]
    assert record.source == "cdr" and record.flags == ("reconciled",)  # no "gap": exact
    close_to(record, truth, SAME)
    assert abs(record.talk_s - truth["talk_s"]) < 1.0
    assert r.backfill.status().completed == 1


async def test_a_cdr_written_after_the_reconnect_is_found_by_the_second_read(
    pbx_sim: FaultyPbx, rig: MakeRig
) -> None:
    r = await rig()
    pbx_sim.cdr_delay_s = SETTLE_S / 2  # after the first read, before the second
    talk = live_trace(T03, shift=-7.0, ids=62_000)
    await cut(pbx_sim)
    await pbx_sim.send(talk)
    pbx_sim.refuse_connections = False
    await r.listener.wait_for_session(2, timeout=5)
    (record,) = await r.calls(1, timeout=3 * SETTLE_S + 2)
    assert record.source == "cdr" and not record.answered
    assert record.disposition == direct_records(talk)[0]["disposition"]


async def test_a_call_seen_live_is_not_submitted_again_from_the_cdr(
    pbx_sim: FaultyPbx, rig: MakeRig
) -> None:
    """Rows for calls already delivered: the live record was submitted; the gap's
    window (with its margin) holds the same call's CDR; it is known, not resubmitted."""
    r = await rig()
    talk = live_trace(T01, shift=0.0, ids=63_000)  # its CDR: written as the PBX says it ends
    await pbx_sim.send(talk)
    (live,) = await r.calls(1)
    await cut(pbx_sim)
    pbx_sim.refuse_connections = False
    await r.listener.wait_for_session(2, timeout=5)
    await asyncio.sleep(3 * SETTLE_S)
    assert r.submitted == [live] and live.source == "live"
    assert r.backfill.status().reads_ok >= 2


# --- after a restart -----------------------------------------------------------------------


async def test_calls_that_ended_while_the_bridge_was_down_are_backfilled_at_start(
    pbx_sim: FaultyPbx, rig: MakeRig, tmp_path: Path
) -> None:
    """Issue 15: kill -9 mid-burst lost the calls that ended while it was down, and the
    calls up across the restart got ring 0. The restarted bridge reads the CDR from when
    it last heard the PBX (the state file), and completes the adopted calls from it."""
    first = await rig()
    await first.listener.ping()
    await asyncio.sleep(1.2)  # last_seen is written once a second
    [state] = tmp_path.rglob("backfill.*.json")  # who called when: the bridge's own
    assert state.stat().st_mode & 0o777 == 0o600, oct(state.stat().st_mode)
    gone = live_trace(T01, shift=-2.0, ids=64_000)  # ends 5 s from now: while we are down
    across = live_trace(T01, shift=-4.0, ids=65_000)  # answered 2 s ago, ends 3 s from now
    up_to = [m for m in across if float(m["Timestamp"]) <= time.time()]
    await pbx_sim.send(up_to)
    await first.listener.ping()
    await first.stop()  # (a kill: nothing is submitted on the way down)

    unseen = live_trace(T03, shift=-7.0, ids=66_000)
    await pbx_sim.send(gone + across[len(up_to) :])  # both end while nobody listens
    await pbx_sim.send(unseen)  # and a third begins and ends
    second = await rig()
    found = await second.calls(3, timeout=5)
    assert {c.call_id for c in found} == {m[0]["Linkedid"] for m in (gone, across, unseen)}
    assert all(c.source == "cdr" and not {"gap", "ring-unknown"} & set(c.flags) for c in found)
    status = second.backfill.status()
    assert status.gaps == 1 and status.gap_seconds > 0.5


async def test_a_call_up_across_a_restart_takes_its_answer_from_the_cdr(
    pbx_sim: FaultyPbx, rig: MakeRig
) -> None:
    talk = live_trace(T01, shift=-4.0, ids=67_000)  # answered 2 s ago, ends in 3 s
    up_to = [m for m in talk if float(m["Timestamp"]) <= time.time()]
    await pbx_sim.send(up_to)
    r = await rig()  # a restarted bridge: it finds the call answered
    await pbx_sim.send(talk[len(up_to) :])
    (record,) = await r.calls(1)
    truth = direct_records(talk)[0]
    assert record.source == "cdr" and record.flags == ("adopted",)
    close_to(record, truth, SAME)
    assert record.ring_s is not None and abs(record.ring_s - truth["ring_s"]) < 1.0


async def test_without_a_state_file_the_first_start_reads_first_window_s_back(
    pbx_sim: FaultyPbx, rig: MakeRig
) -> None:
    old = live_trace(T01, shift=-30.0, ids=68_000)  # over 23 s ago
    older = live_trace(T03, shift=-300.0, ids=69_000)  # over 5 min ago
    await pbx_sim.send(older + old)
    r = await rig(first_window_s=60.0, margin_s=5.0)
    (record,) = await r.calls(1)
    assert record.call_id == old[0]["Linkedid"]
    await asyncio.sleep(2 * SETTLE_S)
    assert len(r.submitted) == 1


# --- a source that cannot be read ----------------------------------------------------------


async def test_a_master_csv_not_there_yet_is_retried_and_nothing_is_lost(
    pbx_sim: FaultyPbx, rig: MakeRig, tmp_path: Path
) -> None:
    written = tmp_path / "written.csv"
    pbx_sim.cdr_csv = written  # Asterisk writes elsewhere for now (rotated away)
    r = await rig(path=tmp_path / "Master.csv")
    ended = live_trace(T01, shift=-3.0, ids=70_000)
    t0 = float(ended[0]["Timestamp"])
    before = [m for m in ended if float(m["Timestamp"]) - t0 < 3.0]
    await pbx_sim.send(before)
    await r.listener.ping()
    await cut(pbx_sim)
    await pbx_sim.send(ended[len(before) :] + live_trace(T03, shift=-7.0, ids=71_000))
    pbx_sim.refuse_connections = False
    await r.listener.wait_for_session(2, timeout=5)
    await until(lambda: r.backfill.status().state == "retrying")
    assert "file not found" in (r.backfill.status().last_error or "")
    # the call the tracker had waits for its CDR a bounded time, then goes as it is
    (held,) = await r.calls(1, timeout=SETTLE_S + 3)
    assert held.source == "live" and held.flags == ("reconciled", "gap")
    health = evaluate(Snapshot(time.time(), backfills=(r.backfill.status(),)), HealthSettings())
    assert any("AMI gap not backfilled: pbx test" in x for x in health.reasons)

    written.rename(tmp_path / "Master.csv")  # the file is back
    await until(lambda: len(r.submitted) >= 2, timeout=5)
    (missed,) = r.submitted[1:]
    assert missed.source == "cdr" and not missed.answered  # the call only the CDR had
    await until(lambda: r.backfill.status().state == "ok")
    assert r.backfill.status().uncovered == ()
    await asyncio.sleep(2 * SETTLE_S)
    assert len(r.submitted) == 2  # the held one is not sent a second time


async def test_a_master_csv_that_is_a_directory_is_logged_once_and_shown_in_health(
    pbx_sim: FaultyPbx, rig: MakeRig, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "telephony.backfill")
    (tmp_path / "cdr").mkdir()
    r = await rig(path=tmp_path / "cdr")
    await cut(pbx_sim)
    pbx_sim.refuse_connections = False
    await r.listener.wait_for_session(2, timeout=5)
    await until(lambda: r.backfill.status().reads_failed >= 2, timeout=5)
    status = r.backfill.status()
    assert status.state == "misconfigured"
    errors = [x for x in caplog.records if x.levelno == logging.ERROR]
    assert len(errors) == 1 and "cannot read the CDR (csv " in errors[0].getMessage()
    health = evaluate(Snapshot(time.time(), backfills=(status,)), HealthSettings())
    assert any(x.startswith("backfill cannot read the CDR: pbx test") for x in health.reasons)
    body = render(Snapshot(time.time(), backfills=(status,)), process=False).decode()
    assert 'telefum_backfill_up{pbx="test"} 0.0' in body
    assert 'telefum_ami_gaps_total{pbx="test"} 1.0' in body


async def test_without_a_source_a_gap_is_counted_and_listed_in_health_but_no_fault(
    pbx_sim: FaultyPbx, rig: MakeRig
) -> None:
    r = await rig(kind="none")
    await cut(pbx_sim)
    await asyncio.sleep(0.5)
    pbx_sim.refuse_connections = False
    await r.listener.wait_for_session(2, timeout=5)
    status = r.backfill.status()
    (gap,) = status.uncovered
    assert status.state == "off" and gap.seconds >= 0.5 and "no backfill source" in gap.why
    now = time.time()
    health = evaluate(Snapshot(now, backfills=(status,)), HealthSettings())
    assert health.reasons == []  # a PBX restart is no fault of the bridge's
    (listed,) = health.details["backfill"][0]["uncovered_gaps"]
    assert listed["seconds"] >= 0.5 and "no backfill source" in listed["why"]
    body = render(Snapshot(now, backfills=(status,)), process=False).decode()
    assert 'telefum_backfill_uncovered_gaps_total{pbx="test"} 1.0' in body
    assert "telefum_backfill_calls_total{" not in body  # no source: no such samples


async def test_cdr_rows_without_uniqueid_are_named_not_dropped_silently(
    pbx_sim: FaultyPbx, rig: MakeRig, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """cdr.conf without loguniqueid: the row cannot be matched with the bridge's calls, so
    it is not handed over (it could be one already delivered); the log, /health and the
    metrics say so, and the gap counts as not covered."""
    caplog.set_level(logging.INFO, "telephony.backfill")
    csv = tmp_path / "Master.csv"
    pbx_sim.cdr_csv = None
    pbx_sim.keep_cdrs = True
    r = await rig(path=csv)
    await cut(pbx_sim)
    await pbx_sim.send(live_trace(T01, shift=-7.5, ids=72_000))
    csv.write_text("".join(csv_line(c, uniqueid=False, userfield=False) for c in pbx_sim.cdrs))
    pbx_sim.refuse_connections = False
    await r.listener.wait_for_session(2, timeout=5)
    await until(lambda: r.backfill.status().pending_windows == 0)
    status = r.backfill.status()
    assert r.submitted == [] and status.no_id >= 1
    (gap,) = status.uncovered
    assert "without uniqueid" in gap.why
    assert any("loguniqueid = yes" in x.getMessage() for x in caplog.records)
    health = evaluate(Snapshot(time.time(), backfills=(status,)), HealthSettings())
    assert any("without uniqueid" in x for x in health.reasons)


async def test_a_backfill_loop_that_fails_is_started_again_and_named_in_health(
    tmp_path: Path,
) -> None:
    """Backfill is one of the service's background tasks (telephony/supervise.py): a loop
    that raises is named by the supervisor (and so in /health) with its error, started
    again, and no longer named once it runs well."""
    ticks = 0

    def alive() -> float | None:  # asked on every tick; the first two fail
        nonlocal ticks
        ticks += 1
        if ticks <= 2:
            raise RuntimeError(f"boom {ticks}")
        return None

    supervisor = Supervisor(restart_first_s=0.05, restart_max_s=0.1, healthy_after_s=0.5)
    b = Backfiller(
        CdrSourceSettings(),
        CallRules(),
        lambda r: None,
        pbx="office",
        state_dir=tmp_path,
        alive=alive,
        supervisor=supervisor,
    )
    await b.start()
    try:
        await until(lambda: ticks >= 1 and bool(supervisor.failing()), timeout=5)
        [task] = supervisor.failing()
        assert task.name == "backfill-office"
        assert (task.last_error or "").startswith("RuntimeError: boom")
        await until(lambda: ticks >= 3, timeout=5)  # started again, and again
        await until(lambda: not supervisor.failing(), timeout=5)  # it runs well now
        assert supervisor.names == ["backfill-office"]
    finally:
        await b.stop()
    assert supervisor.names == []


# --- what a record from the CDR keeps of the live one (pure) -------------------------------


def rec(**kw: Any) -> CallRecord:
    base: dict[str, Any] = dict(
        call_id="1.1",
        direction="in",
        external="+79161234567",
        did="+74951234567",
        extension="101",
        answered=True,
        started_at=100.25,
        answered_at=102.5,
        ended_at=110.0,
        disposition="answered",
        rang=("101",),
        pbx="p",
    )
    return CallRecord(**{**base, **kw})


def test_complete_takes_the_end_of_a_call_that_ended_in_a_gap_from_the_cdr() -> None:
    live = rec(ended_at=104.0, flags=("reconciled", "gap"))
    cdr = rec(started_at=100.0, answered_at=102.0, ended_at=116.0, did=None, source="cdr")
    got = complete(live, cdr)
    assert (got.started_at, got.answered_at, got.ended_at) == (100.25, 102.5, 116.5)
    assert (got.did, got.flags, got.source) == ("+74951234567", ("reconciled",), "cdr")


def test_complete_takes_an_answer_the_bridge_did_not_see_from_the_cdr() -> None:
    missed_live = rec(
        answered=False,
        answered_at=None,
        extension=None,
        ended_at=104.0,
        disposition="no-answer",
        flags=("reconciled", "gap"),
    )
    cdr = rec(started_at=100.0, answered_at=105.0, ended_at=116.0, extension="102", source="cdr")
    got = complete(missed_live, cdr)
    assert (got.answered, got.answered_at, got.extension, got.disposition) == (
        True,
        105.5,
        "102",
        "answered",
    )
    adopted = rec(started_at=100.0, answered_at=100.5, flags=("adopted", "ring-unknown"))
    got = complete(adopted, rec(started_at=99.0, answered_at=102.0, ended_at=109.0))
    assert (got.started_at, got.answered_at, got.ended_at) == (99.5, 102.5, 110.0)
    assert got.ring_s == 3.0 and got.talk_s == 7.5 and got.flags == ("adopted",)


def test_complete_puts_a_cdr_time_beside_an_exact_one_at_the_middle_of_its_second() -> None:
    """Live (lab, a restart mid-burst): a call answered at xx:07.9 and ended, seen live,
    at xx:13.72 talked 5.82 s; its CDR answer says xx:07. Taken as it is, talk was 6.72 s
    ("0:07" in the CRM; the CDR's billsec 5); from the middle of that second, 6.22 s."""
    found = rec(started_at=1.0, answered_at=2.0, ended_at=13.72, flags=("adopted", "ring-unknown"))
    got = complete(found, rec(started_at=5.0, answered_at=7.0, ended_at=13.0))
    assert got.talk_s == pytest.approx(6.22)
