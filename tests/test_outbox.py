"""The outbox: CRM answers Redis did not take wait in memory and on disk, land when Redis is
back, and outlive the worker that kept them (another worker on the host takes them over)."""

from __future__ import annotations

import asyncio
import logging
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from redis.asyncio import Redis

from tests.conftest import free_port
from worker import keys
from worker.embedded_redis import EmbeddedRedis
from worker.ledger import LedgerWrite, load
from worker.outbox import Outbox
from worker.stats import read_stats

REPO = Path(__file__).resolve().parent.parent


def answer(job_id: str) -> LedgerWrite:
    return LedgerWrite(
        job_id,
        {"event_id": "77", "state": "done", "outcome": "delivered"},
        counters={"events_created": 1, "succeeded": 1},
        done=True,
        ttl_s=3600,
    )


async def until(check, timeout_s: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    async with asyncio.timeout(timeout_s):
        while not await check():
            await asyncio.sleep(0.02)


async def test_an_answer_waits_on_disk_until_redis_is_back_then_lands_once(
    tmp_path: Path,
    redis_server: EmbeddedRedis,
    redis_client: Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "worker.outbox")
    landed: list[str] = []

    async def on_landed(redis: Redis, w: LedgerWrite) -> None:
        landed.append(w.job_id)

    redis_server.stop()
    outbox = Outbox(redis_server.url, tmp_path / "outbox", on_landed=on_landed)
    outbox.record(answer("call:office:1.1"))
    outbox.record(answer("call:office:1.1"))  # the same answer twice: counted once
    assert outbox.holds("call:office:1.1") and outbox.pending == 2
    [journal] = [p for p in (tmp_path / "outbox").iterdir()]
    assert stat.S_IMODE((tmp_path / "outbox").stat().st_mode) == 0o700
    assert all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in journal.iterdir())
    assert b'"event_id":"77"' in b"".join(f.read_bytes() for f in journal.glob("*.jsonl"))
    await asyncio.sleep(0.5)
    assert outbox.holds("call:office:1.1")

    redis_server.start()
    await until(lambda: _done(redis_client, "call:office:1.1"))
    await until(lambda: _async(not outbox.holds("call:office:1.1")))
    assert (await read_stats(redis_client))["counters"]["succeeded"] == 1
    assert landed == ["call:office:1.1", "call:office:1.1"]
    assert await outbox.drain(1) == 0
    assert not journal.exists()  # nothing left: its folder goes
    # its lines about the call carry the tags of every line about a call, not the job id
    lines = [r for r in caplog.records if "recorded a CRM answer" in r.getMessage()]
    assert lines and {(r.call_id, r.pbx) for r in lines} == {("1.1", "office")}  # type: ignore[attr-defined]


async def test_a_dead_workers_answers_are_taken_over_by_the_next_one_on_the_host(
    tmp_path: Path, redis_url: str, redis_client: Redis
) -> None:
    """A process keeps an answer while Redis is unreachable and is SIGKILLed: its journal
    stays, unlocked; the next outbox in the same folder takes it over and writes it."""
    code = textwrap.dedent(f"""
        import asyncio, sys
        from worker.ledger import LedgerWrite
        from worker.outbox import Outbox

        async def main():
            outbox = Outbox("redis://127.0.0.1:{free_port()}/0", {str(tmp_path / "outbox")!r})
            outbox.record(LedgerWrite("call:default:2.1", {{"event_id": "5", "state": "done"}},
                                      done=True))
            print("kept", flush=True)
            await asyncio.sleep(60)

        asyncio.run(main())
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"kept\n"
        live = Outbox(redis_url, tmp_path / "outbox", adopt_every_s=0.1)
        live.start()
        await asyncio.sleep(0.5)
        assert not live.holds("call:default:2.1")  # its owner lives: not ours to take
        proc.kill()
        proc.wait(10)
        await until(lambda: _done(redis_client, "call:default:2.1"))
        assert [p.name for p in (tmp_path / "outbox").iterdir()] == [live.dir.name]  # type: ignore[union-attr]
        await live.drain(1)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


async def _done(redis: Redis, job_id: str) -> bool:
    entry = await load(redis, job_id)
    return entry.state == "done" and not await redis.zscore(keys.PENDING, job_id)


async def _async(value: bool) -> bool:
    return value
