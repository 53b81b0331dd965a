"""``telefum config check [--config F]``: validate settings and show what the bridge will use.

Exit 0 and the effective configuration (file + environment overrides + defaults) as TOML
on stdout, secrets masked; a broken configuration gives one line on stderr and exit 2.
"""

from __future__ import annotations

import argparse

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
        "--quiet", "-q", action="store_true", help="print nothing when the configuration is fine"
    )


def run(args: argparse.Namespace) -> int:
    settings = load_or_exit(args.config)
    if args.quiet:
        return 0
    origin = str(settings.source_file) if settings.source_file else "embedded defaults"
    print(f"# effective configuration: {origin}; secrets masked")
    if settings.env_overrides:
        print(f"# overridden by the environment: {', '.join(settings.env_overrides)}")
    warning = _exposure_warning(settings.http.host, bool(settings.http.token))
    if warning:
        print(f"# warning: {warning}")
    print(settings_to_toml(settings), end="")
    return 0


def _exposure_warning(host: str, has_token: bool) -> str | None:
    """Listening beyond loopback is allowed, but ops should know what they exposed."""
    if host in ("127.0.0.1", "localhost", "::1"):
        return None
    exposed = f"[http] listen is {host}, reachable from the network"
    if has_token:
        return f"{exposed}; acting endpoints need the token"
    return f"{exposed}; [http] token is empty, so acting endpoints are disabled"
