"""The client against a hostile CRM over real sockets: every bad answer real CRMs give is
classified right (:class:`Transient` or not, and whether the CRM may have acted), keeps the
CRM's words, and never shows the password."""

from __future__ import annotations

import logging
import pickle
import traceback
from collections.abc import Awaitable, Callable
from urllib.parse import parse_qs

import pytest

from crm_client.client import TelefumClient
from crm_client.errors import CrmError, PermanentCrmError, Transient, TransientCrmError
from crm_client.types import Credentials
from tests.conftest import free_port
from tests.support.crm import HostileCrm, RunningRefCrm

SECRET = "S3cr3t+p&w"  # '+' and '&' must survive encoding; no form of it may leak
CREDS = Credentials("bridge", SECRET)
LEAKS = (SECRET, "S3cr3t", "S3cr3t%2Bp%26w")


def assert_no_secret(*texts: str) -> None:
    for text in texts:
        for leak in LEAKS:
            assert leak not in text, f"password leaked into: {text!r}"


def error_texts(err: BaseException) -> list[str]:
    formatted = "".join(traceback.format_exception(err))
    return [str(err), repr(err), *map(str, err.args), formatted]


# case, op, expected class, kind, words the error must keep
FAILURES = [
    ("html", "find", TransientCrmError, "bad_response", "502 Bad Gateway"),
    ("garbage", "find", TransientCrmError, "bad_response", "not XML"),
    ("empty", "find", TransientCrmError, "bad_response", "empty"),
    ("truncated_xml", "find", TransientCrmError, "bad_response", "unreadable XML"),
    ("truncated_transfer", "find", TransientCrmError, "network", "cut off"),
    ("429", "find", TransientCrmError, "rate_limited", "429"),
    ("500", "addcont", TransientCrmError, "http", "500 Internal Server Error"),
    ("503", "addevent", TransientCrmError, "http", "Ведутся технические работы"),
    ("ok_without_id", "addcont", TransientCrmError, "bad_response", "without <id>"),
    ("auth_error", "find", PermanentCrmError, "auth", "Неправильный логин или пароль"),
    ("rejected", "addcont", PermanentCrmError, "rejected", "Не указан номер телефона"),
    ("401", "find", PermanentCrmError, "auth", "401"),
    ("404", "addevent", PermanentCrmError, "http", "404 Not Found"),
    ("redirect", "find", PermanentCrmError, "http", "redirect to https://crm.example.com/login"),
]


async def call(client: TelefumClient, op: str) -> object:
    if op == "find":
        return await client.find("+79161234567", CREDS)
    if op == "addcont":
        return await client.add_contact("+79161234567", "Иван", "contact", "+74951234567", CREDS)
    return await client.add_event("3453", "contact", "Входящий звонок", "3:54", CREDS)


@pytest.mark.parametrize(
    ("case", "op", "cls", "kind", "words"), FAILURES, ids=[f[0] for f in FAILURES]
)
async def test_each_bad_answer_becomes_one_classified_error_without_the_password(
    hostile_crm: HostileCrm,
    caplog: pytest.LogCaptureFixture,
    case: str,
    op: str,
    cls: type[CrmError],
    kind: str,
    words: str,
) -> None:
    caplog.set_level(logging.DEBUG)
    async with TelefumClient(hostile_crm.url(case), timeout_s=5) as client:
        with pytest.raises(cls) as info:
            await call(client, op)
    err = info.value
    assert err.kind == kind
    assert isinstance(err, Transient) is (cls is TransientCrmError)
    assert err.op == op
    assert words in str(err)
    assert err.url is not None and err.url.startswith(hostile_crm.url(case))
    assert err.__cause__ is None  # no chained aiohttp error that may print the URL
    assert err.__context__ is None or err.__suppress_context__
    logging.getLogger("test").error("CRM failed", exc_info=err)
    assert_no_secret(*error_texts(err), *(caplog.text, *[r.getMessage() for r in caplog.records]))


# case, op, whether the CRM may have acted on the request (a retry may write twice)
ACTED = [
    ("html", "addevent", True),  # it answered, if unreadably: it had the request
    ("garbage", "addevent", True),
    ("empty", "addevent", True),
    ("truncated_xml", "addevent", True),
    ("ok_without_id", "addcont", True),
    ("truncated_transfer", "addevent", True),  # the answer was cut off
    ("drop", "addevent", True),  # it read the request and hung up
    ("drop", "addcont", True),  # the same for a GET: and it is not sent again
    ("slow", "addevent", True),  # no answer in time: we cannot tell
    ("500", "addevent", True),  # failed, maybe after its INSERT
    ("502", "addevent", True),  # the application behind the gateway may have carried on
    ("504", "addevent", True),
    ("503", "addevent", False),  # unavailable: turned away before any processing
    ("408", "addevent", False),  # the server gave up waiting for the request
    ("429", "addcont", False),  # rate limited: refused unprocessed
]


