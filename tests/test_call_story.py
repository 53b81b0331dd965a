"""One call's story is one grep: every line any process writes about a call carries
``call_id=<linkedid> pbx=<name>``, in that form, whatever happened to the call (README,
"For ops"; the tags come from ``telephony.records.log_tags``)."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
from redis.asyncio import Redis

from pbxsim.server import PbxSimulator
from tests.conftest import free_port
from tests.support.crm import RefCrmProcess
from tests.support.procs import Proc, bridge_settings
from worker import keys
from worker.ledger import load

ANSWERED = "01-inbound-answered-caller-hangup.ami"  # +79161234567 -> 101, 5 s of talk
USERS = {"bridge": "bridge-pw"}
TAGS = re.compile(r"call_id=(\S+) pbx=(\S+)")


async def until(
    check: Callable[[], Awaitable[object]], what: str, procs: list[Proc], timeout_s: float = 30.0
) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        for p in procs:
            assert p.proc.returncode is None, f"exited before {what}:\n{p.tail()}"
        assert time.monotonic() < deadline, f"no {what}:\n" + "\n---\n".join(
            p.tail() for p in procs
        )
        await asyncio.sleep(0.1)


async def healthy(port: int) -> bool:
    try:
        async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/health") as r:
            return r.status == 200
    except aiohttp.ClientError:
        return False


def lines_about(log: str, call_id: str) -> list[str]:
    return [line for line in log.splitlines() if call_id in line]


async def test_every_line_about_a_retried_dead_lettered_and_requeued_call_has_its_call_id_and_pbx(
    tmp_path: Path,
    pbx_sim: PbxSimulator,
    redis_url: str,
    redis_client: Redis,
    refcrm_process: Callable[..., RefCrmProcess],
    telefum: Callable[..., Awaitable[Proc]],
    traces_dir: Path,
) -> None:
    crm = refcrm_process(USERS, extra_args=("--test-control",))
    http_port = free_port()
    config = bridge_settings(
        tmp_path / "settings.toml",
        pbx_port=pbx_sim.port,
        crm_url=crm.rest_url,
        crm_password=USERS["bridge"],
        redis_url=redis_url,
        http_port=http_port,
    )
    listen = await telefum("listen", "--config", str(config))
    worker = await telefum("worker", "--config", str(config))
    procs = [listen, worker]

    async def ledger_is(state: str) -> bool:
        return (await load(redis_client, job)).state == state

    await until(lambda: healthy(http_port), "a healthy /health", procs)
    await crm.control(fail_mode="503")  # the first attempt: retried
    await pbx_sim.play_trace(traces_dir / ANSWERED)  # (the simulator gives it a new id)
    await until(lambda: redis_client.zcard(keys.PENDING), "the call queued", procs)
    [job] = [keys.text(m) for m in await redis_client.zrange(keys.PENDING, 0, -1)]
    _, pbx, call_id = job.split(":", 2)  # call:{pbx}:{call_id}
    assert pbx == "office"
    await until(lambda: ledger_is("retrying"), "a retry", procs)
    await crm.control(fail_mode="error")  # the next: <result>error</result>, dead-lettered
    await until(lambda: ledger_is("dead"), "a dead letter", procs)
    await crm.control(fail_mode="")
    requeue = await telefum("dlq", "requeue", call_id, "--config", str(config))
    assert await requeue.proc.wait() == 0, requeue.tail()
    await until(lambda: ledger_is("done"), "the delivery after the requeue", procs)
    assert [desc for _, _, desc, _ in crm.events()] == [
        "Длительность 0:05; добавочный 101; номер +74951234567"
    ]
    for p in procs:
        assert await p.terminate() == 0, p.tail()

    heard = {
        "listen": lines_about(listen.text(), call_id),
        "worker": lines_about(worker.text(), call_id),
    }
    assert any("call finished" in line for line in heard["listen"]), listen.text()
    for what in ("retry 1 in", "call dead-lettered", "call delivered"):
        assert any(what in line for line in heard["worker"]), (what, worker.text())
    for name, lines in heard.items():
        for line in lines:
            assert TAGS.findall(line) == [(call_id, "office")], (name, line)
            assert f"call:office:{call_id}" not in line, (name, line)
    for p in procs:  # and no line about any call in another form
        for line in p.text().splitlines():
            if "call_id=" in line:
                assert TAGS.search(line), line
