"""``telefum run``, ``telefum listen`` + ``telefum worker``: the real commands as processes,
against a simulated PBX on TCP, a real Redis and the reference CRM over HTTP.

A recorded call played at the PBX must come out as one event in the CRM, on a contact that
carries the tracking number, and count in the marketers' report; SIGTERM stops cleanly.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from pbxsim.server import PbxSimulator
from tests.conftest import free_port
from tests.support.crm import RunningRefCrm
from tests.support.pbx import PBX_SECRET, PBX_USER
from tests.support.procs import Proc

TOKEN = "admin-token-for-tests"
ANSWERED = "01-inbound-answered-caller-hangup.ami"  # +79161234567 -> +74951234567, ext 101
MISSED = "03-inbound-missed-caller-abandons.ami"
TIMEOUT_S = 30.0


def write_settings(
    path: Path, pbx: PbxSimulator, crm: RunningRefCrm, redis_url: str, http_port: int
) -> Path:
    path.write_text(
        f"""
spool_dir = "{path.parent / "spool"}"
[ami]
host = "127.0.0.1"
port = {pbx.port}
username = "{PBX_USER}"
secret = "{PBX_SECRET}"
ping_interval_s = 1.0
[redis]
url = "{redis_url}"
[crm]
url = "{crm.rest_url}"
login = "bridge"
password = "{crm.users["bridge"]}"
[sources]
"+74951234567" = "Yandex Direct"
[http]
listen = "127.0.0.1:{http_port}"
token = "{TOKEN}"
""",
        encoding="utf-8",
    )
    return path


async def until(check: Callable[[], Awaitable[Any]], what: str, procs: list[Proc]) -> Any:
    """Poll ``check`` until it returns something truthy; fail with the processes' logs."""
    try:
        async with asyncio.timeout(TIMEOUT_S):
            while not (value := await check()):
                for p in procs:
                    if p.proc.returncode is not None:
                        pytest.fail(f"exited {p.proc.returncode} before {what}:\n{p.tail()}")
                await asyncio.sleep(0.1)
            return value
    except TimeoutError:
        pytest.fail(f"no {what} in {TIMEOUT_S}s:\n" + "\n---\n".join(p.tail() for p in procs))


async def get_json(url: str) -> tuple[int, Any]:
    try:
        async with aiohttp.ClientSession() as s, s.get(url) as r:
            return r.status, await r.json(content_type=None)
    except aiohttp.ClientError:
        return 0, None


