"""``telefum dlq`` and ``telefum worker`` as ops run them (real Redis, real subprocesses)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from tests.support.redis import inbound_call
from worker import dlq, keys
from worker.policy import DEFAULT_QUEUE
from worker.queue import enqueue_call

Q = DEFAULT_QUEUE


def record(i: int) -> dict[str, Any]:
    return inbound_call(f"1764158400.{i}")


async def dead(redis: Redis, n: int, contact_of_first: str | None = None) -> list[str]:
    """n calls that died (as a job leaves them: arq's keys gone, the ledger says dead)."""
    ids = []
    for i in range(n):
        await enqueue_call(redis, record(i), queue_name=Q, expires_s=3600, ledger_ttl_s=3600)
        jid = f"call:default:1764158400.{i}"
        await redis.delete(f"arq:job:{jid}")
        await redis.zrem(Q, jid)
        await redis.rpush(
            keys.errors(jid),
            json.dumps(
                {
                    "at": 1764158500.0,
                    "attempt": 1,
                    "error": "PermanentCrmError",
                    "message": "PermanentCrmError: Неправильный логин или пароль",
                    "transient": False,
                    "action": "dead letter",
                }
            ),
        )
        await dlq.dead_letter(redis, jid, "permanent: PermanentCrmError: Неправильный логин")
        ids.append(jid)
    if contact_of_first:
        await redis.hset(keys.ledger(ids[0]), "contact_id", contact_of_first)
    return ids


def telefum(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "telefum.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


async def test_list_shows_each_dead_letter_with_its_reason_and_history(
    redis_url: str, redis_client: Redis
) -> None:
    await dead(redis_client, 2, contact_of_first="77")
    out = telefum("dlq", "list", "--errors", "--redis-url", redis_url)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "2 dead letter(s), oldest first (times UTC):"
    assert lines[1].startswith("call:default:1764158400.0  died ")
    assert "after 0 attempt(s)  call: in +79161234567 2025-11-26T12:00" in lines[1]
    assert "reason: permanent: PermanentCrmError: Неправильный логин" in lines[2]
    assert "contact 77 is already in the CRM" in lines[3]
    assert "attempt 1: PermanentCrmError: Неправильный логин или пароль -> dead letter" in lines[4]


async def test_list_json_gives_one_object_per_dead_letter(
    redis_url: str, redis_client: Redis
) -> None:
    ids = await dead(redis_client, 3)
    out = telefum("dlq", "--redis-url", redis_url, "list", "--json")
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["id"] for r in rows] == ids
    assert rows[0]["record"]["external"] == "+79161234567"
    assert rows[0]["errors"][0]["error"] == "PermanentCrmError"


async def test_requeue_by_call_id_puts_it_back_and_drop_forgets_for_good(
    redis_url: str, redis_client: Redis
) -> None:
    ids = await dead(redis_client, 2)
    out = telefum("dlq", "requeue", "1764158400.0", "--redis-url", redis_url)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"requeued {ids[0]}"
    assert await redis_client.zrange(Q, 0, -1) == [ids[0].encode()]

    out = telefum("dlq", "drop", ids[1], "--redis-url", redis_url)
    assert out.stdout.strip() == f"dropped {ids[1]}"
    assert await dlq.count(redis_client) == 0
    # a listener handing the dropped call over again does not bring it back
    again = await enqueue_call(redis_client, record(1), queue_name=Q, expires_s=60, ledger_ttl_s=60)
    assert again == "dropped"


async def test_unknown_ids_and_missing_arguments_say_so_and_fail(redis_url: str) -> None:
    out = telefum("dlq", "requeue", "nope", "--redis-url", redis_url)
    assert out.returncode == 1 and "no dead letter 'nope'" in out.stderr
    out = telefum("dlq", "drop", "nope", "--redis-url", redis_url)
    assert out.returncode == 1
    out = telefum("dlq", "requeue", "--redis-url", redis_url)
    assert out.returncode == 2 and "give one ID or --all" in out.stderr


async def test_requeue_all_of_many_shows_progress_on_stderr(
    redis_url: str, redis_client: Redis
) -> None:
    await dead(redis_client, 40)
    out = telefum("dlq", "requeue", "--all", "--redis-url", redis_url)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "requeued 40 dead letter(s)"
    progress = out.stderr.splitlines()
    assert progress[-1] == "requeueing 40/40"
    assert len(progress) >= 5  # every 10%: ops see it move
    assert await redis_client.zcard(Q) == 40


def test_without_a_redis_url_both_commands_explain_what_to_do(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    out = telefum("worker", env=env)
    assert out.returncode == 2
    assert "separate worker processes need a shared Redis" in out.stderr
    out = telefum("dlq", "list", env=env)
    assert out.returncode == 2
    assert "give --redis-url or set [redis] url" in out.stderr


async def test_a_redis_that_is_not_there_is_a_clear_error(tmp_path: Path) -> None:
    from tests.conftest import free_port

    out = telefum("dlq", "list", "--redis-url", f"redis://127.0.0.1:{free_port()}/0")
    assert out.returncode == 1
    assert out.stderr.startswith("telefum dlq: Redis at redis://127.0.0.1:")
    assert "Traceback" not in out.stderr


async def test_list_prints_a_crm_error_page_title_escaped_on_its_own_line(
    redis_url: str, redis_client: Redis
) -> None:
    """An error page's title is stored in the dead letter; printing it must not clear the
    operator's screen, colour it or add lines of its own."""
    (jid,) = await dead(redis_client, 1)
    title = "502 \x1b[2J\x1b[31mBad Gateway\n1764158400.9  died \x9b0m\u202efake"
    await redis_client.rpush(
        keys.errors(jid),
        json.dumps(
            {
                "at": 1764158600.0,
                "attempt": 2,
                "error": "TransientCrmError",
                "message": f"HTTP 502: {title}",
                "transient": True,
                "action": "dead letter",
            }
        ),
    )
    await dlq.dead_letter(redis_client, jid, f"gave up: HTTP 502: {title}")

    out = telefum("dlq", "list", "--errors", "--redis-url", redis_url)
    assert out.returncode == 0, out.stderr
    assert not any(c in out.stdout for c in "\x1b\x9b\u202e")
    reason = [line for line in out.stdout.splitlines() if "reason:" in line]
    assert reason == [
        "    reason: gave up: HTTP 502: 502 \\x1b[2J\\x1b[31mBad Gateway\\n1764158400.9  died "
        "\\x9b0m\\u202efake"
    ]
    assert not any(line.startswith("1764158400.9") for line in out.stdout.splitlines())

    raw = telefum("dlq", "list", "--json", "--redis-url", redis_url).stdout
    assert not any(c in raw for c in "\x1b\x9b\u202e")
    (row,) = [json.loads(line) for line in raw.splitlines()]
    assert row["reason"] == f"gave up: HTTP 502: {title}"
