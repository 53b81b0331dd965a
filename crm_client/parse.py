"""Reading TelefUM answers: pure functions, bytes and Content-Type in, typed result or error out.

What real CRMs send, and what we do with it:

- encodings: a BOM wins; otherwise the HTTP charset and the XML declaration. When those two
  disagree (PHP's default ``text/html; charset=UTF-8`` in front of a ``windows-1251``
  document is common) the one the bytes actually decode with wins, UTF-8 first because a
  Cyrillic windows-1251 text is practically never valid UTF-8. Nothing declared: UTF-8, then
  windows-1251 as the fallback Russian CRMs need. Every guess leaves a warning.
- ``find`` may hold zero, one or many ``<item>``: always a tuple here. ``total`` missing,
  unreadable or disagreeing with the items: the items are trusted, a warning says so.
- tag names are matched case-insensitively; PHP notices before the XML and junk after
  ``</response>`` are cut off (with a warning) rather than losing the answer.
- empty bodies, HTML pages, truncated or garbled XML: :class:`TransientCrmError`
  (``bad_response``; see ``errors`` for why transient). ``<result>error</result>``:
  :class:`PermanentCrmError` with the CRM's description.
- hostile answers cannot stall the process: every step is linear in the body's length
  (which the client caps at 4 MiB), and XML nested deeper than :data:`MAX_DEPTH` is garbage
  (``bad_response``) before it is read further. A TelefUM answer is four elements deep.

Warnings travel in the results (``FindResult.warnings``, ``Created.warnings``): the client
logs them, and ``check-crm`` reports them as protocol deviations.
"""

from __future__ import annotations

import codecs
import email.utils
import html
import re
import time
from collections.abc import Mapping
from typing import Any
from xml.parsers import expat
from xml.parsers.expat import ExpatError

import xmltodict

from .errors import CrmError, PermanentCrmError, TransientCrmError, rejected
from .redact import redact_text, redact_url
from .types import Contact, Created, FindResult

_BOMS = (
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)
_XML_DECL_ENC = re.compile(rb"""^\s*<\?xml[^>]*?encoding\s*=\s*["']([A-Za-z0-9._:-]+)["']""")
_XML_DECL = re.compile(r"^\s*<\?xml[^>]*\?>", re.S)
_CHARSET = re.compile(r"""charset\s*=\s*["']?([A-Za-z0-9._:-]+)""", re.I)
# Linear on any text: each match attempt stops at the next "<" (a lazy ``<title>(.*?)
# </title>`` or a ``<[^>]+>`` rescans the rest of the text from every unclosed "<").
_TITLE_OPEN = re.compile(r"<title\b[^<>]*>", re.I)
_TITLE_CLOSE = re.compile(r"</title\s*>", re.I)
_TAG = re.compile(r"<[^<>]*>")
_MAX_TITLE = 2000  # characters of a title read at all (a snippet shows 120)
_XML_START = re.compile(r"<\?xml|<response\b", re.I)
_RESPONSE_END = re.compile(r"</response\s*>", re.I)
_MAX_SNIPPET = 120


def _codec(name: str | None) -> str | None:
    """Python's canonical codec name, or None when unknown (``cp1251`` for ``windows-1251``)."""
    if not name:
        return None
    try:
        return codecs.lookup(name.strip().strip("\"'")).name
    except LookupError:
        return None


def http_charset(content_type: str | None) -> str | None:
    m = _CHARSET.search(content_type or "")
    return m.group(1) if m else None


def snippet(text: str, limit: int = _MAX_SNIPPET) -> str:
    """A short, one-line, secret-free excerpt of a body for error messages."""
    one_line = " ".join(text.split())
    cut = one_line[:limit] + ("…" if len(one_line) > limit else "")
    return redact_text(cut)


def _bad(message: str, description: str | None = None) -> TransientCrmError:
    """An answer we cannot read. The CRM answered, so it had the request: it may have acted."""
    return TransientCrmError(
        message, kind="bad_response", may_have_acted=True, description=description
    )


