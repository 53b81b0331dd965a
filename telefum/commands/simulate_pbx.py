"""``telefum simulate-pbx``: a simulated Asterisk manager interface for demos and tests.

Serves AMI on ``--host:--port`` (``--port 0``: any free port; the chosen one is printed on
the first stdout line, ``listening on HOST:PORT``). Once the first client has logged in it
plays the ``--trace`` recordings one after the other (rebased to now, fresh ids each time,
original timing divided by ``--speed``) and/or ``--calls N`` synthetic calls at ``--rate``
calls per second (``--raw`` files first: pre-encoded bytes sent as they are, for
benchmarks); ``--loop`` repeats forever. It keeps serving (Ping, Originate,
CoreShowChannels) until interrupted; SIGINT/SIGTERM exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from pathlib import Path

from pbxsim.server import PbxSimulator

HELP = "run a simulated Asterisk AMI server that plays recorded traces or a synthetic mix"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=5038, help="TCP port (0: any free port)")
    parser.add_argument("--username", default="telefum", help="AMI user to accept")
    parser.add_argument("--secret", default="change-me", help="AMI secret to accept")
    parser.add_argument(
        "--trace",
        action="extend",
        nargs="+",
        default=[],
        metavar="FILE",
        help="raw AMI recording(s) to play, in order (the option may repeat)",
    )
    parser.add_argument(
        "--raw",
        action="extend",
        nargs="+",
        default=[],
        metavar="FILE",
        help="pre-encoded AMI bytes to send as they are, as fast as the client reads "
        "(benchmarks; no rebasing, no pacing, unseen by CoreShowChannels)",
    )
    parser.add_argument(
        "--calls",
        type=int,
        default=0,
        metavar="N",
        help="also play N synthetic calls (pbxsim.synth)",
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=1.0,
        metavar="R",
        help="synthetic calls started per second (default 1)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=1,
        metavar="S",
        help="seed of the synthetic mix (same seed, same calls)",
    )
    parser.add_argument(
        "--speed",
        type=float,
        default=1.0,
        help="play this many times faster than recorded; 0: no waiting",
    )
    parser.add_argument("--loop", action="store_true", help="play everything again, forever")


def run(args: argparse.Namespace) -> int:
    missing = [t for t in [*args.trace, *args.raw] if not Path(t).is_file()]
    if missing:
        print(f"simulate-pbx: no such trace file: {', '.join(missing)}", file=sys.stderr)
        return 2
    if args.calls < 0 or args.rate <= 0 or args.speed < 0:
        print("simulate-pbx: --calls must be >= 0, --rate > 0, --speed >= 0", file=sys.stderr)
        return 2
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main(args))
    return 0


async def _main(args: argparse.Namespace) -> None:
    sim = PbxSimulator(
        args.host, args.port, username=args.username, secret=args.secret, speed=args.speed
    )
    await sim.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    print(f"listening on {sim.host}:{sim.port}", flush=True)
    player = asyncio.create_task(_play(sim, args))
    try:
        await stop.wait()
    finally:
        player.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await player
        await sim.stop()
        print(
            f"simulate-pbx: {sim.events_played} events played, {sim.messages_sent} sent, "
            f"{sim.logins} logins, {len(sim.originates)} originates",
            file=sys.stderr,
        )


async def _play(sim: PbxSimulator, args: argparse.Namespace) -> None:
    if not args.trace and not args.calls and not args.raw:
        return
    await sim.wait_for_logins(1, timeout=None)
    while True:
        for raw in args.raw:
            await sim.stream_raw(raw)
        for trace in args.trace:
            await sim.play_trace(trace)
        if args.calls:
            await sim.play_synth(args.calls, args.rate, args.seed)
        if not args.loop:
            return
