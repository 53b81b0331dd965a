"""Reading a CRM's browser pages (``/card``, ``/search``) as ``check-crm`` can: with no
browser session and no script run, so that what it cannot see is said, not failed.

The protocol asks only that the links open the card (§5) and a search page listing the
contacts (§6). Real CRMs put those pages behind a sign-in (a redirect to a login page, or a
401) and draw them with JavaScript. :func:`judge` tells apart a page check-crm can read
(plain HTML showing the contact), one it cannot (sign-in, scripts: "not verified", with
why) and one that is plainly broken (no answer, an HTTP error, not a page: FAIL).

Redirects are followed by hand, so the report can show where the link led. Text is read
without the contents of ``<script>``, ``<style>``, ``<template>`` and comments: data a
script would draw is not shown to a user until it runs, so it counts as not shown.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from urllib.parse import unquote, urljoin, urlsplit

import aiohttp

from crm_client.redact import redact_url
from telefum.checkcrm_points import Status

MAX_REDIRECTS = 10
MAX_PAGE_BYTES = 4 * 1024 * 1024
_HIDDEN = re.compile(
    r"<script\b.*?</script\s*>|<style\b.*?</style\s*>|<template\b.*?</template\s*>|<!--.*?-->",
    re.I | re.S,
)
_SCRIPT = re.compile(r"<script\b", re.I)
_PASSWORD_INPUT = re.compile(r"""<input\b[^>]*\btype\s*=\s*["']?password\b""", re.I)
_TAGS = re.compile(r"<[^>]+>")
_HREF = re.compile(r"""\bhref\s*=\s*["']([^"']*)["']""", re.I)
_TITLE = re.compile(r"<title[^>]*>([^<]{0,200})", re.I)
_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?([A-Za-z0-9_-]+)""", re.I)
# A sign-in page by its address: /login, /signin, /auth/..., /sso, /session/new, /вход
_SIGN_IN_PATH = re.compile(
    r"log-?in|sign-?in|sign_in|logon|auth|sso|session|вход|%D0%B2%D1%85%D0%BE%D0%B4", re.I
)


@dataclass(frozen=True)
class Page:
    """One GET of a page, after its redirects."""

    url: str  # as asked
    final_url: str
    redirects: tuple[str, ...] = ()  # each address a redirect led to, in order
    status: int | None = None
    content_type: str = ""
    html: str = ""  # decoded
    error: str | None = None  # no answer (network, timeout, too many redirects)
    encoding_problem: str | None = None

    @property
    def visible_html(self) -> str:
        return _HIDDEN.sub(" ", self.html)

    @property
    def text(self) -> str:
        """What a browser shows without running scripts: tags out, entities decoded."""
        return " ".join(html.unescape(_TAGS.sub(" ", self.visible_html)).split())

    @property
    def scripts(self) -> int:
        return len(_SCRIPT.findall(self.html))

    @property
    def asks_password(self) -> bool:
        return bool(_PASSWORD_INPUT.search(self.html))

    @property
    def hrefs(self) -> list[str]:
        return [html.unescape(h).strip() for h in _HREF.findall(self.visible_html)]

    @property
    def telf_targets(self) -> list[str]:
        """What each ``telf:`` link dials, as written (percent-decoded)."""
        return [unquote(h[5:]).strip() for h in self.hrefs if h.lower().startswith("telf:")]

    @property
    def sign_in_address(self) -> str | None:
        """The redirect target that is a sign-in page by its address, if any."""
        for url in self.redirects:
            parts = urlsplit(url)
            if _SIGN_IN_PATH.search(parts.path) or _SIGN_IN_PATH.search(parts.netloc):
                return url
        return None

    def where(self) -> str:
        """``GET url`` and where its redirects led, for a reason line."""
        hops = "".join(f" -> {redact_url(u)}" for u in self.redirects)
        return f"GET {redact_url(self.url)}{hops}"

    def title(self) -> str:
        m = _TITLE.search(self.html)
        return " ".join(html.unescape(m.group(1)).split()) if m else ""


async def fetch_page(session: aiohttp.ClientSession, url: str, timeout_s: float) -> Page:
    """GET ``url`` as a browser without a session would, following redirects by hand."""
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    current = url
    redirects: list[str] = []
    for _ in range(MAX_REDIRECTS + 1):
        try:
            async with session.get(current, timeout=timeout, allow_redirects=False) as resp:
                status, location = resp.status, resp.headers.get("Location")
                ctype, charset = resp.headers.get("Content-Type", ""), resp.charset
                body = await _read(resp)
        except TimeoutError:
            return Page(url, current, tuple(redirects), error=f"no answer within {timeout_s:g} s")
        except (aiohttp.ClientError, OSError, ValueError) as err:
            error = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
            return Page(url, current, tuple(redirects), error=error)
        if 300 <= status < 400 and location:
            current = urljoin(current, location)
            redirects.append(current)
            continue
        text, problem = _decode(body, charset)
        return Page(url, current, tuple(redirects), status, ctype, text, None, problem)
    return Page(url, current, tuple(redirects), error=f"more than {MAX_REDIRECTS} redirects")


async def _read(resp: aiohttp.ClientResponse) -> bytes:
    """The body, up to :data:`MAX_PAGE_BYTES` (a card is far smaller; the rest is dropped)."""
    chunks, size = [], 0
    async for chunk in resp.content.iter_chunked(64 * 1024):
        chunks.append(chunk)
        size += len(chunk)
        if size >= MAX_PAGE_BYTES:
            break
    return b"".join(chunks)[:MAX_PAGE_BYTES]


def _decode(body: bytes, charset: str | None) -> tuple[str, str | None]:
    m = _META_CHARSET.search(body[:4096])
    declared = charset or (m.group(1).decode("ascii") if m else None)
    enc = declared or "utf-8"
    try:
        return body.decode(enc), None
    except LookupError:
        return body.decode("utf-8", errors="replace"), f"unknown charset {enc!r}"
    except UnicodeDecodeError:
        said = f"declared {enc}" if declared else "no charset declared"
        return body.decode(enc, errors="replace"), f"page is not valid {enc} ({said})"


def judge(page: Page, shows: bool, subject: str, *, strict: bool) -> tuple[Status, str]:
    """Whether ``page`` shows ``subject`` (``shows``: the caller looked), as a point result.

    FAIL only for what is observed broken whoever asks: no answer, an HTTP error, not a
    page. A sign-in page is "not verified" always; a page without the subject is "not
    verified" unless ``strict`` (the CRM says its pages are rendered on the server)."""
    where = page.where()
    if page.error is not None:
        return "FAIL", f"{where}: {page.error}"
    sign_in = page.sign_in_address
    if page.status in (401, 403):
        return "not verified", (
            f"{where}: HTTP {page.status}: the page asks for a login, and check-crm has no "
            "browser session"
        )
    if sign_in is not None:
        return "not verified", (
            f"{where}: redirected to a sign-in page (by its address{_with_form(page)}); "
            "check-crm has no browser session"
        )
    if page.asks_password and not shows:
        return "not verified", (
            f"{where}: a page with a password field, without {subject}: a sign-in page; "
            "check-crm has no browser session"
        )
    if page.status is None or not 200 <= page.status < 300:
        title = page.title()
        return "FAIL", f"{where}: HTTP {page.status}" + (f" ({title!r})" if title else "")
    if "html" not in page.content_type.lower():
        return "FAIL", f"{where}: Content-Type {page.content_type or 'missing'}, not an HTML page"
    if shows:
        return "pass", f"{where}: shows {subject}"
    scripts = f"; it has {page.scripts} <script>" if page.scripts else ""
    if strict:
        return "FAIL", f"{where}: the HTML served does not show {subject}{scripts} (--strict)"
    if page.scripts:
        return "not verified", (
            f"{where}: the HTML served does not show {subject}{scripts}, which may draw it "
            "(check-crm runs no script; --strict fails this)"
        )
    return "not verified", (
        f"{where}: the HTML served (no scripts) does not show {subject}, so check-crm cannot "
        "tell it is that page (--strict fails this)"
    )


def _with_form(page: Page) -> str:
    if page.asks_password:
        return " and its password field"
    if page.status is not None and page.status != 200:
        return f"; it answered HTTP {page.status}"
    return ""
