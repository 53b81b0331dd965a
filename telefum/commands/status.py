"""``telefum status [--config F] [--watch]``: one screen for ops.

Where the figures come from: the running service's ``GET /health`` (at ``[http] listen``, or
``--url``), which carries everything: the AMI links (only the listener process knows them),
Redis, the queue, dead letters, worker heartbeats and the spool. When the service does not
answer, status reads Redis itself (``[redis] url``) for what Redis knows (queue, dead
letters, workers, the spool sizes listeners published) and says the service is down.

Exit status: 0 healthy, 1 unhealthy or the service unreachable, 2 bad configuration.
``--check-worker`` (for container health checks): 0 when a worker on this host sends
heartbeats.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
import time
from datetime import datetime
from typing import Any

HELP = "show the bridge's state: AMI links, queue, retries, dead letters, workers, spool"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="settings.toml (else $TELEFUM_CONFIG)")
    parser.add_argument("--url", help="the service's base URL (default: from [http] listen)")
    parser.add_argument("--watch", action="store_true", help="refresh until Ctrl-C")
    parser.add_argument(
        "--interval", type=float, default=2.0, metavar="S", help="refresh period for --watch"
    )
    parser.add_argument("--json", action="store_true", help="print the raw JSON of /health")
    parser.add_argument(
        "--check-worker",
        action="store_true",
        help="exit 0 if a worker on this host sends heartbeats (container health checks)",
    )


def run(args: argparse.Namespace) -> int:
    from telefum.config import load_or_exit

    settings = load_or_exit(args.config)
    if args.check_worker:
        return asyncio.run(_check_worker(settings))
    url = (args.url or base_url(settings.http.listen)).rstrip("/")
    if not args.watch:
        code, text = asyncio.run(_once(settings, url, args.json))
        print(text)
        return code
    tty = sys.stdout.isatty()
    code = 1
    try:
        while True:
            code, text = asyncio.run(_once(settings, url, args.json))
            if tty:
                sys.stdout.write("\x1b[H\x1b[2J")
            print(text, flush=True)
            time.sleep(max(0.2, args.interval))
    except KeyboardInterrupt:
        return code


def base_url(listen: str) -> str:
    """Where to reach the service from this machine, given its ``[http] listen``."""
    from telefum.web import split_listen

    host, port = split_listen(listen)
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


async def gather(settings: Any, url: str, timeout_s: float = 3.0) -> dict[str, Any]:
    """/health's JSON, or (service down) what Redis alone can say, with ``service`` added."""
    import aiohttp

    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as http,
            http.get(f"{url}/health") as resp,
        ):
            body = await resp.json(content_type=None)
            body["service"] = {"url": url, "reachable": True, "http_status": resp.status}
            return dict(body)
    except (aiohttp.ClientError, TimeoutError, ValueError) as err:
        down = _why(err)
    body = await _from_redis(settings)
    body["service"] = {"url": url, "reachable": False, "error": down}
    body["status"] = "unhealthy"
    body["reasons"] = [f"service not reachable at {url}: {down}", *body.get("reasons", [])]
    return body


async def _from_redis(settings: Any) -> dict[str, Any]:
    from telefum.health import crm_routes, evaluate, observe
    from telefum.private_redis import redis_url

    url = redis_url(settings)
    if not url:
        return {
            "ami": None,
            "redis": None,
            "reasons": [
                "[redis] url is empty and no `telefum run` private Redis is running: "
                "nothing to read"
            ],
        }
    from worker.redis_url import connect

    redis = connect(url, socket_connect_timeout=1, socket_timeout=3)
    try:
        snap = await observe([], redis, settings.health, crms=crm_routes(settings))
    finally:
        await redis.aclose()
    body = evaluate(snap, settings.health).to_json()
    body["ami"] = None  # only the service knows its links
    return body


async def _once(settings: Any, url: str, as_json: bool) -> tuple[int, str]:
    from telefum.logs import json_dumps_safe

    body = await gather(settings, url)
    code = 0 if body.get("status") == "ok" and body["service"]["reachable"] else 1
    if as_json:
        return code, json_dumps_safe(body, indent=2)
    return code, render(body)


