"""Conformance check of a TelefUM CRM endpoint, point by point (``telefum check-crm``).

It writes like the bridge does (a test contact with a source, an event) and reads it back
every way the protocol allows: ``find`` in another phone format, the card page, the search
page. Each point passes or fails with a reason a CRM implementer can act on.

Stricter than the client on purpose: the client tolerates a missing ``<total>`` or a
mislabelled charset (warnings), a conformant CRM does neither, so here every warning of
``crm_client.parse`` is a failure of the point that met it.

What it leaves behind: one contact named ``telefum check-crm test record <UTC time>``
(with a Cyrillic tail for the encoding point) on a random phone that ``find`` showed
unused, and one event on it. Nothing is deleted: the protocol has no delete.

It lives in the service shell, not in crm_client, because it writes the same number in
several formats through ``telephony.phones``.
"""

from __future__ import annotations

import html
import random
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import aiohttp
import phonenumbers
from pydantic import SecretStr

from crm_client import parse
from crm_client.client import TelefumClient
from crm_client.errors import CrmError, rejected
from crm_client.redact import redact_text
from crm_client.types import Contact, Credentials, FindResult
from telephony.phones import PhoneFormat, for_crm, to_e164

# The points, in the order they run, with what each asks of the CRM.
POINTS: dict[str, str] = {
    "find unknown": "find on an unknown phone answers zero contacts and <total>0</total>",
    "addcont": "addcont creates a contact and answers ok with its id",
    "find other format": "find in other phone formats returns the new contact",
    "addevent": "addevent (form POST) answers ok with the new event's idev",
    "wrong password": "a wrong password gets the error answer and creates nothing",
    "missing fields": "addcont without phone, addevent without id get error answers",
    "card page": "/card shows the contact, its phones as telf: links, and its events",
    "addcont source": "the contact keeps its source (x_pstn), shown on its card",
    "search page": "/search lists the contact with a link to its card",
    "encoding": "Cyrillic round-trips, and every answer's declared charset is the real one",
}
SPEC_WORDING = {"no phone": "Не указан номер телефона", "no id": "Не указано id-контакта"}

_TELF = re.compile(r"""href\s*=\s*["']\s*telf:([^"']+)["']""", re.I)
_HREF = re.compile(r"""href\s*=\s*["']([^"']+)["']""", re.I)
_PHONEISH = re.compile(r"\+?\d[\d\s().\-]{5,}\d")
_TAGS = re.compile(r"<[^>]+>")
_ENCODING_WORDS = (
    "charset", "valid utf", "valid cp", "not valid", "undecodable", "byte-order", "read it as",
)


@dataclass
class PointResult:
    point: str
    passed: bool | None  # None: not checked (only when asked to skip it)
    reason: str

    @property
    def status(self) -> str:
        return {True: "pass", False: "FAIL", None: "skip"}[self.passed]


@dataclass
class _Context:
    phone: str = ""  # E.164 of the test contact
    x_pstn: str = ""
    name: str = ""
    subj: str = ""
    desc: str = ""
    contact: Contact | None = None
    idev: str | None = None
    encoding_notes: dict[str, list[str]] = field(default_factory=dict)  # warning -> where
    found_name: str | None = None
    card_text: str | None = None