def decode_body(body: bytes, content_type: str | None) -> tuple[str, list[str]]:
    """The body as text, and warnings about how its encoding had to be guessed."""
    warnings: list[str] = []
    for bom, enc in _BOMS:
        if body.startswith(bom):
            try:
                return body[len(bom) :].decode(enc), warnings
            except UnicodeDecodeError:
                raise _bad(f"body starts with a {enc} byte-order mark but is not {enc}") from None
    from_http_raw = http_charset(content_type)
    m = _XML_DECL_ENC.match(body[:300])
    from_xml_raw = m.group(1).decode("ascii") if m else None
    from_http, from_xml = _codec(from_http_raw), _codec(from_xml_raw)
    for raw, known, where in ((from_http_raw, from_http, "HTTP"), (from_xml_raw, from_xml, "XML")):
        if raw and not known:
            warnings.append(f"unknown charset {raw!r} in the {where} declaration; ignored")
    declared = [c for c in dict.fromkeys((from_http, from_xml)) if c]
    if len(declared) > 1:
        # Disagreement: the one the bytes really are in wins, UTF-8 first (see module doc).
        order = sorted(declared, key=lambda c: c != "utf-8")
        for enc in order:
            try:
                text = body.decode(enc)
            except UnicodeDecodeError:
                continue
            warnings.append(
                f"HTTP says charset {from_http_raw}, the XML declaration says {from_xml_raw}; "
                f"the body is {enc}"
            )
            return text, warnings
    candidates = declared or ["utf-8"]
    try:
        return body.decode(candidates[0]), warnings
    except UnicodeDecodeError:
        pass
    for enc in ("utf-8", "cp1251"):
        if enc in candidates:
            continue
        try:
            text = body.decode(enc)
        except UnicodeDecodeError:
            continue
        said = f"declared {candidates[0]}" if declared else "no charset declared"
        warnings.append(f"body is not valid {candidates[0]} ({said}); read it as {enc}")
        return text, warnings
    return body.decode(candidates[0], errors="replace"), [
        *warnings,
        f"body is not valid {candidates[0]}; undecodable bytes replaced",
    ]


def looks_like_html(text: str, content_type: str | None = None) -> bool:
    head = text.lstrip()[:200].lower()
    if head.startswith(("<!doctype html", "<html")):
        return True
    ct = (content_type or "").lower()
    return "html" in ct and not head.startswith(("<?xml", "<response"))


def html_title(text: str) -> str | None:
    """The text of the page's first ``<title>``, when it is closed."""
    start = _TITLE_OPEN.search(text)
    if start is None:
        return None
    end = _TITLE_CLOSE.search(text, start.end())
    if end is None:
        return None
    raw = text[start.end() : min(end.start(), start.end() + _MAX_TITLE)]
    return snippet(html.unescape(_TAG.sub("", raw))) or None


def parse_document(body: bytes, content_type: str | None) -> tuple[dict[str, Any], list[str]]:
    """The children of the ``<response>`` element (keys lower-cased), and warnings.

    Raises TransientCrmError(``bad_response``) for anything that is not a TelefUM answer.
    """
    if not body.strip():
        raise _bad("empty answer (no body)")
    text, warnings = decode_body(body, content_type)
    if looks_like_html(text, content_type):
        title = html_title(text)
        raise _bad(
            "HTML page instead of a TelefUM XML answer"
            + (f": {title!r}" if title else f": {snippet(text)!r}"),
            description=title,
        )
    text = _XML_DECL.sub("", text, count=1).strip()  # we decoded it; expat must not re-decode
    m = _XML_START.search(text)
    if m is None and not text.startswith("<"):
        raise _bad(f"not XML: {snippet(text)!r}")
    if m is not None and m.start() > 0 and not text.startswith("<!"):  # PHP notices, say
        junk = snippet(text[: m.start()])
        warnings.append(f"ignored {m.start()} characters before the XML: {junk!r}")
        text = _XML_DECL.sub("", text[m.start() :], count=1).strip()
    try:
        doc = _xml(text)
    except _TooDeep:
        raise _too_deep() from None
    except (ExpatError, ValueError) as err:  # ValueError: a DOCTYPE declaring entities
        ends = list(_RESPONSE_END.finditer(text))
        tail = text[ends[-1].end() :].strip() if ends else ""
        if not tail:
            raise _bad(f"unreadable XML ({err}): {snippet(text)!r}") from None
        try:
            doc = _xml(text[: ends[-1].end()])
        except _TooDeep:
            raise _too_deep() from None
        except (ExpatError, ValueError):
            raise _bad(f"unreadable XML ({err}): {snippet(text)!r}") from None
        warnings.append(f"ignored text after </response>: {snippet(tail)!r}")
    if not isinstance(doc, dict) or len(doc) != 1:
        raise _bad(f"unreadable XML: {snippet(text)!r}")
    ((root, content),) = doc.items()
    if root != "response":
        warnings.append(f"root element is <{root}>, not <response>")
    if content is None:
        content = {}
    if not isinstance(content, dict):
        raise _bad(f"<{root}> holds text, not TelefUM fields: {snippet(str(content))!r}")
    return content, warnings


