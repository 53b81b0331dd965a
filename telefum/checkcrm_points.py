"""The points ``telefum check-crm`` checks, each with the protocol's words it rests on.

The protocol is the TelefUM CRM API text, six numbered sections (its Russian original is the
authority; the quotes below are from it). Read word by word, it asks for less than the
bridge's users see in a good CRM, so the points come in three kinds:

- **required**: the protocol asks it, in the words quoted. Pass or FAIL, and only these
  decide the exit code. When check-crm cannot see a required point (a card behind a
  sign-in, a page drawn by scripts) it says "not verified" and why, never FAIL.
- **required, not readable back**: the protocol asks it but gives no request that shows
  it: who created a record, a contact's source. "not verified" with what to look at by
  hand, unless the CRM shows it anyway (a ``find`` item that carries ``<x_pstn>``; with
  ``--strict``, a card rendered on the server).
- **beyond the protocol** (``--strict`` only): what makes the bridge useful but the text
  does not ask: the card lists the calls, the search page links the card, ``find`` matches
  the phone in other formats. For CRMs that render their pages on the server.

Deliberately not checked: ``<company>`` and ``<description>`` of a ``find`` item (listed
among the outputs, but addcont has no input for them, so the test contact's are empty and
a CRM may leave an empty element out); the ``<typecont>`` echoed by addcont (in the
example answer, not in the list of outputs); the wording of error descriptions (the
spec's are examples: a different wording is noted, not failed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# pass/FAIL: a point the protocol requires, observed; "not verified": required, but
# check-crm could not see it (says why); "skip": beyond the protocol, without --strict.
Status = Literal["pass", "FAIL", "not verified", "skip"]


@dataclass(frozen=True, slots=True)
class Point:
    name: str
    spec: str  # sections of the protocol ("§2"), "" beyond it
    quote: str  # the protocol's own words the point rests on (empty beyond it)
    asks: str  # what check-crm asks of the CRM
    strict_only: bool = False


_ALL = (
    Point(
        "find unknown",
        "§2",
        "Выходные параметры: … Количество найденных контактов",
        "find on a phone no contact has answers no <item> and <total>0</total>",
    ),
    Point(
        "addcont",
        "§3",
        "Выходные параметры: результат (ok/error), id созданного контакта (если успешно), "
        "Описание результата",
        "addcont answers <result>ok</result>, the new contact's <id> and a <description>",
    ),
    Point(
        "find",
        "§2",
        "Получение контактных данных … номер телефона; Выходные параметры: id контакта, "
        "Тип контакта, Имя контакта (§6: контакты, у которых есть данный телефон)",
        "find with the phone addcont was given returns that contact (id, typecont, name) "
        "and no other; a phone one digit off does not return it",
    ),
    Point(
        "addevent",
        "§4",
        "Пример POST запроса … Выходные параметры: результат (ok/error), id созданного "
        "события (если успешно), Описание результата",
        "addevent as a form POST answers <result>ok</result>, the new <idev> and a <description>",
    ),
    Point(
        "wrong password",
        "§2",
        "Ответ в случае ошибки авторизации: <result>error</result> <description>…",
        "find and addcont with a wrong (random) password get the error answer, and the "
        "addcont creates nothing",
    ),
    Point(
        "missing fields",
        "§3 §4",
        "<result>error</result> <description>Не указан номер телефона</description>; "
        "<description>Не указано id-контакта</description>",
        "addcont without phone and addevent without id get error answers",
    ),
    Point(
        "card page",
        "§5",
        "При переходе по данной ссылке должна открываться карточка контакта",
        "/card?id=…&typecont=… opens that contact's card",
    ),
    Point(
        "telf links",
        "§1",
        "Исходящие звонки из карточки контакта: … необходимо телефонные звонки снабдить "
        "ссылкой “telf:”",
        "the card shows the contact's phone as a telf: link",
    ),
    Point(
        "search page",
        "§6",
        "должна открываться страничка поиска, где в результатах поиска будут отображены "
        "контакты, у которых есть данный телефон",
        "/search?phone=… lists the contact",
    ),
    Point(
        "source",
        "§3",
        "источник контакта (т.е. откуда пришел контакт…)",
        "the contact keeps the source sent as x_pstn (no request of the protocol reads it "
        "back: checked when find carries <x_pstn>, or with --strict on the card)",
    ),
    Point(
        "author",
        "§3 §4",
        "Ваша система должна указать в качестве лица, кто создал контакт (событие) – того "
        "пользователя, чьи учетные данные используются в данном запросе",
        "the contact and the event are recorded as created by the login used (no request "
        "of the protocol reads it back)",
    ),
    Point(
        "encoding",
        "§2-§4",
        "the answers are XML (the examples of §2-§4); XML 1.0 §4.3.3: an entity in another "
        "encoding than it declares is a fatal error",
        "the Cyrillic name comes back from find as sent; every answer is in the charset it "
        "declares",
    ),
    Point(
        "find other formats",
        "",
        "",
        "find with the phone in digits-only and national form returns the contact too",
        strict_only=True,
    ),
    Point(
        "card events",
        "",
        "",
        "the card lists the new event, its Cyrillic subject and description intact",
        strict_only=True,
    ),
    Point(
        "search links",
        "",
        "",
        "the search page links the contact to its card (card?id=…)",
        strict_only=True,
    ),
)

POINTS: dict[str, Point] = {p.name: p for p in _ALL}

# The spec's wording of its example answers: another wording is noted, not failed.
SPEC_WORDING = {
    "auth": "Неправильный логин или пароль",
    "no phone": "Не указан номер телефона",
    "no id": "Не указано id-контакта",
}
