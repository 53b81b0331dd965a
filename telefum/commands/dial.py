"""``telefum dial telf:+79161234567``: click-to-call from the agent's desktop.

The desktop entry ``deploy/telefum-dial.desktop`` registers this command for ``telf:``
links (``x-scheme-handler/telf``), so a click on a phone in the CRM ends here; it asks the
running bridge to ring the agent's phone and then dial the number (``POST /originate``).

Where the agent's details come from, first found wins:

- extension: ``--extension``, ``$TELEFUM_AGENT_EXTENSION``, the agent file's ``extension``
  (an agent's own token names it, so it may be left out then)
- token: ``$TELEFUM_AGENT_TOKEN``, the agent file's ``token``, else, with ``--config`` (on
  the bridge's own machine), the extension's ``[http.agent_tokens]`` entry or the admin
  ``[http] token``
- bridge: ``--bridge``, ``$TELEFUM_BRIDGE_URL``, the agent file's ``bridge``, ``[http] listen``
  of ``--config``

The agent file is ``$TELEFUM_AGENT_FILE``, else ``~/.config/telefum/agent.toml``
(``$XDG_CONFIG_HOME`` honoured); keep it readable by its owner only. Tokens are never taken
from the command line, where other users could see them.

Exit 0: the agent's phone is ringing; 1: the bridge refused or failed (the reason is
printed); 2: a usage or configuration problem.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import stat
import subprocess
import sys
import tomllib
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from telefum.originate import parse_dial_target

HELP = "ask the running bridge to call a number from your extension (telf: link handler)"

TOKEN_ENV = "TELEFUM_AGENT_TOKEN"
EXTENSION_ENV = "TELEFUM_AGENT_EXTENSION"
BRIDGE_ENV = "TELEFUM_BRIDGE_URL"
AGENT_FILE_ENV = "TELEFUM_AGENT_FILE"
TIMEOUT_S = 10.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target", metavar="URL", help="telf:NUMBER (or tel:, or a bare number)")
    parser.add_argument("--extension", "-e", metavar="EXT", help="the extension that dials")
    parser.add_argument(
        "--config",
        metavar="FILE",
        default=None,
        help="the bridge's settings.toml: its [http] listen and agent tokens",
    )
    parser.add_argument("--bridge", metavar="URL", help="the bridge, e.g. http://pbx:8088")
    parser.add_argument(
        "--notify", action="store_true", help="also show the outcome as a desktop notification"
    )


@dataclass(frozen=True)
class Agent:
    bridge: str
    extension: str | None
    token: str


class UsageError(Exception):
    pass


def extension_needed(environ: Mapping[str, str]) -> str:
    return (
        f"which extension dials? give --extension (-e) EXT, set {EXTENSION_ENV}, "
        f'or put extension = "..." in {agent_file(environ)}'
    )


def agent_file(environ: Mapping[str, str]) -> Path:
    if environ.get(AGENT_FILE_ENV):
        return Path(environ[AGENT_FILE_ENV])
    base = environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "telefum" / "agent.toml"


def _read_agent_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise UsageError(f"cannot read {path}: {err}") from None
    if path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO) and data.get("token"):
        print(
            f"telefum dial: warning: {path} holds a token and others may read it "
            f"(chmod 600 {path})",
            file=sys.stderr,
        )
    return {k: str(v) for k, v in data.items() if k in ("bridge", "extension", "token")}


def resolve_agent(args: argparse.Namespace, environ: Mapping[str, str]) -> Agent:
    """Who dials, with which token, through which bridge (see the module docstring)."""
    file = _read_agent_file(agent_file(environ))
    settings = None
    if args.config or environ.get("TELEFUM_CONFIG"):
        from telefum.config import load_or_exit

        settings = load_or_exit(args.config)
    extension = args.extension or environ.get(EXTENSION_ENV) or file.get("extension")
    token = environ.get(TOKEN_ENV) or file.get("token")
    if not token and not extension:  # no token of the agent's own to say who dials
        raise UsageError(extension_needed(environ))
    if not token and settings is not None and extension:
        known = settings.http.agent_tokens.get(extension)
        token = (known or settings.http.token).get_secret_value() or None
    if not token:
        raise UsageError(
            f'no agent token: set {TOKEN_ENV}, or put token = "..." in {agent_file(environ)}'
        )
    bridge = args.bridge or environ.get(BRIDGE_ENV) or file.get("bridge")
    if not bridge and settings is not None:
        bridge = settings.http.local_url()
    if not bridge:
        bridge = "http://127.0.0.1:8088"
    return Agent(bridge=bridge.rstrip("/"), extension=extension, token=token)


def post_originate(
    agent: Agent, number: str, timeout: float = TIMEOUT_S
) -> tuple[int, dict[str, Any]]:
    """``POST /originate``; (HTTP status, JSON answer). Status 0: the bridge is unreachable."""
    body: dict[str, str] = {"number": number}
    if agent.extension:
        body["extension"] = agent.extension
    req = urllib.request.Request(
        agent.bridge + "/originate",
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {agent.token}"},
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, _json(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, _json(err.read())
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        return 0, {"error": f"the bridge at {agent.bridge} did not answer ({reason})"}


def _json(raw: bytes) -> dict[str, Any]:
    try:
        data = json.loads(raw)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def run(args: argparse.Namespace) -> int:
    number = parse_dial_target(args.target)
    if not number:
        return _say(args, 2, f"no number in {args.target!r}")
    try:
        agent = resolve_agent(args, os.environ)
    except UsageError as err:
        return _say(args, 2, str(err))
    status, answer = post_originate(agent, number)
    if status == 400 and not agent.extension:  # the admin's token: it names no extension
        return _say(args, 2, extension_needed(os.environ))
    if 200 <= status < 300:
        shown = answer.get("number", number)
        ext = answer.get("extension", agent.extension)
        return _say(args, 0, f"calling {shown}: pick up your phone ({ext})")
    reason = answer.get("error") or f"HTTP {status}"
    return _say(args, 1, f"not called: {reason}")


def _say(args: argparse.Namespace, code: int, text: str) -> int:
    print(f"telefum dial: {text}", file=sys.stdout if code == 0 else sys.stderr)
    if getattr(args, "notify", False) and shutil.which("notify-send"):
        urgency = "normal" if code == 0 else "critical"
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run(
                ["notify-send", "-u", urgency, "-a", "Telefum", "Telefum", text],
                check=False,
                timeout=5,
            )
    return code
