"""``telefum dlq list | requeue ID|--all | drop ID``: the calls that could not reach the CRM.

    telefum dlq --config settings.toml list            # what died, when, and why
    telefum dlq list --errors                          # ... with every failed attempt
    telefum dlq list --json                            # one JSON object per dead letter
    telefum dlq requeue call:default:1732633200.17     # after fixing the cause
    telefum dlq requeue --all
    telefum dlq drop 1732633200.17                     # forget it for good

An ID is the job id shown by ``list`` (``call:{pbx}:{call_id}``), or just the call id when
it is unambiguous. A requeued call starts a fresh retry budget and keeps what the CRM
already has (its contact, its event), so requeueing never duplicates.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from datetime import UTC, datetime
from typing import Any

HELP = "list, requeue or drop dead letters (calls that could not reach the CRM)"

NEEDS_REDIS = (
    "telefum dlq: no Redis to look in: give --redis-url or set [redis] url. (An empty url "
    "means the private Redis of a `telefum run` with these settings, and none is running.)"
)


def redis_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``--config`` and ``--redis-url`` on the command, and on the parent parser returned
    for its actions, so they may come before or after the ACTION (SUPPRESS there: an
    action without them keeps the command's). Shared by ``dlq`` and ``queue``."""
    common = argparse.ArgumentParser(add_help=False)
    for p, default in ((parser, None), (common, argparse.SUPPRESS)):
        p.add_argument(
            "--config", metavar="FILE", default=default, help="settings.toml (else $TELEFUM_CONFIG)"
        )
        p.add_argument("--redis-url", default=default, help="overrides [redis] url")
    return common


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common = redis_arguments(parser)
    sub = parser.add_subparsers(dest="dlq_command", metavar="ACTION", required=True)
    p = sub.add_parser("list", parents=[common], help="show the dead letters, oldest first")
    p.add_argument("--errors", action="store_true", help="show every failed attempt")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--limit", type=int, default=None, help="at most N")
    p = sub.add_parser("requeue", parents=[common], help="put dead letters back on the queue")
    p.add_argument("id", nargs="?", metavar="ID")
    p.add_argument("--all", action="store_true", help="every dead letter")
    p = sub.add_parser("drop", parents=[common], help="forget a dead letter for good")
    p.add_argument("id", metavar="ID")


def redis_target(args: argparse.Namespace, command: str) -> tuple[str, dict[str, Any]] | int:
    """The Redis URL and queue options of the settings (``--config``, ``--redis-url``), or
    an exit status once the reason is on stderr. Shared by ``dlq`` and ``queue``."""
    from worker.policy import DEFAULT_QUEUE, RetryPolicy, WorkerConfig

    url = getattr(args, "redis_url", None)
    queue, expires_s, ledger_ttl_s = DEFAULT_QUEUE, RetryPolicy().total_s + 86400.0, 30 * 86400.0
    if getattr(args, "config", None) or not url:
        from telefum.config import load_or_exit

        settings = load_or_exit(getattr(args, "config", None))
        from telefum.private_redis import redis_url

        url = url or redis_url(settings)
        try:
            from telefum.wiring import worker_config

            config: WorkerConfig = worker_config(settings)
            queue, expires_s, ledger_ttl_s = (
                config.queue_name,
                config.job_expires_s,
                config.ledger_ttl_s,
            )
        except ValueError as err:
            print(f"telefum {command}: configuration error: {err}", file=sys.stderr)
            return 2
    if not url:
        print(NEEDS_REDIS.replace("telefum dlq", f"telefum {command}"), file=sys.stderr)
        return 2
    return url, {"queue_name": queue, "expires_s": expires_s, "ledger_ttl_s": ledger_ttl_s}


def run(args: argparse.Namespace) -> int:
    target = redis_target(args, "dlq")
    if isinstance(target, int):
        return target
    url, opts = target
    if args.dlq_command == "requeue" and bool(args.id) == bool(args.all):
        print("telefum dlq requeue: give one ID or --all", file=sys.stderr)
        return 2
    return asyncio.run(_main(args, url, opts))