@pytest.mark.parametrize(("case", "op", "acted"), ACTED, ids=[f"{a[0]}-{a[1]}" for a in ACTED])
async def test_each_transient_failure_says_whether_the_crm_may_have_acted(
    hostile_crm: HostileCrm, case: str, op: str, acted: bool
) -> None:
    async with TelefumClient(hostile_crm.url(case), timeout_s=0.5) as client:
        with pytest.raises(TransientCrmError) as info:
            await call(client, op)
    assert info.value.may_have_acted is acted
    assert len(hostile_crm.seen) == 1  # the request reached the server, once


@pytest.mark.parametrize("connection", ["fresh", "kept alive"])
@pytest.mark.parametrize("op", ["addcont", "addevent"])
async def test_a_write_the_crm_carried_out_before_the_connection_dropped_is_sent_once(
    make_refcrm: Callable[..., Awaitable[RunningRefCrm]], op: str, connection: str
) -> None:
    """The reference CRM stores the contact (or event), then closes the connection without
    an answer. aiohttp re-sends a GET (addcont) once on its own when that happens, on a
    fresh connection as on a kept-alive one; the client must not let it."""
    crm = await make_refcrm(lose_replies={op: 1.0})
    creds = crm.creds()
    async with TelefumClient(crm.rest_url, timeout_s=5) as client:
        if connection == "kept alive":
            await client.find("+79161234500", creds)  # the write goes on the same connection
        contact = "" if op == "addcont" else await _contact(crm)
        with pytest.raises(TransientCrmError) as info:
            if op == "addcont":
                await client.add_contact("+79161234567", "Иван", "contact", "", creds)
            else:
                await client.add_event(contact, "contact", "Входящий звонок", "3:54", creds)
    assert (info.value.kind, info.value.may_have_acted) == ("network", True)
    assert crm.state.requests[op] == 1 and crm.state.requests["replies_lost"] == 1
    if op == "addcont":
        assert crm.count_contacts("+79161234567") == 1
    else:
        assert crm.count_events() == 1


async def _contact(crm: RunningRefCrm) -> str:
    """A contact made straight in the store (no request the CRM would lose the reply of)."""
    return str(
        crm.state.store.add_contact(
            phones=["+79160000000"],
            name="Иван",
            typecont="contact",
            created_by="bridge",
            x_pstn=None,
            company="",
            description="",
        )
    )


async def test_a_find_may_still_be_sent_again_on_a_dropped_connection(
    make_refcrm: Callable[..., Awaitable[RunningRefCrm]],
) -> None:
    """Reads are not writes: aiohttp's one retry of a read is harmless, and kept."""
    crm = await make_refcrm(lose_replies={"find": 1.0})
    async with TelefumClient(crm.rest_url, timeout_s=5) as client:
        with pytest.raises(TransientCrmError):
            await client.find("+79161234567", crm.creds())
    assert crm.state.requests["find"] == 2


async def test_a_refused_connection_surely_did_not_reach_the_crm() -> None:
    url = f"http://127.0.0.1:{free_port()}/rest"  # nothing listens there
    async with TelefumClient(url, timeout_s=5) as client:
        with pytest.raises(TransientCrmError) as info:
            await client.add_event("3453", "contact", "Входящий звонок", "3:54", CREDS)
    assert (info.value.kind, info.value.may_have_acted) == ("network", False)


async def test_the_crm_description_is_kept_on_error_answers(hostile_crm: HostileCrm) -> None:
    async with TelefumClient(hostile_crm.url("auth_error")) as client:
        with pytest.raises(PermanentCrmError) as info:
            await client.find("+79161234567", CREDS)
    assert info.value.description == "Неправильный логин или пароль"


async def test_429_carries_the_servers_retry_after(hostile_crm: HostileCrm) -> None:
    async with TelefumClient(hostile_crm.url("429")) as client:
        with pytest.raises(TransientCrmError) as info:
            await client.find("+79161234567", CREDS)
    assert info.value.retry_after == 30.0
    assert info.value.status == 429


