"""``telefum`` commands as processes, the way an admin runs them.

- ``telefum`` (async factory): ``await telefum("listen", "--config", F)`` starts the command
  with its stdout and stderr in a file of its own and returns a :class:`Proc`; whatever
  still runs at teardown is killed.
"""

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

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def tail(self) -> str:
        return self.text()[-3000:]

    async def terminate(self, timeout_s: float = 15.0) -> int:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(self.proc.wait(), timeout_s)


@pytest.fixture
async def telefum(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[Proc]]]:
    started: list[Proc] = []

    async def start(*args: str, env: dict[str, str] | None = None) -> Proc:
        """``env``: variables on top of this process's (``TELEFUM_...`` secrets)."""
        log = tmp_path / f"telefum-{len(started)}.log"
        with open(log, "wb") as out:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "telefum.cli",
                *args,
                stdout=out,
                stderr=out,
                stdin=asyncio.subprocess.DEVNULL,
                cwd=REPO,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            )
        p = Proc(proc, log)
        started.append(p)
        return p

    yield start
    for p in started:
        if p.proc.returncode is None:
            p.proc.kill()
            await p.proc.wait()


def bridge_settings(
    path: Path,
    *,
    pbx_port: int,
    crm_url: str,
    crm_password: str,
    redis_url: str,
    http_port: int,
    extra: str = "",
) -> Path:
    """A ``settings.toml`` for ``telefum listen`` + ``telefum worker`` on loopback: the PBX
    ``office`` (the simulator's user), the CRM's service account ``bridge``, a 2 s CRM
    timeout; ``extra``: more TOML at the end (sections of its own)."""
    from tests.support.pbx import PBX_SECRET, PBX_USER

    path.write_text(
        f"""
spool_dir = "{path.parent / "spool"}"
[ami]
name = "office"
host = "127.0.0.1"
port = {pbx_port}
username = "{PBX_USER}"
secret = "{PBX_SECRET}"
ping_interval_s = 1.0
[redis]
url = "{redis_url}"
[crm]
url = "{crm_url}"
login = "bridge"
password = "{crm_password}"
timeout_s = 2.0
[worker]
job_timeout_s = 5.0
[http]
listen = "127.0.0.1:{http_port}"
{extra}
""",
        encoding="utf-8",
    )
    return path
