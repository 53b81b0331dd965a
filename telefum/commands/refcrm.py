"""``telefum refcrm``: run the reference TelefUM CRM (aiohttp + SQLite).

    telefum refcrm --db crm.sqlite --port 8080 --user bridge:secret --user ivan:ivanpw

Prints one line ``refcrm listening on http://HOST:PORT/`` on stdout once it accepts
connections (``--port 0`` picks a free port and that line tells which), logs to stderr,
stops cleanly on SIGINT/SIGTERM. Phones match in any format through
``telephony.phones.to_e164`` with ``--country`` as the default country.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import signal
import sys
from pathlib import Path

from crm_client.refcrm import FAIL_MODES, QUIRKS, create_app, parse_lose_replies
from telephony.phones import to_e164

HELP = "run the reference TelefUM CRM (aiohttp + SQLite) for the demo, tests and CRM implementers"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", required=True, type=Path, help="SQLite file (created if missing)")
    parser.add_argument("--port", type=int, default=8080, help="TCP port (0: any free port)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument(
        "--user",
        action="append",
        required=True,
        metavar="LOGIN:PASSWORD",
        help="a CRM user (repeat for several); the author of what its requests create",
    )
    parser.add_argument(
        "--latency-ms",
        type=float,
        default=0.0,
        help="delay added to every /rest request (benchmarks)",
    )
    parser.add_argument("--country", default="RU", help="default country for phone matching")
    parser.add_argument(
        "--encoding",
        choices=("utf-8", "windows-1251"),
        default="utf-8",
        help="charset of /rest answers",
    )
    parser.add_argument("--access-log", action="store_true", help="log every request (stderr)")
    test = parser.add_argument_group("test-only knobs (never for a real deployment)")
    test.add_argument(
        "--test-control",
        action="store_true",
        help="enable POST /_control to change failures at run time",
    )
    test.add_argument(
        "--fail-mode",
        choices=sorted(FAIL_MODES),
        default=None,
        help="make /rest fail: " + "; ".join(f"{k}: {v}" for k, v in FAIL_MODES.items()),
    )
    test.add_argument(
        "--quirk",
        action="append",
        default=[],
        choices=sorted(QUIRKS),
        help="break one protocol point on purpose (check-crm tests)",
    )
    test.add_argument(
        "--lose-replies",
        type=parse_lose_replies,
        default={},
        metavar="TYPEREQ:SHARE[,...]",
        help="carry out that share of those requests, then close the connection "
        "without an answer (e.g. addcont:0.15)",
    )
    test.add_argument("--seed", type=int, default=None, help="for --lose-replies")


def parse_users(specs: list[str]) -> dict[str, str]:
    users: dict[str, str] = {}
    for spec in specs:
        login, sep, password = spec.partition(":")
        if not sep or not login or not password:
            raise ValueError(f"--user wants LOGIN:PASSWORD, got {login or spec!r}")
        users[login] = password
    return users


def run(args: argparse.Namespace) -> int:
    try:
        users = parse_users(args.user)
    except ValueError as err:
        print(f"telefum refcrm: {err}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_serve(args, users))
    except OSError as err:  # port taken, db not writable
        print(f"telefum refcrm: {err}", file=sys.stderr)
        return 1


async def _serve(args: argparse.Namespace, users: dict[str, str]) -> int:
    from aiohttp import web

    app = create_app(
        args.db,
        users,
        functools.partial(to_e164, default_country=args.country),
        latency_s=args.latency_ms / 1000,
        fail_mode=args.fail_mode,
        quirks=args.quirk,
        encoding=args.encoding,
        test_control=args.test_control,
        lose_replies=args.lose_replies,
        seed=args.seed,
    )
    # A request it has read is carried out even if its client goes away meanwhile, as a CRM
    # behind nginx and PHP-FPM does: what the bridge counts as a possible duplicate then is
    # one. (A "hang" request ends at shutdown, after shutdown_timeout.)
    runner_kwargs: dict[str, object] = {"handler_cancellation": False, "shutdown_timeout": 2.0}
    if args.access_log:
        # setup_logging quiets aiohttp.access; asked for, it is shown, through the same
        # redacting handler (the request line carries login and password in its query)
        import logging

        logging.getLogger("aiohttp.access").setLevel(logging.INFO)
    else:
        runner_kwargs["access_log"] = None
    runner = web.AppRunner(app, **runner_kwargs)  # type: ignore[arg-type]
    await runner.setup()
    try:
        site = web.TCPSite(runner, args.host, args.port)
        await site.start()
        host, port = runner.addresses[0][:2]
        shown = f"[{host}]" if ":" in host else host
        print(f"refcrm listening on http://{shown}:{port}/ (db {args.db})", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()
    return 0
