"""How far the PBX's clock is from ours, from its events' ``Timestamp`` and their arrival.

Asterisk stamps each event with its own clock (``timestampevents = yes``); the call records
are in those times. Ageing a call (``[calls] max_call_age_s``), or closing one after a link
loss, needs "now" on that same clock: a PBX 12 hours off would otherwise have every call
closed at once as stale. Pure: the listener supplies the arrival times.

An event arrives after it was stamped, never before: ``arrival - Timestamp`` is the offset
plus a delay that is never negative and is usually a millisecond. The smallest value seen
is the best estimate; it is taken over two one-minute windows (the current and the one
before), so that a clock the PBX's NTP steps is followed within two minutes, and a moment
when we read slowly (a backlog) does not count.
"""

from __future__ import annotations

WINDOW_S = 60.0
SKEW_WARN_S = 60.0  # clocks further apart than this are worth a warning


class PbxClock:
    """``offset``: seconds the bridge's clock is ahead of the PBX's (None: no Timestamp
    seen yet, i.e. the PBX sends none, and times are arrival times)."""

    __slots__ = ("_cur", "_prev", "_window_end")

    def __init__(self) -> None:
        self._prev: float | None = None
        self._cur: float | None = None
        self._window_end = 0.0

    def observe(self, stamped: float, arrived: float) -> None:
        """One event stamped ``stamped`` by the PBX arrived at ``arrived`` (our clock)."""
        lag = arrived - stamped
        if arrived >= self._window_end:
            if self._window_end and arrived - self._window_end < WINDOW_S:
                self._prev = self._cur
            else:  # the first sample, or a silence longer than a window: start afresh
                self._prev = None
            self._cur = lag
            self._window_end = arrived + WINDOW_S
        elif self._cur is None or lag < self._cur:
            self._cur = lag

    @property
    def offset(self) -> float | None:
        cur, prev = self._cur, self._prev
        if cur is None:
            return None
        return cur if prev is None or cur < prev else prev

    def pbx_time(self, now: float) -> float:
        """``now`` (our clock) on the PBX's clock: what its Timestamps would say."""
        offset = self.offset
        return now if offset is None else now - offset

    @property
    def skewed(self) -> bool:
        """The clocks disagree by more than ``SKEW_WARN_S``."""
        offset = self.offset
        return offset is not None and abs(offset) > SKEW_WARN_S