async def test_a_crm_that_does_not_answer_in_time_is_a_transient_timeout(
    hostile_crm: HostileCrm, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with TelefumClient(hostile_crm.url("slow"), timeout_s=0.3) as client:
        with pytest.raises(TransientCrmError) as info:
            await client.find("+79161234567", CREDS)
    assert info.value.kind == "timeout"
    assert "0.3 s" in str(info.value)
    assert_no_secret(*error_texts(info.value), caplog.text)


async def test_connection_refused_is_transient_and_does_not_leak(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    url = f"http://127.0.0.1:{free_port()}/rest"  # nothing listens there
    async with TelefumClient(url, timeout_s=5) as client:
        with pytest.raises(TransientCrmError) as info:
            await client.add_contact("+79161234567", "Иван", "contact", "", CREDS)
    assert info.value.kind == "network"
    assert_no_secret(*error_texts(info.value), caplog.text)


@pytest.mark.parametrize(
    ("case", "ids", "total", "warning"),
    [
        ("zero_items", [], 0, None),
        ("one_item", ["7"], 1, None),
        ("many_items", ["1", "2", "3"], 3, None),
        ("total_mismatch", ["1", "2"], 5, "<total> says 5"),
        ("no_total", ["1", "2"], 2, "no <total>"),
    ],
)
async def test_find_reads_zero_one_or_many_items_and_says_when_total_disagrees(
    hostile_crm: HostileCrm, case: str, ids: list[str], total: int, warning: str | None
) -> None:
    async with TelefumClient(hostile_crm.url(case)) as client:
        found = await client.find("+79161234567", CREDS)
    assert [c.id for c in found.contacts] == ids
    assert found.total == total
    if warning is None:
        assert found.warnings == ()
    else:
        assert any(warning in w for w in found.warnings), found.warnings


@pytest.mark.parametrize(
    "case", ["cp1251_declared", "cp1251_http_only", "cp1251_behind_utf8_header", "bom"]
)
async def test_cyrillic_names_survive_every_way_crms_declare_their_charset(
    hostile_crm: HostileCrm, case: str
) -> None:
    async with TelefumClient(hostile_crm.url(case)) as client:
        found = await client.find("+79161234567", CREDS)
    assert [(c.id, c.name, c.company) for c in found.contacts] == [
        ("7", "Иван Петрович", "ООО Ромашка")
    ]


async def test_phones_and_source_are_percent_encoded_plus_as_2b(hostile_crm: HostileCrm) -> None:
    async with TelefumClient(hostile_crm.url("contact_added")) as client:
        new_id = await client.add_contact(
            "+79161234567", "Иван Петрович", "contact", "+74951234567", CREDS
        )
    assert new_id == "3453"
    method, query, _ = hostile_crm.seen[-1]
    assert method == "GET"
    assert "phone=%2B79161234567" in query
    assert "x_pstn=%2B74951234567" in query
    assert "name=%D0%98%D0%B2%D0%B0%D0%BD%20%D0%9F" in query  # UTF-8, space as %20
    assert "password=S3cr3t%2Bp%26w" in query  # the CRM gets the password intact


async def test_addevent_is_a_form_post_with_every_field(hostile_crm: HostileCrm) -> None:
    async with TelefumClient(hostile_crm.url("event_added")) as client:
        idev = await client.add_event(
            "3453", "contact", "Входящий звонок", "Длительность 3:54", CREDS
        )
    assert idev == "77"
    method, query, body = hostile_crm.seen[-1]
    assert (method, query) == ("POST", "")
    fields = parse_qs(body.decode("ascii"), strict_parsing=True)
    assert fields == {
        "typereq": ["addevent"],
        "id": ["3453"],
        "typecont": ["contact"],
        "subj": ["Входящий звонок"],
        "desc": ["Длительность 3:54"],
        "login": ["bridge"],
        "password": [SECRET],
    }


async def test_latency_hook_sees_each_request_with_its_outcome(hostile_crm: HostileCrm) -> None:
    seen: list[tuple[str, str, float]] = []
    async with TelefumClient(
        hostile_crm.url("one_item"), on_request=lambda *a: seen.append(a)
    ) as ok_client:
        await ok_client.find("+79161234567", CREDS)
    async with TelefumClient(hostile_crm.url("503"), on_request=lambda *a: seen.append(a)) as bad:
        with pytest.raises(TransientCrmError):
            await bad.add_event("1", "contact", "s", "d", CREDS)
    rejecting = hostile_crm.url("rejected")
    async with TelefumClient(rejecting, on_request=lambda *a: seen.append(a)) as r:
        with pytest.raises(PermanentCrmError):
            await r.add_contact("+79161234567", "x", "contact", None, CREDS)
    assert [(op, outcome) for op, outcome, _ in seen] == [
        ("find", "ok"),
        ("addevent", "transient"),
        ("addcont", "permanent"),
    ]
    assert all(0 <= s < 5 for _, _, s in seen)


async def test_a_failing_latency_hook_does_not_fail_the_request(hostile_crm: HostileCrm) -> None:
    def broken(op: str, outcome: str, seconds: float) -> None:
        raise RuntimeError("metrics down")

    async with TelefumClient(hostile_crm.url("one_item"), on_request=broken) as client:
        found = await client.find("+79161234567", CREDS)
    assert found.total == 1


def test_client_repr_and_bad_url_error_hide_the_password() -> None:
    client = TelefumClient("https://bridge:S3cr3t@crm.example.com/rest?password=S3cr3t")
    assert_no_secret(repr(client))
    with pytest.raises(ValueError) as info:
        TelefumClient("ftp://crm.example.com/rest?password=S3cr3t")
    assert_no_secret(str(info.value))


def test_errors_pickle_with_their_classification() -> None:
    err = TransientCrmError(
        "HTTP 429", kind="rate_limited", may_have_acted=False, retry_after=3.0, status=429
    )
    err.at("find", "http://crm/rest?login=a&password=S3cr3t")
    back = pickle.loads(pickle.dumps(err))
    assert (type(back), back.kind, back.may_have_acted, back.retry_after) == (
        TransientCrmError,
        "rate_limited",
        False,
        3.0,
    )
    assert str(back) == str(err)
    assert_no_secret(str(back), repr(back))
