"""``telefum queue retry-now``: run every call waiting for a retry now.

    telefum queue --config settings.toml retry-now

A call the CRM failed waits before its next attempt, 5 s at first and doubling up to 10
minutes: once the CRM is back, the last calls of an outage would wait that long. This makes
every waiting call due at once (the workers take them within a second). A worker does it by
itself when a CRM that was failing answers again (docs/operations.md); this is for doing it
now. Like ``telefum dlq``, it talks to Redis (``[redis] url`` or ``--redis-url``).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from telefum.commands.dlq import redis_arguments, redis_target

HELP = "run every call waiting for a retry now (after the CRM is back)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common = redis_arguments(parser)
    sub = parser.add_subparsers(dest="queue_command", metavar="ACTION", required=True)
    sub.add_parser(
        "retry-now", parents=[common], help="make every call waiting for a retry due now"
    )


def run(args: argparse.Namespace) -> int:
    target = redis_target(args, "queue")
    if isinstance(target, int):
        return target
    url, opts = target
    return asyncio.run(_retry_now(url, opts))


async def _retry_now(url: str, opts: dict[str, Any]) -> int:
    from redis.exceptions import RedisError

    from crm_client.redact import redact_url
    from worker.queue import retry_now
    from worker.redis_url import connect

    redis = connect(url, socket_connect_timeout=2, socket_timeout=10)
    try:
        moved = await retry_now(redis, opts["queue_name"])
    except RedisError as err:
        print(f"telefum queue: Redis at {redact_url(url)}: {err}", file=sys.stderr)
        return 1
    finally:
        await redis.aclose()
    if moved:
        print(f"{moved} waiting call(s) made due now: the workers take them at once")
    else:
        print("no call is waiting for a retry")
    return 0
