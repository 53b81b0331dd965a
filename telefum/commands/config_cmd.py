"""``telefum config check [--config F]``: validate settings and show what the bridge will use.

Exit 0 and the effective configuration (file + environment overrides + defaults) as TOML
on stdout, secrets masked; a broken configuration gives one line on stderr and exit 2.
Warnings (what runs but should not stay so) go to stderr, with ``--quiet`` too.
"""

from __future__ import annotations

import argparse
import sys

from telefum.config import load_or_exit, settings_to_toml

HELP = "check settings.toml (and TELEFUM_* overrides) and print the effective configuration"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    check = sub.add_parser(
        "check", help="validate and print the effective configuration, secrets masked"
    )
    check.add_argument(
        "--config", metavar="FILE", default=None,
        help="settings file (default: $TELEFUM_CONFIG, else the embedded defaults)",
    )
    check.add_argument(
        "--quiet", "-q", action="store_true",
        help="print only warnings (on stderr) when the configuration is valid",
    )


def run(args: argparse.Namespace) -> int:
    settings = load_or_exit(args.config)
    for warning in settings.warnings():
        print(f"telefum: configuration warning: {warning}", file=sys.stderr)
    if args.quiet:
        return 0
    origin = str(settings.source_file) if settings.source_file else "embedded defaults"
    print(f"# effective configuration: {origin}; secrets masked")
    if settings.env_overrides:
        print(f"# overridden by the environment: {', '.join(settings.env_overrides)}")
    print(settings_to_toml(settings), end="")
    return 0
