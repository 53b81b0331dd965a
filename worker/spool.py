"""The listener's local, append-only spool of finished calls (JSON Lines, fsync'd).

Every finished call is written here first and handed to Redis from here, in order; so while
Redis is down calls pile up on disk, and a listener restarted meanwhile finds them again.

Layout of the directory::

    000000000001.jsonl    segments, appended in order; one JSON object per line
    000000000002.jsonl    (the highest-numbered one is written to)
    cursor.json           {"segment": N, "offset": bytes}: what has been handed over
    rejected.jsonl        lines that could not be read, kept for a human (never dropped)

Handing over is at-least-once: the cursor is saved after Redis took a batch, so a crash in
between hands the batch over again after restart; the enqueue is idempotent (job id and
ledger), so that costs nothing. A line torn by a crash mid-write (no newline at the end of
the last segment) is set aside in ``rejected.jsonl`` at open. Segments that are fully
handed over are deleted.

The directory is 0700 and its files 0600 (``private_files``): call records are nobody
else's business, and a local user must not slip a forged call in.

Not thread-safe on purpose: the handoff does all spool I/O in one worker thread.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .private_files import open_append, private_dir, write_private

log = logging.getLogger("worker.spool")

SEGMENT_SUFFIX = ".jsonl"
CURSOR = "cursor.json"
REJECTED = "rejected.jsonl"


@dataclass(frozen=True, order=True)
class Position:
    segment: int
    offset: int


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Spool:
    def __init__(self, directory: str | Path, *, rotate_bytes: int = 1 << 20) -> None:
        self.dir = Path(directory)
        self.rotate_bytes = rotate_bytes
        self.rejected = 0  # lines set aside since open
        private_dir(self.dir)
        self._segments = self._list_segments()
        if not self._segments:
            self._segments = [1]
            open_append(self._path(1)).close()
            _fsync_dir(self.dir)
        self.cursor = self._load_cursor()
        self._recover_torn_tail()
        self._drop_consumed_segments()
        self._writer = open_append(self._path(self.active))  # kept open
        self.pending = self._count_pending()

    # --- files -----------------------------------------------------------------------------

    def _path(self, seg: int) -> Path:
        return self.dir / f"{seg:012d}{SEGMENT_SUFFIX}"

    def _list_segments(self) -> list[int]:
        out = []
        for p in self.dir.glob(f"*{SEGMENT_SUFFIX}"):
            if p.stem.isascii() and p.stem.isdigit():  # int() refuses "²", isdigit() not
                out.append(int(p.stem))
        return sorted(out)

    @property
    def active(self) -> int:
        return self._segments[-1]

    def _load_cursor(self) -> Position:
        first = Position(self._segments[0], 0)
        try:
            d = json.loads((self.dir / CURSOR).read_text())
            pos = Position(int(d["segment"]), int(d["offset"]))
        except FileNotFoundError:
            return first
        except (ValueError, KeyError, TypeError, OSError):
            log.warning("spool cursor unreadable: handing the whole spool over again")
            return first
        if pos.segment not in self._segments:
            # its segment was consumed and deleted: resume at the next one
            later = [s for s in self._segments if s > pos.segment]
            return Position(later[0], 0) if later else Position(self.active, 0)
        return pos

    def _save_cursor(self) -> None:
        cursor = {"segment": self.cursor.segment, "offset": self.cursor.offset}
        write_private(self.dir / CURSOR, json.dumps(cursor).encode())

    def _recover_torn_tail(self) -> None:
        path = self._path(self.active)
        data = path.read_bytes()
        if not data or data.endswith(b"\n"):
            return
        cut = data.rfind(b"\n") + 1
        self.reject_line(data[cut:], "torn line at the end of the spool (a crash mid-write)")
        with open(path, "r+b") as f:
            f.truncate(cut)
            f.flush()
            os.fsync(f.fileno())

    def reject_line(self, line: bytes, why: str) -> None:
        """Keep an unusable line in ``rejected.jsonl`` (fsync'd) for a human to look at."""
        log.error("spool: set aside an unreadable line (%s) in %s", why, self.dir / REJECTED)
        entry = {"why": why, "line": line.decode("utf-8", errors="replace")}
        with open_append(self.dir / REJECTED) as f:
            f.write(json.dumps(entry, ensure_ascii=False).encode() + b"\n")
            f.flush()
            os.fsync(f.fileno())
        self.rejected += 1

    def _drop_consumed_segments(self) -> None:
        for seg in [s for s in self._segments if s < self.cursor.segment]:
            self._path(seg).unlink(missing_ok=True)
            self._segments.remove(seg)

    def _count_pending(self) -> int:
        n = 0
        for seg in self._segments:
            if seg < self.cursor.segment:
                continue
            with open(self._path(seg), "rb") as f:
                if seg == self.cursor.segment:
                    f.seek(self.cursor.offset)
                n += sum(1 for line in f if line.strip())
        return n

    # --- the API ---------------------------------------------------------------------------

    def append(self, items: list[dict[str, Any]]) -> None:
        """Write items as lines and fsync: when this returns, they survive a crash."""
        if not items:
            return
        data = b"".join(
            json.dumps(it, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"
            for it in items
        )
        self._writer.write(data)
        self._writer.flush()
        os.fsync(self._writer.fileno())
        self.pending += len(items)

    def read(self, max_items: int = 100) -> tuple[list[dict[str, Any]], Position]:
        """The next items not yet handed over, and the position after them (for ``commit``).

        Unreadable lines are set aside (``rejected.jsonl``) and skipped.
        """
        items: list[dict[str, Any]] = []
        pos = self.cursor
        while len(items) < max_items:
            path = self._path(pos.segment)
            with open(path, "rb") as f:
                f.seek(pos.offset)
                while len(items) < max_items:
                    line = f.readline()
                    if not line:
                        break
                    pos = Position(pos.segment, pos.offset + len(line))
                    if not line.strip():
                        continue
                    try:
                        item = json.loads(line)
                        if not isinstance(item, dict):
                            raise ValueError("not a JSON object")
                    except ValueError as err:
                        self.reject_line(line.rstrip(b"\n"), f"not valid JSON: {err}")
                        self.pending -= 1
                        continue
                    items.append(item)
            later = [s for s in self._segments if s > pos.segment]
            if len(items) >= max_items or not later:
                break
            pos = Position(later[0], 0)
        return items, pos

    def commit(self, pos: Position, count: int) -> None:
        """``count`` items up to ``pos`` are in Redis: move the cursor, tidy segments."""
        self.cursor = pos
        self.pending = max(0, self.pending - count)
        self._drop_consumed_segments()
        at_end = pos.segment == self.active and pos.offset >= self._writer.tell()
        if at_end and pos.offset >= self.rotate_bytes:
            self._rotate()
        self._save_cursor()

    def _rotate(self) -> None:
        """Start a new segment once the active one is large and fully handed over."""
        old = self.active
        self._writer.close()
        self._segments.append(old + 1)
        self._writer = open_append(self._path(old + 1))
        _fsync_dir(self.dir)
        self.cursor = Position(old + 1, 0)
        self._save_cursor()
        self._path(old).unlink(missing_ok=True)
        self._segments.remove(old)

    def close(self) -> None:
        self._writer.close()
