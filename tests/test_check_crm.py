"""check-crm passes on the reference CRM and fails, naming the point, on one that breaks it;
what it cannot see or what is beyond the protocol (without --strict) never fails it."""

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


@pytest.mark.parametrize("strict", [False, True])
async def test_every_point_passes_on_the_reference_crm(make_refcrm: MakeCrm, strict: bool) -> None:
    crm = await make_refcrm()
    results = await check_crm(crm.rest_url, crm.creds("ivan"), strict=strict)
    assert [r.point for r in results] == list(POINTS)
    not_passed = {r.point: r.status for r in results if not r.passed}
    skipped = {p: "skip" for p, point in POINTS.items() if point.strict_only and not strict}
    # no request of the protocol reads back a record's author, nor (but for --strict, on
    # the card) a contact's source
    unseen = {"author": "not verified", **({} if strict else {"source": "not verified"})}
    assert not_passed == {**unseen, **skipped}
    # it left one clearly named test record with its event, authored by the login used
    (contact,) = [c for c in crm.state.store.recent() if "check-crm test record" in c.name]
    assert contact.created_by == "ivan" and contact.x_pstn
    assert "(тестовая запись)" in contact.name
    assert [e.created_by for e in crm.events(contact.id)] == ["ivan"]
    assert crm.count_contacts() == 1  # the wrong-password addcont created nothing


# Each quirk of the reference CRM breaks one point; check-crm must fail exactly those, and
# those beyond the protocol only with --strict: (without, with --strict).
BROKEN: dict[str, tuple[set[str], set[str]]] = {
    "ignore_x_pstn": (set(), {"source"}),
    "no_telf_links": ({"telf links"}, {"telf links"}),
    "no_total": ({"find unknown", "find"}, {"find unknown", "find"}),
    "accept_any_password": ({"wrong password"}, {"wrong password"}),
    "mislabelled_charset": ({"encoding"}, {"encoding"}),
    "exact_phone_match": (set(), {"find other formats"}),
    "search_without_links": (set(), {"search links"}),
}


def test_every_quirk_of_the_reference_crm_is_covered() -> None:
    assert set(BROKEN) == set(QUIRKS)


@pytest.mark.parametrize("strict", [False, True])
@pytest.mark.parametrize("quirk", sorted(BROKEN))
async def test_a_crm_that_breaks_one_point_fails_that_point_only(
    make_refcrm: MakeCrm, quirk: str, strict: bool
) -> None:
    crm = await make_refcrm(quirks=[quirk])
    results = by_point(await check_crm(crm.rest_url, crm.creds(), strict=strict))
    failed = {p for p, r in results.items() if r.failed}
    assert failed == BROKEN[quirk][strict], {p: results[p].reason for p in failed}
    for point in failed:
        assert results[point].reason  # says why


async def test_a_lost_source_is_not_blamed_on_a_cause_check_crm_did_not_see(
    make_refcrm: MakeCrm,
) -> None:
    crm = await make_refcrm(quirks=["ignore_x_pstn"])
    plain = by_point(await check_crm(crm.rest_url, crm.creds()))["source"]
    assert plain.status == "not verified"
    assert "no request of the protocol reads a contact's source back" in plain.reason
    strict = by_point(await check_crm(crm.rest_url, crm.creds(), strict=True))["source"]
    assert strict.failed
    assert "does not show the source +7" in strict.reason
    assert "addcont sent x_pstn=+7" in strict.reason and "%2B7" in strict.reason
    for reason in (plain.reason, strict.reason):
        assert "lost" not in reason and "'+'" not in reason and "space" not in reason


async def test_a_card_showing_its_phone_as_text_fails_naming_what_it_showed(
    make_refcrm: MakeCrm,
) -> None:
    crm = await make_refcrm(quirks=["no_telf_links"])
    telf = by_point(await check_crm(crm.rest_url, crm.creds()))["telf links"]
    assert telf.failed
    assert "/card?id=1&typecont=contact: shows the phone +7" in telf.reason
    assert "as text, not as a telf: link (no telf: link on it)" in telf.reason


async def test_a_crm_answering_html_fails_find_and_leaves_what_needs_it_not_verified(
    hostile_crm: HostileCrm,
) -> None:
    results = by_point(await check_crm(hostile_crm.url("html"), Credentials("bridge", "pw")))
    assert {p for p, r in results.items() if r.failed} == {"find unknown"}
    assert "find phone=+7" in results["find unknown"].reason
    assert "HTML page instead of a TelefUM XML answer: '502 Bad Gateway'" in (
        results["find unknown"].reason
    )
    assert "find showed no phone unused" in results["addcont"].reason
    assert "no request with the login given got a protocol answer" in (
        results["wrong password"].reason
    )
    assert all(r.status in ("FAIL", "not verified", "skip") for r in results.values())


async def test_a_crm_that_is_down_fails_without_hanging() -> None:
    url = f"http://127.0.0.1:{free_port()}/rest"
    results = await check_crm(url, Credentials("bridge", "S3cr3t"), timeout_s=2)
    assert results[0].point == "find unknown" and results[0].failed
    assert not any(r.passed for r in results)
    assert all("S3cr3t" not in r.reason for r in results)


async def test_a_crm_that_is_slow_fails_on_timeout(make_refcrm: MakeCrm) -> None:
    crm = await make_refcrm(latency_s=1.0)
    results = by_point(await check_crm(crm.rest_url, crm.creds(), timeout_s=0.2))
    assert results["find unknown"].failed
    assert "no answer within 0.2 s" in results["find unknown"].reason


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
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_command_prints_the_table_and_exits_0_on_the_reference_crm(
    refcrm_process: Callable[..., RefCrmProcess],
) -> None:
    proc = refcrm_process()
    done = run_cli(proc.rest_url, "--login", "maria", "--password", "mariapw", "--strict")
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    for name, point in POINTS.items():
        (row,) = [line for line in lines if line.startswith(f"{name}  ")]
        assert f"  {point.spec or 'beyond'}  " in row
        assert ("  not verified  " if name == "author" else "  pass  ") in row, row
    assert f"{len(POINTS) - 1} pass, 0 FAIL, 1 not verified" in done.stdout
    assert "mariapw" not in done.stdout + done.stderr


def test_command_exits_1_naming_the_failed_point(
    refcrm_process: Callable[..., RefCrmProcess],
) -> None:
    proc = refcrm_process(extra_args=("--quirk", "no_telf_links"))
    done = run_cli(proc.rest_url, "--login", "bridge", "--password", "secret", "--json")
    assert done.returncode == 1
    report = json.loads(done.stdout)
    assert report["ok"] is False
    assert [p["point"] for p in report["points"] if p["result"] == "fail"] == ["telf links"]


def test_command_without_a_password_is_a_usage_error() -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "telefum.cli",
            "check-crm",
            "http://127.0.0.1:9/rest",
            "--login",
            "x",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 2
    assert "--password" in done.stderr
