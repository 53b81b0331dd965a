"""``telefum run --config settings.toml``: listener, worker and HTTP in one process.

For small installations. ``telefum listen`` plus ``telefum worker`` are the same parts in
separate processes (workers scale out over machines on one Redis); both commands are this
module with different :class:`~telefum.service.Roles`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from telefum.service import Roles

HELP = "run the whole bridge in one process: AMI listener, worker and HTTP endpoints"

log = logging.getLogger("telefum.run")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="settings.toml (else $TELEFUM_CONFIG)")
    parser.add_argument("--redis-url", help="overrides [redis] url")


def run(args: argparse.Namespace) -> int:
    return serve(args, Roles(listen=True, work=True, http=True), "run")


def serve(args: argparse.Namespace, roles: Roles, name: str) -> int:
    """Load the settings, run the bridge with these roles until SIGINT/SIGTERM."""
    from telefum.config import load_or_exit, log_warnings
    from telefum.service import Bridge, BridgeError, signal_stop

    settings = load_or_exit(args.config)
    log_warnings(settings)

    async def main() -> int:
        bridge = Bridge(settings, roles, redis_url=args.redis_url)
        stop = signal_stop()
        try:
            await bridge.start()
        except (BridgeError, ValueError, OSError) as err:
            print(f"telefum {name}: {err}", file=sys.stderr)
            return 2
        log.info("telefum %s: %s", name, bridge.describe())
        try:
            await stop.wait()
        finally:
            log.info("telefum %s: stopping", name)
            await bridge.stop()
        return 0

    return asyncio.run(main())
