"""``telefum simulate-pbx`` as an admin runs it: a real process, a real listener on TCP."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import AsyncIterator

import pytest

from telephony.listener import AmiListener
from telephony.records import CallFinished, CallRecord, Update
from telephony.tracker import CallTracker
from tests.support.pbx import TRACES

T01 = TRACES / "01-inbound-answered-caller-hangup.ami"
T03 = TRACES / "03-inbound-missed-caller-abandons.ami"


@contextlib.asynccontextmanager
async def simulate_pbx(*args: str) -> AsyncIterator[tuple[asyncio.subprocess.Process, int]]:
    """The command on a free port; yields the process and the port it printed."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "telefum.cli",
        "simulate-pbx",
        "--port",
        "0",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
        assert line.startswith("listening on 127.0.0.1:"), line
        yield proc, int(line.rsplit(":", 1)[1])
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_cli_plays_the_traces_to_the_first_client_and_exits_cleanly_on_sigterm() -> None:
    finished: asyncio.Queue[CallRecord] = asyncio.Queue()

    def on_update(update: Update) -> None:
        if isinstance(update, CallFinished):
            finished.put_nowait(update.record)

    async with simulate_pbx(
        "--trace", str(T01), str(T03), "--speed", "0", "--secret", "cli-secret"
    ) as (proc, port):
        listener = AmiListener(
            "127.0.0.1",
            port,
            "telefum",
            "cli-secret",
            CallTracker(),
            on_update,
            reconnect_min=0.05,
            expire_interval=3600,
        )
        async with listener:
            records = [await asyncio.wait_for(finished.get(), 10) for _ in range(2)]
            await listener.wait_for_session(1, timeout=10)  # the snapshot may come after
            answer = await listener.originate("PJSIP/102", "79990001122", "from-internal")
            assert answer.success
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 10)

    assert proc.returncode == 0
    assert [(r.direction, r.answered, r.extension) for r in records] == [
        ("in", True, "101"),
        ("in", False, None),
    ]
    assert records[0].call_id != "1795727781.0"  # rebased: fresh ids for each play
    assert b"1 logins, 1 originates" in err


async def test_cli_plays_a_synthetic_mix() -> None:
    finished: asyncio.Queue[CallRecord] = asyncio.Queue()

    def on_update(update: Update) -> None:
        if isinstance(update, CallFinished):
            finished.put_nowait(update.record)

    async with simulate_pbx("--calls", "12", "--rate", "100", "--seed", "5", "--speed", "0") as (
        proc,
        port,
    ):
        listener = AmiListener(
            "127.0.0.1",
            port,
            "telefum",
            "change-me",
            CallTracker(),
            on_update,
            reconnect_min=0.05,
            expire_interval=3600,
        )
        async with listener:
            records = [await asyncio.wait_for(finished.get(), 10) for _ in range(12)]
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.communicate(), 10)

    assert proc.returncode == 0
    assert len({r.call_id for r in records}) == 12
    assert {r.direction for r in records} >= {"in", "out"}


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--trace", "/nonexistent/trace.ami"], b"no such trace file"),
        (["--speed", "-1"], b"--speed >= 0"),
    ],
)
async def test_cli_refuses_bad_arguments_with_exit_2(args: list[str], says: bytes) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "telefum.cli",
        "simulate-pbx",
        "--port",
        "0",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 2
    assert says in err
