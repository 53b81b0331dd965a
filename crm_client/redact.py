"""Keep secrets out of logs: TelefUM puts credentials in query strings."""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

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
