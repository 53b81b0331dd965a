"""Reading TelefUM answers (pure): encodings, item shapes, error answers, HTTP statuses."""

from __future__ import annotations

import pytest

from crm_client import parse
from crm_client.errors import PermanentCrmError, TransientCrmError

ONE = (
    "<response><item><id>5</id><typecont>lead</typecont><name>Мария</name></item>"
    "<total>1</total></response>"
)
UTF8_DECL = '<?xml version="1.0" encoding="utf-8"?>'
DECL_1251 = '<?xml version="1.0" encoding="windows-1251"?>'


@pytest.mark.parametrize(
    ("body", "ctype", "warns"),
    [
        (ONE.encode(), None, False),
        (ONE.encode(), "text/xml; charset=utf-8", False),
        ((DECL_1251 + ONE).encode("cp1251"), "text/xml", False),
        (ONE.encode("cp1251"), 'text/xml; charset="windows-1251"', False),
        ((DECL_1251 + ONE).encode("cp1251"), "text/html; charset=UTF-8", True),  # PHP default
        ((UTF8_DECL + ONE).encode(), "text/xml; charset=cp1251", True),
        (ONE.encode("cp1251"), None, True),  # nothing declared, not UTF-8
        (b"\xef\xbb\xbf" + ONE.encode(), "text/xml; charset=windows-1251", False),  # BOM wins
        (b"\xff\xfe" + ONE.encode("utf-16-le"), None, False),
        (ONE.encode(), "text/xml; charset=x-no-such", True),
    ],
)
def test_cyrillic_is_read_right_however_the_charset_is_declared(
    body: bytes, ctype: str | None, warns: bool
) -> None:
    found = parse.parse_find(body, ctype)
    assert [(c.id, c.typecont, c.name) for c in found.contacts] == [("5", "lead", "Мария")]
    assert bool(found.warnings) is warns, found.warnings


def test_item_fields_with_attributes_and_odd_case_are_read() -> None:
    body = (
        '<Response><ITEM><Id type="int">9</Id><Name lang="ru">Пётр</Name><company/></ITEM>'
        "<Total>1</Total></Response>"
    ).encode()
    (c,) = parse.parse_find(body).contacts
    assert (c.id, c.name, c.company, c.typecont) == ("9", "Пётр", "", "contact")


def test_items_without_an_id_are_skipped_with_a_warning() -> None:
    body = b"<response><item><name>x</name></item><item>junk</item><total>2</total></response>"
    found = parse.parse_find(body)
    assert found.contacts == ()
    assert any("no <id>" in w for w in found.warnings)
    assert any("no fields" in w for w in found.warnings)


def test_php_notices_around_the_xml_are_cut_off_with_a_warning() -> None:
    body = b"<b>Notice</b>: Undefined index x\n" + ONE.encode() + b"\n<!-- 0.01s -->debug"
    found = parse.parse_find(body, "text/xml")
    assert [c.id for c in found.contacts] == ["5"]
    assert len(found.warnings) == 2


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"", "empty"),
        (b"   \r\n", "empty"),
        (b"<html><body>Fatal error</body></html>", "HTML page"),
        (b"<response><item><id>1", "unreadable XML"),
        (b"<response>ok</response>", "holds text"),
        (b"OK", "not XML"),
        (
            b'<!DOCTYPE x [<!ENTITY a "aaaa">]><response><total>&a;</total></response>',
            "entities are disabled",
        ),
    ],
)
def test_unreadable_answers_are_transient(body: bytes, words: str) -> None:
    with pytest.raises(TransientCrmError) as info:
        parse.parse_find(body, "text/xml")
    assert info.value.kind == "bad_response"
    assert words in info.value.message


def test_an_error_answer_is_permanent_and_keeps_the_description() -> None:
    body = (
        "<response><result>error</result>"
        "<description>Не указан номер телефона</description></response>"
    )
    with pytest.raises(PermanentCrmError) as info:
        parse.parse_add_contact(body.encode())
    assert (info.value.kind, info.value.description) == ("rejected", "Не указан номер телефона")


def test_created_answers_give_the_new_id() -> None:
    ok = (
        "<response><result>ok</result><idev>3453</idev>"
        "<description>Событие добавлено</description></response>"
    )
    created = parse.parse_add_event(ok.encode())
    assert (created.id, created.description, created.warnings) == ("3453", "Событие добавлено", ())
    legacy = parse.parse_add_event(b"<response><result>ok</result><id>12</id></response>")
    assert legacy.id == "12" and legacy.warnings


@pytest.mark.parametrize(
    ("status", "cls", "kind"),
    [
        (500, TransientCrmError, "http"),
        (502, TransientCrmError, "http"),
        (408, TransientCrmError, "http"),
        (429, TransientCrmError, "rate_limited"),
        (401, PermanentCrmError, "auth"),
        (403, PermanentCrmError, "auth"),
        (400, PermanentCrmError, "http"),
        (404, PermanentCrmError, "http"),
        (301, PermanentCrmError, "http"),
    ],
)
def test_http_statuses_are_classified(status: int, cls: type, kind: str) -> None:
    err = parse.error_for_status(status, b"", None)
    assert isinstance(err, cls) and err.kind == kind and err.status == status
    assert parse.error_for_status(200, b"", None) is None


def test_retry_after_reads_seconds_and_http_dates() -> None:
    now = 1_700_000_000.0
    assert parse.parse_retry_after("120", now) == 120.0
    assert parse.parse_retry_after("Tue, 14 Nov 2023 22:15:00 GMT", now) == 100.0
    assert parse.parse_retry_after("soon", now) is None
    assert parse.parse_retry_after(None, now) is None


def test_a_redirect_error_names_its_target_without_the_password_in_it() -> None:
    err = parse.error_for_status(302, location="https://bridge:S3cr3t@crm.example.com/rest")
    assert err is not None and "crm.example.com/rest" in str(err)
    assert "S3cr3t" not in str(err)
