"""Shared fixtures. Area fixtures live in tests/support/<area>.py (loaded below)."""

from __future__ import annotations

import socket

pytest_plugins = [
    "tests.support.crm",
    "tests.support.redis",
    "tests.support.pbx",
    "tests.support.cdr_db",
    "tests.support.procs",
]


def free_port() -> int:
    """A free TCP port on loopback (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
