"""The reference TelefUM CRM: all six points of the protocol on aiohttp + SQLite.

What the demo, the tests and CRM implementers run (``telefum refcrm``)::

    app = create_app("crm.sqlite", {"bridge": "secret"}, phone_key=to_e164)

- ``/rest`` (GET or form POST; form fields win over the query): ``find``, ``addcont``,
  ``addevent``. The author of every contact and event is the user whose credentials came
  with the request. Contacts keep their source (``x_pstn``) and several phones (repeat
  ``phone`` in ``addcont``); phones match whatever format they are written in.
  Answers are the protocol's XML, Russian messages as the spec words them. A bad request
  gets ``<result>error</result>`` with a description (HTTP 200, as the protocol expects;
  400 only for a body that cannot be read at all), never a 500.
- ``/card?id=&typecont=``: the contact, its phones as ``telf:`` links, its source, its
  events with their authors. ``/search?phone=``: matching contacts, linked to their cards.
  ``/``: a search form and the latest contacts. No browser login: it is a reference.

Test-only knobs (documented, off by default; never for a real deployment):

- ``latency_s``: delay added to every ``/rest`` request (benchmarks, timeout tests);
- ``fail_mode`` (+ ``fail_count``): make ``/rest`` fail, see :data:`FAIL_MODES`;
  change at run time through ``app[STATE]`` or, with ``test_control=True``,
  ``POST /_control?fail_mode=503&fail_count=2&latency_ms=0&lose_replies=addcont:0.3``;
- ``lose_replies`` (``{"addcont": 0.3}``): that share of those requests is carried out
  (the contact is stored) and then the connection is closed without an answer, as a CRM
  whose reply is lost on the way does: a client that sends it again writes twice;
- ``quirks``: break one point on purpose, see :data:`QUIRKS` (check-crm's own tests);
- ``GET /_stats`` (read-only JSON, no secrets): ``{"contacts", "events", "requests"}``,
  or with ``?phone=`` the contacts and events of that phone. Tests and the demo count
  with it; :mod:`crm_client.refcrm_store` has the same counts straight from the file.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import random
import re
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape as xml_escape

from aiohttp import web
from multidict import MultiDict, MultiDictProxy

from . import refcrm_pages as pages
from .refcrm_store import ContactRow, CrmStore, PhoneKey

log = logging.getLogger("crm_client.refcrm")

# The protocol's own wording (spec points 2-4), then ours for cases it does not word.
MSG_AUTH = "Неправильный логин или пароль"
MSG_CONTACT_ADDED = "Контакт добавлен"
MSG_NO_PHONE = "Не указан номер телефона"
MSG_EVENT_ADDED = "Событие добавлено"
MSG_NO_CONTACT_ID = "Не указано id-контакта"
MSG_NO_TYPEREQ = "Не указан тип запроса"
MSG_BAD_TYPEREQ = "Неизвестный тип запроса"
MSG_NO_NAME = "Не указано имя контакта"
MSG_NO_SUBJ = "Не указана тема события"
MSG_CONTACT_NOT_FOUND = "Контакт не найден"
MSG_BAD_REQUEST = "Некорректный запрос"
MSG_INTERNAL = "Внутренняя ошибка сервера"

FAIL_MODES = {
    "500": "HTTP 500 with an HTML page",
    "503": "HTTP 503 with Retry-After: 1",
    "429": "HTTP 429 with Retry-After: 1",
    "html": "HTTP 200 with an HTML error page",
    "garbage": "HTTP 200 with bytes that are not XML",
    "truncated": "HTTP 200 with XML cut off in the middle",
    "error": "<result>error</result> for every request",
    "hang": "never answers (the client's timeout ends it)",
}
QUIRKS = {
    "ignore_x_pstn": "addcont drops the source (check-crm --strict fails 'source')",
    "no_telf_links": "card shows phones as plain text (breaks 'telf links')",
    "no_total": "find leaves out <total> (breaks 'find unknown', 'find')",
    "accept_any_password": "no credential check (breaks 'wrong password')",
    "mislabelled_charset": "declares UTF-8 but answers in windows-1251 (breaks 'encoding')",
    "exact_phone_match": "phones match only as written (check-crm --strict fails "
    "'find other formats')",
    "search_without_links": "search lists contacts without card links (check-crm --strict "
    "fails 'search links')",
}
_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


@dataclass
class RefCrmState:
    store: CrmStore
    users: dict[str, str]
    latency_s: float = 0.0
    fail_mode: str | None = None
    fail_count: int | None = None  # None: every request while fail_mode is set
    quirks: frozenset[str] = frozenset()
    encoding: str = "utf-8"  # of /rest answers: "utf-8" or "windows-1251"
    requests: Counter[str] = field(default_factory=Counter)
    lose_replies: dict[str, float] = field(default_factory=dict)  # typereq -> share lost
    rng: random.Random = field(default_factory=random.Random)

    def take_failure(self) -> str | None:
        """The failure this request gets, counting it down."""
        if self.fail_mode is None:
            return None
        mode = self.fail_mode
        if self.fail_count is not None:
            self.fail_count -= 1
            if self.fail_count <= 0:
                self.fail_mode, self.fail_count = None, None
        return mode


STATE = web.AppKey("refcrm_state", RefCrmState)


def create_app(
    db_path: str | Path,
    users: Mapping[str, str],
    phone_key: PhoneKey,
    *,
    latency_s: float = 0.0,
    fail_mode: str | None = None,
    fail_count: int | None = None,
    quirks: Iterable[str] = (),
    encoding: str = "utf-8",
    test_control: bool = False,
    lose_replies: Mapping[str, float] | None = None,
    seed: int | None = None,
) -> web.Application:
    """The reference CRM as an aiohttp application; its SQLite file is opened at once and
    closed on the app's cleanup."""
    unknown = set(quirks) - set(QUIRKS)
    if unknown:
        raise ValueError(f"unknown quirks: {sorted(unknown)}; known: {sorted(QUIRKS)}")
    if fail_mode is not None and fail_mode not in FAIL_MODES:
        raise ValueError(f"unknown fail_mode {fail_mode!r}; known: {sorted(FAIL_MODES)}")
    if encoding.lower().replace("_", "-") not in ("utf-8", "windows-1251", "cp1251"):
        raise ValueError("encoding must be utf-8 or windows-1251")
    state = RefCrmState(
        store=CrmStore(db_path, phone_key),
        users=dict(users),
        latency_s=latency_s,
        fail_mode=fail_mode,
        fail_count=fail_count,
        quirks=frozenset(quirks),
        encoding="windows-1251" if "1251" in encoding else "utf-8",
        lose_replies=check_lose_replies(lose_replies or {}),
        rng=random.Random(seed),
    )
    app = web.Application(middlewares=[_no_500_for_bad_input])
    app[STATE] = state
    app.router.add_route("GET", "/rest", rest)
    app.router.add_route("POST", "/rest", rest)
    app.router.add_get("/card", card)
    app.router.add_get("/search", search)
    app.router.add_get("/", index)
    app.router.add_get("/_stats", stats)
    if test_control:
        app.router.add_post("/_control", control)

    async def close_store(_: web.Application) -> None:
        state.store.close()

    app.on_cleanup.append(close_store)
    return app


