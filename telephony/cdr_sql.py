"""CDR tables in MySQL/MariaDB and PostgreSQL as CDR sources.

- MySQL/MariaDB: FreePBX's ``asteriskcdrdb.cdr`` (written by ``cdr_adaptive_odbc``,
  older installs ``cdr_mysql``): ``calldate`` (the row's start), ``duration``,
  ``billsec``, no ``answer``/``end`` columns, and FreePBX's own ``did``,
  ``recordingfile``, ``cnum``...; ``linkedid`` since FreePBX 12 (Asterisk 12+). Driver:
  asyncmy.
- PostgreSQL: ``cdr_pgsql`` writes every column of its table that it knows a CDR value
  for: the schema Asterisk ships (``contrib/realtime/postgresql/postgresql_cdr.sql``)
  has ``start``, ``answer``, ``"end"`` (TIMESTAMP WITHOUT TIME ZONE, the PBX's local
  time unless ``cdr_pgsql.conf`` says ``timezone=UTC``), ``linkedid``, ``uniqueid``;
  older tables have ``calldate`` (often TIMESTAMP WITH TIME ZONE). A column named like a
  CDR variable (``did``, set by ``Set(CDR(did)=...)``) is filled too. Driver: asyncpg.

The columns are looked up first (``information_schema``), so either layout works; the
table must have ``uniqueid`` (else nothing can be matched with the live path) and a start
time, ``channel``, ``dstchannel``, ``disposition``, ``billsec`` and ``end`` or
``duration``. Text columns are read as raw bytes and decoded per row (UTF-8, else the
fallback encoding), so a row written in another encoding never fails the whole read.
One connection per read: backfill runs at start and after a gap, not per call.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from telephony.cdr import CdrRow, CdrRowError, make_row
from telephony.cdr_sources import (
    CdrConfigError,
    CdrSourceError,
    CdrUnavailable,
    RowsRead,
    SourceBase,
)

TEXT_COLUMNS = (
    "channel",
    "dstchannel",
    "src",
    "dst",
    "dcontext",
    "lastapp",
    "lastdata",
    "disposition",
    "uniqueid",
    "linkedid",
    "did",
)
REQUIRED = ("uniqueid", "channel", "dstchannel", "disposition", "billsec")
WANTED = (*TEXT_COLUMNS, "end", "duration", "billsec")


@dataclass(frozen=True, slots=True)
class Plan:
    """Which of the table's columns are read, and how its start time is typed."""

    start: str  # "calldate" or "start"
    start_type: str  # information_schema DATA_TYPE, lower case
    columns: dict[str, str]  # column -> DATA_TYPE, of those read besides the start


def plan_for(table: str, columns: Mapping[str, str]) -> Plan:
    """What to read from a table with these columns (name -> type). CdrConfigError-ready
    ValueError when it lacks what the mapping needs."""
    if not columns:
        raise ValueError(f"table {table} not found")
    start = next((c for c in ("calldate", "start") if c in columns), None)
    missing = [c for c in REQUIRED if c not in columns]
    if start is None:
        missing.insert(0, "calldate (or start)")
    if "end" not in columns and "duration" not in columns:
        missing.append("end (or duration)")
    if missing:
        why = " (it matches CDR calls with live ones)" if "uniqueid" in missing else ""
        raise ValueError(f"table {table} has no column {', '.join(missing)}{why}")
    assert start is not None
    return Plan(start, columns[start], {c: columns[c] for c in WANTED if c in columns})


def _select(
    source: str, table: str, found: Mapping[str, str], column: Callable[[str, bool], str]
) -> tuple[Plan, list[str], str]:
    """The plan for the table's columns (else a CdrConfigError naming the source), the
    names of the columns read, and their SELECT list, each written by ``column(name,
    is_text)`` (text columns are read as bytes: the row decoder knows the encodings)."""
    try:
        plan = plan_for(table, found)
    except ValueError as err:
        raise CdrConfigError(source, str(err)) from None
    typed = [(plan.start, plan.start_type), *plan.columns.items()]
    return plan, [c for c, _ in typed], ", ".join(column(c, _is_text(t)) for c, t in typed)


def _is_text(sql_type: str) -> bool:
    return any(t in sql_type for t in ("char", "text", "enum"))


