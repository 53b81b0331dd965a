"""The ``telefum`` command: a table of subcommands, each in its own module."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import Any

from telefum import __version__

# subcommand -> module under telefum.commands (imported only when that command runs,
# so `telefum replay` does not pay for aiohttp or Redis imports).
COMMANDS: dict[str, str] = {
    "run": "run",
    "listen": "listen",
    "worker": "worker",
    "replay": "replay",
    "simulate-pbx": "simulate_pbx",
    "refcrm": "refcrm",
    "check-crm": "check_crm",
    "dlq": "dlq",
    "queue": "queue",
    "config": "config_cmd",
    "status": "status",
    "demo": "demo",
    "dial": "dial",
    "report": "report",
}


def _load(name: str) -> Any:
    return importlib.import_module(f"telefum.commands.{COMMANDS[name]}")


def build_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="telefum", description="Asterisk <-> TelefUM CRM bridge")
    parser.add_argument("--version", action="version", version=f"telefum-bridge {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--log-json", action="store_true", help="log one JSON object per line")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    # Only the module of the command being run is imported; the others get a stub entry.
    wanted = next((a for a in argv if a in COMMANDS), None)
    for name in COMMANDS:
        if name == wanted:
            mod = _load(name)
            p = sub.add_parser(name, help=mod.HELP, description=mod.HELP)
            mod.add_arguments(p)
            p.set_defaults(_run=mod.run)
        else:
            sub.add_parser(name, help=_help_of(name) if wanted is None else "", add_help=False)
    return parser


def _help_of(name: str) -> str:
    try:
        return str(_load(name).HELP)
    except Exception:  # a command whose module fails to import still shows up
        return ""


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(args_list)
    args = parser.parse_args(args_list)
    from telefum.logs import setup_logging

    setup_logging(verbose=args.verbose, json_lines=args.log_json)
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `telefum status | head`: the reader went away; say nothing more (as the Python docs
        # advise, point stdout at /dev/null so the exit-time flush does not raise again)
        import os

        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
