"""A progress bar on stderr for long work (``telefum demo``: calls reaching the CRM),
without a dependency.

On a terminal it redraws one line (``\\r``) at most ten times a second; when stderr is a
file or a pipe (logs, CI) it writes a plain line every ``log_every_s`` seconds and one at
the end, so logs stay readable. stdout is left alone: it carries the command's output.

    with Progress(total=len(ids), label="requeue") as bar:
        for job_id in ids:
            ...
            bar.advance()

or as a callback: ``await dlq.requeue_all(redis, progress=Progress(label="requeue"))``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from types import TracebackType
from typing import IO


class Progress:
    def __init__(
        self,
        total: int | None = None,
        label: str = "",
        *,
        stream: IO[str] | None = None,
        width: int = 30,
        log_every_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        tty: bool | None = None,
    ) -> None:
        self.total = total
        self.label = label
        self.done = 0
        self.stream = stream if stream is not None else sys.stderr
        self.width = width
        self.log_every_s = log_every_s
        self._clock = clock
        self._tty = self.stream.isatty() if tty is None else tty
        self._started = clock()
        self._last_draw = -1e9
        self._closed = False

    def advance(self, n: int = 1) -> None:
        self.done += n
        now = self._clock()
        if now - self._last_draw >= (0.1 if self._tty else self.log_every_s):
            self._draw(now)

    def __call__(self, done: int, total: int | None = None) -> None:
        """Callback form, ``progress(done, total)``, as ``worker.dlq.requeue_all`` takes."""
        if total is not None:
            self.total = total
        self.advance(done - self.done)

    def line(self, now: float | None = None) -> str:
        """The progress as text: ``requeue [#####.....] 50% 500/1000 120/s ETA 4s``."""
        now = self._clock() if now is None else now
        elapsed = max(now - self._started, 1e-9)
        rate = self.done / elapsed
        parts = [self.label] if self.label else []
        if self.total:
            frac = min(1.0, self.done / self.total)
            filled = int(frac * self.width)
            parts.append("[" + "#" * filled + "." * (self.width - filled) + "]")
            parts.append(f"{frac * 100:3.0f}%")
            parts.append(f"{self.done}/{self.total}")
        else:
            parts.append(f"{self.done}")
        parts.append(f"{rate:,.0f}/s")
        if self.total and rate > 0 and self.done < self.total:
            parts.append(f"ETA {_duration((self.total - self.done) / rate)}")
        elif self._closed:
            parts.append(f"in {_duration(elapsed)}")
        return " ".join(parts)

    def _draw(self, now: float) -> None:
        self._last_draw = now
        if self._tty:
            self.stream.write("\r\x1b[K" + self.line(now))
        else:
            self.stream.write(self.line(now) + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        now = self._clock()
        if self._tty:
            self.stream.write("\r\x1b[K" + self.line(now) + "\n")
        else:
            self.stream.write(self.line(now) + "\n")
        self.stream.flush()

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _duration(seconds: float) -> str:
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"
