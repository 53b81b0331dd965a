"""``telefum worker --config settings.toml``: deliver finished calls from Redis to the CRM.

Run as many as you like, on as many machines, against one Redis: jobs are shared out by arq
and each call's ledger makes a second run of it harmless.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from telefum.config import Settings
    from worker.policy import WorkerConfig

HELP = "run a worker: deliver finished calls from Redis to the CRM (start several to scale out)"

NEEDS_REAL_REDIS = (
    "telefum worker: [redis] url is empty. An empty url means a private Redis that lives "
    "inside `telefum run` (which runs its own worker); separate worker processes need a "
    "shared Redis: set [redis] url, TELEFUM_REDIS__URL or --redis-url."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="settings.toml (else $TELEFUM_CONFIG)")
    parser.add_argument("--redis-url", help="overrides [redis] url")
    parser.add_argument("--worker-id", help="name in heartbeats (default host:pid)")
    parser.add_argument("--burst", action="store_true", help="stop once the queue is empty")


def run(args: argparse.Namespace) -> int:
    import asyncio

    from telefum import wiring
    from telefum.config import load_or_exit, log_warnings

    settings = load_or_exit(args.config)
    log_warnings(settings)
    url = args.redis_url or settings.redis.url.get_secret_value()
    if not url:
        print(NEEDS_REAL_REDIS, file=sys.stderr)
        return 2
    from crm_client.redact import register_secrets
    from worker.redis_url import RedisAddress

    try:
        register_secrets([RedisAddress.parse(url).password or ""])
    except ValueError as err:
        print(f"telefum worker: --redis-url: {err}", file=sys.stderr)
        return 2
    try:
        config = wiring.worker_config(settings)
    except ValueError as err:
        print(f"telefum worker: configuration error: {err}", file=sys.stderr)
        return 2
    asyncio.run(_work(settings, config, url, args))
    return 0


async def _work(
    settings: Settings, config: WorkerConfig, url: str, args: argparse.Namespace
) -> None:
    """One worker until SIGINT/SIGTERM (its own handlers: worker/app.py), counting
    deliveries for the marketers' report."""
    from telefum.attribution import attribution_hook
    from worker.app import WorkerService
    from worker.redis_url import connect

    redis = connect(url, socket_connect_timeout=1.0, socket_timeout=5.0)
    try:
        await WorkerService(
            config,
            url,
            worker_id=args.worker_id,
            burst=args.burst,
            on_delivered=attribution_hook(redis, dict(settings.sources)),
        ).run()
    finally:
        await redis.aclose()