async def _main(args: argparse.Namespace, url: str, opts: dict[str, Any]) -> int:
    from redis.exceptions import RedisError

    from crm_client.redact import redact_url
    from worker.redis_url import connect

    redis = connect(url, socket_connect_timeout=2, socket_timeout=10)
    try:
        if args.dlq_command == "list":
            return await _list(redis, args)
        if args.dlq_command == "requeue":
            return await _requeue(redis, args, opts)
        return await _drop(redis, args)
    except RedisError as err:
        print(f"telefum dlq: Redis at {redact_url(url)}: {err}", file=sys.stderr)
        return 1
    finally:
        await redis.aclose()


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _call_summary(record: dict[str, Any] | None) -> str:
    if not record:
        return "-"
    who = record.get("external") or "-"
    return f"{record.get('direction', '?')} {who} {str(record.get('started_at') or '')[:16]}"


async def _list(redis: Any, args: argparse.Namespace) -> int:
    """Stored errors hold the CRM's words (an error page's title): every line is printed
    escaped, so none can break a line or drive the terminal."""
    from telefum.logs import escape_controls, json_dumps_safe
    from worker import dlq

    letters = await dlq.list_dead(redis, args.limit, with_errors=args.errors or args.json)
    if args.json:
        for dl in letters:
            print(json_dumps_safe(dl.to_json()))
        return 0
    total = await dlq.count(redis)
    if not letters:
        print("no dead letters")
        return 0
    lines: list[str] = []
    shown = f" (showing {len(letters)})" if len(letters) < total else ""
    lines.append(f"{total} dead letter(s){shown}, oldest first (times UTC):")
    for dl in letters:
        lines.append(
            f"{dl.id}  died {_when(dl.dead_at)}  after {dl.attempts} attempt(s)  "
            f"call: {_call_summary(dl.record)}"
        )
        lines.append(f"    reason: {dl.reason}")
        if dl.contact_id:
            lines.append(f"    contact {dl.contact_id} is already in the CRM (a requeue reuses it)")
        for e in dl.errors:
            if e.get("requeued"):
                lines.append(f"    {_when(e.get('at'))}  requeued")
            else:
                lines.append(
                    f"    {_when(e.get('at'))}  attempt {e.get('attempt', '?')}: "
                    f"{e.get('message', '')} -> {e.get('action', '')}"
                )
    for line in lines:
        print(escape_controls(line))
    return 0


class _Progress:
    """``requeued 1234/5000`` on stderr: rewritten in place on a terminal, every 10% else."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.tty = sys.stderr.isatty()
        self.last = 0.0
        self.step = 0

    def __call__(self, done: int, total: int) -> None:
        if total < 20:
            return
        if self.tty:
            now = time.monotonic()
            if now - self.last >= 0.1 or done == total:
                self.last = now
                bar = "#" * (30 * done // total)
                sys.stderr.write(f"\r{self.what} [{bar:<30}] {done}/{total}")
                if done == total:
                    sys.stderr.write("\n")
                sys.stderr.flush()
        elif done * 10 // total > self.step or done == total:
            self.step = done * 10 // total
            print(f"{self.what} {done}/{total}", file=sys.stderr, flush=True)


async def _requeue(redis: Any, args: argparse.Namespace, opts: dict[str, Any]) -> int:
    from worker import dlq

    if args.all:
        outcomes = await dlq.requeue_all(redis, progress=_Progress("requeueing"), **opts)
        n = outcomes.get("queued", 0)
        others = ", ".join(f"{v} {k}" for k, v in sorted(outcomes.items()) if k != "queued")
        print(f"requeued {n} dead letter(s)" + (f"; not requeued: {others}" if others else ""))
        return 0
    jid = await dlq.resolve(redis, args.id)
    if jid is None:
        print(f"telefum dlq: no dead letter {args.id!r} (see `telefum dlq list`)", file=sys.stderr)
        return 1
    outcome = await dlq.requeue(redis, jid, **opts)
    if outcome != "queued":
        print(f"telefum dlq: {jid} not requeued: {outcome}", file=sys.stderr)
        return 1
    print(f"requeued {jid}")
    return 0


async def _drop(redis: Any, args: argparse.Namespace) -> int:
    from worker import dlq

    jid = await dlq.resolve(redis, args.id)
    if jid is None or not await dlq.drop(redis, jid):
        print(f"telefum dlq: no dead letter {args.id!r} (see `telefum dlq list`)", file=sys.stderr)
        return 1
    print(f"dropped {jid}")
    return 0
