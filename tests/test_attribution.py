"""Attribution: what the bridge delivered, per tracking number, in a real Redis.

The last test plays recorded calls through the simulated PBX, the listener and the
tracker, delivers them to the reference CRM as the worker does (find, addcont with
``x_pstn``, addevent), and checks the report against the recordings' manifest and against
the contacts the CRM holds.
"""

from __future__ import annotations

import json
import statistics
import time
from collections import defaultdict
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from crm_client.client import TelefumClient
from pbxsim.server import PbxSimulator
from telefum.attribution import Attribution, build_report, parse_since
from telephony.records import CallFinished, CallRecord
from tests.support.agents import REPORT_TOKEN, AgentBridge, agent_settings, contacts_by_source
from tests.support.crm import RunningRefCrm

DID = "+74951234567"


def record(
    call_id: str,
    caller: str | None = "+79161234567",
    *,
    did: str | None = DID,
    at: float = 1_800_000_000.0,
    answered: bool = True,
    direction: str = "in",
    ring: float = 3.0,
) -> CallRecord:
    return CallRecord(
        call_id=call_id,
        direction=direction,
        external=caller,
        did=did,  # type: ignore[arg-type]
        extension="101" if answered else None,
        answered=answered,
        started_at=at,
        answered_at=at + ring if answered else None,
        ended_at=at + ring + 10,
        disposition="answered" if answered else "no-answer",
    )


async def test_a_retried_delivery_counts_once(redis_client: Redis) -> None:
    attr = Attribution(redis_client, sources={DID: "Yandex Direct"})
    rec = record("1.1")
    assert await attr.record_delivery(rec, contact_created=True, contact_id="7")
    assert not await attr.record_delivery(rec, contact_created=False)  # the job ran again
    (row,) = await attr.calls(0, 2e9)
    assert (row.new_contact, row.contact_id, row.source, row.first_call) == (
        True,
        "7",
        "Yandex Direct",
        True,
    )


async def test_a_call_whose_ring_is_unknown_counts_but_not_in_the_median_wait(
    redis_client: Redis,
) -> None:
    attr = Attribution(redis_client)
    found = replace(record("3.1", "+79160000001", ring=9.0), flags=("adopted", "ring-unknown"))
    for rec in (record("3.2", "+79160000002", ring=2.0), found):
        assert await attr.record_delivery(rec, contact_created=False)
    rows = await attr.calls(0, 2e9)
    assert sorted(r.ring_s is None for r in rows) == [False, True]  # stored and read back
    (row,) = build_report(rows, since=0, until=2e9)["numbers"]
    assert (row["calls"], row["median_wait_s"]) == (2, 2.0)


async def test_outbound_and_internal_calls_are_not_attributed(redis_client: Redis) -> None:
    attr = Attribution(redis_client)
    assert not await attr.record_delivery(
        record("2.1", direction="out", did=None), contact_created=False
    )
    assert not await attr.record_delivery(
        record("2.2", None, direction="internal", did=None), contact_created=False
    )
    assert await attr.calls(0, 2e9) == []


async def test_first_and_repeat_calls_are_right_when_deliveries_come_out_of_order(
    redis_client: Redis,
) -> None:
    attr = Attribution(redis_client)
    t = 1_800_000_000.0
    # the later call is delivered first (the earlier one was retried for an hour)
    await attr.record_delivery(record("3.2", at=t + 3600), contact_created=False)
    await attr.record_delivery(record("3.1", at=t), contact_created=True)
    # the same caller on another tracking number is a first call there
    await attr.record_delivery(
        record("3.3", did="+74951234568", at=t + 7200), contact_created=False
    )
    await attr.record_delivery(record("3.4", None, at=t + 10), contact_created=False)
    firsts = {r.call_id: r.first_call for r in await attr.calls(0, 2e9)}
    assert firsts == {"3.1": True, "3.2": False, "3.3": True, "3.4": None}
    # a report window that starts after the first call still calls the second a repeat
    (row,) = [r for r in await attr.calls(t + 1000, t + 5000)]
    assert (row.call_id, row.first_call) == ("3.2", False)


async def test_the_label_the_event_carried_wins_over_the_configured_one(
    redis_client: Redis,
) -> None:
    attr = Attribution(redis_client, sources={DID: "Yandex Direct"})
    await attr.record_delivery(record("4.1"), contact_created=False, source="Avito")
    await attr.record_delivery(record("4.2", did="+70000000000"), contact_created=False)
    await attr.record_delivery(record("4.3", did=None), contact_created=False)
    labels = {r.call_id: (r.tracking_number, r.source) for r in await attr.calls(0, 2e9)}
    assert labels == {
        "4.1": (DID, "Avito"),
        "4.2": ("+70000000000", "(no source)"),
        "4.3": ("", "(no source)"),
    }


