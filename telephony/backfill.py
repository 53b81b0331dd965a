"""Backfill: the calls the AMI event stream did not show end, read from the PBX's CDR.

AMI has no replay: a call that ends while the bridge restarts, crashes or is cut off from
the PBX is gone from the event stream, but Asterisk still writes its call detail record.
One :class:`Backfiller` per PBX runs beside its listener:

- **When it reads.** At the first session of a run, from when the previous run last heard
  the PBX (``last_seen``, kept in ``backfill.<pbx>.json`` beside the spool and updated every
  second while the link is up), or ``first_window_s`` back on the very first run; after
  every later session, the gap before it (``Session.gap``); both with ``margin_s`` either
  side. Each window is read at once and again ``settle_s`` later (Asterisk writes a call's
  CDR once the call is over, a database backend a moment later), and with ``cdr_batch_s``
  (``cdr.conf`` ``batch = yes``) once more after that. A window not read yet is kept in the
  state file, so a restart reads it too.
- **What it submits.** Each call in the window that the bridge did not see end (not live
  in the tracker, not finished by it in this run) becomes a record (``source: "cdr"``),
  submitted like a live one: the job id ``call:{pbx}:{call_id}`` and the worker's ledger
  deliver a call seen both ways once, whichever came first.
- **Calls the tracker saw in part.** A record flagged "gap" (ended or answered while the
  link was down) or "ring-unknown" (found answered after a restart) is held (:meth:`hold`)
  until its CDR is read, then submitted with the times the bridge could not see taken from
  the CDR (:func:`complete`). One the CDR does not have in time goes as it is, flagged.

A source that cannot be read now (``CdrUnavailable``) is retried with backoff up to
``retry_max_s``; one misconfigured (``CdrConfigError``) is logged once and retried at
``retry_max_s`` (a file's permissions may be fixed without a restart); either way held
calls are released after a bounded wait, never dropped, and ``status()`` (``/health``,
``/metrics``) names every gap not backfilled. Without a source (kind "none") gaps are
still counted, and reported as not backfilled.

Async I/O and a clock; the mapping is pure (``telephony/cdr.py``), the reading in
``telephony/cdr_sources.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field, replace
from pathlib import Path

from telephony.backoff import Backoff
from telephony.cdr_settings import CdrSourceSettings
from telephony.cdr_sources import CdrSource, CdrSourceError, backfill_window, open_source
from telephony.listener import Session
from telephony.records import GAP, RING_UNKNOWN, CallRecord, log_tags
from telephony.rules import CallRules
from telephony.supervise import Supervisor

__all__ = ["BackfillStatus", "Backfiller", "Gap", "complete"]

log = logging.getLogger(__name__)

RECONCILED = "reconciled"  # the tracker closed the call at a reconnect: its end is a bound
NO_SOURCE = "no backfill source ([backfill] kind is none)"
_MID = 0.5  # a CDR time is the start of its second: its middle is the best guess
_RECENT_MAX = 50_000  # call ids finished in this run, skipped in the CDR
_GAPS_KEPT = 20


def complete(live: CallRecord, cdr: CallRecord) -> CallRecord:
    """The bridge's record of a call it saw only in part, with what it could not see taken
    from the CDR: the end of a call that ended in a gap (``reconciled``), the answer of one
    answered in a gap or before a restart, the start of one found in progress (known to
    the second either way: the CDR's is the PBX's own). What the live stream saw stays
    (its exact start, the DID, the agent); the CDR fills what it lacks. The result says
    ``source: "cdr"`` and drops the flags of inexact times.

    CDR times are cut to the second (the true time is up to 1 s later); put beside the
    bridge's exact ones they are taken as the middle of their second, so that a talk time
    made of one of each is off by half a second at most, not by a whole one."""
    ended_in_gap = RECONCILED in live.flags
    answer_unknown = RING_UNKNOWN in live.flags or (GAP in live.flags and not ended_in_gap)
    answered = live.answered or cdr.answered
    started = cdr.started_at + _MID if "adopted" in live.flags else live.started_at
    ended = max(cdr.ended_at + _MID, live.ended_at) if ended_in_gap else live.ended_at
    answered_at: float | None = None
    if answered:
        if cdr.answered_at is not None and (answer_unknown or not live.answered):
            answered_at = cdr.answered_at + _MID
        else:
            answered_at = live.answered_at if live.answered_at is not None else cdr.answered_at
    started = min(started, ended)
    if answered_at is not None:
        answered_at = min(max(answered_at, started), ended)
    more_transfers = len(cdr.transfers) > len(live.transfers)
    return replace(
        live,
        answered=answered,
        started_at=started,
        answered_at=answered_at,
        ended_at=ended,
        disposition="answered"
        if answered
        else (cdr.disposition if ended_in_gap else live.disposition),
        external=live.external or cdr.external,
        did=live.did or cdr.did,
        extension=live.extension or cdr.extension,
        transfers=cdr.transfers if more_transfers else live.transfers,
        rang=live.rang or cdr.rang,
        final_extension=(cdr.final_extension if more_transfers else None)
        or live.final_extension
        or cdr.final_extension,
        flags=tuple(f for f in live.flags if f not in (GAP, RING_UNKNOWN)),
        source="cdr",
    )


@dataclass(frozen=True, slots=True)
class Gap:
    """A stretch the event stream missed (a cut link, or the bridge not running):
    ``why`` it is not backfilled (yet); empty once it is."""

    since: float
    until: float
    why: str = ""

    @property
    def seconds(self) -> float:
        return max(0.0, self.until - self.since)


@dataclass(frozen=True, slots=True)
class BackfillStatus:
    """One PBX's backfill, as ``/health`` and ``/metrics`` read it (a plain copy)."""

    pbx: str
    source: str  # the source as CdrSourceSettings.describe shows it ("none": no backfill)
    state: str  # "off" (no source), "ok", "retrying" (unavailable), "misconfigured"
    last_error: str | None
    gaps: int  # gaps in the event stream: link outages and the bridge's own restarts
    gap_seconds: float
    uncovered: tuple[Gap, ...]  # the latest gaps not backfilled (yet), oldest first
    uncovered_total: int  # gaps given up on or not backfillable, since start
    found: int  # calls read from the CDR that the bridge had not seen end
    completed: int  # calls the bridge saw in part, completed with their CDR
    released: int  # calls the bridge saw in part that the CDR did not have in time
    held: int  # calls waiting for their CDR now
    pending_windows: int
    reads_ok: int
    reads_failed: int
    bad_rows: int  # CDR rows that could not be used (skipped, counted)
    no_id: int  # CDR calls without uniqueid: not matchable, not submitted


