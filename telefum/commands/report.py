"""``telefum report [--since 7d] [--format table|csv|json]``: calls per tracking number.

For marketers: per tracking number and ad source (``[sources]``), the calls the bridge
delivered to the CRM, how many were answered or missed, how many new contacts they brought,
first calls vs repeat calls, and the median wait; ``--daily`` splits them per day.

The figures are read from the bridge's Redis (``[redis] url``). With a private Redis (an
empty url) only the running bridge can reach it, so the command asks the bridge instead
(``GET /report.json`` at ``[http] listen`` or ``--bridge``, with ``[http] report_token`` or
``[http] token``; ``$TELEFUM_HTTP__REPORT_TOKEN`` works as for every key).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from telefum.attribution import FIGURES, parse_since
from telefum.config import Settings, load_or_exit
from telefum.private_redis import redis_url

HELP = "calls per tracking number and ad source: answered, missed, new contacts, first/repeat"

COLUMNS = {
    "tracking_number": "Tracking number",
    "source": "Source",
    "calls": "Calls",
    "answered": "Answered",
    "missed": "Missed",
    "new_contacts": "New contacts",
    "first_calls": "First calls",
    "repeat_calls": "Repeat calls",
    "median_wait_s": "Median wait, s",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--since",
        default="7d",
        metavar="WHEN",
        help="start: 7d, 24h, 30m, 2w ago, or a date 2026-11-01 (default 7d)",
    )
    parser.add_argument("--until", default=None, metavar="WHEN", help="end (default: now)")
    parser.add_argument("--format", choices=("table", "csv", "json"), default="table")
    parser.add_argument("--daily", action="store_true", help="one row per day and number")
    parser.add_argument(
        "--tz", default=None, metavar="ZONE", help="time zone of days, e.g. Europe/Moscow"
    )
    parser.add_argument("--config", metavar="FILE", default=None, help="settings.toml")
    parser.add_argument(
        "--bridge",
        metavar="URL",
        default=None,
        help="ask this running bridge instead of Redis, e.g. http://127.0.0.1:8088",
    )


def run(args: argparse.Namespace) -> int:
    settings = load_or_exit(args.config)
    try:
        tz = ZoneInfo(args.tz) if args.tz else None
        now = time.time()
        since = parse_since(args.since, now, tz)
        until = parse_since(args.until, now, tz) if args.until else now
    except (ValueError, ZoneInfoNotFoundError) as err:
        print(f"telefum report: {err}", file=sys.stderr)
        return 2
    url = redis_url(settings)
    try:
        if url and not args.bridge:
            report = asyncio.run(_from_redis(url, settings, since, until, tz))
        else:
            report = _from_bridge(settings, args, tz)
    except ReportUnavailable as err:
        print(f"telefum report: {err}", file=sys.stderr)
        return 1
    sys.stdout.write(render(report, args.format, daily=args.daily))
    return 0


class ReportUnavailable(Exception):
    pass


async def _from_redis(
    url: str, settings: Settings, since: float, until: float, tz: tzinfo | None
) -> dict[str, Any]:
    from redis.exceptions import RedisError

    from crm_client.redact import redact_url
    from telefum.attribution import Attribution
    from worker.redis_url import connect

    client = connect(url, socket_timeout=10)
    try:
        return await Attribution(client, sources=settings.sources).report(since, until, tz)
    except (RedisError, OSError) as err:
        raise ReportUnavailable(f"Redis at {redact_url(url)}: {err}") from None
    finally:
        await client.aclose()


def _from_bridge(settings: Settings, args: argparse.Namespace, tz: tzinfo | None) -> dict[str, Any]:
    bridge = args.bridge or settings.http.local_url()
    token = (settings.http.report_token or settings.http.token).get_secret_value()
    query = {"since": args.since, **({"until": args.until} if args.until else {})}
    if tz is not None:
        query["tz"] = str(tz)
    req = urllib.request.Request(
        f"{bridge.rstrip('/')}/report.json?{urllib.parse.urlencode(query)}",
        headers={"Authorization": f"Bearer {token}"},
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            data = json.loads(resp.read())
    except urllib.error.HTTPError as err:
        try:
            reason = json.loads(err.read()).get("error", "")
        except ValueError:
            reason = ""
        said = f"the bridge at {bridge} said {err.code} {reason}".strip()
        raise ReportUnavailable(said) from None
    except (urllib.error.URLError, OSError, ValueError) as err:
        raise ReportUnavailable(f"the bridge at {bridge} did not answer ({err})") from None
    if not isinstance(data, dict) or "numbers" not in data:
        raise ReportUnavailable(f"the bridge at {bridge} sent no report")
    return data


# --- output (pure) ------------------------------------------------------------------------


def _rows(report: dict[str, Any], daily: bool) -> tuple[list[str], list[dict[str, Any]]]:
    keys = ["tracking_number", "source", *FIGURES]
    if daily:
        return ["day", *keys], list(report["days"])
    return keys, list(report["numbers"])


def render(report: dict[str, Any], fmt: str, *, daily: bool = False) -> str:
    """The report as ``table``, ``csv`` or ``json`` text."""
    if fmt == "json":
        return json.dumps(report, ensure_ascii=False, indent=2) + "\n"
    keys, rows = _rows(report, daily)
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(keys)
        for r in rows:
            w.writerow(["" if r.get(k) is None else r.get(k) for k in keys])
        return buf.getvalue()
    return _table(report, keys, rows)


def _table(report: dict[str, Any], keys: list[str], rows: list[dict[str, Any]]) -> str:
    def text(k: str, v: Any) -> str:
        if v is None:
            return "-"
        if k == "tracking_number" and v == "":
            return "(unknown)"
        return str(v)

    heads = [COLUMNS.get(k, k.capitalize()) for k in keys]
    body = [[text(k, r.get(k)) for k in keys] for r in rows]
    totals = report["totals"]
    pad = [""] * (len(keys) - len(FIGURES) - 1)
    total = ["Total", *pad, *[text(k, totals[k]) for k in FIGURES]]
    widths = [max(len(h), *(len(b[i]) for b in [*body, total])) for i, h in enumerate(heads)]
    numeric = [k in FIGURES for k in keys]

    def line(cells: list[str]) -> str:
        cols = zip(cells, widths, numeric, strict=True)
        out = [c.rjust(w) if n else c.ljust(w) for c, w, n in cols]
        return "  ".join(out).rstrip()

    lines = [
        f"Calls from {report['since']} to {report['until']} ({report['tz']})",
        "",
        line(heads),
        line(["-" * w for w in widths]),
        *(line(b) for b in body),
    ]
    if not body:
        lines.append("(no calls)")
    lines += [line(["-" * w for w in widths]), line(total)]
    return "\n".join(lines) + "\n"