def events_in(crm: RunningRefCrm, n: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return crm.count_events() == n

    return check


async def healthy(base: str) -> bool:
    status, _ = await get_json(f"{base}/health")
    return status == 200


async def test_run_delivers_a_played_call_to_the_crm_and_counts_it_for_the_report(
    tmp_path: Path,
    pbx_sim: PbxSimulator,
    refcrm: RunningRefCrm,
    redis_url: str,
    telefum: Callable[..., Awaitable[Proc]],
    traces_dir: Path,
) -> None:
    port = free_port()
    config = write_settings(tmp_path / "settings.toml", pbx_sim, refcrm, redis_url, port)
    run = await telefum("run", "--config", str(config))
    base = f"http://127.0.0.1:{port}"
    await until(lambda: healthy(base), "healthy /health", [run])

    await pbx_sim.play_trace(traces_dir / ANSWERED)

    await until(events_in(refcrm, 1), "event in the CRM", [run])
    (contact,) = refcrm.contacts("+79161234567")
    assert contact.x_pstn == "+74951234567"
    assert refcrm.count_contacts() == 1

    async def reported() -> Any:
        status, body = await get_json(f"{base}/report.json?token={TOKEN}&since=7d")
        return status == 200 and body["totals"]["calls"] == 1 and body

    report = await until(reported, "the call in the report", [run])
    (row,) = report["numbers"]
    assert row["source"] == "Yandex Direct" and row["new_contacts"] == 1

    assert await run.terminate() == 0
    assert "Traceback" not in run.tail()


async def test_listen_and_a_separate_worker_deliver_together(
    tmp_path: Path,
    pbx_sim: PbxSimulator,
    refcrm: RunningRefCrm,
    redis_url: str,
    telefum: Callable[..., Awaitable[Proc]],
    traces_dir: Path,
) -> None:
    port = free_port()
    config = write_settings(tmp_path / "settings.toml", pbx_sim, refcrm, redis_url, port)
    listen = await telefum("listen", "--config", str(config))
    worker = await telefum("worker", "--config", str(config))
    procs = [listen, worker]
    await until(lambda: healthy(f"http://127.0.0.1:{port}"), "healthy /health", procs)

    await pbx_sim.play_trace(traces_dir / ANSWERED)
    await pbx_sim.play_trace(traces_dir / MISSED)

    await until(events_in(refcrm, 2), "two events in the CRM", procs)
    assert await listen.terminate() == 0
    assert await worker.terminate() == 0


async def test_listen_without_a_redis_url_says_which_setting_to_set(
    tmp_path: Path,
    pbx_sim: PbxSimulator,
    refcrm: RunningRefCrm,
    telefum: Callable[..., Awaitable[Proc]],
) -> None:
    config = write_settings(tmp_path / "settings.toml", pbx_sim, refcrm, "", free_port())
    listen = await telefum("listen", "--config", str(config))
    assert await asyncio.wait_for(listen.proc.wait(), TIMEOUT_S) == 2
    assert "[redis] url" in listen.tail()


async def test_run_with_an_empty_redis_url_starts_and_stops_its_own_redis(
    tmp_path: Path,
    pbx_sim: PbxSimulator,
    refcrm: RunningRefCrm,
    telefum: Callable[..., Awaitable[Proc]],
    traces_dir: Path,
) -> None:
    port = free_port()
    config = write_settings(tmp_path / "settings.toml", pbx_sim, refcrm, "", port)
    run = await telefum("run", "--config", str(config))
    await until(lambda: healthy(f"http://127.0.0.1:{port}"), "healthy /health", [run])
    await pbx_sim.play_trace(traces_dir / ANSWERED)

    await until(events_in(refcrm, 1), "event in the CRM", [run])
    redis_dir = tmp_path / "redis"  # beside the spool
    assert any(redis_dir.iterdir())
    assert _redis_servers_under(redis_dir)
    # closed to other local users: a password in a 0600 file, the folders 0700
    assert stat.S_IMODE(redis_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "spool").stat().st_mode) == 0o700
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in redis_dir.iterdir()}
    assert {"password", "url"} <= set(modes) and set(modes.values()) == {0o600}, modes
    password = (redis_dir / "password").read_text().strip()
    assert password not in (redis_dir / "url").read_text()
    # ops commands with the same settings find the private Redis while it runs
    dlq = await telefum("dlq", "list", "--config", str(config))
    assert await asyncio.wait_for(dlq.proc.wait(), TIMEOUT_S) == 0, dlq.tail()
    status = await telefum("status", "--check-worker", "--config", str(config))
    assert await asyncio.wait_for(status.proc.wait(), TIMEOUT_S) == 0, status.tail()
    assert password not in run.log.read_text(errors="replace")
    assert await run.terminate() == 0
    dlq = await telefum("dlq", "list", "--config", str(config))
    assert await asyncio.wait_for(dlq.proc.wait(), TIMEOUT_S) == 2  # and know when it is gone
    assert not _redis_servers_under(redis_dir)


def _redis_servers_under(data_dir: Path) -> list[int]:
    """Pids of live redis-server processes working in ``data_dir`` (its ``--dir``: Redis
    rewrites its command line, so that is read from its working directory)."""
    pids = []
    for proc in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            args = (proc / "cmdline").read_bytes().split(b"\0")
            if (
                proc.name.isdigit()
                and b"redis-server" in args[0]
                and (Path(os.readlink(proc / "cwd")) == data_dir.resolve())
            ):
                pids.append(int(proc.name))
    return pids
