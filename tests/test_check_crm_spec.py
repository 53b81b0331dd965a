"""check-crm against an independent CRM written from the protocol alone (tests/support/
spec_crm.py), run as the command over real sockets: a CRM that follows the protocol passes
however its pages are served (behind a sign-in, drawn by script, plain HTML; UTF-8 or
windows-1251), one that breaks a point fails that point, and no secret reaches the output."""

from __future__ import annotations

import asyncio
import json
import sys
from html import escape
from urllib.parse import quote, quote_plus

import pytest

from tests.support.crm import REPO
from tests.support.spec_crm import SpecCrm, spec_crm


async def check(
    crm: SpecCrm, *args: str, login: str = "bridge", password: str = "secret"
) -> tuple[int, str]:
    """Exit code and stdout+stderr of ``telefum check-crm`` run against ``crm``."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "telefum.cli",
        "check-crm",
        crm.rest_url,
        "--login",
        login,
        "--password",
        password,
        *args,
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode is not None
    return proc.returncode, out.decode() + err.decode()


def line(out: str, point: str) -> str:
    """The table line of ``point``."""
    (found,) = [ln for ln in out.splitlines() if ln.startswith(f"{point}  ")]
    return found


def failing(out: str) -> set[str]:
    return {ln.split("  ")[0] for ln in out.splitlines() if "  FAIL  " in ln}


@pytest.mark.parametrize("encoding", ["utf-8", "windows-1251"])
async def test_a_compliant_crm_with_pages_behind_a_login_passes(encoding: str) -> None:
    async with spec_crm(pages="login", encoding=encoding) as crm:
        code, out = await check(crm)
    assert code == 0, out
    assert failing(out) == set()
    for point in ("card page", "search page"):
        assert "not verified" in line(out, point)
        assert "/signin?next=" in line(out, point) and "sign-in page" in line(out, point)
    assert "not verified" in line(out, "telf links")
    assert "pass" in line(out, "encoding")
    assert "0 FAIL" in out


async def test_a_compliant_crm_that_draws_its_pages_by_script_passes() -> None:
    async with spec_crm(pages="script") as crm:
        code, out = await check(crm)
    assert code == 0, out
    assert "not verified" in line(out, "card page")
    assert "does not show the test contact's name" in line(out, "card page")
    assert "1 <script>" in line(out, "card page")


@pytest.mark.parametrize("encoding", ["utf-8", "windows-1251"])
async def test_a_minimal_server_rendered_card_is_checked_for_what_the_protocol_asks(
    encoding: str,
) -> None:
    async with spec_crm(pages="server", encoding=encoding) as crm:
        code, out = await check(crm)
    assert code == 0, out
    for point in ("card page", "telf links", "search page"):
        assert "  pass  " in line(out, point), out
    # the card shows no events and no source: the protocol does not ask for them
    assert "not verified" in line(out, "source")


async def test_strict_fails_a_minimal_card_for_what_only_strict_asks() -> None:
    async with spec_crm(pages="server") as crm:
        code, out = await check(crm, "--strict")
    assert code == 1
    assert failing(out) == {"source", "card events", "search links"}
    assert "does not show the source +7" in line(out, "source")
    assert "no link to card?id=1" in line(out, "search links")


async def test_strict_leaves_pages_behind_a_login_not_verified() -> None:
    async with spec_crm(pages="login") as crm:
        code, out = await check(crm, "--strict")
    assert code == 0, out
    assert "not verified" in line(out, "card page")
    assert "  pass  " in line(out, "find other formats")
    assert "not verified" in line(out, "card events")


# (switches, pages, the points that must fail, what their line must say)
BROKEN = {
    "no <total>": (("no_total",), "login", {"find unknown", "find"}, "no <total>"),
    "any password": (
        ("any_password",),
        "login",
        {"wrong password"},
        "with a random wrong password: expected the protocol's error answer",
    ),
    "find matches the wrong contact": (
        ("find_wrong_contact",),
        "login",
        {"find"},
        "one digit off the test phone) returned contact 1",
    ),
    "missing fields taken": (
        ("no_field_errors",),
        "login",
        {"missing fields"},
        "addcont without phone (typecont=contact, a name): expected",
    ),
    "no telf: links": (("no_telf",), "server", {"telf links"}, "as text, not as a telf: link"),
    "source dropped, find says so": (
        ("echo_x_pstn", "drop_x_pstn"),
        "login",
        {"source"},
        "returned <x_pstn></x_pstn> for contact 1",
    ),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
async def test_a_crm_that_breaks_one_point_fails_that_point_only(case: str) -> None:
    breaks, pages, points, says = BROKEN[case]
    async with spec_crm(pages=pages, breaks=breaks) as crm:
        code, out = await check(crm)
    assert code == 1, out
    assert failing(out) == points, out
    assert any(says in line(out, p) for p in points), out


async def test_a_source_find_gives_back_is_checked_there() -> None:
    async with spec_crm(breaks=("echo_x_pstn",)) as crm:
        code, out = await check(crm)
        sent = next(iter(crm.contacts.values())).x_pstn
    assert code == 0, out
    assert f"find returns <x_pstn>{sent}</x_pstn>" in line(out, "source")


async def test_a_source_kept_as_digits_is_the_same_number() -> None:
    async with spec_crm(breaks=("echo_x_pstn", "x_pstn_digits")) as crm:
        code, out = await check(crm)
    assert code == 0, out
    assert "  pass  " in line(out, "source")


async def test_the_wrong_password_is_random_and_not_made_from_the_real_one() -> None:
    password = "Tr0ub4dor"
    wrong: list[str] = []
    codes = []
    for _ in range(2):
        async with spec_crm(users={"bridge": password}) as crm:
            code, _ = await check(crm, password=password)
            wrong += [p for p in crm.seen_passwords if p != password]
        codes.append(code)
    assert len(wrong) == 4  # find and addcont, twice
    assert not any(password in p or p in password for p in wrong), wrong
    assert len(set(wrong[:2]) | set(wrong[2:])) > 1  # not the same every run
    assert codes == [0, 0]


@pytest.mark.parametrize("fmt", ["table", "json"])
async def test_the_password_never_appears_even_when_the_crm_echoes_it(fmt: str) -> None:
    password = "S3cr3t+пароль/&x"
    async with spec_crm(users={"bridge": password}, breaks=("echo_password",)) as crm:
        code, out = await check(crm, *(["--json"] if fmt == "json" else []), password=password)
    for form in (password, quote(password, safe=""), quote_plus(password), escape(password)):
        assert form not in out
    shown = json.dumps(json.loads(out), ensure_ascii=False) if fmt == "json" else out
    assert "вы прислали пароль ***" in shown  # the echo is there, masked
    assert code == 0, out


async def test_hide_login_keeps_the_login_out_of_the_output() -> None:
    login = "key-7f3a9c51"
    async with spec_crm(users={login: "secret"}) as crm:
        code, out = await check(crm, "--hide-login", login=login)
    assert code == 0, out
    assert login not in out
    assert "the login given is the author" in line(out, "author")


async def test_skip_pages_still_works_for_old_scripts_and_requests_no_page() -> None:
    async with spec_crm(pages="server") as crm:
        code, out = await check(crm, "--skip-pages")
    assert code == 0, out
    assert crm.pages_served == []
    for point in ("card page", "telf links", "search page"):
        assert "  skip  " in line(out, point) and "--skip-pages" in line(out, point), out
