"""Gaps found in the acceptance audit of issue 2: check-crm on a windows-1251 CRM and with
credentials the CRM refuses, the reference CRM's access log (no password in it), and the
CLI when its reader goes away (``telefum ... | head``)."""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path

from crm_client.types import Credentials
from telefum.checkcrm import POINTS, PointResult, check_crm
from tests.support.crm import REPO, RefCrmProcess, RunningRefCrm

MakeCrm = Callable[..., Awaitable[RunningRefCrm]]


def by_point(results: list[PointResult]) -> dict[str, PointResult]:
    return {r.point: r for r in results}


async def test_a_crm_answering_in_windows_1251_and_saying_so_passes_every_point(
    make_refcrm: MakeCrm,
) -> None:
    crm = await make_refcrm(encoding="windows-1251")
    results = by_point(await check_crm(crm.rest_url, crm.creds(), strict=True))
    assert {p: r.reason for p, r in results.items() if r.failed} == {}
    assert set(results) == set(POINTS)
    assert results["encoding"].passed and results["card events"].passed
    # the Cyrillic test record arrived intact, so the CRM really decoded and answered cp1251
    (contact,) = [c for c in crm.state.store.recent() if "check-crm test record" in c.name]
    assert "(тестовая запись)" in contact.name


async def test_refused_credentials_fail_find_quoting_the_crm_and_leave_the_rest_unverified(
    make_refcrm: MakeCrm,
) -> None:
    crm = await make_refcrm()
    results = by_point(await check_crm(crm.rest_url, Credentials("bridge", "not-the-password")))
    first = results["find unknown"]
    assert first.failed
    assert (
        "answered <result>error</result> with <description>Неправильный логин или пароль"
        "</description>"
    ) in first.reason
    for point in ("wrong password", "missing fields"):
        assert results[point].status == "not verified"
        assert "the CRM answered the login given with an error" in results[point].reason
    assert not any(r.passed for r in results.values())
    assert all("not-the-password" not in r.reason for r in results.values())


def test_refcrm_access_log_shows_requests_without_passwords(
    refcrm_process: Callable[..., RefCrmProcess],
) -> None:
    proc = refcrm_process(extra_args=("--access-log",))
    query = "typereq=find&phone=%2B79161234567&login=bridge&password=Sup3rS3cret"
    with urllib.request.urlopen(f"{proc.rest_url}?{query}", timeout=10) as resp:
        assert resp.status == 200
    proc.stop()  # flushes its log
    log = proc.log_path.read_text(errors="replace")
    assert "GET /rest?typereq=find" in log  # the access line is there...
    assert "Sup3rS3cret" not in log  # ...with its password masked
    assert "password=***" in log


def test_a_reader_that_goes_away_ends_the_command_without_a_traceback(
    traces_dir: Path, tmp_path: Path
) -> None:
    one = (traces_dir / "12-inbound-overlapping-three-calls.ami").read_bytes()
    big = tmp_path / "big.ami"
    big.write_bytes(one * 300)  # far more JSON than a pipe holds: the write must fail
    with subprocess.Popen(
        [sys.executable, "-m", "telefum.cli", "replay", str(big)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        assert proc.stdout.read(10)
        proc.stdout.close()  # as `| head -c 10` does
        err = proc.stderr.read().decode(errors="replace")
        code = proc.wait(timeout=60)
    assert "Traceback" not in err and "error reading" not in err, err
    assert code == 1
