"""The client against the reference CRM over a real socket: the whole protocol round trip."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import aiohttp
import pytest

from crm_client.client import TelefumClient
from crm_client.errors import PermanentCrmError, TransientCrmError
from crm_client.types import Credentials
from tests.support.crm import RunningRefCrm


async def test_find_on_an_unknown_phone_is_empty(refcrm: RunningRefCrm) -> None:
    async with TelefumClient(refcrm.rest_url) as crm:
        found = await crm.find("+79161234567", refcrm.creds())
    assert (found.contacts, found.total, found.warnings) == ((), 0, ())


async def test_a_created_contact_is_found_in_every_phone_format(refcrm: RunningRefCrm) -> None:
    async with TelefumClient(refcrm.rest_url) as crm:
        cid = await crm.add_contact(
            "+79161234567", "Василий Петрович", "contact", "+74951234567", refcrm.creds("ivan")
        )
        for phone in ("+79161234567", "79161234567", "89161234567", "8 (916) 123-45-67"):
            found = await crm.find(phone, refcrm.creds())
            assert [(c.id, c.name, c.typecont) for c in found.contacts] == [
                (cid, "Василий Петрович", "contact")
            ], phone
            assert found.total == 1 and found.warnings == ()


async def test_the_crm_records_who_created_contacts_and_events_and_the_source(
    refcrm: RunningRefCrm,
) -> None:
    async with TelefumClient(refcrm.rest_url) as crm:
        cid = await crm.add_contact(
            "89161234567", "Мария", "lead", "+74951234567", refcrm.creds("maria")
        )
        idev = await crm.add_event(
            cid, "lead", "Входящий звонок", "Длительность 3:54", refcrm.creds("ivan")
        )
    (row,) = refcrm.contacts("+79161234567")
    assert (str(row.id), row.created_by, row.x_pstn, row.typecont) == (
        cid,
        "maria",
        "+74951234567",
        "lead",  # '+' arrived as '+', not a space
    )
    (event,) = refcrm.events(cid)
    assert (str(event.id), event.created_by, event.subj, event.desc) == (
        idev,
        "ivan",
        "Входящий звонок",
        "Длительность 3:54",
    )


async def test_several_contacts_on_one_phone_come_back_in_order(refcrm: RunningRefCrm) -> None:
    async with TelefumClient(refcrm.rest_url) as crm:
        first = await crm.add_contact("+79161234567", "Первый", "contact", None, refcrm.creds())
        second = await crm.add_contact("89161234567", "Второй", "company", None, refcrm.creds())
        found = await crm.find("9161234567", refcrm.creds())
    assert [(c.id, c.typecont) for c in found.contacts] == [(first, "contact"), (second, "company")]
    assert found.total == 2


async def test_a_contact_is_found_by_any_of_its_phones(refcrm: RunningRefCrm) -> None:
    async with TelefumClient(refcrm.rest_url) as crm:
        cid = await crm.add_contact("+79161234567", "Иван", "contact", None, refcrm.creds())
        refcrm.state.store.add_phone(int(cid), "8 (495) 765-43-21")
        found = await crm.find("+74957654321", refcrm.creds())
    assert [c.id for c in found.contacts] == [cid]


async def test_wrong_password_is_a_permanent_auth_error_with_the_crms_words(
    refcrm: RunningRefCrm,
) -> None:
    async with TelefumClient(refcrm.rest_url) as crm:
        with pytest.raises(PermanentCrmError) as info:
            await crm.find("+79161234567", Credentials("ivan", "not-his"))
    assert info.value.kind == "auth"
    assert info.value.description == "Неправильный логин или пароль"
    assert "not-his" not in repr(info.value) + str(info.value)


async def test_an_event_on_a_missing_contact_is_rejected_permanently(
    refcrm: RunningRefCrm,
) -> None:
    async with TelefumClient(refcrm.rest_url) as crm:
        with pytest.raises(PermanentCrmError) as info:
            await crm.add_event("999", "contact", "Звонок", "", refcrm.creds())
    assert (info.value.kind, info.value.description) == ("rejected", "Контакт не найден")


async def test_windows_1251_answers_read_right(
    make_refcrm: Callable[..., Awaitable[RunningRefCrm]],
) -> None:
    crm_1251 = await make_refcrm(encoding="windows-1251")
    async with TelefumClient(crm_1251.rest_url) as crm:
        await crm.add_contact(
            "+79161234567", "Щукин Эдуард Юрьевич", "contact", None, crm_1251.creds()
        )
        found = await crm.find("89161234567", crm_1251.creds())
    assert [c.name for c in found.contacts] == ["Щукин Эдуард Юрьевич"]
    assert found.warnings == ()


async def test_a_crm_failing_for_a_while_is_transient_then_works(refcrm: RunningRefCrm) -> None:
    refcrm.set_failure("503", count=2)
    async with TelefumClient(refcrm.rest_url) as crm:
        for _ in range(2):
            with pytest.raises(TransientCrmError) as info:
                await crm.find("+79161234567", refcrm.creds())
            assert info.value.status == 503 and info.value.retry_after == 1.0
        found = await crm.find("+79161234567", refcrm.creds())
    assert found.total == 0


@pytest.mark.parametrize(
    ("mode", "kind"),
    [
        ("500", "http"),
        ("429", "rate_limited"),
        ("html", "bad_response"),
        ("garbage", "bad_response"),
        ("truncated", "bad_response"),
    ],
)
async def test_refcrm_failure_modes_are_transient_for_the_client(
    refcrm: RunningRefCrm, mode: str, kind: str
) -> None:
    refcrm.set_failure(mode)
    async with TelefumClient(refcrm.rest_url) as crm:
        with pytest.raises(TransientCrmError) as info:
            await crm.add_contact("+79161234567", "Иван", "contact", None, refcrm.creds())
    assert info.value.kind == kind
    assert refcrm.count_contacts() == 0


async def test_a_slow_crm_times_out_transiently(
    make_refcrm: Callable[..., Awaitable[RunningRefCrm]],
) -> None:
    slow = await make_refcrm(latency_s=2.0)
    async with TelefumClient(slow.rest_url, timeout_s=0.2) as crm:
        with pytest.raises(TransientCrmError) as info:
            await crm.find("+79161234567", slow.creds())
    assert info.value.kind == "timeout"


async def test_card_and_search_urls_open_the_contact(refcrm: RunningRefCrm) -> None:
    async with aiohttp.ClientSession() as session:
        crm = TelefumClient(refcrm.rest_url, session=session)
        cid = await crm.add_contact(
            "+79161234567", "Иван Павлович", "contact", None, refcrm.creds()
        )
        assert crm.card_url(cid, "contact") == f"{refcrm.base_url}card?id={cid}&typecont=contact"
        assert crm.search_url("+79161234567") == f"{refcrm.base_url}search?phone=%2B79161234567"
        for url in (crm.card_url(cid, "contact"), crm.search_url("+79161234567")):
            async with session.get(url) as resp:
                assert resp.status == 200
                assert "Иван Павлович" in await resp.text()
        await crm.close()
        assert not session.closed  # a session given to the client stays the caller's


def test_card_and_search_live_beside_the_rest_endpoint() -> None:
    crm = TelefumClient("https://crm.example.com/api/telefum/rest?x=1")
    assert crm.card_url("24342", "contact") == (
        "https://crm.example.com/api/telefum/card?id=24342&typecont=contact"
    )
    assert crm.search_url("+7 916") == "https://crm.example.com/api/telefum/search?phone=%2B7%20916"


async def test_a_hanging_crm_ends_in_a_timeout_and_does_not_hold_teardown(
    refcrm: RunningRefCrm,
) -> None:
    refcrm.set_failure("hang")
    async with TelefumClient(refcrm.rest_url, timeout_s=0.2) as crm:
        with pytest.raises(TransientCrmError) as info:
            await crm.add_event("1", "contact", "Звонок", "", refcrm.creds())
    assert info.value.kind == "timeout"


async def test_an_error_answer_from_a_failing_crm_is_permanent(refcrm: RunningRefCrm) -> None:
    refcrm.set_failure("error", count=1)
    async with TelefumClient(refcrm.rest_url) as crm:
        with pytest.raises(PermanentCrmError) as info:
            await crm.find("+79161234567", refcrm.creds())
        assert info.value.description == "Сервис временно недоступен"
        assert (await crm.find("+79161234567", refcrm.creds())).total == 0