class PointFailed(Exception):
    """A point's check did not hold; the message is the reason."""


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
        check_pages: bool = True,
        rng: random.Random | None = None,
        now: datetime | None = None,
    ) -> None:
        self.creds = creds
        self.country = country
        self.check_pages = check_pages
        self.rng = rng or random.SystemRandom()
        self.session = session
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.crm = TelefumClient(rest_url, timeout_s=timeout_s, session=session)
        stamp = (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
        self.ctx = _Context(
            name=f"telefum check-crm test record {stamp} (тестовая запись)",
            subj="telefum check-crm: входящий звонок",
            desc=f"Проверка протокола TelefUM, {stamp}. Длительность 0:42",
        )

    async def run(self) -> list[PointResult]:
        steps: list[tuple[str, Callable[[], Awaitable[str]], tuple[str, ...]]] = [
            ("find unknown", self.find_unknown, ()),
            ("addcont", self.addcont, ()),
            ("find other format", self.find_other_format, ("addcont",)),
            ("addevent", self.addevent, ("addcont",)),
            ("wrong password", self.wrong_password, ()),
            ("missing fields", self.missing_fields, ()),
            ("card page", self.card_page, ("addcont",)),
            ("addcont source", self.addcont_source, ("addcont",)),
            ("search page", self.search_page, ("addcont",)),
            ("encoding", self.encoding, ("addcont",)),
        ]
        results: dict[str, PointResult] = {}
        for point, check, needs in steps:
            if not self.check_pages and point in ("card page", "addcont source", "search page"):
                results[point] = PointResult(point, None, "pages not checked (--skip-pages)")
                continue
            missing = [n for n in needs if n in results and results[n].passed is not True]
            if missing:
                results[point] = PointResult(point, False, f"not checked: {missing[0]} failed")
                continue
            try:
                reason = await check()
                results[point] = PointResult(point, True, reason)
            except PointFailed as err:
                results[point] = PointResult(point, False, redact_text(str(err)))
            except CrmError as err:
                results[point] = PointResult(point, False, _crm_reason(err))
            except Exception as err:  # the check itself must not die on an odd CRM
                reason = redact_text(f"{type(err).__name__}: {err}")
                results[point] = PointResult(point, False, reason)
        return list(results.values())

    # --- helpers ------------------------------------------------------------------------

    def _fmt(self, e164: str, fmt: PhoneFormat) -> str:
        return for_crm(e164, fmt)

    def _note_encoding(self, what: str, warnings: tuple[str, ...] | list[str]) -> None:
        for w in warnings:
            if _is_encoding(w):
                self.ctx.encoding_notes.setdefault(w, [])
                if what not in self.ctx.encoding_notes[w]:
                    self.ctx.encoding_notes[w].append(what)

    def _strict(self, what: str, warnings: tuple[str, ...]) -> None:
        """Fail on protocol deviations; charset trouble is the encoding point's to report."""
        self._note_encoding(what.split(" ", 1)[0], warnings)
        other = [w for w in warnings if not _is_encoding(w)]
        if other:
            raise PointFailed(f"{what}: " + "; ".join(other))

    async def _find(self, phone: str, creds: Credentials | None = None) -> FindResult:
        body, ctype = await self.crm.request(
            "find", "GET", [("typereq", "find"), ("phone", phone)], creds or self.creds
        )
        return parse.parse_find(body, ctype)

    async def _error_answer(
        self, what: str, method: str, params: list[tuple[str, str]], creds: Credentials
    ) -> str:
        """The description of the error answer the request must get; PointFailed if the
        CRM accepts it. ``what`` names the request ("find with a wrong password")."""
        op = params[0][1]
        try:
            body, ctype = await self.crm.request(op, method, params, creds)
        except CrmError as err:
            raise PointFailed(f"{what}: expected an error answer, got {err.message}") from None
        try:
            doc, warnings = parse.parse_document(body, ctype)
        except CrmError as err:
            raise PointFailed(f"{what}: unreadable answer: {err.message}") from None
        self._note_encoding(op, warnings)
        result = parse.text_of(doc.get("result")).lower()
        if result != "error":
            got = f"<result>{result}</result>" if result else "an answer without <result>"
            raise PointFailed(f"{what}: expected <result>error</result>, got {got}")
        desc = parse.text_of(doc.get("description"))
        if not desc:
            raise PointFailed(f"{what}: error answer without a <description>")
        return desc

    async def _page(self, url: str) -> str:
        try:
            async with self.session.get(url, timeout=self.timeout, allow_redirects=True) as resp:
                body = await resp.read()
                status, charset = resp.status, resp.charset
                ctype = resp.headers.get("Content-Type", "")
        except (aiohttp.ClientError, TimeoutError, OSError) as err:
            raise PointFailed(f"GET {url}: {type(err).__name__} {err}") from None
        if status != 200:
            raise PointFailed(f"GET {url}: HTTP {status}")
        if "html" not in ctype.lower():
            raise PointFailed(f"GET {url}: Content-Type {ctype or 'missing'}, not HTML")
        enc = charset or _meta_charset(body) or "utf-8"
        try:
            return body.decode(enc)
        except (UnicodeDecodeError, LookupError):
            self._note_encoding(f"GET {url}", [f"page is not valid {enc}"])
            return body.decode(enc if _known(enc) else "utf-8", errors="replace")

    def _phones_in(self, text: str) -> set[str]:
        found = set()
        for m in _PHONEISH.finditer(text):
            e164 = to_e164(m.group(0), self.country)
            if e164:
                found.add(e164)
        return found

    # --- the points ---------------------------------------------------------------------

    async def find_unknown(self) -> str:
        tried = []
        for _ in range(5):
            phone = random_test_phone(self.country, self.rng)
            found = await self._find(phone)
            if found.contacts:
                tried.append(phone)
                continue
            # Unused: the later points use it even if this answer is not quite right.
            self.ctx.phone = phone
            self.ctx.x_pstn = random_test_phone(self.country, self.rng)
            self._strict("find", found.warnings)
            if found.total != 0:
                raise PointFailed(f"find {phone}: no items but <total>{found.total}</total>")
            return f"{phone}: no contacts, <total>0</total>"
        raise PointFailed(f"find returned contacts for every random phone tried: {tried}")

    async def addcont(self) -> str:
        c = self.ctx
        if not c.phone:
            raise PointFailed("not checked: no unused test phone (see find unknown)")
        params = [
            ("typereq", "addcont"), ("typecont", "contact"), ("phone", c.phone),
            ("name", c.name), ("x_pstn", c.x_pstn),
        ]  # fmt: skip
        body, ctype = await self.crm.request("addcont", "GET", params, self.creds)
        created = parse.parse_add_contact(body, ctype)
        self._strict("addcont", created.warnings)
        c.contact = Contact(id=created.id, typecont=created.typecont or "contact", name=c.name)
        notes = [] if created.typecont else [" (no <typecont> echoed)"]
        return f"contact {created.id} created for {c.phone}, x_pstn {c.x_pstn}" + "".join(notes)

    async def find_other_format(self) -> str:
        c = self.ctx
        assert c.contact is not None
        shown = []
        for fmt in (PhoneFormat.DIGITS, PhoneFormat.NATIONAL):
            phone = self._fmt(c.phone, fmt)
            found = await self._find(phone)
            self._strict(f"find {phone}", found.warnings)
            match = [x for x in found.contacts if x.id == c.contact.id]
            if not match:
                ids = ", ".join(x.id for x in found.contacts) or "none"
                raise PointFailed(
                    f"find {phone} ({fmt.value}) does not return contact {c.contact.id} "
                    f"created as {c.phone} (got: {ids})"
                )
            c.found_name = match[0].name
            shown.append(phone)
        return f"contact {c.contact.id} found as " + " and ".join(shown)

    async def addevent(self) -> str:
        c = self.ctx
        assert c.contact is not None
        params = [
            ("typereq", "addevent"), ("id", c.contact.id), ("typecont", c.contact.typecont),
            ("subj", c.subj), ("desc", c.desc),
        ]  # fmt: skip
        body, ctype = await self.crm.request("addevent", "POST", params, self.creds)
        created = parse.parse_add_event(body, ctype)
        self._strict("addevent", created.warnings)
        c.idev = created.id
        return f"event {created.id} on contact {c.contact.id}"

    async def wrong_password(self) -> str:
        wrong = SecretStr(self.creds.password.get_secret_value() + "-wrong")
        bad = Credentials(self.creds.login, wrong)
        params = [("typereq", "find"), ("phone", self.ctx.phone or "0")]
        desc = await self._error_answer("find with a wrong password", "GET", params, bad)
        phone = random_test_phone(self.country, self.rng)
        params = [("typereq", "addcont"), ("typecont", "contact"), ("phone", phone),
                  ("name", self.ctx.name + " (wrong password)")]  # fmt: skip
        await self._error_answer("addcont with a wrong password", "GET", params, bad)
        after = await self._find(phone)
        if after.contacts:
            ids = ", ".join(x.id for x in after.contacts)
            raise PointFailed(f"addcont with a wrong password answered error yet created {ids}")
        return f"error answers for find and addcont: {desc!r}; nothing created"

    async def missing_fields(self) -> str:
        no_phone = await self._error_answer(
            "addcont without phone", "GET",
            [("typereq", "addcont"), ("typecont", "contact"), ("name", self.ctx.name)],
            self.creds,
        )  # fmt: skip
        no_id = await self._error_answer(
            "addevent without id", "POST",
            [("typereq", "addevent"), ("typecont", "contact"), ("subj", self.ctx.subj)],
            self.creds,
        )  # fmt: skip
        for what, desc in (("addcont without phone", no_phone), ("addevent without id", no_id)):
            if rejected(desc).kind == "auth":  # refused the login: the field went unchecked
                raise PointFailed(
                    f"{what}: the CRM refused the login itself ({desc!r}), so it never said "
                    "whether the missing field is caught; check the login and password"
                )
        notes = []
        if no_phone != SPEC_WORDING["no phone"]:
            notes.append(f"(spec words it {SPEC_WORDING['no phone']!r})")
        if no_id != SPEC_WORDING["no id"]:
            notes.append(f"(spec words it {SPEC_WORDING['no id']!r})")
        return " ".join(
            [f"addcont without phone: {no_phone!r}; addevent without id: {no_id!r}", *notes]
        )

    async def card_page(self) -> str:
        c = self.ctx
        assert c.contact is not None
        url = self.crm.card_url(c.contact.id, c.contact.typecont)
        page = await self._page(url)
        text = html.unescape(_TAGS.sub(" ", page))
        c.card_text = text
        problems = []
        if c.name not in text:
            problems.append("the contact's name is not on it")
        telf = {to_e164(html.unescape(v), self.country) for v in _TELF.findall(page)}
        if c.phone not in telf:
            if not telf and c.phone in self._phones_in(text):
                problems.append(f"phone {c.phone} is shown but not as a telf: link")
            else:
                problems.append(f"no telf: link to {c.phone}")
        if c.idev is not None and c.subj not in text:
            problems.append(f"event {c.idev} ({c.subj!r}) is not on it")
        if problems:
            raise PointFailed(f"{url}: " + "; ".join(problems))
        return f"{url}: name, telf: link to {c.phone}" + (", event" if c.idev else "")

    async def addcont_source(self) -> str:
        c = self.ctx
        if c.card_text is None:
            raise PointFailed("not checked: the card page could not be read")
        if c.x_pstn not in self._phones_in(c.card_text):
            raise PointFailed(
                f"x_pstn {c.x_pstn} sent with addcont is not on the card: the source is lost "
                "(or its '+' was read as a space)"
            )
        return f"card shows the source {c.x_pstn}"

    async def search_page(self) -> str:
        c = self.ctx
        assert c.contact is not None
        url = self.crm.search_url(c.phone)
        page = await self._page(url)
        text = html.unescape(_TAGS.sub(" ", page))
        if c.name not in text:
            raise PointFailed(f"{url}: the contact {c.contact.id} is not listed")
        id_param = re.compile(rf"[?&;]id={re.escape(c.contact.id)}(?:&|$)")
        links = [html.unescape(h) for h in _HREF.findall(page)]
        if not any("card" in h and id_param.search(h) for h in links):
            raise PointFailed(f"{url}: contact listed but no link to its card (card?id=...)")
        return f"{url}: contact {c.contact.id} listed with a link to its card"

    async def encoding(self) -> str:
        c = self.ctx
        problems = [f"{w} (answers to {', '.join(ops)})" for w, ops in c.encoding_notes.items()]
        if c.found_name is not None and c.found_name != c.name:
            problems.insert(0, f"name sent {c.name!r} came back from find as {c.found_name!r}")
        if c.card_text is not None and c.idev is not None and c.desc not in c.card_text:
            problems.append("the Cyrillic event description is garbled or missing on the card")
        if problems:
            raise PointFailed("; ".join(problems))
        return "Cyrillic name and description round-trip; charsets declared right"


def _is_encoding(warning: str) -> bool:
    return any(word in warning.lower() for word in _ENCODING_WORDS)


def _crm_reason(err: CrmError) -> str:
    return redact_text(f"{err.op or 'request'}: {err.message}")


def _known(enc: str) -> bool:
    try:
        "".encode(enc)
    except LookupError:
        return False
    return True


def _meta_charset(body: bytes) -> str | None:
    m = re.search(rb"""<meta[^>]+charset\s*=\s*["']?([A-Za-z0-9_-]+)""", body[:2048], re.I)
    return m.group(1).decode("ascii") if m else None


async def check_crm(
    rest_url: str,
    creds: Credentials,
    *,
    country: str = "RU",
    timeout_s: float = 10.0,
    check_pages: bool = True,
    rng: random.Random | None = None,
) -> list[PointResult]:
    """Run every point against ``rest_url``; one result per point of :data:`POINTS`."""
    async with aiohttp.ClientSession(headers={"User-Agent": "telefum-check-crm"}) as session:
        checker = Checker(
            rest_url, creds, session, country=country, timeout_s=timeout_s,
            check_pages=check_pages, rng=rng,
        )  # fmt: skip
        return await checker.run()


def format_table(results: list[PointResult]) -> str:
    width = max(len(r.point) for r in results)
    lines = [f"{'POINT':<{width}}  RESULT  REASON"]
    lines += [f"{r.point:<{width}}  {r.status:<6}  {r.reason}" for r in results]
    passed = sum(1 for r in results if r.passed)
    lines.append(f"{passed} of {len(results)} points pass")
    return "\n".join(lines)


def all_passed(results: list[PointResult], *, allow_skipped: bool = False) -> bool:
    return all(r.passed or (allow_skipped and r.passed is None) for r in results)
