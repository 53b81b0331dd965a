"""Reading the PBX's CDR: the calls that ended in a time window, from any source.

Async I/O, apart from the pure mapping (``telephony/cdr.py``). Every source answers
``await source.read(since, until)`` with a ``CdrWindow``: the calls whose last row ended
in ``[since, until]``, each with all its rows (read back to ``lookback_s`` before
``since``, so a long call's first legs are there), and what it had to skip.

Failures are one of two kinds, so that the caller knows what to do:

- ``CdrUnavailable`` (``retry`` True): try again later: the database is down or
  refuses connections for now, the read timed out, ``Master.csv`` is not there (rotated
  away, Asterisk writes it again at the next call);
- ``CdrConfigError`` (``retry`` False): an admin must change something: wrong
  credentials, no such database, table or column, a file the bridge may not read.

A row that cannot be used (a half-written line, a missing field, text in another
encoding that still does not parse) is skipped and counted, never fatal. No message
carries a password.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection
from dataclasses import dataclass
from typing import Protocol

from telephony.cdr import CdrCall, CdrRow, SkipReason, backfill, calls_ended_in, group_calls
from telephony.cdr_settings import CdrSourceSettings
from telephony.records import CallRecord
from telephony.rules import CallRules

__all__ = [
    "Backfilled",
    "CdrConfigError",
    "CdrSource",
    "CdrSourceError",
    "CdrUnavailable",
    "CdrWindow",
    "RowsRead",
    "backfill_window",
    "open_source",
]


class CdrSourceError(Exception):
    """Reading the CDR failed. ``retry``: worth trying again later; else an admin must act.
    ``source`` is the source as ``CdrSourceSettings.describe`` shows it."""

    retry = False

    def __init__(self, source: str, message: str) -> None:
        super().__init__(f"CDR {source}: {message}")
        self.source = source
        self.reason = message


class CdrUnavailable(CdrSourceError):
    """Not readable now (server down, timeout, file not there yet): retry later."""

    retry = True


class CdrConfigError(CdrSourceError):
    """Not readable as configured (credentials, names, permissions): an admin must fix it."""

    retry = False


@dataclass(frozen=True, slots=True)
class RowsRead:
    """What a source read for one window: the usable rows and what it skipped."""

    rows: list[CdrRow]
    bad_rows: int = 0
    bad_reason: str = ""  # why the first skipped row was refused
    bytes_read: int = 0  # Master.csv only: how much of the file was read


@dataclass(frozen=True, slots=True)
class CdrWindow:
    """The calls that ended in ``[since, until]``, and the read's figures."""

    since: float
    until: float
    calls: list[CdrCall]
    rows: int  # usable rows read (back to lookback_s before since)
    bad_rows: int
    bad_reason: str
    bytes_read: int


class CdrSource(Protocol):
    settings: CdrSourceSettings

    async def read(self, since: float, until: float) -> CdrWindow: ...


class SourceBase:
    """The part every source shares: the time limit, the grouping, the window."""

    def __init__(self, settings: CdrSourceSettings) -> None:
        self.settings = settings
        self.name = settings.describe()

    async def read(self, since: float, until: float) -> CdrWindow:
        s = self.settings
        try:
            got = await asyncio.wait_for(
                self.rows_between(since - s.lookback_s, until), timeout=s.timeout_s or None
            )
        except TimeoutError:
            raise CdrUnavailable(self.name, f"no answer within {s.timeout_s:g} s") from None
        calls = calls_ended_in(group_calls(got.rows), since, until)
        return CdrWindow(
            since, until, calls, len(got.rows), got.bad_rows, got.bad_reason, got.bytes_read
        )

    async def rows_between(self, lo: float, hi: float) -> RowsRead:
        """Every row that began in ``[lo, hi]`` (a source may give more)."""
        raise NotImplementedError

    def masked(self, text: str) -> str:
        """``text`` (a driver's message) with the password masked, should it be there."""
        password = self.settings.credentials()[1]
        return text.replace(password, "***") if password else text


def open_source(settings: CdrSourceSettings) -> CdrSource | None:
    """The source ``settings`` name (None for kind "none"). Opens nothing yet: each
    ``read`` connects or opens the file, so a source down at start costs nothing."""
    if settings.kind == "csv":
        from telephony.cdr_csv import CsvSource

        return CsvSource(settings)
    if settings.kind == "mysql":
        from telephony.cdr_sql import MysqlSource

        return MysqlSource(settings)
    if settings.kind == "postgres":
        from telephony.cdr_sql import PostgresSource

        return PostgresSource(settings)
    return None


@dataclass(frozen=True, slots=True)
class Backfilled:
    """What one backfill read found: the records to submit, and what it left out."""

    records: list[CallRecord]
    skipped: dict[SkipReason, int]
    window: CdrWindow


async def backfill_window(
    source: CdrSource,
    rules: CallRules,
    since: float,
    until: float,
    *,
    pbx: str = "default",
    skip: Collection[str] = (),
) -> Backfilled:
    """The records of the calls that ended in ``[since, until]`` and are not in ``skip``
    (the tracker's ``live_ids``: calls still up, whose CDR is not complete). Submit them
    as any finished call: the job id dedupes them against the live path.
    CdrSourceError: the source could not be read (``retry`` says whether to try again)."""
    window = await source.read(since, until)
    records, skipped = backfill(window.calls, rules, pbx=pbx, skip=skip)
    return Backfilled(records, skipped, window)