async def test_rows_older_than_the_retention_are_trimmed(redis_client: Redis) -> None:
    attr = Attribution(redis_client, retention_days=30)
    t = 1_800_000_000.0
    await attr.record_delivery(record("5.1", at=t - 31 * 86400), contact_created=False)
    await attr.record_delivery(record("5.2", at=t), contact_created=False)
    assert [r.call_id for r in await attr.calls(0, 2e9)] == ["5.2"]
    assert await redis_client.hlen(attr.calls_key) == 1


def test_report_groups_per_number_and_per_day_in_the_given_zone() -> None:
    from telefum.attribution import AttributedCall

    def row(
        cid: str,
        at: float,
        answered: bool,
        ring: float,
        new: bool,
        first: bool | None,
        did: str = DID,
    ) -> AttributedCall:
        return AttributedCall(
            cid,
            "default",
            did,
            "Yandex Direct",
            "+79161234567",
            at,
            answered,
            ring,
            new,
            first_call=first,
        )

    day1 = 1_796_688_000.0  # 2026-12-08 00:00 UTC
    calls = [
        row("a", day1 + 10, True, 2.0, True, True),
        row("b", day1 + 20, False, 9.0, False, False),
        row("c", day1 + 86400 + 5, True, 4.0, False, False),
        row("d", day1 + 30, True, 1.0, True, True, did="+74951234568"),
    ]
    rep = build_report(calls, since=day1, until=day1 + 2 * 86400, tz=UTC)
    assert rep["totals"] == {
        "calls": 4,
        "answered": 3,
        "missed": 1,
        "new_contacts": 2,
        "first_calls": 2,
        "repeat_calls": 2,
        "median_wait_s": 3.0,
    }
    first = rep["numbers"][0]
    assert (first["tracking_number"], first["calls"], first["median_wait_s"]) == (DID, 3, 4.0)
    assert [(d["day"], d["tracking_number"], d["calls"]) for d in rep["days"]] == [
        ("2026-12-08", DID, 2),
        ("2026-12-08", "+74951234568", 1),
        ("2026-12-09", DID, 1),
    ]


async def test_a_new_contact_counts_for_the_number_its_caller_dialled_first(
    redis_client: Redis,
) -> None:
    google = "+74951234568"
    attr = Attribution(redis_client, sources={DID: "Yandex Direct", google: "Google Ads"})
    # the later call (Google) reached the CRM first and made the contact, with x_pstn = DID
    assert await attr.record_delivery(
        record("9.2", did=google, at=1_800_003_600.0), contact_created=True, contact_did=DID
    )
    assert await attr.record_delivery(record("9.1"), contact_created=False)
    rep = await attr.report(1_799_990_000.0, 1_800_010_000.0, UTC)
    figures = {
        r["tracking_number"]: (r["calls"], r["new_contacts"], r["first_calls"])
        for r in rep["numbers"]
    }
    assert figures == {DID: (1, 1, 1), google: (1, 0, 1)}
    assert rep["totals"]["new_contacts"] == 1
    assert [(d["tracking_number"], d["new_contacts"]) for d in rep["days"]] == [
        (DID, 1),
        (google, 0),
    ]


async def test_a_configured_source_without_calls_is_reported_with_zeros(
    redis_client: Redis,
) -> None:
    avito = "+78122003344"
    attr = Attribution(redis_client, sources={DID: "Yandex Direct", avito: "Avito"})
    assert await attr.record_delivery(record("10.1"), contact_created=True)
    rep = await attr.report(1_799_990_000.0, 1_800_010_000.0, UTC)
    assert [(r["tracking_number"], r["source"], r["calls"]) for r in rep["numbers"]] == [
        (DID, "Yandex Direct", 1),
        (avito, "Avito", 0),
    ]
    zero = rep["numbers"][1]
    assert {k: zero[k] for k in ("answered", "missed", "new_contacts", "median_wait_s")} == {
        "answered": 0,
        "missed": 0,
        "new_contacts": 0,
        "median_wait_s": None,
    }
    assert rep["totals"]["calls"] == 1


def test_periods_are_read_as_people_write_them() -> None:
    now = 1_800_000_000.0
    assert parse_since("7d", now) == now - 7 * 86400
    assert parse_since("36h", now) == now - 36 * 3600
    assert parse_since("2026-12-08", now, UTC) == 1_796_688_000.0
    with pytest.raises(ValueError, match="7d"):
        parse_since("last week", now)


# --- end to end: recorded calls -> CRM -> report ----------------------------------------------

