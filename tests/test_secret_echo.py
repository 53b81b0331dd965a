"""A CRM that repeats the password in its error text (``you sent pass X``): no rule by shape
sees it, so the configured value itself is masked, in the worker's log, in the dead-letter
store's error history and reason, and in what ``telefum dlq list --errors`` prints."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Callable
from urllib.parse import quote, quote_plus

from redis.asyncio import Redis

from crm_client.types import Credentials
from tests.support.crm import HostileCrm
from tests.support.redis import WorkerProcess, inbound_call
from tests.test_pipeline import config, enqueue, settled
from worker.ledger import error_history, load

PASSWORD = "Tr0ub4dor&3 пароль"
FORMS = (PASSWORD, quote(PASSWORD, safe=""), quote_plus(PASSWORD), "Tr0ub4dor")


def assert_hidden(text: str, where: str) -> None:
    for form in FORMS:
        assert form not in text, f"the password shows in {where}: {text[-2000:]}"


async def test_a_password_the_crm_echoes_is_masked_in_logs_and_dead_letters(
    redis_url: str,
    redis_client: Redis,
    hostile_crm: HostileCrm,
    worker_procs: Callable[..., WorkerProcess],
) -> None:
    cfg = config(hostile_crm.url("echo_password"), Credentials("bridge", PASSWORD))
    worker = worker_procs(cfg)
    await worker.wait_ready(redis_client)
    await enqueue(redis_client, inbound_call("1.1", extension=None))
    stats = await settled(redis_client, 1)
    assert stats["dead_letters"] == 1
    assert any(PASSWORD in q or quote(PASSWORD, safe="") in q for _, q, _ in hostile_crm.seen)

    jid = "call:default:1.1"
    [err] = await error_history(redis_client, jid)
    assert "you sent pass ***" in err["message"]  # the CRM's words are kept, but not that
    assert_hidden(str(err), "the error history")
    assert_hidden((await load(redis_client, jid)).get("dead_reason"), "the dead letter's reason")
    await asyncio.sleep(0.2)
    assert "you sent pass ***" in worker.log()
    assert_hidden(worker.log(), "the worker's log")

    listed = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "telefum.cli", "dlq", "--redis-url", redis_url, "list", "--errors"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert listed.returncode == 0, listed.stderr
    assert "you sent pass ***" in listed.stdout
    assert_hidden(listed.stdout + listed.stderr, "dlq list")