@dataclass(slots=True)
class _Window:
    since: float
    until: float
    reads: list[float]  # when (wall clock) the reads still to do are due, ascending
    gaps: list[tuple[float, float]] = field(default_factory=list)
    # the event stream was blind until then: a call the CDR shows ending later may be one
    # the live path is reporting right now, so it waits for the window's last read
    blind_until: float = float("-inf")

    def overlaps(self, other: _Window) -> bool:
        return self.since <= other.until and other.since <= self.until

    def absorb(self, other: _Window) -> None:
        self.since, self.until = min(self.since, other.since), max(self.until, other.until)
        merged: list[float] = []
        for t in sorted(self.reads + other.reads):
            if not merged or t - merged[-1] > 0.2:
                merged.append(t)
        self.reads = merged
        self.gaps += [g for g in other.gaps if g not in self.gaps]
        self.blind_until = max(self.blind_until, other.blind_until)


@dataclass(slots=True)
class _Held:
    record: CallRecord
    deadline: float  # delivered as it is by then, CDR or not


class Backfiller:
    """One PBX's backfill. ``submit`` takes a finished call (the listener's hand-over);
    ``live_ids`` gives the ids of the calls the tracker has up; ``alive`` the wall-clock
    time of the link's last sign of life while it is up (else None). Start it, tell it of
    sessions (:meth:`on_session`) and of every finished live call (:meth:`hold`)."""

    def __init__(
        self,
        settings: CdrSourceSettings,
        rules: CallRules,
        submit: Callable[[CallRecord], None],
        *,
        pbx: str = "default",
        state_dir: str | Path | None = None,
        live_ids: Callable[[], Collection[str]] = frozenset,
        alive: Callable[[], float | None] = lambda: None,
        settle_s: float = 5.0,
        cdr_batch_s: float = 0.0,
        first_window_s: float = 600.0,
        retry_max_s: float = 60.0,
        source: CdrSource | None = None,
        clock: Callable[[], float] = time.time,
        supervisor: Supervisor | None = None,
    ) -> None:
        self.settings = settings
        self.supervisor = supervisor or Supervisor()  # the service's, so /health sees ours
        self.rules = rules
        self.submit = submit
        self.pbx = pbx
        self.source = source if source is not None else open_source(settings)
        self.state_path = Path(state_dir) / f"backfill.{pbx}.json" if state_dir else None
        self.live_ids = live_ids
        self.alive = alive
        self.settle_s = settle_s
        self.cdr_batch_s = cdr_batch_s
        self.first_window_s = first_window_s
        self.margin_s = settings.margin_s
        self.clock = clock
        self.log = logging.LoggerAdapter(log, {"pbx": pbx})
        self._backoff = Backoff(min(1.0, retry_max_s), retry_max_s, jitter=0.2)

        self._windows: list[_Window] = []
        self._deferred: list[tuple[float, float]] = []  # a previous run's unread windows
        self._held: dict[str, _Held] = {}
        self._recent: dict[str, None] = {}  # call ids done in this run (live or backfilled)
        self._gaps: list[Gap] = []
        self._last_seen: float | None = None  # the previous run's, until the first session
        self._saved_seen: float | None = None
        self._sessions = 0
        self._state_dirty = False
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

        self.gaps = 0
        self.gap_seconds = 0.0
        self.uncovered_total = 0
        self.found = self.completed = self.released = 0
        self.reads_ok = self.reads_failed = 0
        self.bad_rows = self.no_id = 0
        self.last_error: str | None = None
        self.misconfigured = False
        self._logged_error: str | None = None

    def __repr__(self) -> str:
        return f"<Backfiller {self.pbx} {self.settings.describe()}>"

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Read what the previous run left (when it last heard the PBX, windows it did
        not get to read) and start the reading loop."""
        self._load_state()
        if self._task is None:
            self._task = self.supervisor.spawn(f"backfill-{self.pbx}", self._run)

    async def stop(self) -> None:
        """Stop reading; calls still held go as they are (never dropped); the state is
        saved (``last_seen``, the windows not read yet: the next run reads them)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for call_id in list(self._held):
            self._release(call_id, "the bridge is stopping")
        self._save_state(force=True)

    # -- what the listener and the service tell it ----------------------------------------

    def on_session(self, session: Session) -> None:
        """A session began: read the gap before it (for the first one of this run: since
        the previous run last heard the PBX)."""
        self._sessions += 1
        now = session.connected_at
        gap = session.gap
        if self._sessions == 1:
            seen = self._last_seen
            gap = (min(seen, now), now) if seen is not None else None
            since = seen if seen is not None else now - self.first_window_s
            if self.source is not None and (seen is not None or self.first_window_s > 0):
                self._add(
                    _Window(
                        since - self.margin_s,
                        now + self.margin_s,
                        self._schedule(now),
                        [gap] if gap else [],
                        now,
                    )
                )
            for lo, hi in self._deferred:
                self._add(_Window(lo, hi, self._schedule(now), [], now))
            self._deferred = []
        elif gap is not None and self.source is not None:
            self._add(
                _Window(
                    gap[0] - self.margin_s, gap[1] + self.margin_s, self._schedule(now), [gap], now
                )
            )
        if gap is not None:
            self.gaps += 1
            self.gap_seconds += gap[1] - gap[0]
            what = "a restart" if self._sessions == 1 else "a cut link"
            if self.source is None:
                self._uncovered(gap, NO_SOURCE)
                self.log.warning(
                    "AMI %s: %.1f s gap in the event stream (%s) not backfilled: %s; calls "
                    "that ended in it are flagged gap, calls that began and ended in it are "
                    "not seen",
                    self.pbx,
                    gap[1] - gap[0],
                    what,
                    NO_SOURCE,
                )
            else:
                self.log.info(
                    "AMI %s: %.1f s gap in the event stream (%s): reading its CDR",
                    self.pbx,
                    gap[1] - gap[0],
                    what,
                )
        self._state_dirty = True
        self._wake.set()

    def hold(self, record: CallRecord) -> bool:
        """Every call the tracker finished. True: it saw the call only in part and it waits
        for its CDR (the backfiller submits it); False: submit it now."""
        now = self.clock()
        partial = GAP in record.flags or RING_UNKNOWN in record.flags
        if self.source is None or not partial or record.source != "live":
            self._remember(record.call_id)
            return False
        wait = self.settle_s + self.cdr_batch_s + self._backoff.max_s  # then it goes as it is
        self._held[record.call_id] = _Held(record, now + wait)
        first = now + min(1.0, self.settle_s)
        self._add(
            _Window(
                record.ended_at - self.margin_s,
                now + self.margin_s,
                [first, *self._schedule(now)[1:]],
            )
        )
        self._wake.set()
        return True

    # -- what health and metrics read ------------------------------------------------------

    def status(self) -> BackfillStatus:
        if self.source is None:
            state = "off"
        elif self.misconfigured:
            state = "misconfigured"
        elif self.last_error:
            state = "retrying"
        else:
            state = "ok"
        return BackfillStatus(
            pbx=self.pbx,
            source=self.settings.describe(),
            state=state,
            last_error=self.last_error,
            gaps=self.gaps,
            gap_seconds=round(self.gap_seconds, 3),
            uncovered=tuple(g for g in self._gaps if g.why),
            uncovered_total=self.uncovered_total,
            found=self.found,
            completed=self.completed,
            released=self.released,
            held=len(self._held),
            pending_windows=len(self._windows),
            reads_ok=self.reads_ok,
            reads_failed=self.reads_failed,
            bad_rows=self.bad_rows,
            no_id=self.no_id,
        )

    # -- the loop --------------------------------------------------------------------------

    def _schedule(self, now: float) -> list[float]:
        reads = [now, now + self.settle_s]
        if self.cdr_batch_s > 0:
            reads.append(now + self.cdr_batch_s + self.settle_s)
        return reads

    def _add(self, window: _Window) -> None:
        for w in self._windows:
            if w.overlaps(window):
                w.absorb(window)
                return
        self._windows.append(window)
        self._state_dirty = True

    async def _run(self) -> None:
        """Read the windows due, release held calls whose wait is over, save the state. An
        unexpected error ends this run: the supervisor logs it, names it in /health and
        starts it again (held calls stay held, never dropped)."""
        while True:
            await self._tick()
            now = self.clock()
            due = [w.reads[0] for w in self._windows if w.reads]
            due += [h.deadline for h in self._held.values()]
            wait = min([now + 1.0, *due]) - now
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(0.02, wait))

    async def _tick(self) -> None:
        if self._sessions:  # the tracker knows the live calls: the CDR can be read
            for window in [w for w in self._windows if w.reads and w.reads[0] <= self.clock()]:
                await self._read(window)
        now = self.clock()
        for call_id, held in list(self._held.items()):
            if held.deadline <= now:
                self._release(call_id, self.last_error or "no CDR row for it in time")
        seen = self.alive()
        if seen is not None and self._sessions:  # the previous run's stays until it is read
            self._last_seen = seen
        self._save_state()

    async def _read(self, window: _Window) -> None:
        assert self.source is not None
        known = set(self.live_ids()).union(self._recent)
        try:
            got = await backfill_window(
                self.source, self.rules, window.since, window.until, pbx=self.pbx, skip=known
            )
        except CdrSourceError as err:
            self._failed(window, err.reason, misconfigured=not err.retry)
            return
        except Exception as err:  # a driver's own exception: unexpected, so retried
            self.log.exception("backfill %s: reading the CDR failed", self.pbx)
            self._failed(window, repr(err), misconfigured=False)
            return
        self._backoff.reset()
        self.reads_ok += 1
        if self.last_error is not None:
            self.log.info(
                "backfill %s: the CDR is readable again (%s)", self.pbx, self.settings.describe()
            )
        self.last_error, self.misconfigured, self._logged_error = None, False, None
        window.reads.pop(0)
        ids_of = {c.call_id: c.ids | {c.call_id} for c in got.window.calls}
        found = completed = 0
        for record in got.records:
            match = next((i for i in ids_of.get(record.call_id, ()) if i in self._held), None)
            if match is None and window.reads and record.ended_at >= window.blind_until - 1:
                continue  # ended as the link came back: the live path may have it in a moment
            if match is not None:
                held = self._held.pop(match)
                self.submit(complete(held.record, record))
                self._remember(held.record.call_id)
                completed += 1
            else:
                self.submit(record)
                found += 1
            self._remember(record.call_id)
        self.found += found
        self.completed += completed
        bad, no_id = got.window.bad_rows, got.skipped.get("no id", 0)
        self.bad_rows += bad
        self.no_id += no_id
        span = f"{_hms(window.since)}-{_hms(window.until)}"
        if found or completed or bad or no_id:
            self.log.info(
                "backfill %s: CDR %s: %d call(s) the bridge did not see end, %d completed "
                "with their CDR, %d known, %d bad row(s)%s",
                self.pbx,
                span,
                found,
                completed,
                got.skipped.get("known", 0),
                bad,
                f" (first: {got.window.bad_reason})" if bad else "",
            )
        if no_id:
            self.log.warning(
                "backfill %s: CDR %s: %d call(s) without uniqueid cannot be matched with the "
                "bridge's calls and are not submitted: set cdr.conf [csv] loguniqueid = yes",
                self.pbx,
                span,
                no_id,
            )
        for gap in window.gaps:
            if no_id:
                self._uncovered(gap, f"{no_id} CDR call(s) without uniqueid")
            else:
                self._covered(gap)
        if not window.reads:
            self._windows.remove(window)
            self._state_dirty = True
            for call_id, held in list(self._held.items()):
                if not any(w.since <= held.record.ended_at <= w.until for w in self._windows):
                    self._release(call_id, "its CDR was not found")

    def _failed(self, window: _Window, reason: str, *, misconfigured: bool) -> None:
        self.reads_failed += 1
        self.last_error, self.misconfigured = reason, misconfigured
        source = self.settings.describe()
        if reason != self._logged_error:  # once per distinct problem, not per retry
            self._logged_error = reason
            if misconfigured:
                self.log.error(
                    "backfill %s: cannot read the CDR (%s): %s; fix the settings "
                    "or the source; retrying every %.0f s",
                    self.pbx,
                    source,
                    reason,
                    self._backoff.max_s,
                )
            else:
                self.log.warning(
                    "backfill %s: the CDR is not readable now (%s): %s; retrying",
                    self.pbx,
                    source,
                    reason,
                )
        delay = self._backoff.max_s if misconfigured else self._backoff.next(time.monotonic())
        window.reads[0] = self.clock() + delay
        for gap in window.gaps:
            self._uncovered(gap, reason, count=False)

    def _release(self, call_id: str, why: str) -> None:
        held = self._held.pop(call_id, None)
        if held is None:
            return
        self.released += 1
        # the module logger: a LoggerAdapter would replace this line's extra with its own
        log.info(
            "backfill %s: no CDR for a call the bridge saw in part (%s): delivered "
            "with its own times, flagged",
            self.pbx,
            why,
            extra=log_tags(call_id, self.pbx),
        )
        self.submit(held.record)
        self._remember(call_id)

    def _remember(self, call_id: str) -> None:
        self._recent[call_id] = None
        if len(self._recent) > _RECENT_MAX:
            del self._recent[next(iter(self._recent))]

    def _uncovered(self, gap: tuple[float, float], why: str, *, count: bool = True) -> None:
        for i, g in enumerate(self._gaps):
            if (g.since, g.until) == gap:
                if not g.why and count:
                    self.uncovered_total += 1
                self._gaps[i] = Gap(*gap, why)
                return
        if count:
            self.uncovered_total += 1
        self._gaps = [*self._gaps, Gap(*gap, why)][-_GAPS_KEPT:]

    def _covered(self, gap: tuple[float, float]) -> None:
        self._gaps = [g for g in self._gaps if (g.since, g.until) != gap]

    # -- the state file --------------------------------------------------------------------

    def _load_state(self) -> None:
        path = self.state_path
        if path is None:
            return
        try:
            data = json.loads(path.read_text())
            seen = data.get("last_seen")
            self._last_seen = float(seen) if seen is not None else None
            self._deferred = [(float(lo), float(hi)) for lo, hi in data.get("windows", [])]
        except FileNotFoundError:
            return
        except (OSError, ValueError, TypeError, AttributeError) as err:
            self.log.warning(
                "backfill %s: state file %s unreadable (%s): reading the last %.0f s instead",
                self.pbx,
                path,
                err,
                self.first_window_s,
            )
            return
        self._saved_seen = self._last_seen

    def _save_state(self, *, force: bool = False) -> None:
        """Write ``last_seen`` (at most once a second) and the windows not read yet."""
        path = self.state_path
        seen = self._last_seen
        moved = seen is not None and (self._saved_seen is None or seen - self._saved_seen >= 1)
        if path is None or not (force or self._state_dirty or moved):
            return
        windows = [[w.since, w.until] for w in self._windows] + [list(d) for d in self._deferred]
        tmp = path.with_name(path.name + ".tmp")
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            # 0600 whatever the umask, as every file beside the spool (worker/private_files)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps({"last_seen": seen, "windows": windows}))
            os.replace(tmp, path)
        except OSError as err:
            self.log.warning("backfill %s: cannot write %s: %s", self.pbx, path, err)
            return
        self._saved_seen, self._state_dirty = seen, False


def _hms(ts: float) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(ts))
