"""Keep secrets out of logs: TelefUM puts credentials in query strings."""

from __future__ import annotations

import html
import re
from collections.abc import Iterable
from urllib.parse import parse_qsl, quote, quote_plus, urlencode, urlsplit, urlunsplit

SECRET_KEYS = frozenset(
    {"password", "passwd", "pass", "secret", "token", "apikey", "api_key", "key"}
)
MASK = "***"

_INLINE = re.compile(
    r"(?i)\b(password|passwd|pass|secret|token|api_?key)=([^&\s\"'<>]*)"
)


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
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact_text(text: str) -> str:
    """Mask ``password=...``-style pairs anywhere in free text (log lines, errors)."""
    return _INLINE.sub(lambda m: f"{m.group(1)}={MASK}", text)


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
    forms = {
        form
        for value in values
        if value
        for form in (value, quote(value, safe=""), quote_plus(value), html.escape(value))
    }
    for form in sorted(forms, key=len, reverse=True):  # longest first: no half-masked form
        text = text.replace(form, MASK)
    return redact_text(text)
