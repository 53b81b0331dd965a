"""Where the bridge reads the PBX's call detail records: ``[backfill]``, and per PBX.

A plain frozen dataclass, like ``CallRules``: the service shell maps ``settings.toml``
onto it and ``telephony/cdr_sources.py`` opens the source it names. The credentials are
fields of their own, so that what is logged about a source (``describe()``) is built
from the parts that are not secret; a password written into ``dsn`` anyway is masked
(``redact_dsn``) wherever the DSN is shown.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass, field
from datetime import tzinfo
from typing import Literal
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

SourceKind = Literal["none", "csv", "mysql", "postgres"]
KINDS: tuple[SourceKind, ...] = ("none", "csv", "mysql", "postgres")

DEFAULT_CSV = "/var/log/asterisk/cdr-csv/Master.csv"
DEFAULT_DSN = {
    "mysql": "mysql://127.0.0.1:3306/asteriskcdrdb",  # FreePBX's CDR database
    "postgres": "postgresql://127.0.0.1:5432/asterisk",  # cdr_pgsql.conf's default dbname
}
_SCHEMES = {"mysql": ("mysql", "mariadb"), "postgres": ("postgresql", "postgres")}
_TABLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)?$")
_SECRET_PARAMS = frozenset({"password", "passwd", "pass", "secret", "token", "sslpassword"})
MASK = "***"


def redact_dsn(dsn: str) -> str:
    """``dsn`` with the password of its user part and any password-like parameter
    masked: ``mysql://cdr:***@db/asteriskcdrdb?password=***``. Unparseable text is
    shown as ``***``: it may be nothing but a secret."""
    try:
        parts = urlsplit(dsn)
        _ = parts.port  # raises on a malformed port
    except ValueError:
        return MASK
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostpart = netloc.rpartition("@")
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:{MASK}@{hostpart}" if ":" in userinfo else f"{user}@{hostpart}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode(
            [(k, MASK if k.lower() in _SECRET_PARAMS else v) for k, v in pairs], safe="*/"
        )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def dsn_secrets(dsn: str) -> list[str]:
    """The secrets :func:`redact_dsn` masks by shape, as values (as written and decoded),
    for the registry that masks them wherever text is shown (``crm_client.redact``): a
    driver's error may quote the password without its ``password=``."""
    try:
        parts = urlsplit(dsn)
    except ValueError:
        return [dsn] if dsn else []  # unparseable: it may be nothing but a secret
    out = []
    if parts.password:
        out += [parts.password, unquote(parts.password)]
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    out += [v for k, v in pairs if k.lower() in _SECRET_PARAMS]
    return [v for v in out if v]


@dataclass(frozen=True, slots=True)
class CdrSourceSettings:
    """A CDR source. ``kind``: "none" (no backfill), "csv" (Asterisk's ``Master.csv``,
    ``path``), "mysql" (FreePBX's ``asteriskcdrdb.cdr`` or any ``cdr_adaptive_odbc``
    table on MySQL/MariaDB) or "postgres" (``cdr_pgsql``'s table); the databases at
    ``dsn`` (no password in it: ``user`` and ``password`` are their own fields)."""

    kind: SourceKind = "none"
    path: str = DEFAULT_CSV
    dsn: str = ""  # empty: DEFAULT_DSN of the kind; "?unix_socket=/run/mysqld/mysqld.sock"
    user: str = ""  # empty: the DSN's user
    password: str = field(default="", repr=False)  # empty: the DSN's password, if any
    table: str = "cdr"  # "schema.table" for PostgreSQL
    # The zone of CDR times written without one (Master.csv, DATETIME and TIMESTAMP
    # WITHOUT TIME ZONE columns): "" this host's zone; "UTC" when cdr.conf has
    # usegmtime=yes (csv, adaptive_odbc) or cdr_pgsql.conf timezone=UTC.
    timezone: str = ""
    margin_s: float = 60.0  # read the CDR this much before and after a gap
    lookback_s: float = 4 * 3600.0  # the longest call a backfill finds whole
    timeout_s: float = 10.0  # for one read of the source
    fallback_encoding: str = "cp1251"  # for text that is not UTF-8

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind: expected one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.kind == "csv" and not self.path:
            raise ValueError("path: the Master.csv to read is needed for kind csv")
        if self.kind in _SCHEMES:
            parts = urlsplit(self.effective_dsn)
            if parts.scheme not in _SCHEMES[self.kind]:
                want = " or ".join(f"{s}://" for s in _SCHEMES[self.kind])
                raise ValueError(f"dsn: expected {want}..., got {redact_dsn(self.dsn)!r}")
            try:
                _ = parts.port
            except ValueError:
                raise ValueError(f"dsn: bad port in {redact_dsn(self.dsn)!r}") from None
            if not parts.path.strip("/"):
                raise ValueError(f"dsn: no database name in {redact_dsn(self.dsn)!r}")
            if not _TABLE.match(self.table):
                raise ValueError(f"table: not a table name: {self.table!r}")
        for name in ("margin_s", "lookback_s", "timeout_s"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name}: must be 0 or more")
        self.tz()  # a zone name that does not exist is an error now, not at the first gap
        try:
            codecs.lookup(self.fallback_encoding)
        except LookupError:
            raise ValueError(
                f"fallback_encoding: unknown encoding {self.fallback_encoding!r}"
            ) from None

    @property
    def enabled(self) -> bool:
        return self.kind != "none"

    @property
    def effective_dsn(self) -> str:
        return self.dsn or DEFAULT_DSN.get(self.kind, "")

    def tz(self) -> tzinfo | None:
        """The zone of times written without one; None: this host's."""
        if not self.timezone:
            return None
        try:
            return ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"timezone: unknown time zone {self.timezone!r}") from None

    def credentials(self) -> tuple[str, str]:
        """The user and password to log in with: the fields, else the DSN's."""
        parts = urlsplit(self.effective_dsn)
        return self.user or (parts.username or ""), self.password or (parts.password or "")

    def describe(self) -> str:
        """The source for logs and /health, with no secret in it."""
        if self.kind == "csv":
            return f"csv {self.path}"
        if self.kind in _SCHEMES:
            parts = urlsplit(self.effective_dsn)
            user = self.credentials()[0]
            where = f"{user}@" if user else ""
            port = f":{parts.port}" if parts.port else ""
            query = f"?{urlsplit(redact_dsn(self.effective_dsn)).query}" if parts.query else ""
            host = parts.hostname or ""
            return f"{self.kind} {where}{host}{port}{parts.path}{query} table {self.table}"
        return "none"
