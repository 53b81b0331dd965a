"""Asterisk's ``Master.csv`` (``cdr_csv``) as a CDR source: read from the end, not whole.

What ``cdr_csv`` writes (``cdr/cdr_csv.c``, Asterisk 12 to 22): one line per CDR row,
appended as the call's CDR is dispatched (at its end), no header, text fields quoted
(``"`` doubled inside), numbers bare, an empty time as an empty field. The columns:

    accountcode, src, dst, dcontext, clid, channel, dstchannel, lastapp, lastdata,
    start, answer, end, duration, billsec, disposition, amaflags
    [, uniqueid]                          with loguniqueid=yes
    [, userfield]                         with loguserfield=yes
    [, peeraccount, linkedid, sequence]   with newcdrcolumns=yes

Times are ``YYYY-MM-DD HH:MM:SS``, whole seconds, in the PBX's local time, or UTC with
``usegmtime=yes`` (then set ``timezone = "UTC"`` for the source). What each option gives:

- ``loguniqueid=yes`` is needed: without it a row has no id, so the bridge cannot tell a
  call it already delivered from one it missed, and backfills nothing (such rows are
  counted as skipped, "no id"). With it, rows are grouped into calls by ``uniqueid`` and
  by the channels they share (see ``telephony/cdr.py``); the call id is the oldest
  ``uniqueid``, which is the Linkedid for every call whose first channel has a row.
- ``newcdrcolumns=yes`` adds ``linkedid``: grouping and ids then come straight from it.
  Recommended.
- ``loguserfield`` and ``accountlogs`` change nothing for the bridge (the column is
  told apart from ``uniqueid`` by its content when only one of the two is logged).
- A row without any of them still gives the call's numbers, direction, disposition and
  times (to the second), but no id to deliver it under.

Which columns a line has is taken from a header line when the file starts with one
(``cdr_custom`` with a header written by hand; names as in ``cdr.conf`` or the AMI
``Cdr`` event), else from the count of fields as above. The file can be large: it is
read backwards in blocks from its end, only as far as the rows of calls that may still
matter (``2 x lookback_s`` before the window: a row is written when its call ends, and
rows of one call can be written up to a call's length apart). A last line without its
newline is being appended: it is left for the next read. Each line is decoded as UTF-8,
else as ``fallback_encoding``; a line that still does not parse is skipped and counted.
"""

from __future__ import annotations

import asyncio
import csv
import os
import re
from datetime import tzinfo
from typing import BinaryIO

from telephony.cdr import CdrRow, CdrRowError, make_row
from telephony.cdr_sources import CdrConfigError, CdrUnavailable, RowsRead, SourceBase

BASE_COLUMNS = (
    "accountcode",
    "src",
    "dst",
    "dcontext",
    "clid",
    "channel",
    "dstchannel",
    "lastapp",
    "lastdata",
    "start",
    "answer",
    "end",
    "duration",
    "billsec",
    "disposition",
    "amaflags",
)
NEW_COLUMNS = ("peeraccount", "linkedid", "sequence")
BLOCK = 1 << 16
# [systemname-]epoch.sequence
_UNIQUEID = re.compile(r"^(?:[\w.-]+-)?[0-9]{9,}\.[0-9]+$", re.ASCII)
_HEADER_HINTS = frozenset({"channel", "start", "calldate", "starttime"})


def columns_for(fields: list[str]) -> tuple[str, ...] | None:
    """The columns of a header-less line, by its field count (None: not cdr_csv's)."""
    extra = len(fields) - len(BASE_COLUMNS)
    one = ("uniqueid",) if extra in (1, 4) and _UNIQUEID.match(fields[16]) else ("userfield",)
    layouts = {
        0: (),
        1: one,
        2: ("uniqueid", "userfield"),
        3: NEW_COLUMNS,
        4: one + NEW_COLUMNS,
        5: ("uniqueid", "userfield", *NEW_COLUMNS),
    }
    more = layouts.get(extra)
    return None if more is None else BASE_COLUMNS + more


