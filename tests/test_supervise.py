"""Background tasks never die of one error: the supervisor restarts them, logs what failed
without flooding the log, and says which are failing (for /health)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from telephony.supervise import RateLimitedLog, Supervisor

FAST = {"restart_first_s": 0.01, "restart_max_s": 0.05, "healthy_after_s": 0.3}


async def test_a_loop_that_raises_is_started_again_until_it_works(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sup = Supervisor(**FAST)
    runs = 0
    done = asyncio.Event()

    async def flaky() -> None:
        nonlocal runs
        runs += 1
        if runs <= 3:
            raise OSError(24, "Too many open files")
        done.set()
        await asyncio.Event().wait()  # then runs for good

    with caplog.at_level(logging.ERROR, "telefum.supervise"):
        sup.spawn("drainer", flaky)
        await asyncio.wait_for(done.wait(), 5)
    assert runs == 4
    [state] = sup.failing()  # it runs again, but has not yet run long enough to count
    assert (state.name, state.failures) == ("drainer", 3)
    assert state.last_error == "OSError: [Errno 24] Too many open files"
    await asyncio.sleep(0.35)
    assert sup.failing() == []
    lines = [r for r in caplog.records if "drainer" in r.getMessage()]
    assert len(lines) == 1 and lines[0].exc_info is not None  # the first, with its traceback
    await sup.close()
    assert sup.names == []


async def test_ok_clears_a_failing_loop_at_once() -> None:
    sup = Supervisor(**{**FAST, "healthy_after_s": 60})
    failed = asyncio.Event()
    fail = True

    async def loop() -> None:
        nonlocal fail
        if fail:
            fail = False
            failed.set()
            raise RuntimeError("a bug")
        sup.ok("loop")
        await asyncio.Event().wait()

    sup.spawn("loop", loop)
    await asyncio.wait_for(failed.wait(), 5)
    assert [s.name for s in sup.failing()] == ["loop"]
    for _ in range(100):
        if not sup.failing():
            break
        await asyncio.sleep(0.01)
    assert sup.failing() == []
    await sup.close()


async def test_a_loop_that_returns_is_done_and_cancelling_one_stops_it() -> None:
    sup = Supervisor(**FAST)
    runs = 0

    async def once() -> None:
        nonlocal runs
        runs += 1

    task = sup.spawn("once", once)
    await task
    await asyncio.sleep(0.05)
    assert runs == 1 and sup.names == []
    forever = sup.spawn("forever", lambda: asyncio.Event().wait())
    forever.cancel()
    with pytest.raises(asyncio.CancelledError):
        await forever
    assert sup.names == []


async def test_two_running_loops_cannot_share_a_name() -> None:
    sup = Supervisor(**FAST)
    sup.spawn("x", lambda: asyncio.Event().wait())
    with pytest.raises(RuntimeError, match="already running"):
        sup.spawn("x", lambda: asyncio.Event().wait())
    await sup.close()


def test_a_repeating_error_is_logged_once_per_window_with_the_count_left_out(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    limited = RateLimitedLog(logging.getLogger("t"), every_s=10, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, "t"):
        for i in range(10_000):
            now[0] = i * 0.001  # 10,000 errors in 10 s
            limited.log(logging.WARNING, "accept", "accept failed: %s", "EMFILE")
        now[0] = 10.5
        limited.log(logging.WARNING, "accept", "accept failed: %s", "EMFILE")
        limited.log(logging.WARNING, "other", "another key is its own")
    assert [r.getMessage() for r in caplog.records] == [
        "accept failed: EMFILE",
        "accept failed: EMFILE (9999 more like it in the last 10 s, not logged)",
        "another key is its own",
    ]
