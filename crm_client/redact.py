"""Keep secrets out of logs and stored errors: TelefUM puts credentials in query strings.

Two ways, both applied by every function here: by shape (``password=...``, ``Secret: ...``,
``scheme://user:password@host``) and by value. Masking by shape misses a CRM that echoes
the password in its own words (``you sent pass X``), so the configured secrets themselves
are registered (:func:`register_secrets`, when the settings are loaded) and masked wherever
these functions are used: the log formatters, error messages, the dead-letter store's
error history, ``telefum status`` and ``dlq`` output.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable
from urllib.parse import parse_qsl, quote, quote_plus, urlencode, urlsplit, urlunsplit

SECRET_KEYS = frozenset(
    {"password", "passwd", "pass", "secret", "token", "apikey", "api_key", "key"}
)
MASK = "***"

_INLINE = re.compile(r"(?i)\b(password|passwd|pass|secret|token|api_?key)=([^&\s\"'<>]*)")


def redact_url(url: str) -> str:
    """The URL with every secret query value and any userinfo password masked."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return redact_text(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, host = netloc.rpartition("@")
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:{MASK}@{host}" if ":" in userinfo else f"{user}@{host}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode(
            [(k, MASK if k.lower() in SECRET_KEYS else v) for k, v in pairs], safe="*"
        )
    return _mask_registered(urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment)))


def redact_text(text: str) -> str:
    """Mask the registered secrets, and ``password=...``-style pairs, anywhere in free text
    (log lines, errors)."""
    return _INLINE.sub(lambda m: f"{m.group(1)}={MASK}", _mask_registered(text))


# --- the registry of secret values ---------------------------------------------------------

MIN_SECRET_LEN = 6  # shorter values would mask ordinary words; shapes still catch them
_registered: frozenset[str] = frozenset()
_forms: tuple[str, ...] = ()  # every form of every registered value, longest first


def _forms_of(value: str) -> set[str]:
    """The forms a server echoes a value in: as written, percent-encoded, ``+`` for space,
    HTML-escaped."""
    return {value, quote(value, safe=""), quote_plus(value), html.escape(value)}


def register_secrets(values: Iterable[str]) -> None:
    """Add secret values (passwords, tokens) to mask wherever text is logged or stored.
    Values shorter than ``MIN_SECRET_LEN`` are left to the shape rules."""
    global _registered, _forms
    new = {v for v in values if v and len(v) >= MIN_SECRET_LEN} - _registered
    if new:
        _registered = _registered | new
        forms = {f for v in _registered for f in _forms_of(v)}
        _forms = tuple(sorted(forms, key=len, reverse=True))


def registered_secrets() -> frozenset[str]:
    return _registered


def forget_secrets(keep: Iterable[str] = ()) -> None:
    """Drop the registered values but ``keep`` (tests)."""
    global _registered, _forms
    _registered, _forms = frozenset(), ()
    register_secrets(keep)


def _mask_registered(text: str) -> str:
    for form in _forms:  # longest first: no half-masked form
        if form in text:
            text = text.replace(form, MASK)
    return text


# "Secret: abc" as in an AMI Login action (header style, not key=value)
_HEADER_SECRET = re.compile(r"(?i)\b(secret|password|token)(\s*:\s*)(?!\*\*\*)([^\s,;\"'<>]+)")
# redis://:pw@host, https://user:pw@host; a scheme is short: an unbounded ``[a-z0-9+.-]*``
# rescans the rest of a line like "a.a.a.a..." from every letter (quadratic: 40 KB, 6 s)
_URL_USERINFO = re.compile(r"(\b[a-z][a-z0-9+.-]{0,31}://[^/\s:@]*:)([^@\s/]+)@", re.I)


def redact_line(text: str) -> str:
    """``text`` with every secret we know the shape of masked: ``password=...`` pairs,
    ``"password": "..."`` in JSON or a dict's repr, AMI ``Secret: ...`` headers and the
    password in ``scheme://user:password@host`` URLs. For whole log lines, tracebacks too."""
    text = redact_text(text)
    text = _QUOTED_SECRET.sub(lambda m: f"{m.group(1)}{m.group(2)}{MASK}{m.group(2)}", text)
    text = _HEADER_SECRET.sub(lambda m: f"{m.group(1)}{m.group(2)}{MASK}", text)
    return _URL_USERINFO.sub(lambda m: f"{m.group(1)}{MASK}@", text)


# "password": "x" (JSON) and 'password': 'x' (a dict's repr); a value is read for at most
# 1,024 characters, so many unclosed quotes cannot make a line quadratic
_QUOTED_SECRET = re.compile(
    r"""(["'](?:password|secret|token|passwd)["']\s*:\s*)(["'])(?!\*\*\*\2)(?:(?!\2)[^\\]|\\.){0,1024}\2""",
    re.I,
)


def mask_values(text: str, values: Iterable[str]) -> str:
    """``text`` with each of ``values`` masked wherever it appears, as written and in the
    forms a server echoes it in (percent-encoded, ``+`` for space, HTML-escaped), then the
    shapes :func:`redact_text` knows. Masking by shape alone misses a CRM that says
    ``you sent pass X``; the configured secret itself is what must never be shown."""
    forms = {form for value in values if value for form in _forms_of(value)}
    for form in sorted(forms, key=len, reverse=True):  # longest first: no half-masked form
        text = text.replace(form, MASK)
    return redact_text(text)