MAX_DEPTH = 32  # elements nested in one another; a TelefUM answer needs 4


class _TooDeep(Exception):
    """Raised from inside expat's callbacks: the document nests deeper than MAX_DEPTH."""


def _too_deep() -> TransientCrmError:
    return _bad(f"XML nested deeper than {MAX_DEPTH} elements: not a TelefUM answer")


def _lower(_path: object, key: str, value: Any) -> tuple[str, Any]:
    """Tag and attribute names case-insensitively (``<Response>``, ``<ITEM>``)."""
    return key.lower(), value


class _GuardedParser:
    """expat's parser as xmltodict drives it, counting open elements: nesting deeper than
    MAX_DEPTH raises _TooDeep as the element opens, before the rest is read."""

    def __init__(self, parser: Any) -> None:
        self.__dict__["_parser"] = parser
        self.__dict__["_depth"] = [0]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._parser, name)

    def __setattr__(self, name: str, value: Any) -> None:
        depth = self._depth
        if name == "StartElementHandler":
            start = value

            def value(tag: str, attrs: Any) -> None:
                depth[0] += 1
                if depth[0] > MAX_DEPTH:
                    raise _TooDeep
                start(tag, attrs)

        elif name == "EndElementHandler":
            end = value

            def value(tag: str) -> None:
                depth[0] -= 1
                end(tag)

        setattr(self._parser, name, value)


class _Expat:
    """What ``xmltodict.parse`` takes as its ``expat`` module: the real one, guarded."""

    @staticmethod
    def ParserCreate(*args: Any) -> _GuardedParser:
        return _GuardedParser(expat.ParserCreate(*args))


def _xml(text: str) -> dict[str, Any] | None:
    """``{root name: content}``: an element is its stripped text (None when empty), or a
    dict of its attributes (``@name``), children and text (``#text``); names lower-cased; a
    repeated child is a list, and ``item`` always is one. ExpatError, ValueError (entities)
    or _TooDeep.

    Linear in the text: ``force_list`` is a tuple and the postprocessor gets xmltodict's path
    list as it is (a callable ``force_list`` is handed a copy of the path for every element:
    quadratic in the depth, 43 s for 100k levels).
    """
    doc: dict[str, Any] | None = xmltodict.parse(
        text.encode("utf-8"),
        expat=_Expat,
        force_list=("item",),
        postprocessor=_lower,
        disable_entities=True,
    )
    return doc


def text_of(value: Any) -> str:
    """An element's text whatever shape it has (None, str, attrs dict, repeated)."""
    if value is None:
        return ""
    if isinstance(value, list):
        return text_of(value[0]) if value else ""
    if isinstance(value, Mapping):
        return str(value.get("#text") or "").strip()
    return str(value).strip()


def _check_result(doc: Mapping[str, Any], warnings: list[str]) -> str | None:
    """Raise the CRM's error answer; return the result word (lower case) or None."""
    if "result" not in doc:
        return None
    result = text_of(doc["result"]).lower()
    if result == "error":
        raise rejected(text_of(doc.get("description")))
    if result != "ok":
        warnings.append(f"unexpected <result>{snippet(result)}</result>")
    return result


def parse_find(body: bytes, content_type: str | None = None) -> FindResult:
    """A ``find`` answer: contacts in the CRM's order, ``total`` as it said."""
    doc, warnings = parse_document(body, content_type)
    _check_result(doc, warnings)
    raw_items = doc.get("item")
    if raw_items is None and isinstance(doc.get("items"), Mapping):
        raw_items = doc["items"].get("item")
        warnings.append("items wrapped in <items>")
    items: list[Any] = raw_items if isinstance(raw_items, list) else []
    contacts: list[Contact] = []
    for n, item in enumerate(items, 1):
        if not isinstance(item, Mapping):
            warnings.append(f"<item> {n} has no fields; skipped")
            continue
        cid = text_of(item.get("id"))
        if not cid:
            warnings.append(f"<item> {n} has no <id>; skipped")
            continue
        typecont = text_of(item.get("typecont"))
        if not typecont:
            warnings.append(f"<item> {n} has no <typecont>; taken as contact")
        contacts.append(
            Contact(
                id=cid,
                typecont=typecont or "contact",
                name=text_of(item.get("name")),
                company=text_of(item.get("company")),
                description=text_of(item.get("description")),
            )
        )
    total_text = text_of(doc.get("total")) if "total" in doc else None
    if total_text is None:
        warnings.append("no <total>")
        total = len(contacts)
    elif not (total_text.isascii() and total_text.isdigit()):
        warnings.append(f"<total> is not a number: {snippet(total_text)!r}")
        total = len(contacts)
    else:
        total = int(total_text)
        if total != len(items):
            warnings.append(f"<total> says {total} but the answer holds {len(items)} <item>")
    return FindResult(contacts=tuple(contacts), total=total, warnings=tuple(warnings))


