"""``telefum worker --config settings.toml``: deliver finished calls from Redis to the CRM.

Run as many as you like, on as many machines, against one Redis: jobs are shared out by arq
and each call's ledger makes a second run of it harmless.

Also home of the two builders the other commands (``run``, ``listen``) use, so settings
become worker and hand-off parameters in exactly one place:
:func:`worker_config_from_settings` and :func:`handoff_from_settings`.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from worker.policy import CallPolicy, CrmTarget, RetryPolicy, WorkerConfig

if TYPE_CHECKING:
    from telefum.config import CrmSettings, Settings
    from worker.handoff import Handoff

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


def _target(crm: CrmSettings) -> CrmTarget:
    return CrmTarget(
        url=crm.url,
        service=crm.service,
        agents=dict(crm.agents),
        phone_format=crm.phone_format,
        timeout_s=crm.timeout_s,
    )


def worker_config_from_settings(settings: Settings) -> WorkerConfig:
    """settings.toml -> the worker's parameters. ValueError names what does not fit."""
    w = settings.worker
    calls = CallPolicy(
        log_missed=w.log_missed,
        log_internal=w.log_internal,
        log_unanswered_outbound=w.log_unanswered_outbound,
        create_contacts_for=tuple(w.create_contacts_for),
        contact_name=w.contact_name,
        contact_type=w.contact_type,
        subject_in=w.subject_in,
        subject_out=w.subject_out,
        subject_missed=w.subject_missed,
        description=w.description,
        recording_url=w.recording_url,
        sources=dict(settings.sources),
    )
    return WorkerConfig(
        crm=_target(settings.crm),
        crm_by_pbx={a.name: _target(a.crm) for a in settings.ami if a.crm is not None},
        calls=calls,
        retry=RetryPolicy(total_s=w.retry_total_s),
        job_timeout_s=w.job_timeout_s,
        max_jobs=w.max_jobs,
    )


def handoff_from_settings(
    settings: Settings, redis_url: str, listener_id: str | None = None
) -> Handoff:
    """The listener's hand-over to Redis (start it with ``await handoff.start()``)."""
    from worker.handoff import Handoff

    config = worker_config_from_settings(settings)
    return Handoff(
        redis_url,
        settings.spool_dir,
        queue_name=config.queue_name,
        job_expires_s=config.job_expires_s,
        ledger_ttl_s=config.ledger_ttl_s,
        listener_id=listener_id,
    )


def run(args: argparse.Namespace) -> int:
    import asyncio

    from telefum.config import load_or_exit

    settings = load_or_exit(args.config)
    url = args.redis_url or settings.redis.url
    if not url:
        print(NEEDS_REAL_REDIS, file=sys.stderr)
        return 2
    try:
        config = worker_config_from_settings(settings)
    except ValueError as err:
        print(f"telefum worker: configuration error: {err}", file=sys.stderr)
        return 2
    asyncio.run(_work(settings, config, url, args))
    return 0


async def _work(
    settings: Settings, config: WorkerConfig, url: str, args: argparse.Namespace
) -> None:
    """One worker until SIGINT/SIGTERM (arq's own handlers), counting deliveries for the
    marketers' report."""
    from redis.asyncio import Redis

    from telefum.attribution import attribution_hook
    from worker.app import WorkerService

    redis = Redis.from_url(url, socket_connect_timeout=1.0, socket_timeout=5.0)
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
