"""An independent TelefUM CRM, written from the protocol text alone, on a real socket.

``telefum check-crm`` is tested against the reference CRM, which does more than the protocol
asks (its cards list events and the source; its pages need no login). A CRM that follows the
protocol and no more must pass too, and real ones keep their pages behind a sign-in or draw
them with JavaScript. This one does exactly the six points, in UTF-8 or windows-1251, with
its ``/card`` and ``/search`` pages in one of three forms (``pages``):

- ``"login"``: a redirect to ``/signin?next=...``, a page with a password form;
- ``"script"``: an HTML shell whose content a script would fetch (check-crm runs none);
- ``"server"``: plain HTML: the card shows the name and the phones as ``telf:`` links, the
  search page the names of the contacts found. No events, no source: the protocol does not
  ask for them.

Each switch in :data:`BREAKS` breaks one point of the protocol, for the tests that check-crm
fails that point and no other. ``seen`` keeps every password the CRM was sent, so a test can
see what check-crm sends as a wrong one.

    async with spec_crm(pages="login", encoding="windows-1251") as crm:
        ... crm.rest_url ...
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from html import escape
from typing import Any
from urllib.parse import quote
from xml.sax.saxutils import escape as xml_escape

from aiohttp import web

PAGES = ("login", "script", "server")
BREAKS = {
    "no_total": "find leaves out <total>",
    "any_password": "accepts any password",
    "find_wrong_contact": "find answers the latest contact whatever phone it is given",
    "no_field_errors": "addcont without phone and addevent without id answer ok",
    "no_telf": "the server-rendered card shows its phones as plain text",
    "echo_password": "every answer's description quotes the password it was sent",
    "echo_x_pstn": "find items carry the contact's <x_pstn> (beyond the protocol, allowed)",
    "x_pstn_digits": "addcont keeps the source's digits only: the same number, written otherwise",
    "drop_x_pstn": "addcont does not keep the source (with echo_x_pstn, find shows it empty)",
}
_NON_DIGITS = re.compile(r"\D")


def _key(phone: str) -> str:
    """Phones match on their last ten digits: +79161234567, 79161234567, 89161234567."""
    return _NON_DIGITS.sub("", phone)[-10:]


@dataclass
class _Contact:
    id: int
    typecont: str
    name: str
    phones: list[str]
    x_pstn: str
    author: str


@dataclass
class SpecCrm:
    base_url: str
    users: dict[str, str]
    pages: str
    encoding: str
    breaks: frozenset[str]
    contacts: dict[int, _Contact] = field(default_factory=dict)
    events: list[dict[str, str]] = field(default_factory=list)
    seen_passwords: list[str] = field(default_factory=list)
    pages_served: list[str] = field(default_factory=list)  # paths of /card and /search asked

    @property
    def rest_url(self) -> str:
        return f"{self.base_url}rest"

    # --- /rest ----------------------------------------------------------------------------

    async def rest(self, request: web.Request) -> web.Response:
        params: dict[str, str] = dict(request.query)
        if request.method == "POST":
            params.update({k: v for k, v in (await request.post()).items() if isinstance(v, str)})
        password = params.get("password", "")
        self.seen_passwords.append(password)
        said = f" (вы прислали пароль {password})" if "echo_password" in self.breaks else ""
        ok = self.users.get(params.get("login", "")) == password
        if not ok and "any_password" not in self.breaks:
            return self._error("Неправильный логин или пароль" + said)
        op = params.get("typereq", "")
        if op == "find":
            return self._find(params.get("phone", ""))
        if op == "addcont":
            return self._addcont(params, params.get("login", ""), said)
        if op == "addevent":
            return self._addevent(params, params.get("login", ""), said)
        return self._error("Неизвестный тип запроса" + said)

    def _find(self, phone: str) -> web.Response:
        if "find_wrong_contact" in self.breaks:
            found = [self.contacts[max(self.contacts)]] if self.contacts else []
        else:
            found = [c for c in self.contacts.values() if _key(phone) in map(_key, c.phones)]
        items = []
        for c in found:
            extra = [("x_pstn", c.x_pstn)] if "echo_x_pstn" in self.breaks else []
            fields = [
                ("id", str(c.id)),
                ("typecont", c.typecont),
                ("name", c.name),
                ("company", ""),
                ("description", ""),
                *extra,
            ]
            items.append(("item", fields))
        if "no_total" not in self.breaks:
            items.append(("total", str(len(found))))
        return self._xml(items)

    def _addcont(self, params: Mapping[str, str], login: str, said: str) -> web.Response:
        phone = params.get("phone", "")
        if not phone and "no_field_errors" not in self.breaks:
            return self._error("Не указан номер телефона" + said)
        x_pstn = params.get("x_pstn", "")
        if "x_pstn_digits" in self.breaks:
            x_pstn = _NON_DIGITS.sub("", x_pstn)
        if "drop_x_pstn" in self.breaks:
            x_pstn = ""
        cid = len(self.contacts) + 1
        typecont = params.get("typecont") or "contact"
        self.contacts[cid] = _Contact(
            cid, typecont, params.get("name", ""), [phone] if phone else [], x_pstn, login
        )
        return self._xml(
            [
                ("result", "ok"),
                ("id", str(cid)),
                ("typecont", typecont),
                ("description", "Контакт добавлен" + said),
            ]
        )

    def _addevent(self, params: Mapping[str, str], login: str, said: str) -> web.Response:
        raw_id = params.get("id", "")
        if not raw_id and "no_field_errors" not in self.breaks:
            return self._error("Не указано id-контакта" + said)
        self.events.append({**params, "author": login})
        return self._xml(
            [
                ("result", "ok"),
                ("idev", str(len(self.events))),
                ("description", "Событие добавлено" + said),
            ]
        )

    def _error(self, description: str) -> web.Response:
        return self._xml([("result", "error"), ("description", description)])

    def _xml(self, fields: list[tuple[str, Any]]) -> web.Response:
        decl = f'<?xml version="1.0" encoding="{self.encoding}"?>'
        text = f"{decl}\n<response>{_tags(fields)}</response>"
        return web.Response(
            body=text.encode(self.encoding),
            headers={"Content-Type": f"text/xml; charset={self.encoding}"},
        )

    # --- pages ----------------------------------------------------------------------------

    def _html(self, title: str, body: str, status: int = 200) -> web.Response:
        text = (
            f'<!DOCTYPE html><html><head><meta charset="{self.encoding}">'
            f"<title>{escape(title)}</title></head><body>{body}</body></html>"
        )
        return web.Response(
            body=text.encode(self.encoding),
            status=status,
            headers={"Content-Type": f"text/html; charset={self.encoding}"},
        )

    def _gate(self, request: web.Request, title: str) -> web.Response | None:
        """The answer of a page that is not drawn here (login, script), else None."""
        if self.pages == "login":
            raise web.HTTPFound(f"/signin?next={quote(request.path_qs, safe='')}")
        if self.pages == "script":
            return self._html(
                title, '<div id="app">Загрузка…</div><script src="/static/app.js"></script>'
            )
        return None

    async def signin(self, request: web.Request) -> web.Response:
        return self._html(
            "Вход в CRM",
            '<form method="post" action="/signin">'
            '<input name="login"><input type="password" name="password">'
            "<button>Войти</button></form>",
        )

    async def card(self, request: web.Request) -> web.Response:
        self.pages_served.append(request.path)
        gated = self._gate(request, "Карточка")
        if gated is not None:
            return gated
        raw_id = request.query.get("id", "")
        c = self.contacts.get(int(raw_id)) if raw_id.isdigit() else None
        if c is None:
            return self._html("Не найдено", "<h1>Контакт не найден</h1>", status=404)
        if "no_telf" in self.breaks:
            phones = "".join(f"<li>{escape(p)}</li>" for p in c.phones)
        else:
            phones = "".join(
                f'<li><a href="telf:{escape(p)}">{escape(p)}</a></li>' for p in c.phones
            )
        return self._html(c.name, f"<h1>{escape(c.name)}</h1><ul>{phones}</ul>")

    async def search(self, request: web.Request) -> web.Response:
        self.pages_served.append(request.path)
        gated = self._gate(request, "Поиск")
        if gated is not None:
            return gated
        phone = request.query.get("phone", "")
        found = [c for c in self.contacts.values() if _key(phone) in map(_key, c.phones)]
        listing = "".join(f"<li>{escape(c.name)}</li>" for c in found)
        return self._html("Поиск", f"<h1>Поиск: {escape(phone)}</h1><ul>{listing}</ul>")


def _tags(fields: list[tuple[str, Any]]) -> str:
    out = []
    for tag, value in fields:
        inner = _tags(value) if isinstance(value, list) else xml_escape(str(value))
        out.append(f"<{tag}>{inner}</{tag}>")
    return "".join(out)


@asynccontextmanager
async def spec_crm(
    *,
    pages: str = "login",
    encoding: str = "utf-8",
    breaks: tuple[str, ...] = (),
    users: Mapping[str, str] | None = None,
) -> AsyncIterator[SpecCrm]:
    """The CRM serving on a free loopback port for the duration of the block."""
    if pages not in PAGES or not set(breaks) <= set(BREAKS):
        raise ValueError(f"pages one of {PAGES}, breaks among {sorted(BREAKS)}")
    crm = SpecCrm(
        base_url="",
        users=dict(users or {"bridge": "secret"}),
        pages=pages,
        encoding=encoding,
        breaks=frozenset(breaks),
    )
    app = web.Application()
    app.router.add_route("GET", "/rest", crm.rest)
    app.router.add_route("POST", "/rest", crm.rest)
    app.router.add_get("/card", crm.card)
    app.router.add_get("/search", crm.search)
    app.router.add_get("/signin", crm.signin)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    crm.base_url = f"http://127.0.0.1:{runner.addresses[0][1]}/"
    try:
        yield crm
    finally:
        await runner.cleanup()
