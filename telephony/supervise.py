"""The service's background loops, kept alive: one small supervisor for all of them.

Every long-lived task of a bridge process runs under a :class:`Supervisor`: the hand-over's
writer and drainer, each AMI link and its expiry loop, each PBX's CDR backfill, the worker
and its heartbeat, reconciler and latency flusher (which also sends the CRMs' health), the
outbox of CRM answers. A loop that raises is

- logged, rate-limited (the first failure with its traceback, then at most one line per
  ``log_every_s`` per loop, saying how many were left out): a fault that repeats every
  millisecond (no file descriptors left, a full disk) must not fill the disk with log;
- started again after a backoff (:class:`~telephony.backoff.Backoff`), never left dead: one
  ``OSError`` used to end the hand-over to Redis for good, with nothing logged;
- named by :meth:`Supervisor.failing` (``/health`` shows it, with its last error) from its
  first failure until it has run ``healthy_after_s`` without failing again, or said so
  itself with :meth:`Supervisor.ok`.

A loop that returns has finished its work and is not restarted; cancelling it (or
:meth:`Supervisor.close`) stops it. It lives here, beside ``backoff.py``, because this is
the lowest package ``telephony/``, ``worker/`` and the service shell all import.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from .backoff import Backoff

log = logging.getLogger("telefum.supervise")


@dataclass
class TaskState:
    """One supervised loop, as ``/health`` shows it."""

    name: str
    failures: int = 0  # since it last ran well
    last_error: str | None = None
    failing_since: float | None = None  # wall clock of the first of those failures
    running: bool = False
    started_at: float = 0.0  # monotonic: this run's start
    logged_at: float = float("-inf")  # monotonic: the last log line about it
    unlogged: int = 0  # failures since that line


class RateLimitedLog:
    """At most one line per key per ``every_s``; the next line says how many were left
    out. For errors that may repeat faster than anyone can read them."""

    def __init__(
        self,
        logger: logging.Logger,
        every_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.every_s = every_s
        self._clock = clock
        self._last: dict[str, tuple[float, int]] = {}  # key -> (logged at, left out since)

    def log(
        self, level: int, key: str, msg: str, *args: object, exc_info: BaseException | None = None
    ) -> bool:
        """Log unless ``key`` was logged less than ``every_s`` ago; True if logged."""
        now = self._clock()
        at, skipped = self._last.get(key, (float("-inf"), 0))
        if now - at < self.every_s:
            self._last[key] = (at, skipped + 1)
            return False
        if len(self._last) > 1000:  # keys are a few names; never let them pile up
            self._last.clear()
        self._last[key] = (now, 0)
        if skipped:
            msg += f" ({skipped} more like it in the last {now - at:.0f} s, not logged)"
        self.logger.log(level, msg, *args, exc_info=exc_info)
        return True


class Supervisor:
    """Runs named background loops; restarts one that fails; says which are failing."""

    def __init__(
        self,
        *,
        restart_first_s: float = 0.5,
        restart_max_s: float = 30.0,
        healthy_after_s: float = 5.0,
        log_every_s: float = 10.0,
        logger: logging.Logger = log,
    ) -> None:
        self.restart_first_s = restart_first_s
        self.restart_max_s = restart_max_s
        self.healthy_after_s = healthy_after_s
        self._log = RateLimitedLog(logger, log_every_s)
        self._states: dict[str, TaskState] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def spawn(self, name: str, loop: Callable[[], Awaitable[None]]) -> asyncio.Task[None]:
        """Run ``loop()`` as task ``name``, again after each failure. ``name`` is unique
        among the running ones (a second ``spawn`` of a running name is a bug)."""
        if name in self._tasks and not self._tasks[name].done():
            raise RuntimeError(f"a task named {name!r} is already running")
        state = self._states[name] = TaskState(name)
        task = asyncio.create_task(self._keep_running(state, loop), name=name)
        self._tasks[name] = task
        task.add_done_callback(lambda t: self._ended(name, t))
        return task

    def _ended(self, name: str, task: asyncio.Task[None]) -> None:
        if self._tasks.get(name) is task:
            del self._tasks[name]
            self._states.pop(name, None)

    async def _keep_running(self, state: TaskState, loop: Callable[[], Awaitable[None]]) -> None:
        backoff = Backoff(self.restart_first_s, self.restart_max_s, jitter=0.1)
        while True:
            state.running, state.started_at = True, time.monotonic()
            try:
                await loop()
                return  # done with its work
            except asyncio.CancelledError:
                raise
            except Exception as err:
                state.running = False
                if state.failures and time.monotonic() - state.started_at >= self.healthy_after_s:
                    state.failures, state.failing_since = 0, None  # it had recovered meanwhile
                    backoff.reset()
                self._failed(state, err)
            await asyncio.sleep(backoff.next(time.monotonic()))

    def _failed(self, state: TaskState, err: Exception) -> None:
        state.failures += 1
        state.last_error = f"{type(err).__name__}: {err}"[:300]
        if state.failing_since is None:
            state.failing_since = time.time()
        first = state.failures == 1
        self._log.log(
            logging.ERROR,
            state.name,
            "background task %s failed (%s); it is started again",
            state.name,
            state.last_error,
            exc_info=err if first else None,
        )

    def ok(self, name: str) -> None:
        """Told by a loop that it did its work again: it is no longer failing."""
        state = self._states.get(name)
        if state is not None and state.failures:
            state.failures, state.failing_since = 0, None
            log.info("background task %s works again", name)

    def failing(self) -> list[TaskState]:
        """The loops that failed and have not run well since, oldest failure first."""
        now = time.monotonic()
        out = []
        for state in self._states.values():
            if state.failures and state.running and now - state.started_at >= self.healthy_after_s:
                state.failures, state.failing_since = 0, None
            if state.failures:
                out.append(state)
        return sorted(out, key=lambda s: s.failing_since or 0.0)

    @property
    def names(self) -> list[str]:
        return sorted(self._tasks)

    async def close(self) -> None:
        """Cancel every loop and wait for them."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
