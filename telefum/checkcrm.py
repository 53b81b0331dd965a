"""Conformance check of a TelefUM CRM endpoint, point by point (``telefum check-crm``).

It writes as the bridge does (a test contact with a source, an event on it) and reads back
what the protocol lets it read: ``find`` answers, the card and the search page. The points,
and the protocol's words each rests on, are in :mod:`telefum.checkcrm_points`.

Each point ends as one of:

- pass / FAIL: a point the protocol requires, observed. A FAIL names the request (what was
  sent, never the credentials) and what came back, and no cause it did not observe. Only a
  FAIL makes the exit code 1.
- not verified: the protocol requires it, but check-crm could not see it (a page behind a
  sign-in or drawn by scripts, what no request of the protocol reads back), or a point it
  needs did not give what it needs. Says why; never a FAIL.
- skip: beyond the protocol, run only with ``strict``; or a page ``--skip-pages`` left out.

Stricter than the client on purpose: the client tolerates a missing ``<total>`` or a
mislabelled charset (warnings), a conformant CRM does neither, so every warning of
``crm_client.parse`` is a failure of the point that met it (charset ones: of "encoding").

Secrets: the wrong password is random, never derived from the real one; the real password
(and with ``hide_login`` the login) is masked in every reason, also where the CRM echoes it.

What it leaves behind: one contact named ``telefum check-crm test record <UTC time> (тестовая
запись)`` on a random phone that find showed unused, and one event on it (a CRM that takes a
request without its required field keeps that too). The protocol has no delete.

It lives in the service shell, not in crm_client, because it writes the same number in
several formats through ``telephony.phones``.
"""

from __future__ import annotations

import random
import re
import secrets
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import aiohttp
import phonenumbers
from pydantic import SecretStr

from crm_client import parse
from crm_client.client import TelefumClient
from crm_client.errors import CrmError
from crm_client.redact import mask_values
from crm_client.types import Contact, Created, Credentials, FindResult
from telefum.checkcrm_pages import Page, fetch_page, judge
from telefum.checkcrm_points import POINTS, SPEC_WORDING, Status
from telephony.phones import PhoneFormat, for_crm, to_e164

_PHONEISH = re.compile(r"\+?[0-9][0-9\s().\-]{5,}[0-9]")
_ENCODING_WORDS = (
    "charset",
    "valid utf",
    "valid cp",
    "not valid",
    "undecodable",
    "byte-order",
    "read it as",
)
_TOTAL = "spec §2 lists «Количество найденных контактов» among find's outputs"


@dataclass
class PointResult:
    point: str
    status: Status
    reason: str

    @property
    def passed(self) -> bool:
        return self.status == "pass"

    @property
    def failed(self) -> bool:
        return self.status == "FAIL"


class Failed(Exception):
    """The point does not hold; the message says what was sent and what came back."""


class ErrorAnswer(Failed):
    """The CRM answered ``<result>error</result>`` where the protocol wants another answer."""


class NotVerified(Exception):
    """The point could not be seen; the message says why."""


@dataclass(frozen=True)
class _FindAnswer:
    found: FindResult
    items: Mapping[str, Any]  # the raw <item> elements by <id>
    body: bytes
    ctype: str | None


@dataclass
class _Context:
    phone: str = ""  # E.164 of the test contact
    x_pstn: str = ""
    name: str = ""
    marker: str = ""  # the name's ASCII head: how a page shows the contact
    subj: str = ""
    desc: str = ""
    login_accepted: bool = False  # a request with the real credentials got a protocol answer
    login_refused: bool = False  # find with the real credentials got an error answer
    contact: Contact | None = None
    idev: str | None = None
    found_name: str | None = None
    found_x_pstn: str | None = None  # a find item's <x_pstn>, when the CRM gives one
    card: Page | None = None  # read, and showing the contact
    search: Page | None = None
    encoding_notes: dict[str, list[str]] = field(default_factory=dict)  # problem -> where