PLAYED = [
    "01-inbound-answered-caller-hangup.ami",
    "03-inbound-missed-caller-abandons.ami",
    "04-inbound-busy.ami",
    "06-inbound-ringgroup-102-answers.ami",
    "07-inbound-queue-102-answers.ami",
    "08-outbound-answered.ami",
    "10-inbound-blind-transfer-101-to-102.ami",
    "12-inbound-overlapping-three-calls.ami",
]


def expected_from_manifest(traces_dir: Path) -> dict[str, dict[str, Any]]:
    """What the report must say, from the recordings' own description of their calls."""
    manifest = json.loads((traces_dir / "manifest.json").read_text())
    scenarios = {s["file"]: s for s in manifest["scenarios"]}
    per: dict[str, dict[str, Any]] = defaultdict(
        lambda: {
            "calls": 0,
            "answered": 0,
            "missed": 0,
            "new_contacts": 0,
            "first_calls": 0,
            "repeat_calls": 0,
            "waits": [],
        }
    )
    seen_pairs: set[tuple[str, str]] = set()
    known_callers: set[str] = set()
    for name in PLAYED:
        calls = sorted(scenarios[name]["calls"], key=lambda c: c["linkedid"])
        for c in calls:
            if c["direction"] != "in":
                continue
            did, caller = "+" + c["did"], "+" + c["external_number"]
            e = per[did]
            e["calls"] += 1
            e["answered" if c["answered"] else "missed"] += 1
            e["first_calls" if (did, caller) not in seen_pairs else "repeat_calls"] += 1
            seen_pairs.add((did, caller))
            if caller not in known_callers:  # the CRM gets a contact on the first call only
                e["new_contacts"] += 1
                known_callers.add(caller)
            e["waits"].append(c["ring_seconds_events"])
    return per


async def deliver(crm: TelefumClient, creds: Any, rec: CallRecord) -> tuple[bool, str]:
    """What the worker does for an inbound call: find or create the contact, log the event."""
    assert rec.external is not None
    found = await crm.find(rec.external, creds)
    if found.contacts:
        cid, created = found.contacts[0].id, False
    else:
        cid = await crm.add_contact(rec.external, "Новый контакт", "contact", rec.did, creds)
        created = True
    await crm.add_event(cid, "contact", "Входящий звонок", f"{rec.ring_s}", creds)
    return created, cid


async def test_report_figures_match_the_calls_played_and_the_crm(
    pbx_sim: PbxSimulator, redis_client: Redis, refcrm: RunningRefCrm, traces_dir: Path
) -> None:
    settings = agent_settings()
    async with (
        AgentBridge(settings, pbx=pbx_sim, redis=redis_client) as bridge,
        TelefumClient(refcrm.rest_url) as crm,
    ):
        assert bridge.attribution is not None
        for name in PLAYED:
            await pbx_sim.play_trace(traces_dir / name, speed=0)
            await bridge.barrier()
        records = [u.record for _, u in bridge.updates if isinstance(u, CallFinished)]
        assert len(records) == len(PLAYED) + 2  # trace 12 holds three calls
        for rec in records:  # in the order the calls ended, as the worker would get them
            if rec.direction != "in":
                assert not await bridge.attribution.record_delivery(rec, contact_created=False)
                continue
            created, cid = await deliver(crm, refcrm.creds(), rec)
            assert await bridge.attribution.record_delivery(
                rec, contact_created=created, contact_id=cid
            )
            # a job that ran twice must not count twice
            assert not await bridge.attribution.record_delivery(rec, contact_created=created)

        # played at full speed, a recording's later calls are dated up to seconds ahead
        until = datetime.fromtimestamp(time.time() + 3600, UTC).isoformat()
        status, text, _ = await bridge.get(
            "/report.json",
            params={"since": "1d", "until": until, "tz": "UTC"},
            headers={"Authorization": f"Bearer {REPORT_TOKEN}"},
        )
        assert status == 200, text
        report = json.loads(text)
        crm_contacts = contacts_by_source(refcrm.db_path)

    expected = expected_from_manifest(traces_dir)
    by_number = {r["tracking_number"]: r for r in report["numbers"]}
    assert set(by_number) == set(expected)
    for did, e in expected.items():
        got = by_number[did]
        for k in ("calls", "answered", "missed", "new_contacts", "first_calls", "repeat_calls"):
            assert got[k] == e[k], (did, k, got, e)
        assert got["median_wait_s"] == pytest.approx(statistics.median(e["waits"]), abs=0.06)
        assert got["new_contacts"] == crm_contacts.get(did, 0)  # the figures match the CRM
        assert got["source"] == settings.sources.get(did, "(no source)")
    assert report["totals"]["calls"] == sum(e["calls"] for e in expected.values())
    assert sum(d["calls"] for d in report["days"]) == report["totals"]["calls"]