def _parse_created(body: bytes, content_type: str | None, id_tag: str) -> Created:
    doc, warnings = parse_document(body, content_type)
    result = _check_result(doc, warnings)
    new_id = text_of(doc.get(id_tag))
    if not new_id and id_tag == "idev" and text_of(doc.get("id")):
        new_id = text_of(doc.get("id"))
        warnings.append("event id given as <id>, not <idev>")
    if result is None:
        if not new_id:
            raise _bad(f"answer has neither <result> nor <{id_tag}>")
        warnings.append("no <result>")
    if not new_id:
        raise _bad(
            f"<result>ok</result> without <{id_tag}>",
            description=text_of(doc.get("description")) or None,
        )
    typecont = text_of(doc.get("typecont")) or None
    return Created(
        id=new_id,
        typecont=typecont,
        description=text_of(doc.get("description")),
        warnings=tuple(warnings),
    )


def parse_add_contact(body: bytes, content_type: str | None = None) -> Created:
    """An ``addcont`` answer: the new contact's ``id``."""
    return _parse_created(body, content_type, "id")


def parse_add_event(body: bytes, content_type: str | None = None) -> Created:
    """An ``addevent`` answer: the new event's ``idev``."""
    return _parse_created(body, content_type, "idev")


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def body_description(body: bytes, content_type: str | None) -> str | None:
    """What an error body says, best effort: the TelefUM description or the HTML title."""
    if not body.strip():
        return None
    try:
        doc, _ = parse_document(body, content_type)
    except TransientCrmError as err:
        if err.description:
            return err.description
        text, _ = decode_body(body, content_type)
        return snippet(_TAG.sub(" ", text)) or None
    except CrmError:
        return None
    return text_of(doc.get("description")) or None


# Transient statuses that say the request was turned away before any processing: 408 (the
# server gave up waiting for it), 503 (unavailable: maintenance, overload). Any other 5xx
# may come after the CRM acted: a 500 from a script that failed after its INSERT, a
# gateway's 502/504 while the application behind it carried on.
TURNED_AWAY = frozenset({408, 503})


def error_for_status(
    status: int,
    body: bytes = b"",
    content_type: str | None = None,
    *,
    retry_after: str | None = None,
    location: str | None = None,
    now: float | None = None,
) -> CrmError | None:
    """The error an HTTP status means, or None for 2xx (then the body is parsed)."""
    if 200 <= status < 300:
        return None
    desc = body_description(body, content_type)
    said = f": {desc}" if desc else ""
    if status == 429:
        wait = parse_retry_after(retry_after, now)
        hint = f" (Retry-After {wait:.0f} s)" if wait is not None else ""
        return TransientCrmError(
            f"HTTP 429 Too Many Requests{hint}{said}",
            kind="rate_limited",
            may_have_acted=False,
            status=status,
            description=desc,
            retry_after=wait,
        )
    if status >= 500 or status == 408:  # a 503 may say when to come back, too
        return TransientCrmError(
            f"HTTP {status}{said}",
            kind="http",
            status=status,
            description=desc,
            may_have_acted=status not in TURNED_AWAY,
            retry_after=parse_retry_after(retry_after, now),
        )
    if status in (401, 403):
        return PermanentCrmError(
            f"HTTP {status}: credentials refused{said}",
            kind="auth",
            status=status,
            description=desc,
        )
    if 300 <= status < 400:
        target = f" to {redact_url(location)}" if location else ""  # may hold user:pw@
        return PermanentCrmError(
            f"HTTP {status} redirect{target}: not followed; point crm.url at the final address",
            kind="http",
            status=status,
            description=desc,
        )
    if 400 <= status < 500:
        return PermanentCrmError(
            f"HTTP {status}{said}", kind="http", status=status, description=desc
        )
    return TransientCrmError(
        f"unexpected HTTP {status}{said}", kind="bad_response", may_have_acted=True, status=status
    )