def _is_number(sql_type: str) -> bool:
    return any(t in sql_type for t in ("int", "numeric", "decimal", "double", "float", "real"))


def _bound(ts: float, sql_type: str, naive_tz: tzinfo | None) -> Any:
    """A Unix time as the start column compares: epoch number, zoned or naive datetime,
    or the ``YYYY-MM-DD HH:MM:SS`` text cdr_pgsql writes into a text column."""
    if _is_number(sql_type):
        return ts
    if "with time zone" in sql_type:
        return datetime.fromtimestamp(ts, UTC)
    local = datetime.fromtimestamp(ts, naive_tz) if naive_tz else datetime.fromtimestamp(ts)
    naive = local.replace(tzinfo=None)
    return naive.strftime("%Y-%m-%d %H:%M:%S") if _is_text(sql_type) else naive


def _rows(
    records: Iterable[Sequence[Any]],
    names: Sequence[str],
    tz: tzinfo | None,
    fallback: str,
    utc_columns: frozenset[str] = frozenset(),
) -> RowsRead:
    rows: list[CdrRow] = []
    bad, reason = 0, ""
    for record in records:
        values = dict(zip(names, record, strict=True))
        for name in utc_columns:  # MySQL TIMESTAMP: read in the session's zone, UTC
            v = values.get(name)
            if isinstance(v, datetime) and v.tzinfo is None:
                values[name] = v.replace(tzinfo=UTC)
        try:
            rows.append(make_row(values, tz, fallback))
        except CdrRowError as err:
            bad += 1
            reason = reason or str(err)
    return RowsRead(rows, bad, reason)


# --- MySQL / MariaDB ---------------------------------------------------------------------

# Server error codes an admin must act on; anything else is worth retrying.
_MYSQL_CONFIG = {
    1044: "access denied to the database",
    1045: "access denied (user or password)",
    1049: "no such database",
    1142: "no SELECT permission on the table",
    1143: "no SELECT permission on a column",
    1146: "no such table",
    1054: "no such column",
    1698: "access denied (user or password)",
}


class MysqlSource(SourceBase):
    """A CDR table on MySQL/MariaDB (FreePBX: ``mysql://127.0.0.1:3306/asteriskcdrdb``)."""

    def _connect_args(self) -> dict[str, Any]:
        s = self.settings
        parts = urlsplit(s.effective_dsn)
        params = dict(parse_qsl(parts.query))
        user, password = s.credentials()
        args: dict[str, Any] = {
            "host": parts.hostname or "127.0.0.1",
            "port": parts.port or 3306,
            "user": user or None,
            "password": password,
            "db": parts.path.strip("/"),
            "connect_timeout": s.timeout_s or 10,
            "charset": "utf8mb4",
            "autocommit": True,
        }
        if params.get("unix_socket"):
            args["unix_socket"] = params["unix_socket"]
        return args

    def _error(self, err: BaseException) -> CdrSourceError:
        code = err.args[0] if err.args and isinstance(err.args[0], int) else None
        text = self.masked(str(err.args[1] if len(err.args) > 1 else err))
        if code in _MYSQL_CONFIG:
            return CdrConfigError(self.name, f"{_MYSQL_CONFIG[code]}: {text}")
        if isinstance(err, UnicodeError):
            return CdrUnavailable(self.name, f"undecodable answer: {text}")
        return CdrUnavailable(self.name, f"cannot read ({code or type(err).__name__}): {text}")

    async def rows_between(self, lo: float, hi: float) -> RowsRead:
        import asyncmy  # the driver only when a MySQL source is configured

        s = self.settings
        schema, _, table = s.table.rpartition(".")
        try:
            conn = await asyncmy.connect(**self._connect_args())
        except Exception as err:
            raise self._error(err) from None
        try:
            async with conn.cursor() as cur:
                await cur.execute("SET time_zone = '+00:00'")
                await cur.execute(
                    "SELECT LOWER(COLUMN_NAME), LOWER(DATA_TYPE) FROM information_schema.COLUMNS"
                    " WHERE TABLE_SCHEMA = COALESCE(%s, DATABASE()) AND TABLE_NAME = %s",
                    (schema or None, table),
                )
                found = {str(n): str(t) for n, t in await cur.fetchall()}
                plan, names, select = _select(
                    self.name,
                    s.table,
                    found,
                    lambda c, text: f"CAST(`{c}` AS BINARY)" if text else f"`{c}`",
                )
                # TIMESTAMP columns come in the session's zone (UTC, set above);
                # DATETIME ones are the PBX's local time, as written
                naive_tz = UTC if plan.start_type == "timestamp" else s.tz()
                where = f"`{plan.start}` >= %s AND `{plan.start}` <= %s"
                await cur.execute(
                    f"SELECT {select} FROM {_mysql_name(s.table)} WHERE {where}"
                    f" ORDER BY `{plan.start}`",
                    (_bound(lo, plan.start_type, naive_tz), _bound(hi, plan.start_type, naive_tz)),
                )
                records = await cur.fetchall()
        except CdrSourceError:
            raise
        except Exception as err:
            raise self._error(err) from None
        finally:
            conn.close()
        utc = frozenset(
            c for c, t in [(plan.start, plan.start_type), *plan.columns.items()] if t == "timestamp"
        )
        return _rows(records, names, s.tz(), s.fallback_encoding, utc)