def random_test_phone(country: str, rng: random.Random) -> str:
    """A valid mobile number of ``country`` with random last digits, in E.164."""
    example = phonenumbers.example_number_for_type(country, phonenumbers.PhoneNumberType.MOBILE)
    if example is None:
        raise ValueError(f"no example mobile number for country {country!r}")
    national = str(example.national_number)
    keep = max(1, len(national) - 6)
    for _ in range(200):
        digits = national[:keep] + "".join(rng.choice("0123456789") for _ in national[keep:])
        num = phonenumbers.parse(f"+{example.country_code}{digits}")
        if phonenumbers.is_valid_number(num):
            return phonenumbers.format_number(num, phonenumbers.PhoneNumberFormat.E164)
    raise ValueError(f"could not make a valid test number for {country!r}")


def neighbour_phone(e164: str) -> str:
    """A valid number that differs from ``e164`` in its last digit only."""
    for d in "1234567890":
        cand = e164[:-1] + d
        if cand != e164 and phonenumbers.is_valid_number(phonenumbers.parse(cand)):
            return cand
    raise ValueError(f"no valid number one digit off {e164}")


class Checker:
    """Runs the points against one endpoint with one login."""

    def __init__(
        self,
        rest_url: str,
        creds: Credentials,
        session: aiohttp.ClientSession,
        *,
        country: str = "RU",
        timeout_s: float = 10.0,
        strict: bool = False,
        hide_login: bool = False,
        skip_pages: bool = False,
        rng: random.Random | None = None,
        now: datetime | None = None,
    ) -> None:
        self.creds = creds
        self.skip_pages = skip_pages
        self.country = country
        self.strict = strict
        self.login_shown = "the login given" if hide_login else creds.login
        self.secrets = [creds.password.get_secret_value(), *([creds.login] if hide_login else [])]
        self.rng = rng or random.SystemRandom()
        self.session = session
        self.timeout_s = timeout_s
        self.crm = TelefumClient(rest_url, timeout_s=timeout_s, session=session)
        stamp = (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
        marker = f"telefum check-crm test record {stamp}"
        self.ctx = _Context(
            name=f"{marker} (тестовая запись)",
            marker=marker,
            subj="telefum check-crm: входящий звонок",
            desc=f"Проверка протокола TelefUM, {stamp}. Длительность 0:42",
        )

    async def run(self) -> list[PointResult]:
        checks: dict[str, Callable[[], Awaitable[str]]] = {
            "find unknown": self.find_unknown,
            "addcont": self.addcont,
            "find": self.find,
            "addevent": self.addevent,
            "wrong password": self.wrong_password,
            "missing fields": self.missing_fields,
            "card page": self.card_page,
            "telf links": self.telf_links,
            "search page": self.search_page,
            "source": self.source,
            "author": self.author,
            "find other formats": self.find_other_formats,
            "card events": self.card_events,
            "search links": self.search_links,
            "encoding": self.encoding,  # last: it sums up what every answer showed
        }
        assert set(checks) == set(POINTS)
        results: dict[str, PointResult] = {}
        for name, check in checks.items():
            if POINTS[name].strict_only and not self.strict:
                results[name] = PointResult(name, "skip", "beyond the protocol; --strict checks it")
                continue
            if self.skip_pages and name in PAGE_POINTS:
                results[name] = PointResult(name, "skip", "page not requested: --skip-pages")
                continue
            status: Status
            try:
                status, reason = "pass", await check()
            except Failed as err:
                status, reason = "FAIL", str(err)
            except NotVerified as err:
                status, reason = "not verified", str(err)
            except Exception as err:  # an odd answer check-crm did not foresee: said, not failed
                status = "not verified"
                reason = f"check-crm could not finish it: {type(err).__name__}: {err}"
            results[name] = PointResult(name, status, self.mask(reason))
        return [results[name] for name in POINTS]

    def mask(self, text: str) -> str:
        return mask_values(text, self.secrets)

    # --- requests -----------------------------------------------------------------------

    async def _rest(
        self,
        what: str,
        op: str,
        method: str,
        params: list[tuple[str, str]],
        creds: Credentials | None = None,
    ) -> tuple[bytes, str | None]:
        """One request's 2xx answer; Failed naming it and what came back otherwise."""
        try:
            return await self.crm.request(op, method, params, creds or self.creds)
        except CrmError as err:
            raise Failed(f"{what}: {err.message}") from None

    def _parse(
        self, what: str, parser: Callable[[bytes, str | None], Any], body: bytes, ctype: str | None
    ) -> Any:
        """The typed answer; Failed quoting an error answer or what could not be read."""
        try:
            return parser(body, ctype)
        except CrmError as err:
            if err.kind in ("auth", "rejected"):
                said = (
                    f"<description>{err.description}</description>"
                    if err.description
                    else ("no <description>")
                )
                raise ErrorAnswer(f"{what}: answered <result>error</result> with {said}") from None
            raise Failed(f"{what}: {err.message}") from None

    async def _find(self, phone: str, creds: Credentials | None = None) -> _FindAnswer:
        """A find answer, with its raw ``<item>`` elements by id (for fields beyond §2)."""
        what = f"find phone={phone}"
        params = [("typereq", "find"), ("phone", phone)]
        body, ctype = await self._rest(what, "find", "GET", params, creds)
        try:
            found: FindResult = self._parse(what, parse.parse_find, body, ctype)
        except ErrorAnswer:
            self.ctx.login_refused = self.ctx.login_refused or creds is None
            raise
        self.ctx.login_accepted = self.ctx.login_accepted or creds is None
        doc, _ = parse.parse_document(body, ctype)
        raw = doc.get("item")
        items = [i for i in raw if isinstance(i, Mapping)] if isinstance(raw, list) else []
        return _FindAnswer(found, {parse.text_of(i.get("id")): i for i in items}, body, ctype)

    def _deviations(self, what: str, warnings: tuple[str, ...] | list[str]) -> list[str]:
        """The parse warnings that break the protocol (charset ones go to "encoding")."""
        out = []
        for w in warnings:
            if _is_encoding(w):
                self._note_encoding(what.split(" ", 1)[0], w)
            else:
                out.append(f"{w} ({_TOTAL})" if w == "no <total>" else w)
        return out

    def _created(
        self, what: str, created: Created, tag: str, section: str, body: bytes, ctype: str | None
    ) -> str:
        """addcont's and addevent's answer: the new id and a description (both outputs in
        the spec's section), else Failed; what passed, as the point's reason."""
        problems = self._deviations(what, created.warnings)
        new = f"<{tag}>{created.id}</{tag}>"
        if not created.description:
            problems.append(
                f"<result>ok</result> and {new} without a <description> "
                f"(spec {section} lists «Описание результата» among the outputs)"
            )
        self._fail(what, problems, body, ctype)
        return f"{what}: <result>ok</result>, {new}, {created.description!r}"

    def _fail(self, what: str, problems: list[str], body: bytes, ctype: str | None) -> None:
        """Failed with the problems seen in an answer and the answer itself, if any."""
        if problems:
            raise Failed(f"{what}: {'; '.join(problems)}; the answer: {_shown(body, ctype)}")

    def _note_encoding(self, where: str, problem: str) -> None:
        places = self.ctx.encoding_notes.setdefault(problem, [])
        if where not in places:
            places.append(where)

    async def _expect_error(
        self,
        what: str,
        op: str,
        method: str,
        params: list[tuple[str, str]],
        creds: Credentials,
        spec: str,
    ) -> str:
        """The description of the error answer the request must get (``spec`` says where
        the protocol shows it); Failed saying what came instead."""
        expected = f"expected the protocol's error answer ({spec})"
        try:
            body, ctype = await self.crm.request(op, method, params, creds)
            doc, warnings = parse.parse_document(body, ctype)
        except CrmError as err:
            raise Failed(f"{what}: {expected}, got {err.message}") from None
        for w in warnings:
            if _is_encoding(w):
                self._note_encoding(op, w)
        result = parse.text_of(doc.get("result")).lower()
        if result != "error":
            raise Failed(f"{what}: {expected}, got {_describe_answer(doc, body, ctype)}")
        desc = parse.text_of(doc.get("description"))
        if not desc:
            raise Failed(f"{what}: <result>error</result> without a <description> ({spec})")
        return desc

    async def _page(self, url: str) -> Page:
        page = await fetch_page(self.session, url, self.timeout_s)
        if page.encoding_problem and self.strict:
            self._note_encoding(f"GET {url}", page.encoding_problem)
        return page

    def _phones_in(self, text: str) -> set[str]:
        found = set()
        for m in _PHONEISH.finditer(text):
            e164 = to_e164(m.group(0), self.country)
            if e164:
                found.add(e164)
        return found

    def _need_contact(self) -> Contact:
        if self.ctx.contact is None:
            raise NotVerified("not checked: addcont created no test contact (see addcont)")
        return self.ctx.contact

    def _need_login(self) -> None:
        if self.ctx.login_accepted:
            return
        if self.ctx.login_refused:
            raise NotVerified(
                "not checked: the CRM answered the login given with an error (see find "
                "unknown), so an error answer here would show nothing"
            )
        raise NotVerified(
            "not checked: no request with the login given got a protocol answer (see find "
            "unknown), so an error answer here would show nothing"
        )

    # --- required points ----------------------------------------------------------------

    async def find_unknown(self) -> str:
        c = self.ctx
        returned = []
        for _ in range(5):
            phone = random_test_phone(self.country, self.rng)
            answer = await self._find(phone)
            if answer.found.contacts:
                returned.append(f"find phone={phone} returned {_ids(answer.found)}")
                continue
            # Unused: the later points use it even if this answer is not quite right.
            c.phone, c.x_pstn = phone, random_test_phone(self.country, self.rng)
            what = f"find phone={phone}"
            problems = self._deviations(what, answer.found.warnings)
            self._fail(what, problems, answer.body, answer.ctype)
            return f"find phone={phone}: no <item>, <total>0</total>"
        raise Failed(
            "find returned contacts for each of 5 random phones, so check-crm found no "
            "unused one: " + "; ".join(returned)
        )

    async def addcont(self) -> str:
        c = self.ctx
        if not c.phone:
            raise NotVerified("not checked: find showed no phone unused (see find unknown)")
        what = f"addcont phone={c.phone} x_pstn={c.x_pstn} typecont=contact"
        params = [
            ("typereq", "addcont"),
            ("typecont", "contact"),
            ("phone", c.phone),
            ("name", c.name),
            ("x_pstn", c.x_pstn),
        ]
        body, ctype = await self._rest(what, "addcont", "GET", params)
        created: Created = self._parse(what, parse.parse_add_contact, body, ctype)
        c.login_accepted = True
        c.contact = Contact(id=created.id, typecont=created.typecont or "contact", name=c.name)
        return self._created(what, created, "id", "§3", body, ctype)

    async def find(self) -> str:
        c = self.ctx
        contact = self._need_contact()
        what = f"find phone={c.phone}"
        answer = await self._find(c.phone)
        found = answer.found
        ids = [x.id for x in found.contacts]
        problems = self._deviations(what, found.warnings)
        if contact.id not in ids:
            problems.append(
                f"did not return contact {contact.id}, which addcont created with this phone "
                f"(it returned {_ids(found)})"
            )
        else:
            item = next(x for x in found.contacts if x.id == contact.id)
            c.found_name = item.name
            raw = answer.items.get(contact.id, {})
            if "x_pstn" in raw:
                c.found_x_pstn = parse.text_of(raw["x_pstn"])
            if not item.name:
                problems.append(
                    f"returned contact {contact.id} without its <name> (§2: «Имя контакта»)"
                )
        others = sorted(set(ids) - {contact.id})
        if others:
            problems.append(
                f"returned contact {', '.join(others)} besides contact {contact.id}; before "
                "addcont, find on this phone returned no contact"
            )
        self._fail(what, problems, answer.body, answer.ctype)
        near = neighbour_phone(c.phone)
        if contact.id in [x.id for x in (await self._find(near)).found.contacts]:
            raise Failed(
                f"find phone={near} (one digit off the test phone) returned contact "
                f"{contact.id}, which addcont created with phone={c.phone} only"
            )
        return f"{what} returned contact {contact.id} alone; find phone={near} did not return it"

    async def addevent(self) -> str:
        c = self.ctx
        contact = self._need_contact()
        what = f"addevent id={contact.id} typecont={contact.typecont} (form POST)"
        params = [
            ("typereq", "addevent"),
            ("id", contact.id),
            ("typecont", contact.typecont),
            ("subj", c.subj),
            ("desc", c.desc),
        ]
        body, ctype = await self._rest(what, "addevent", "POST", params)
        created: Created = self._parse(what, parse.parse_add_event, body, ctype)
        c.idev = created.id
        return self._created(what, created, "idev", "§4", body, ctype)

    async def wrong_password(self) -> str:
        self._need_login()
        password = secrets.token_urlsafe(18)  # random: nothing of the real one in it
        while password == self.creds.password.get_secret_value():
            password = secrets.token_urlsafe(18)
        bad = Credentials(self.creds.login, SecretStr(password))
        spec = "spec §2: «Ответ в случае ошибки авторизации»"
        phone = self.ctx.phone or random_test_phone(self.country, self.rng)
        desc = await self._expect_error(
            f"find phone={phone} with a random wrong password",
            "find",
            "GET",
            [("typereq", "find"), ("phone", phone)],
            bad,
            spec,
        )
        fresh = random_test_phone(self.country, self.rng)
        before = (await self._find(fresh)).found
        what = f"addcont phone={fresh} with a random wrong password"
        params = [
            ("typereq", "addcont"),
            ("typecont", "contact"),
            ("phone", fresh),
            ("name", self.ctx.name + " (wrong password)"),
        ]
        await self._expect_error(what, "addcont", "GET", params, bad, spec)
        after = (await self._find(fresh)).found
        new = sorted({x.id for x in after.contacts} - {x.id for x in before.contacts})
        if new:
            raise Failed(
                f"{what} got an error answer, yet find phone={fresh} now returns contact "
                f"{', '.join(new)}, which it did not before"
            )
        note = _wording(desc, SPEC_WORDING["auth"])
        return f"error answers to find and addcont with a random wrong password: {desc!r}{note}"

    async def missing_fields(self) -> str:
        self._need_login()
        no_phone = await self._expect_error(
            "addcont without phone (typecont=contact, a name)",
            "addcont",
            "GET",
            [("typereq", "addcont"), ("typecont", "contact"), ("name", self.ctx.name)],
            self.creds,
            f"spec §3: «{SPEC_WORDING['no phone']}»",
        )
        no_id = await self._expect_error(
            "addevent without id (typecont=contact, subj, desc)",
            "addevent",
            "POST",
            [
                ("typereq", "addevent"),
                ("typecont", "contact"),
                ("subj", self.ctx.subj),
                ("desc", self.ctx.desc),
            ],
            self.creds,
            f"spec §4: «{SPEC_WORDING['no id']}»",
        )
        return (
            f"addcont without phone: {no_phone!r}{_wording(no_phone, SPEC_WORDING['no phone'])}; "
            f"addevent without id: {no_id!r}{_wording(no_id, SPEC_WORDING['no id'])}"
        )

    async def card_page(self) -> str:
        c = self.ctx
        contact = self._need_contact()
        page = await self._page(self.crm.card_url(contact.id, contact.typecont))
        shows = c.marker in page.text
        status, reason = judge(
            page, shows, f"the test contact's name {c.marker!r}", strict=self.strict
        )
        if status == "pass":
            c.card = page
            return reason
        raise (Failed if status == "FAIL" else NotVerified)(reason)

    async def telf_links(self) -> str:
        c = self.ctx
        page = c.card
        if page is None:
            raise NotVerified("not checked: the card could not be read (see card page)")
        targets = page.telf_targets
        if c.phone in {to_e164(t, self.country) for t in targets}:
            return f"{page.where()}: the phone {c.phone} is a telf: link"
        links = f"its telf: links: {', '.join(targets)}" if targets else "no telf: link on it"
        shown = c.phone in self._phones_in(page.text)
        if shown and (self.strict or not page.scripts):
            raise Failed(
                f"{page.where()}: shows the phone {c.phone} as text, not as a telf: link ({links})"
            )
        if shown:
            raise NotVerified(
                f"{page.where()}: the HTML served shows the phone {c.phone} as text ({links}); "
                f"it has {page.scripts} <script>, which may turn it into a link (check-crm runs "
                "no script; --strict fails this)"
            )
        if self.strict:
            raise Failed(
                f"{page.where()}: neither shows the phone {c.phone} nor links it ({links})"
            )
        raise NotVerified(
            f"{page.where()}: the HTML served shows the contact's name but not its phone "
            f"{c.phone}, as text or as a telf: link ({links}; --strict fails this)"
        )

    async def search_page(self) -> str:
        c = self.ctx
        contact = self._need_contact()
        page = await self._page(self.crm.search_url(c.phone))
        status, reason = judge(
            page, c.marker in page.text, f"contact {contact.id} ({c.marker!r})", strict=self.strict
        )
        if status == "pass":
            c.search = page
            return reason
        raise (Failed if status == "FAIL" else NotVerified)(reason)

    async def source(self) -> str:
        c = self.ctx
        contact = self._need_contact()
        sent = f"addcont sent x_pstn={c.x_pstn} (as x_pstn={quote(c.x_pstn, safe='')})"
        if c.found_x_pstn is not None:
            if c.found_x_pstn and to_e164(c.found_x_pstn, self.country) == c.x_pstn:
                return (
                    f"find returns <x_pstn>{c.found_x_pstn}</x_pstn> for contact {contact.id}; "
                    + sent
                )
            raise Failed(
                f"find phone={c.phone} returned <x_pstn>{c.found_x_pstn}</x_pstn> for contact "
                f"{contact.id}; {sent}"
            )
        if not self.strict:
            raise NotVerified(
                "no request of the protocol reads a contact's source back (find answers id, "
                f"typecont, name, company, description): open the card of contact {contact.id} "
                f"and look for {c.x_pstn}; --strict reads it on the card"
            )
        if c.card is None:
            raise NotVerified(
                "--strict reads the source on the card, which could not be read (see card page)"
            )
        if c.x_pstn in self._phones_in(c.card.text):
            return f"{c.card.where()}: shows the source {c.x_pstn}"
        raise Failed(f"{c.card.where()}: does not show the source {c.x_pstn}; {sent}")

    async def author(self) -> str:
        contact = self._need_contact()
        event = f" and of event {self.ctx.idev}" if self.ctx.idev else ""
        raise NotVerified(
            "no request of the protocol reads back who created a record: open the card of "
            f"contact {contact.id} and check that {self.login_shown} is the author of it{event}"
        )

    async def encoding(self) -> str:
        c = self.ctx
        problems = [f"{w} (answers to {', '.join(ops)})" for w, ops in c.encoding_notes.items()]
        if c.found_name is not None and c.found_name != c.name:
            problems.insert(
                0, f"addcont sent the name {c.name!r}; find returned it as {c.found_name!r}"
            )
        if problems:
            raise Failed("; ".join(problems))
        if c.found_name is None:
            raise NotVerified("not checked: find did not return the test contact (see find)")
        return "the Cyrillic name came back from find as sent; every answer was in its charset"

    # --- beyond the protocol (--strict) ---------------------------------------------------

    async def find_other_formats(self) -> str:
        contact = self._need_contact()
        shown, problems = [], []
        for fmt in (PhoneFormat.DIGITS, PhoneFormat.NATIONAL):
            phone = for_crm(self.ctx.phone, fmt)
            found = (await self._find(phone)).found
            if contact.id in [x.id for x in found.contacts]:
                shown.append(phone)
            else:
                problems.append(f"find phone={phone} ({fmt.value}) returned {_ids(found)}")
        if problems:
            created = f"contact {contact.id} was created with phone={self.ctx.phone}"
            raise Failed("; ".join([*problems, created]))
        return f"contact {contact.id} found as " + " and as ".join(shown)

    async def card_events(self) -> str:
        c = self.ctx
        if c.idev is None:
            raise NotVerified("not checked: addevent created no event (see addevent)")
        if c.card is None:
            raise NotVerified("not checked: the card could not be read (see card page)")
        missing = [
            f"{label} {text!r}"
            for label, text in (("subj", c.subj), ("desc", c.desc))
            if text not in c.card.text
        ]
        if missing:
            raise Failed(
                f"{c.card.where()}: does not show event {c.idev} as addevent sent it: "
                + " and ".join(missing)
                + " not on the page"
            )
        return f"{c.card.where()}: shows event {c.idev} with its Cyrillic subj and desc"

    async def search_links(self) -> str:
        contact = self._need_contact()
        page = self.ctx.search
        if page is None:
            raise NotVerified("not checked: the search page could not be read (see search page)")
        id_param = re.compile(rf"[?&;]id={re.escape(quote(contact.id, safe=''))}(?:&|$)")
        if any("card" in h and id_param.search(h) for h in page.hrefs):
            return f"{page.where()}: links contact {contact.id} to its card"
        raise Failed(
            f"{page.where()}: lists contact {contact.id} but has no link to card?id={contact.id}"
        )


def _ids(found: FindResult) -> str:
    if not found.contacts:
        return "no contact"
    return "contact " + ", ".join(x.id for x in found.contacts)


def _describe_answer(doc: Mapping[str, Any], body: bytes, ctype: str | None) -> str:
    """What an answer that should have been an error was, in its own tags."""
    if "result" in doc:
        parts = [f"<result>{parse.text_of(doc['result'])}</result>"]
        parts += [f"<{t}>{parse.text_of(doc[t])}</{t}>" for t in ("id", "idev") if t in doc]
        return " ".join(parts)
    if "item" in doc or "total" in doc:
        items = doc.get("item")
        n = len(items) if isinstance(items, list) else 0
        total = f"<total>{parse.text_of(doc['total'])}</total>" if "total" in doc else "no <total>"
        return f"a find answer ({n} <item>, {total})"
    text, _ = parse.decode_body(body, ctype)
    return f"an answer without <result>: {parse.snippet(text)!r}"


def _shown(body: bytes, ctype: str | None) -> str:
    """The answer as a short one-line quote (its XML declaration left out)."""
    text, _ = parse.decode_body(body, ctype)
    return repr(parse.snippet(re.sub(r"^\s*<\?xml[^>]*\?>", "", text), 200))


def _wording(desc: str, spec: str) -> str:
    return "" if desc == spec else f" (the spec words it {spec!r})"


def _is_encoding(warning: str) -> bool:
    return any(word in warning.lower() for word in _ENCODING_WORDS)


async def check_crm(
    rest_url: str,
    creds: Credentials,
    *,
    country: str = "RU",
    timeout_s: float = 10.0,
    strict: bool = False,
    hide_login: bool = False,
    skip_pages: bool = False,
    rng: random.Random | None = None,
) -> list[PointResult]:
    """Run every point against ``rest_url``; one result per point of :data:`POINTS`."""
    async with aiohttp.ClientSession(headers={"User-Agent": "telefum-check-crm"}) as session:
        checker = Checker(
            rest_url,
            creds,
            session,
            country=country,
            timeout_s=timeout_s,
            strict=strict,
            hide_login=hide_login,
            skip_pages=skip_pages,
            rng=rng,
        )
        return await checker.run()


def format_table(results: list[PointResult]) -> str:
    width = max(len(r.point) for r in results)
    spec_w = max(len(POINTS[r.point].spec or "beyond") for r in results)
    status_w = max(len(r.status) for r in results)
    head = f"{'POINT':<{width}}  {'SPEC':<{spec_w}}  {'RESULT':<{status_w}}  REASON"
    lines = [head]
    for r in results:
        spec = POINTS[r.point].spec or "beyond"
        lines.append(f"{r.point:<{width}}  {spec:<{spec_w}}  {r.status:<{status_w}}  {r.reason}")
    lines.append(summary(results))
    return "\n".join(lines)


# The points that read the CRM's pages (/card, /search), which ``--skip-pages`` leaves out.
PAGE_POINTS = frozenset({"card page", "telf links", "search page", "card events", "search links"})


def summary(results: list[PointResult]) -> str:
    statuses = ("pass", "FAIL", "not verified", "skip")
    count = {s: sum(1 for r in results if r.status == s) for s in statuses}
    line = f"{count['pass']} pass, {count['FAIL']} FAIL, {count['not verified']} not verified"
    if count["skip"]:
        line += f", {count['skip']} skipped (see each reason)"
    return line


def all_passed(results: list[PointResult]) -> bool:
    """No point failed: what could not be verified or was skipped does not count."""
    return not any(r.failed for r in results)