def _header(line: bytes) -> tuple[str, ...] | None:
    """The column names of a header line, or None when the line is a row."""
    try:
        fields = next(csv.reader([line.decode("utf-8").strip("\r\n")]))
    except (UnicodeDecodeError, csv.Error, StopIteration):
        return None
    names = tuple(f.strip().lower() for f in fields)
    return names if len(_HEADER_HINTS.intersection(names)) >= 2 else None


class TailReader:
    """Parses ``Master.csv`` lines from the end of the file backwards."""

    def __init__(self, tz: tzinfo | None, fallback_encoding: str) -> None:
        self.tz = tz
        self.fallback = fallback_encoding

    def parse(self, line: bytes, header: tuple[str, ...] | None) -> CdrRow:
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            text = line.decode(self.fallback, errors="replace")
        try:
            fields = next(csv.reader([text.rstrip("\r")], strict=True))
        except (csv.Error, StopIteration) as err:
            raise CdrRowError(f"not a CSV line ({err})") from None
        columns = header or columns_for(fields)
        if columns is None or len(columns) != len(fields):
            raise CdrRowError(f"{len(fields)} fields: not a cdr_csv line")
        return make_row(dict(zip(columns, fields, strict=True)), self.tz, self.fallback)

    def read(self, path: str, stop_before: float) -> RowsRead:
        """The rows from the end of ``path`` back to the first one that ended before
        ``stop_before``, in file order. OSError: the file cannot be read."""
        rows: list[CdrRow] = []
        bad, reason = 0, ""
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(min(size, BLOCK))
            line, newline, _ = head.partition(b"\n")
            header = _header(line) if newline else None
            floor = len(line) + 1 if header else 0
            pos, read = _end_of_last_line(f, size, floor)
            read += len(head)
            carry = b""
            while pos > floor:
                n = min(BLOCK, pos - floor)
                pos -= n
                f.seek(pos)
                lines = (f.read(n) + carry).split(b"\n")
                read += n
                # the first piece may begin before this block: keep it for the next one
                carry = lines.pop(0) if pos > floor else b""
                for raw in reversed(lines):
                    if not raw.strip():
                        continue
                    try:
                        row = self.parse(raw, header)
                    except CdrRowError as err:
                        bad += 1
                        reason = reason or str(err)
                        continue
                    if row.end < stop_before:
                        rows.reverse()
                        return RowsRead(rows, bad, reason, read)
                    rows.append(row)
        rows.reverse()
        return RowsRead(rows, bad, reason, read)


def _end_of_last_line(f: BinaryIO, size: int, floor: int) -> tuple[int, int]:
    """Where the last complete line ends (after its newline): what follows is a line
    Asterisk is still appending. Also how many bytes it took to find out."""
    pos, read = size, 0
    while pos > floor:
        n = min(BLOCK, pos - floor)
        pos -= n
        f.seek(pos)
        data = f.read(n)
        read += n
        i = data.rfind(b"\n")
        if i >= 0:
            return pos + i + 1, read
    return floor, read


class CsvSource(SourceBase):
    """``Master.csv`` at ``settings.path``."""

    async def rows_between(self, lo: float, hi: float) -> RowsRead:
        s = self.settings
        reader = TailReader(s.tz(), s.fallback_encoding)
        # rows of one call are written up to a call's length apart: look that much further
        stop_before = lo - s.lookback_s
        try:
            return await asyncio.to_thread(reader.read, s.path, stop_before)
        except FileNotFoundError:
            raise CdrUnavailable(
                self.name,
                "file not found (is cdr_csv loaded? Asterisk creates it at the "
                "first call it logs, and again after a log rotation)",
            ) from None
        except IsADirectoryError:
            raise CdrConfigError(self.name, "is a directory, not Master.csv") from None
        except PermissionError:
            raise CdrConfigError(
                self.name,
                "permission denied (let the bridge's user read it: e.g. add it "
                "to the asterisk group)",
            ) from None
        except OSError as err:
            raise CdrUnavailable(self.name, f"cannot read: {err.strerror or err}") from None
