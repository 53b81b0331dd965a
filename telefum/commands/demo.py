"""``telefum demo``: the whole chain on embedded defaults (see :mod:`telefum.demo`).

Exit 0 when every call the simulated PBX played reached the CRM as the bridge says it did.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from pathlib import Path

from telefum.demo import DemoOptions, run_demo

HELP = "run the bridge end to end on a private Redis, the reference CRM and a simulated PBX"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = DemoOptions()
    parser.add_argument("--calls", type=int, default=d.calls, help="calls to play")
    parser.add_argument("--rate", type=float, default=d.rate, help="calls per second (PBX time)")
    parser.add_argument(
        "--speed",
        type=float,
        default=d.speed,
        help="PBX time runs this many times faster than real time",
    )
    parser.add_argument("--seed", type=int, default=d.seed, help="the mix's random seed")
    parser.add_argument(
        "--timeout",
        type=float,
        default=d.timeout_s,
        help="seconds to wait for the last calls to reach the CRM",
    )
    parser.add_argument(
        "--workdir", type=Path, help="keep the CRM database, settings and Redis data here"
    )
    parser.add_argument(
        "--serve",
        action="store_true",
        help="keep running after the summary (agent pages, CRM) until Ctrl-C",
    )


def run(args: argparse.Namespace) -> int:
    if args.calls < 1 or args.rate <= 0 or args.speed <= 0:
        print("telefum demo: --calls must be >= 1, --rate and --speed > 0")
        return 2
    if not getattr(args, "verbose", False):
        # the progress bar and the summary tell the story; -v shows every call's log line
        logging.getLogger().setLevel(logging.WARNING)
    opts = DemoOptions(
        calls=args.calls,
        rate=args.rate,
        speed=args.speed,
        seed=args.seed,
        timeout_s=args.timeout,
        workdir=args.workdir,
        serve=args.serve,
    )
    result = asyncio.run(run_demo(opts))
    return 0 if result.ok else 1