def _mysql_name(table: str) -> str:
    return ".".join(f"`{part}`" for part in table.split("."))


# --- PostgreSQL --------------------------------------------------------------------------

# SQLSTATE classes an admin must act on: 28 credentials, 3D no such database,
# 42 no such table or column, no permission; 0A/22 unusable column types.
_PG_CONFIG_CLASSES = ("28", "3D", "42", "0A", "22")


class PostgresSource(SourceBase):
    """``cdr_pgsql``'s table (``postgresql://127.0.0.1:5432/asterisk``)."""

    def _error(self, err: BaseException) -> CdrSourceError:
        state = str(getattr(err, "sqlstate", "") or "")
        text = self.masked(str(err) or type(err).__name__)
        if state[:2] in _PG_CONFIG_CLASSES:
            return CdrConfigError(self.name, f"{text} (SQLSTATE {state})")
        if type(err).__name__ in ("ClientConfigurationError", "InterfaceError"):
            return CdrConfigError(self.name, text)
        detail = f"SQLSTATE {state}" if state else type(err).__name__
        return CdrUnavailable(self.name, f"cannot read ({detail}): {text}")

    async def rows_between(self, lo: float, hi: float) -> RowsRead:
        import asyncpg  # the driver only when a PostgreSQL source is configured

        s = self.settings
        schema, _, table = s.table.rpartition(".")
        user, password = s.credentials()
        try:
            conn = await asyncpg.connect(
                dsn=s.effective_dsn,
                user=user or None,
                password=password or None,
                timeout=s.timeout_s or 60,
                command_timeout=s.timeout_s or None,
            )
        except Exception as err:
            raise self._error(err) from None
        try:
            found = {
                str(r[0]): str(r[1])
                for r in await conn.fetch(
                    "SELECT lower(column_name), lower(data_type) FROM information_schema.columns"
                    " WHERE table_schema = coalesce($1, current_schema()) AND table_name = $2",
                    schema or None,
                    table,
                )
            }
            # convert_to(.., 'SQL_ASCII') hands over the stored bytes unchecked, so a
            # SQL_ASCII database holding another encoding does not fail the whole query
            plan, names, select = _select(
                self.name,
                s.table,
                found,
                lambda c, text: (
                    f"convert_to({_pg_ident(c)}, 'SQL_ASCII')" if text else _pg_ident(c)
                ),
            )
            start = _pg_ident(plan.start)
            records = await conn.fetch(
                f"SELECT {select} FROM {_pg_name(s.table)} WHERE {start} >= $1 AND {start} <= $2"
                f" ORDER BY {start}",
                _bound(lo, plan.start_type, s.tz()),
                _bound(hi, plan.start_type, s.tz()),
            )
        except CdrSourceError:
            raise
        except Exception as err:
            raise self._error(err) from None
        finally:
            await conn.close(timeout=2)
        return _rows(records, names, s.tz(), s.fallback_encoding)


def _pg_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _pg_name(table: str) -> str:
    return ".".join(_pg_ident(part) for part in table.split("."))
