"""check-crm passes on the reference CRM and fails, naming the point, on one that breaks it."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from collections.abc import Awaitable, Callable

import phonenumbers
import pytest

from crm_client.refcrm import QUIRKS
from crm_client.types import Credentials
from telefum.checkcrm import POINTS, PointResult, check_crm, random_test_phone
from tests.conftest import free_port
from tests.support.crm import REPO, HostileCrm, RefCrmProcess, RunningRefCrm

MakeCrm = Callable[..., Awaitable[RunningRefCrm]]


def by_point(results: list[PointResult]) -> dict[str, PointResult]:
    return {r.point: r for r in results}


async def test_every_point_passes_on_the_reference_crm(refcrm: RunningRefCrm) -> None:
    results = await check_crm(refcrm.rest_url, refcrm.creds("ivan"))
    assert [r.point for r in results] == list(POINTS)
    failed = {r.point: r.reason for r in results if not r.passed}
    assert failed == {}
    # it left one clearly named test record with its event, authored by the login used
    (contact,) = [c for c in refcrm.state.store.recent() if "check-crm test record" in c.name]
    assert contact.created_by == "ivan" and contact.x_pstn
    assert "(тестовая запись)" in contact.name
    assert [e.created_by for e in refcrm.events(contact.id)] == ["ivan"]
    assert refcrm.count_contacts() == 1  # the wrong-password addcont created nothing


# Each quirk of the reference CRM breaks one point; check-crm must name exactly those.
BROKEN = {
    "ignore_x_pstn": {"addcont source"},
    "no_telf_links": {"card page"},
    "no_total": {"find unknown", "find other format"},
    "accept_any_password": {"wrong password"},
    "mislabelled_charset": {"encoding"},
    "exact_phone_match": {"find other format"},
    "search_without_links": {"search page"},
}


def test_every_quirk_of_the_reference_crm_is_covered() -> None:
    assert set(BROKEN) == set(QUIRKS)


@pytest.mark.parametrize("quirk", sorted(BROKEN))
async def test_a_crm_that_breaks_one_point_fails_that_point_only(
    make_refcrm: MakeCrm, quirk: str
) -> None:
    crm = await make_refcrm(quirks=[quirk])
    results = by_point(await check_crm(crm.rest_url, crm.creds()))
    failed = {p for p, r in results.items() if r.passed is not True}
    assert failed == BROKEN[quirk], {p: results[p].reason for p in failed}
    for point in failed:
        assert results[point].reason  # says why


async def test_reasons_say_what_is_wrong(make_refcrm: MakeCrm) -> None:
    crm = await make_refcrm(quirks=["no_telf_links", "ignore_x_pstn"])
    results = by_point(await check_crm(crm.rest_url, crm.creds()))
    assert "shown but not as a telf: link" in results["card page"].reason
    assert "x_pstn" in results["addcont source"].reason
    assert "source is lost" in results["addcont source"].reason


async def test_a_crm_answering_html_fails_every_point_that_needs_it(
    hostile_crm: HostileCrm,
) -> None:
    results = by_point(await check_crm(hostile_crm.url("html"), Credentials("bridge", "pw")))
    assert results["find unknown"].passed is False
    assert "HTML page" in results["find unknown"].reason
    assert results["addcont"].passed is False
    assert all(r.passed is False for r in results.values())


async def test_a_crm_that_is_down_fails_without_hanging() -> None:
    url = f"http://127.0.0.1:{free_port()}/rest"
    results = await check_crm(url, Credentials("bridge", "S3cr3t"), timeout_s=2)
    assert all(r.passed is False for r in results)
    assert all("S3cr3t" not in r.reason for r in results)


async def test_a_crm_that_is_slow_fails_on_timeout(make_refcrm: MakeCrm) -> None:
    crm = await make_refcrm(latency_s=1.0)
    results = by_point(await check_crm(crm.rest_url, crm.creds(), timeout_s=0.2))
    assert results["find unknown"].passed is False
    assert "no answer within 0.2 s" in results["find unknown"].reason


async def test_skipping_pages_marks_them_skipped(refcrm: RunningRefCrm) -> None:
    results = by_point(await check_crm(refcrm.rest_url, refcrm.creds(), check_pages=False))
    assert {p for p, r in results.items() if r.passed is None} == {
        "card page", "addcont source", "search page"
    }
    assert all(r.passed for p, r in results.items() if r.passed is not None)


@pytest.mark.parametrize("country", ["RU", "DE", "US", "GB"])
def test_test_phones_are_valid_mobile_numbers_of_the_country(country: str) -> None:
    rng = random.Random(7)
    phones = {random_test_phone(country, rng) for _ in range(20)}
    assert len(phones) > 15  # random, not a fixed number
    for phone in phones:
        num = phonenumbers.parse(phone)
        assert phonenumbers.is_valid_number(num)
        assert phonenumbers.region_code_for_number(num) == country


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "telefum.cli", "check-crm", *args],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_command_prints_the_table_and_exits_0_on_the_reference_crm(
    refcrm_process: Callable[..., RefCrmProcess],
) -> None:
    proc = refcrm_process()
    done = run_cli(proc.rest_url, "--login", "maria", "--password", "mariapw")
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    for point in POINTS:
        assert any(line.startswith(point) and " pass " in line for line in lines), point
    assert f"{len(POINTS)} of {len(POINTS)} points pass" in done.stdout
    assert "mariapw" not in done.stdout + done.stderr


def test_command_exits_1_naming_the_failed_point(
    refcrm_process: Callable[..., RefCrmProcess],
) -> None:
    proc = refcrm_process(extra_args=("--quirk", "no_telf_links"))
    done = run_cli(proc.rest_url, "--login", "bridge", "--password", "secret", "--json")
    assert done.returncode == 1
    report = json.loads(done.stdout)
    assert report["ok"] is False
    assert [p["point"] for p in report["points"] if p["result"] == "fail"] == ["card page"]


def test_command_without_a_password_is_a_usage_error() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "telefum.cli", "check-crm", "http://127.0.0.1:9/rest",
         "--login", "x"], cwd=REPO, capture_output=True, text=True, timeout=60,
        env={"PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert done.returncode == 2
    assert "--password" in done.stderr
