"""The reference CRM speaks the protocol exactly, over HTTP, whatever it is sent."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

import aiohttp
import pytest

from crm_client import parse
from crm_client.client import TelefumClient
from crm_client.refcrm_store import counts
from crm_client.types import Credentials
from telefum.commands.refcrm import parse_users
from tests.support.crm import PHONE_KEY, REPO, RefCrmProcess, RunningRefCrm


async def rest(
    crm: RunningRefCrm,
    method: str = "GET",
    data: bytes | None = None,
    headers: dict[str, str] | None = None,
    **fields: str,
) -> tuple[int, dict, bytes]:
    """Send exactly these fields; (status, the <response> children, raw body)."""
    query = "&".join(f"{k}={quote(v, safe='')}" for k, v in fields.items())
    url = crm.rest_url + (f"?{query}" if method == "GET" else "")
    body = data if data is not None else (query.encode() if method == "POST" else None)
    if method == "POST" and headers is None:
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
    async with (
        aiohttp.ClientSession() as s,
        s.request(method, url, data=body, headers=headers) as resp,
    ):
        raw = await resp.read()
        assert resp.headers["Content-Type"].startswith("text/xml")
        doc, warnings = parse.parse_document(raw, resp.headers["Content-Type"])
        assert warnings == []
        return resp.status, doc, raw


AUTH = {"login": "bridge", "password": "secret"}


@pytest.mark.parametrize(
    ("fields", "description"),
    [
        (
            {"typereq": "find", "phone": "1", "login": "bridge", "password": "nope"},
            "Неправильный логин или пароль",
        ),
        (
            {"typereq": "find", "phone": "1", "login": "nobody", "password": "secret"},
            "Неправильный логин или пароль",
        ),
        ({"typereq": "find", "phone": "1"}, "Неправильный логин или пароль"),
        ({"typereq": "find", **AUTH}, "Не указан номер телефона"),
        ({"typereq": "addcont", "name": "Иван", **AUTH}, "Не указан номер телефона"),
        ({"typereq": "addcont", "phone": "+79161234567", **AUTH}, "Не указано имя контакта"),
        ({"typereq": "addevent", "subj": "Звонок", **AUTH}, "Не указано id-контакта"),
        ({"typereq": "addevent", "id": "42", "subj": "Звонок", **AUTH}, "Контакт не найден"),
        ({"typereq": "addevent", "id": "x' OR 1=1", "subj": "s", **AUTH}, "Контакт не найден"),
        ({"typereq": "addevent", "id": "9" * 40, "subj": "s", **AUTH}, "Контакт не найден"),
        ({**AUTH}, "Не указан тип запроса"),
        ({"typereq": "delete", **AUTH}, "Неизвестный тип запроса"),
    ],
)
@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_bad_requests_get_the_protocols_error_answer_in_russian(
    refcrm: RunningRefCrm, method: str, fields: dict[str, str], description: str
) -> None:
    status, doc, _ = await rest(refcrm, method, **fields)
    assert status == 200
    assert (parse.text_of(doc["result"]), parse.text_of(doc["description"])) == (
        "error",
        description,
    )
    assert refcrm.counts() == {"contacts": 0, "events": 0}


async def test_success_answers_carry_the_specs_fields_and_words(refcrm: RunningRefCrm) -> None:
    _, added, _ = await rest(
        refcrm,
        typereq="addcont",
        typecont="contact",
        phone="0123456789",
        name="Имя контакта",
        x_pstn="+79012222222",
        **AUTH,
    )
    assert {k: parse.text_of(v) for k, v in added.items()} == {
        "result": "ok",
        "id": "1",
        "typecont": "contact",
        "description": "Контакт добавлен",
    }
    _, event, _ = await rest(
        refcrm,
        "POST",
        typereq="addevent",
        id="1",
        typecont="contact",
        subj="Входящий Звонок",
        desc="Длительность 3:54",
        **AUTH,
    )
    assert {k: parse.text_of(v) for k, v in event.items()} == {
        "result": "ok",
        "idev": "1",
        "description": "Событие добавлено",
    }
    _, found, raw = await rest(refcrm, typereq="find", phone="0123456789", **AUTH)
    assert raw.startswith(b'<?xml version="1.0" encoding="utf-8"?>')
    assert parse.text_of(found["total"]) == "1"
    assert {k: parse.text_of(v) for k, v in found["item"][0].items()} == {
        "id": "1",
        "typecont": "contact",
        "name": "Имя контакта",
        "company": "",
        "description": "",
    }


async def test_addcont_keeps_several_phones_and_matches_each_in_any_format(
    refcrm: RunningRefCrm,
) -> None:
    query = "typereq=addcont&name=Ivan&phone=%2B79161234567&phone=8%20495%20765-43-21"
    async with (
        aiohttp.ClientSession() as s,
        s.get(f"{refcrm.rest_url}?{query}&login=ivan&password=ivanpw") as resp,
    ):
        assert b"<result>ok</result>" in await resp.read()
    assert refcrm.count_contacts("+74957654321") == 1
    assert refcrm.count_contacts("8 916 123 45 67") == 1
    (row,) = refcrm.contacts("74957654321")
    assert row.created_by == "ivan"
    assert [p.raw for p in refcrm.state.store.phones_of(row.id)] == [
        "+79161234567",
        "8 495 765-43-21",
    ]


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (
            b"typereq=find&phone=%FF%FE\xff&login=bridge&password=secret",
            "application/x-www-form-urlencoded",
        ),
        (b"--zz\r\ngarbage", "multipart/form-data; boundary=zz"),
        (b"a=b", "application/x-www-form-urlencoded; charset=no-such-charset"),
        (b"\x00\x01\x02", "application/octet-stream"),
        (b'{"typereq": "find"}', "application/json"),
    ],
)
async def test_unreadable_request_bodies_never_get_a_500(
    refcrm: RunningRefCrm, body: bytes, content_type: str
) -> None:
    status, doc, _ = await rest(refcrm, "POST", data=body, headers={"Content-Type": content_type})
    assert status in (200, 400)
    assert parse.text_of(doc["result"]) == "error"


async def test_control_characters_in_a_name_still_give_well_formed_xml(
    refcrm: RunningRefCrm,
) -> None:
    await rest(refcrm, typereq="addcont", phone="+79161234567", name="Ив\x01ан <b>&amp;", **AUTH)
    _, found, _ = await rest(refcrm, typereq="find", phone="+79161234567", **AUTH)
    assert parse.text_of(found["item"][0]["name"]) == "Иван <b>&amp;"


async def get_page(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as s, s.get(url) as resp:
        assert resp.content_type == "text/html"
        return resp.status, await resp.text()


async def test_card_shows_phones_as_telf_links_source_and_events_with_authors(
    refcrm: RunningRefCrm,
) -> None:
    async with TelefumClient(refcrm.rest_url) as crm:
        cid = await crm.add_contact(
            "8 (916) 123-45-67",
            "<script>Иван</script>",
            "contact",
            "+74951234567",
            refcrm.creds("maria"),
        )
        await crm.add_event(
            cid, "contact", "Входящий звонок", "Длительность 3:54", refcrm.creds("ivan")
        )
        status, page = await get_page(crm.card_url(cid, "contact"))
    assert status == 200
    assert '<a class="telf" href="telf:+79161234567">8 (916) 123-45-67</a>' in page
    assert "+74951234567" in page  # the source
    assert "&lt;script&gt;Иван&lt;/script&gt;" in page and "<script>Иван" not in page
    assert "Входящий звонок" in page and "Длительность 3:54" in page
    assert "<td>ivan</td>" in page  # the event's author
    assert "maria" in page  # the contact's creator


@pytest.mark.parametrize(
    ("query", "status"),
    [
        ("", 400),
        ("?id=", 400),
        ("?id=7", 404),
        ("?id=abc", 404),
        ("?id=1&typecont=lead", 404),
        ("?id=" + "9" * 30, 404),
    ],
)
async def test_card_for_a_missing_contact_is_a_page_not_a_crash(
    refcrm: RunningRefCrm, query: str, status: int
) -> None:
    refcrm.state.store.add_contact(
        phones=["+79161234567"], name="Иван", typecont="contact", created_by="bridge"
    )
    got, page = await get_page(f"{refcrm.base_url}card{query}")
    assert got == status
    assert "<h1>" in page


async def test_search_lists_matching_contacts_with_links_to_their_cards(
    refcrm: RunningRefCrm,
) -> None:
    store = refcrm.state.store
    a = store.add_contact(
        phones=["+79161234567"], name="Анна", typecont="contact", created_by="bridge"
    )
    b = store.add_contact(
        phones=["89161234567"], name="Борис", typecont="lead", created_by="bridge"
    )
    store.add_contact(
        phones=["+79990000000"], name="Чужой", typecont="contact", created_by="bridge"
    )
    status, page = await get_page(f"{refcrm.base_url}search?phone=9161234567")
    assert status == 200
    assert f'href="card?id={a}&amp;typecont=contact"' in page
    assert f'href="card?id={b}&amp;typecont=lead"' in page
    assert "Чужой" not in page
    _, form = await get_page(f"{refcrm.base_url}search")
    assert '<input name="phone"' in form


async def test_stats_count_contacts_and_events_in_all_and_by_phone(refcrm: RunningRefCrm) -> None:
    async with TelefumClient(refcrm.rest_url) as crm:
        cid = await crm.add_contact("+79161234567", "Иван", "contact", None, refcrm.creds())
        await crm.add_event(cid, "contact", "Звонок", "", refcrm.creds())
        await crm.add_contact("+79990000000", "Другой", "contact", None, refcrm.creds())
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{refcrm.base_url}_stats") as resp:
            everything = await resp.json()
        async with s.get(f"{refcrm.base_url}_stats?phone=89161234567") as resp:
            one = await resp.json()
    assert (everything["contacts"], everything["events"]) == (2, 1)
    assert everything["requests"] == {"addcont": 2, "addevent": 1}
    assert one == {"phone": "89161234567", "contacts": 1, "events": 1}
    # the same counts straight from the SQLite file, as another process would read them
    assert counts(refcrm.db_path)["contacts"] == 2
    assert counts(refcrm.db_path, "+7 916 123-45-67", PHONE_KEY)["events"] == 1
    assert counts(refcrm.db_path, "+79990000001", PHONE_KEY)["contacts"] == 0


def test_refcrm_process_serves_and_keeps_its_data_across_restarts(
    refcrm_process: Callable[..., RefCrmProcess], tmp_path: Path
) -> None:
    db = tmp_path / "crm.sqlite"

    async def add_and_count(url: str) -> int:
        async with TelefumClient(url) as crm:
            await crm.add_contact(
                "+79161234567", "Иван", "contact", None, Credentials("bridge", "secret")
            )
            return (await crm.find("89161234567", Credentials("bridge", "secret"))).total

    crm = refcrm_process(db_path=db)
    assert asyncio.run(add_and_count(crm.rest_url)) == 1
    assert crm.stop() == 0  # SIGTERM: a clean stop
    crm.start()  # the same port and file
    assert asyncio.run(add_and_count(crm.rest_url)) == 2
    assert counts(db, "+79161234567", PHONE_KEY)["contacts"] == 2


def test_refcrm_process_test_control_switches_failures_at_run_time(
    refcrm_process: Callable[..., RefCrmProcess],
) -> None:
    proc = refcrm_process(extra_args=("--test-control",))
    req = urllib.request.Request(
        f"{proc.base_url}_control?fail_mode=503&fail_count=1", method="POST"
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert json.load(resp)["fail_mode"] == "503"
    find = f"{proc.rest_url}?typereq=find&phone=1&login=bridge&password=secret"
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(find, timeout=10)
    assert info.value.code == 503
    with urllib.request.urlopen(find, timeout=10) as resp:
        assert b"<total>0</total>" in resp.read()


@pytest.mark.parametrize("bad_user", ["bridge", ":secret", "bridge:"])
def test_a_user_needs_both_login_and_password(bad_user: str) -> None:
    with pytest.raises(ValueError, match="LOGIN:PASSWORD"):
        parse_users(["ivan:ivanpw", bad_user])


def test_refcrm_command_exits_2_on_a_bad_user() -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "telefum.cli",
            "refcrm",
            "--db",
            "/nonexistent/x.sqlite",
            "--user",
            "bridge",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert "LOGIN:PASSWORD" in done.stderr


@pytest.mark.parametrize("raw_id", ["\u00b2", "\u0661\u0662"])
async def test_a_contact_id_in_other_digits_is_not_found_never_a_500(
    refcrm: RunningRefCrm, raw_id: str
) -> None:
    status, doc, _ = await rest(refcrm, typereq="addevent", id=raw_id, subj="x", **AUTH)
    assert status == 200 and parse.text_of(doc["result"]) == "error"