def _why(err: BaseException) -> str:
    if isinstance(err, TimeoutError):
        return "no answer in time"
    text = str(err) or type(err).__name__
    return text.split("\n")[0][:160]


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    if seconds < 120:
        return f"{seconds:.1f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def render(body: dict[str, Any], now: float | None = None) -> str:
    """The one screen, from /health's JSON (pure: the tests feed it dicts). Its texts come
    from outside (a PBX's login answer, a Redis error): each line is printed escaped."""
    from telefum.logs import escape_controls

    lines: list[str] = []
    service = body.get("service", {})
    verdict = {"ok": "OK", "degraded": "DEGRADED"}.get(str(body.get("status")), "UNHEALTHY")
    if not service.get("reachable", True):
        verdict = "UNHEALTHY"
    stamp = datetime.fromtimestamp(now or time.time()).strftime("%H:%M:%S")
    version = f" {body['version']}" if body.get("version") else ""
    lines.append(f"telefum-bridge{version}   {verdict}   {service.get('url', '')}   {stamp}")
    for reason in body.get("reasons", []):
        lines.append(f"  ! {reason}")
    lines.append("")

    ami = body.get("ami")
    lines.append("AMI")
    if ami is None:
        lines.append("  unknown (only the running service knows its links)")
    elif not ami:
        lines.append("  no PBX configured in this process")
    for link in ami or []:
        state = "up" if link["connected"] else "DOWN"
        if link.get("login_error"):
            state = f"LOGIN REJECTED ({link['login_error']})"
        elif not link["connected"] and link.get("last_error"):
            state = f"DOWN ({link['last_error']})"
        active = link.get("active_calls")
        lines.append(
            f"  {link['pbx']:<12} {state:<8} last event {_age(link.get('last_event_age_s'))}"
            f"   events {link.get('events_received', 0):,}   reconnects {link.get('reconnects', 0)}"
            + (f"   active calls {active}" if active is not None else "")
        )

    redis = body.get("redis")
    if redis is not None:
        if not redis.get("checked", True):
            lines.append("Redis         not checked")
        else:
            ok = "ok" if redis.get("ok") else f"UNREACHABLE ({redis.get('error', '')})"
            lines.append(f"Redis         {ok}")

    for crm in body.get("crm") or []:
        lines.append(f"CRM           {crm['url']}   {_crm_state(crm)}")

    why = " (Redis unreachable)" if redis is not None and not redis.get("ok", True) else ""
    queue = body.get("queue")
    if queue is None:
        lines.append(f"Queue         unknown{why}")
    else:
        lines.append(
            f"Queue         {queue['depth']} queued ({queue['due']} due, "
            f"{queue['retrying']} retrying)   {queue['in_progress']} in progress   "
            f"{queue['pending']} not yet delivered"
        )
        dead = queue["dead_letters"]
        hint = "   (telefum dlq list)" if dead else ""
        lines.append(f"Dead letters  {dead}{hint}")

    workers = body.get("workers")
    if workers is None:
        lines.append(f"Workers       unknown{why}")
    else:
        lines.append(f"Workers       {workers['alive']} alive")
        for w in workers.get("heartbeats", []):
            lines.append(
                f"  {w['id']:<24} beat {_age(w.get('age_s'))}   running {w.get('running', 0)}"
                f"   done {w.get('done', 0):,}"
            )

    spool = body.get("spool")
    if spool is None:
        lines.append("Spool         unknown")
    elif spool.get("error"):
        lines.append(f"Spool         UNREADABLE ({spool['error']})")
    else:
        state = (
            "empty"
            if spool["size"] == 0
            else (
                "draining"
                if spool.get("draining")
                else f"STUCK for {spool.get('stalled_s', 0):.0f} s"
            )
        )
        lines.append(f"Spool         {spool['size']} calls waiting ({state})")
    return "\n".join(escape_controls(line) for line in lines)


def _crm_state(crm: dict[str, Any]) -> str:
    """``ok``, or since when it fails and how many calls wait for it."""
    waiting = crm.get("waiting")
    calls = "" if waiting is None else f"   {waiting} calls waiting"
    if crm.get("failing"):
        since = datetime.fromtimestamp(crm["failing_since"]).strftime("%H:%M:%S")
        return (
            f"FAILING since {since}   {crm.get('failures', 0)} requests failed{calls}"
            "   (once it answers: telefum queue retry-now)"
        )
    if crm.get("failing_since") is not None:
        return f"not answering lately   the last {crm.get('failures', 0)} request(s) failed{calls}"
    if crm.get("last_ok_age_s") is None:
        return "no request yet"
    return f"ok   last answer {_age(crm['last_ok_age_s'])}"


async def _check_worker(settings: Any) -> int:
    from telefum.private_redis import redis_url
    from worker.redis_url import connect
    from worker.stats import read_stats

    url = redis_url(settings)
    if not url:
        print("no [redis] url: nothing to check", file=sys.stderr)
        return 1
    host = socket.gethostname()
    redis = connect(url, socket_connect_timeout=1, socket_timeout=3)
    try:
        stats = await asyncio.wait_for(read_stats(redis), settings.health.redis_timeout_s + 3)
    except Exception as err:
        print(f"Redis unreachable: {_why(err)}", file=sys.stderr)
        return 1
    finally:
        await redis.aclose()
    max_age = settings.health.worker_heartbeat_max_age_s
    mine = [w for w in stats["workers"] if w.get("host") == host and w["age_s"] <= max_age]
    if not mine:
        print(f"no fresh worker heartbeat from host {host}", file=sys.stderr)
        return 1
    print(f"worker alive: {', '.join(w['id'] for w in mine)}")
    return 0