# --- /rest ----------------------------------------------------------------------------------


class BadRequest(Exception):
    """A request we cannot read at all (undecodable body): a 400 with the error answer."""


@web.middleware
async def _no_500_for_bad_input(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except BadRequest:
        if request.path == "/rest":
            return _xml(request, {"result": "error", "description": MSG_BAD_REQUEST}, status=400)
        return _html(pages.message(MSG_BAD_REQUEST, MSG_BAD_REQUEST), status=400)
    except Exception:  # a bug or a broken disk: a real 500, logged, with a readable body
        log.exception("refcrm: internal error on %s", request.path)
        if request.path == "/rest":
            return _xml(request, {"result": "error", "description": MSG_INTERNAL}, status=500)
        return _html(pages.message(MSG_INTERNAL, MSG_INTERNAL), status=500)


async def _params(request: web.Request) -> MultiDict[str]:
    """Query and form fields together, form fields first, control characters dropped."""
    merged: MultiDict[str] = MultiDict()
    if request.method == "POST":
        try:
            form: MultiDictProxy[Any] = await request.post()
        except web.HTTPException:  # e.g. 413 for a body over client_max_size
            raise
        except Exception as err:  # bad encoding, broken multipart, unknown charset...
            raise BadRequest(f"{type(err).__name__}: {err}") from None
        for k, v in form.items():
            if isinstance(v, str):
                merged.add(k, v)
    for k, v in request.query.items():
        merged.add(k, v)
    return MultiDict((k, _XML_INVALID.sub("", v).strip()) for k, v in merged.items())


def _first(params: MultiDict[str], name: str) -> str:
    return params.get(name, "")


def _authorised(state: RefCrmState, login: str, password: str) -> bool:
    if "accept_any_password" in state.quirks:
        return True
    expected = state.users.get(login)
    if expected is None or not login:
        hmac.compare_digest(password.encode(), b"x" * len(password))  # same work either way
        return False
    return hmac.compare_digest(password.encode(), expected.encode())


async def rest(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    # The whole request is read first, then worked on (``latency_s``): a request the CRM
    # has received is carried out even if its client goes away meanwhile (with the
    # server's handler_cancellation off, as ``telefum refcrm`` runs), as a real CRM does.
    params = await _params(request)
    if state.latency_s > 0:
        await asyncio.sleep(state.latency_s)
    failure = state.take_failure()
    if failure is not None:
        state.requests["failed"] += 1
        return await _fail(request, failure)
    typereq = _first(params, "typereq").lower()
    login = _first(params, "login")
    if not _authorised(state, login, _first(params, "password")):
        state.requests["auth_error"] += 1
        return _error(request, MSG_AUTH)
    handler = _HANDLERS.get(typereq)
    if handler is None:
        state.requests["bad_typereq"] += 1
        return _error(request, MSG_BAD_TYPEREQ if typereq else MSG_NO_TYPEREQ)
    state.requests[typereq] += 1
    response = handler(request, state, params, login)
    if state.rng.random() < state.lose_replies.get(typereq, 0.0) and request.transport:
        state.requests["replies_lost"] += 1
        request.transport.close()  # done, and the answer never leaves
    return response


def check_lose_replies(shares: Mapping[str, float]) -> dict[str, float]:
    """``{typereq: share}`` with known request types and shares in [0, 1], else ValueError."""
    out = {}
    for typereq, share in shares.items():
        if typereq not in _HANDLERS or not 0.0 <= float(share) <= 1.0:
            raise ValueError(
                f"lose_replies: expected find/addcont/addevent=0..1, got {typereq}={share}"
            )
        out[typereq] = float(share)
    return out


def parse_lose_replies(spec: str) -> dict[str, float]:
    """``"addcont:0.3,addevent:0.1"`` (``=`` works too) -> ``{"addcont": 0.3, ...}``."""
    out: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        typereq, _, share = part.replace("=", ":").partition(":")
        try:
            out[typereq] = float(share)
        except ValueError:
            raise ValueError(f"lose_replies: expected TYPEREQ:SHARE, got {part!r}") from None
    return check_lose_replies(out)


def _find(
    request: web.Request, state: RefCrmState, params: MultiDict[str], login: str
) -> web.Response:
    phone = _first(params, "phone")
    if not phone:
        return _error(request, MSG_NO_PHONE)
    if "exact_phone_match" in state.quirks:
        found = state.store.find_exact(phone)
    else:
        found = state.store.find(phone)
    items: list[tuple[str, Any]] = [("item", _item(c)) for c in found]
    if "no_total" not in state.quirks:
        items.append(("total", str(len(found))))
    return _xml(request, items)


def _item(c: ContactRow) -> list[tuple[str, Any]]:
    return [
        ("id", str(c.id)),
        ("typecont", c.typecont),
        ("name", c.name),
        ("company", c.company),
        ("description", c.description),
    ]


def _addcont(
    request: web.Request, state: RefCrmState, params: MultiDict[str], login: str
) -> web.Response:
    phones = [p for p in params.getall("phone", []) if p]
    if not phones:
        return _error(request, MSG_NO_PHONE)
    name = _first(params, "name")
    if not name:
        return _error(request, MSG_NO_NAME)
    typecont = _first(params, "typecont") or "contact"
    x_pstn = None if "ignore_x_pstn" in state.quirks else (_first(params, "x_pstn") or None)
    cid = state.store.add_contact(
        phones=phones,
        name=name,
        typecont=typecont,
        created_by=login,
        x_pstn=x_pstn,
        company=_first(params, "company"),
        description=_first(params, "description"),
    )
    log.debug("refcrm: contact %d (%s) created by %s", cid, typecont, login)
    return _xml(
        request,
        [
            ("result", "ok"),
            ("id", str(cid)),
            ("typecont", typecont),
            ("description", MSG_CONTACT_ADDED),
        ],
    )


def _addevent(
    request: web.Request, state: RefCrmState, params: MultiDict[str], login: str
) -> web.Response:
    raw_id = _first(params, "id")
    if not raw_id:
        return _error(request, MSG_NO_CONTACT_ID)
    contact = state.store.get(int(raw_id)) if _is_id(raw_id) else None
    typecont = _first(params, "typecont")
    if contact is None or (typecont and typecont != contact.typecont):
        return _error(request, MSG_CONTACT_NOT_FOUND)
    subj = _first(params, "subj")
    if not subj:
        return _error(request, MSG_NO_SUBJ)
    idev = state.store.add_event(
        contact_id=contact.id,
        typecont=contact.typecont,
        subj=subj,
        desc=_first(params, "desc"),
        created_by=login,
    )
    log.debug("refcrm: event %d on contact %d created by %s", idev, contact.id, login)
    return _xml(request, [("result", "ok"), ("idev", str(idev)), ("description", MSG_EVENT_ADDED)])


_HANDLERS: dict[str, Callable[[web.Request, RefCrmState, MultiDict[str], str], web.Response]] = {
    "find": _find,
    "addcont": _addcont,
    "addevent": _addevent,
}


def _error(request: web.Request, description: str) -> web.Response:
    return _xml(request, [("result", "error"), ("description", description)])


def _xml_fields(fields: Iterable[tuple[str, Any]] | Mapping[str, Any]) -> str:
    pairs = fields.items() if isinstance(fields, Mapping) else fields
    out = []
    for tag, value in pairs:
        if isinstance(value, list):
            out.append(f"<{tag}>{_xml_fields(value)}</{tag}>")
        else:
            out.append(f"<{tag}>{xml_escape(_XML_INVALID.sub('', str(value)))}</{tag}>")
    return "".join(out)


def _xml(
    request: web.Request, fields: Iterable[tuple[str, Any]] | Mapping[str, Any], status: int = 200
) -> web.Response:
    state = request.app[STATE]
    label = state.encoding
    codec = "cp1251" if label == "windows-1251" else "utf-8"
    declared = label
    if "mislabelled_charset" in state.quirks:
        codec, declared = "cp1251", "utf-8"
    text = (
        f'<?xml version="1.0" encoding="{declared}"?>\n<response>{_xml_fields(fields)}</response>\n'
    )
    return web.Response(
        body=text.encode(codec, errors="xmlcharrefreplace"),
        status=status,
        headers={"Content-Type": f"text/xml; charset={declared}"},
    )


async def _fail(request: web.Request, mode: str) -> web.StreamResponse:
    page = "<html><head><title>{0}</title></head><body><h1>{0}</h1></body></html>"
    if mode == "500":
        return _html(page.format("500 Internal Server Error"), status=500)
    if mode in ("503", "429"):
        title = "503 Service Unavailable" if mode == "503" else "429 Too Many Requests"
        return web.Response(
            text=page.format(title),
            status=int(mode),
            content_type="text/html",
            headers={"Retry-After": "1"},
        )
    if mode == "html":
        return _html(page.format("502 Bad Gateway"))
    if mode == "garbage":
        return web.Response(body=b"\x00\x01 not xml at all \xff", content_type="text/xml")
    if mode == "truncated":
        return web.Response(
            body=b'<?xml version="1.0"?>\n<response><item><id>1</id><na', content_type="text/xml"
        )
    if mode == "error":
        return _error(request, "Сервис временно недоступен")
    await asyncio.Event().wait()  # "hang": until the client gives up and the server cancels
    raise AssertionError("unreachable")


# --- browser pages ----------------------------------------------------------------------


def _is_id(raw: str) -> bool:
    """A contact id as the store has them: ASCII digits (``"²".isdigit()`` too, but int()
    refuses it), short enough for SQLite's integer."""
    return raw.isascii() and raw.isdigit() and len(raw) < 19


def _html(text: str, status: int = 200) -> web.Response:
    return web.Response(text=text, status=status, content_type="text/html", charset="utf-8")


async def card(request: web.Request) -> web.Response:
    state = request.app[STATE]
    raw_id = request.query.get("id", "").strip()
    if not raw_id:
        return _html(pages.message(MSG_NO_CONTACT_ID, MSG_NO_CONTACT_ID), status=400)
    contact = state.store.get(int(raw_id)) if _is_id(raw_id) else None
    typecont = request.query.get("typecont", "").strip()
    if contact is None or (typecont and typecont != contact.typecont):
        return _html(pages.message(MSG_CONTACT_NOT_FOUND, MSG_CONTACT_NOT_FOUND), status=404)
    html = pages.card(
        contact,
        state.store.phones_of(contact.id),
        state.store.events_of(contact.id),
        telf="no_telf_links" not in state.quirks,
    )
    return _html(html)


async def search(request: web.Request) -> web.Response:
    state = request.app[STATE]
    phone = _XML_INVALID.sub("", request.query.get("phone", "")).strip()
    found = state.store.find(phone) if phone else []
    return _html(pages.search(phone, found, links="search_without_links" not in state.quirks))


async def index(request: web.Request) -> web.Response:
    return _html(pages.index(request.app[STATE].store.recent()))


# --- test-only endpoints ----------------------------------------------------------------


async def stats(request: web.Request) -> web.Response:
    """Read-only counts for tests and the demo (no secrets, no data beyond numbers)."""
    state = request.app[STATE]
    phone = request.query.get("phone")
    body: dict[str, Any] = dict(state.store.counts(phone or None))
    if phone:
        body["phone"] = phone
    else:
        body["requests"] = dict(state.requests)
    return web.json_response(body, dumps=lambda o: json.dumps(o, ensure_ascii=False))


async def control(request: web.Request) -> web.Response:
    """Change the failure knobs of a running refcrm (only with ``test_control``)."""
    state = request.app[STATE]
    q = request.query
    try:
        if "fail_mode" in q:
            mode = q["fail_mode"] or None
            if mode is not None and mode not in FAIL_MODES:
                raise ValueError(f"unknown fail_mode {mode!r}")
            state.fail_mode = mode
            state.fail_count = int(q["fail_count"]) if q.get("fail_count") else None
        if "latency_ms" in q:
            state.latency_s = max(0.0, float(q["latency_ms"]) / 1000)
        if "lose_replies" in q:
            state.lose_replies = parse_lose_replies(q["lose_replies"])
    except ValueError as err:
        return web.json_response({"error": str(err)}, status=400)
    return web.json_response(
        {
            "fail_mode": state.fail_mode,
            "fail_count": state.fail_count,
            "latency_ms": state.latency_s * 1000,
            "lose_replies": state.lose_replies,
        },
    )
