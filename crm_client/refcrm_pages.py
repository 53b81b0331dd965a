"""HTML of the reference CRM's browser pages: the card (point 5) and the search (point 6).

Plain server-side HTML, every value escaped. Links are relative (``card?id=...``) so the
pages work wherever the CRM is mounted. Phones are ``telf:`` links (point 1), dialling the
E.164 form of the number.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape
from urllib.parse import urlencode

from .refcrm_store import ContactRow, EventRow, PhoneRow

_STYLE = """
body{font-family:system-ui,sans-serif;margin:2rem;max-width:60rem;color:#222}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.3rem .6rem;text-align:left}
.muted{color:#777}a.telf{font-weight:bold}
"""


def page(title: str, body: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="ru"><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title><style>{_STYLE}</style></head>\n<body>\n"
        f'<p class="muted"><a href="./">Справочная CRM TelefUM</a></p>\n{body}\n</body></html>\n'
    )


def card_href(c: ContactRow) -> str:
    return "card?" + urlencode({"id": str(c.id), "typecont": c.typecont})


def search_form(phone: str = "") -> str:
    return (
        '<form action="search" method="get"><label>Телефон: '
        f'<input name="phone" value="{escape(phone)}"></label> '
        '<button type="submit">Найти</button></form>'
    )


def phone_link(p: PhoneRow, telf: bool = True) -> str:
    if not telf:
        return escape(p.raw)
    return f'<a class="telf" href="telf:{escape(p.dial)}">{escape(p.raw)}</a>'


def card(
    c: ContactRow, phones: Sequence[PhoneRow], events: Sequence[EventRow], *, telf: bool = True
) -> str:
    rows = "".join(
        f"<tr><td>{e.id}</td><td>{escape(e.created_at)}</td><td>{escape(e.subj)}</td>"
        f"<td>{escape(e.desc)}</td><td>{escape(e.created_by)}</td></tr>"
        for e in events
    )
    events_html = (
        "<table><tr><th>№</th><th>Когда</th><th>Тема</th><th>Описание</th><th>Автор</th></tr>"
        f"{rows}</table>"
        if events
        else '<p class="muted">Событий нет</p>'
    )
    phones_html = "".join(f"<li>{phone_link(p, telf)}</li>" for p in phones)
    body = f"""<h1>{escape(c.name)}</h1>
<table>
<tr><th>id</th><td>{c.id}</td></tr>
<tr><th>Тип контакта</th><td>{escape(c.typecont)}</td></tr>
<tr><th>Компания</th><td>{escape(c.company)}</td></tr>
<tr><th>Описание</th><td>{escape(c.description)}</td></tr>
<tr><th>Источник</th><td class="source">{escape(c.x_pstn or "—")}</td></tr>
<tr><th>Создал</th><td>{escape(c.created_by)}, {escape(c.created_at)}</td></tr>
</table>
<h2>Телефоны</h2>
<ul class="phones">{phones_html}</ul>
<h2>События</h2>
{events_html}"""
    return page(f"{c.name}: карточка контакта", body)


def search(phone: str, found: Sequence[ContactRow], *, links: bool = True) -> str:
    if not phone:
        return page("Поиск контактов", f"<h1>Поиск контактов</h1>{search_form()}")

    def item(c: ContactRow) -> str:
        label = f"{escape(c.name)} ({escape(c.typecont)}, id {c.id})"
        if not links:
            return f"<li>{label}</li>"
        return f'<li><a href="{escape(card_href(c))}">{label}</a></li>'

    listing = (
        f'<ul class="results">{"".join(item(c) for c in found)}</ul>'
        if found
        else '<p class="muted">Контакты с этим телефоном не найдены</p>'
    )
    body = (
        f"<h1>Поиск: {escape(phone)}</h1>{search_form(phone)}"
        f"<p>Найдено контактов: {len(found)}</p>{listing}"
    )
    return page(f"Поиск: {phone}", body)


def index(recent: Sequence[ContactRow]) -> str:
    items = "".join(
        f'<li><a href="{escape(card_href(c))}">{escape(c.name)}</a> '
        f'<span class="muted">{escape(c.typecont)}, {escape(c.created_by)}</span></li>'
        for c in recent
    )
    return page(
        "Справочная CRM TelefUM",
        f"<h1>Справочная CRM TelefUM</h1>{search_form()}"
        f"<h2>Последние контакты</h2><ul>{items}</ul>",
    )


def message(title: str, text: str) -> str:
    return page(title, f"<h1>{escape(title)}</h1><p>{escape(text)}</p>")
