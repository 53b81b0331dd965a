"""``telefum config check [--config F]``: validate settings and show what the bridge will use.

Exit 0 and the effective configuration (file + environment overrides + defaults) as TOML
on stdout, secrets masked; a broken configuration gives one line on stderr and exit 2.
Warnings (what runs but should not stay so) go to stderr, with ``--quiet`` too.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from typing import Any

import tomli_w
from pydantic import Secret, SecretStr

from telefum.config import Settings, load_or_exit

HELP = "check settings.toml (and TELEFUM_* overrides) and print the effective configuration"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    check = sub.add_parser(
        "check", help="validate and print the effective configuration, secrets masked"
    )
    check.add_argument(
        "--config",
        metavar="FILE",
        default=None,
        help="settings file (default: $TELEFUM_CONFIG, else the embedded defaults)",
    )
    check.add_argument(
        "--quiet",
        "-q",
        action="store_true",
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


def settings_to_toml(settings: Settings, mask_secrets: bool = True) -> str:
    """The effective settings as TOML: what ``telefum config check`` prints (masked)."""

    def plain(value: Any) -> Any:
        if isinstance(value, Secret | SecretStr):
            return str(value) if mask_secrets else value.get_secret_value()
        if isinstance(value, Mapping):
            return {k: plain(v) for k, v in value.items() if v is not None}
        if isinstance(value, list | tuple):
            return [plain(v) for v in value]
        return getattr(value, "value", value)  # an enum: its value

    doc = plain(settings.model_dump())
    if len(doc["ami"]) == 1:
        doc["ami"] = doc["ami"][0]  # written as [ami], as the file usually has it
    return tomli_w.dumps(doc)
