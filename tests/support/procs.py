"""``telefum`` commands as processes: the ``telefum`` fixture starts them (``await
telefum("run", "--config", path)``), each with its stderr in a file that a failing test
shows (``Proc.tail``); whatever is still running is SIGKILLed at the end of the test."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from tests.support.crm import REPO


class Proc:
    """A ``telefum`` subprocess, its stderr in a file shown when a test fails."""

    def __init__(self, proc: asyncio.subprocess.Process, log: Path) -> None:
        self.proc, self.log = proc, log

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    async def terminate(self, timeout_s: float = 15.0) -> int:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(self.proc.wait(), timeout_s)


@pytest.fixture
async def telefum(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[Proc]]]:
    started: list[Proc] = []

    async def start(*args: str, env: dict[str, str] | None = None) -> Proc:
        log = tmp_path / f"telefum-{len(started)}.log"
        with open(log, "wb") as out:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "telefum.cli", *args,
                stdout=out, stderr=out, stdin=asyncio.subprocess.DEVNULL, cwd=REPO,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            )  # fmt: skip
        p = Proc(proc, log)
        started.append(p)
        return p

    yield start
    for p in started:
        if p.proc.returncode is None:
            p.proc.kill()
            await p.proc.wait()
