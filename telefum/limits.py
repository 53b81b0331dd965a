"""The caps on what others can make the service hold, and what happens when one is reached.

Each cap refuses the excess and never drops what it already holds; each refusal is counted
for ``/metrics`` (``telefum_limit_hits_total{limit}``) and logged, at most one warning per
cap per :data:`LOG_EVERY_S` (with how many came since the last line), so a flood cannot
flood the log too.

=========================  ===============================================================
``tracked_calls``          a new call (or channel) beyond ``[calls] max_active_calls``:
                           not tracked, so never reported (the log line names the PBX)
``http_connections``       a connection beyond ``[http] max_connections`` while every open
                           one is in a request: refused with a 503
``http_idle_closed``       the oldest idle connection, closed to make room for a new one
``http_header_timeout``    a connection that sent no whole request head in time: closed
``http_host``              a request for a Host that is not this service's: 421
``sse_streams``            an agent page's live feed beyond the extension's or the total cap
``crm_lookups``            a screen-pop CRM lookup beyond the in-flight cap: left for later
=========================  ===============================================================
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable

log = logging.getLogger("telefum.limits")

NAMES = (
    "tracked_calls",
    "http_connections",
    "http_idle_closed",
    "http_header_timeout",
    "http_host",
    "sse_streams",
    "crm_lookups",
)

LOG_EVERY_S = 60.0


class Limits:
    """Counts the hits of every cap and logs them, rate-limited (one instance per process,
    held by ``telefum.web.Service``)."""

    def __init__(
        self, *, log_every_s: float = LOG_EVERY_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.hits: Counter[str] = Counter()
        self._log_every_s = log_every_s
        self._clock = clock
        self._logged_at: dict[str, float] = {}
        self._unlogged: Counter[str] = Counter()

    def hit(self, limit: str, what: str, n: int = 1) -> None:
        """``n`` refusals by ``limit`` (one of :data:`NAMES`); ``what`` says what was
        refused and which setting sets the cap (for the log line)."""
        self.hits[limit] += n
        self._unlogged[limit] += n
        now = self._clock()
        if now - self._logged_at.get(limit, float("-inf")) < self._log_every_s:
            return
        before, self._unlogged[limit] = self._unlogged[limit] - n, 0
        self._logged_at[limit] = now
        more = f" (and {before} more since the last such line)" if before else ""
        log.warning("limit %s reached: %s%s", limit, what, more)
