"""``telefum report``: the marketer's figures as table, CSV and JSON, from Redis or the bridge."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import sys
import time
from pathlib import Path

import pytest
from redis.asyncio import Redis

from telefum.attribution import Attribution
from telefum.cli import main
from telephony.records import CallRecord
from tests.support.agents import REPORT_TOKEN, AgentBridge, agent_settings

REPO = Path(__file__).resolve().parents[1]
YANDEX, GOOGLE = "+74951234567", "+74951234568"


def rec(cid: str, caller: str, did: str, ago_s: float, answered: bool, ring: float) -> CallRecord:
    at = time.time() - ago_s
    return CallRecord(
        call_id=cid,
        direction="in",
        external=caller,
        did=did,
        extension="101",
        answered=answered,
        started_at=at,
        answered_at=at + ring if answered else None,
        ended_at=at + ring + 5,
        disposition="answered" if answered else "no-answer",
    )


CALLS = [  # (record, contact created)
    (rec("1", "+79161234567", YANDEX, 3 * 86400, True, 2.0), True),
    (rec("2", "+79161234567", YANDEX, 2 * 86400, False, 8.0), False),
    (rec("3", "+79031112233", YANDEX, 3600, True, 4.0), True),
    (rec("4", "+79262223344", GOOGLE, 1800, True, 1.0), True),
    (rec("5", "+79161234567", YANDEX, 10 * 86400, True, 3.0), False),  # outside 7d
]


async def fill(redis: Redis) -> None:
    attr = Attribution(redis, sources=agent_settings().sources)
    for r, created in CALLS:
        await attr.record_delivery(r, contact_created=created)


def fill_sync(redis_url: str) -> None:
    async def go() -> None:
        client = Redis.from_url(redis_url)
        try:
            await fill(client)
        finally:
            await client.aclose()

    asyncio.run(go())


@pytest.fixture
def config(tmp_path: Path, redis_url: str) -> Path:
    fill_sync(redis_url)
    path = tmp_path / "settings.toml"
    path.write_text(
        f'[redis]\nurl = "{redis_url}"\n\n[sources]\n'
        f'"{YANDEX}" = "Yandex Direct"\n"{GOOGLE}" = "Google Ads"\n'
    )
    return path


def test_json_report_has_the_figures_of_the_last_7_days(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["report", "--config", str(config), "--format", "json", "--tz", "UTC"]) == 0
    report = json.loads(capsys.readouterr().out)
    by = {r["source"]: r for r in report["numbers"]}
    assert by["Yandex Direct"] == {
        "tracking_number": YANDEX,
        "source": "Yandex Direct",
        "calls": 3,
        "answered": 2,
        "missed": 1,
        "new_contacts": 2,
        "first_calls": 1,
        "repeat_calls": 2,
        "median_wait_s": 4.0,
    }
    # call 1 is a repeat: the same caller had called 10 days before, outside the window
    assert (by["Google Ads"]["calls"], by["Google Ads"]["first_calls"]) == (1, 1)
    assert report["totals"]["calls"] == 4
    assert {d["day"] for d in report["days"]} <= {
        time.strftime("%Y-%m-%d", time.gmtime(time.time() - s))
        for s in (3 * 86400, 2 * 86400, 3600, 1800, 0)
    }


def test_csv_is_one_row_per_number_and_daily_one_per_day(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["report", "--config", str(config), "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [(r["tracking_number"], r["calls"], r["new_contacts"]) for r in rows] == [
        (YANDEX, "3", "2"),
        (GOOGLE, "1", "1"),
    ]
    assert (
        main(
            [
                "report",
                "--config",
                str(config),
                "--format",
                "csv",
                "--daily",
                "--since",
                "30d",
                "--tz",
                "UTC",
            ]
        )
        == 0
    )
    daily = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert sum(int(r["calls"]) for r in daily) == 5 and "day" in daily[0]


def test_table_shows_each_number_and_the_total(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["report", "--config", str(config), "--since", "1d"]) == 0
    out = capsys.readouterr().out
    lines = [ln.split() for ln in out.splitlines()]
    assert any(ln[:3] == [YANDEX, "Yandex", "Direct"] and ln[3] == "1" for ln in lines), out
    assert any(ln[:3] == [GOOGLE, "Google", "Ads"] and ln[3] == "1" for ln in lines), out
    assert any(ln[:2] == ["Total", "2"] for ln in lines), out


def test_a_bad_period_is_a_clear_error(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", "--config", str(config), "--since", "yesterday"]) == 2
    assert "7d" in capsys.readouterr().err


async def test_with_a_private_redis_the_report_comes_from_the_running_bridge(
    redis_client: Redis, tmp_path: Path
) -> None:
    await fill(redis_client)
    async with AgentBridge(agent_settings(), redis=redis_client) as bridge:
        path = tmp_path / "settings.toml"
        path.write_text(f'[http]\nreport_token = "{REPORT_TOKEN}"\n')  # [redis] url empty
        env = {k: v for k, v in os.environ.items() if not k.startswith("TELEFUM_")}
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "telefum.cli",
            "report",
            "--config",
            str(path),
            "--bridge",
            bridge.url,
            "--format",
            "json",
            cwd=REPO,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0, err.decode()
        assert json.loads(out)["totals"]["calls"] == 4

        path.write_text('[http]\nreport_token = "wrong"\n')
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "telefum.cli",
            "report",
            "--config",
            str(path),
            "--bridge",
            bridge.url,
            cwd=REPO,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 1 and b"401" in err


async def test_the_report_page_and_its_figures_need_a_report_token(redis_client: Redis) -> None:
    async with AgentBridge(agent_settings(), redis=redis_client) as bridge:
        for path in ("/report", "/report.json"):
            status, _, _ = await bridge.get(path)
            assert status == 401
            status, _, _ = await bridge.get(path, params={"token": "agent-101-token"})
            assert status == 401
            status, _, _ = await bridge.get(path, params={"token": REPORT_TOKEN})
            assert status == 200
        status, body, _ = await bridge.get(
            "/report.json", params={"token": REPORT_TOKEN, "since": "soon"}
        )
        assert status == 400 and "7d" in body


AVITO = "+78122003344"


def test_a_configured_source_with_no_calls_is_a_row_of_zeros_in_the_table_and_csv(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config.write_text(config.read_text() + f'"{AVITO}" = "Avito"\n')
    assert main(["report", "--config", str(config), "--since", "1d"]) == 0
    out = capsys.readouterr().out
    [avito] = [ln.split() for ln in out.splitlines() if ln.startswith(AVITO)]
    assert avito == [AVITO, "Avito", "0", "0", "0", "0", "0", "0", "-"], out
    assert main(["report", "--config", str(config), "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert (rows[-1]["tracking_number"], rows[-1]["calls"], rows[-1]["median_wait_s"]) == (
        AVITO,
        "0",
        "",
    )


async def test_report_json_lists_a_configured_source_with_no_calls(redis_client: Redis) -> None:
    await fill(redis_client)
    settings = agent_settings()
    settings.sources[AVITO] = "Avito"
    async with AgentBridge(settings, redis=redis_client) as bridge:
        status, body, _ = await bridge.get("/report.json", params={"token": REPORT_TOKEN})
    assert status == 200
    rows = {r["tracking_number"]: r for r in json.loads(body)["numbers"]}
    assert (rows[AVITO]["source"], rows[AVITO]["calls"], rows[AVITO]["first_calls"]) == (
        "Avito",
        0,
        0,
    )


async def test_a_period_reaching_before_1970_is_a_400_with_the_reason(redis_client: Redis) -> None:
    answers = {}
    async with AgentBridge(agent_settings(), redis=redis_client) as bridge:
        for since in ("9999999d", "1" + "0" * 400 + "d", "\u0667d", "0001-01-01"):
            status, body, _ = await bridge.get(
                "/report.json", params={"token": REPORT_TOKEN, "since": since}
            )
            answers[since] = (status, json.loads(body)["error"] if status == 400 else body)
    assert {since: status for since, (status, _) in answers.items()} == dict.fromkeys(answers, 400)
    assert "outside what a report covers (1970-01-01" in answers["9999999d"][1]
