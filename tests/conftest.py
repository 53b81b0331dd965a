"""Shared fixtures. Area fixtures live in tests/support/<area>.py (loaded below)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

pytest_plugins = [
    "tests.support.crm",
    "tests.support.redis",
    "tests.support.pbx",
    "tests.support.cdr_db",
]

# Real Asterisk recordings (copied from the project's shared traces, with manifest.json
# saying which calls each must yield). A bug seen on a real PBX becomes a trace here.
TRACES_DIR = Path(__file__).resolve().parent / "traces"


def free_port() -> int:
    """A free TCP port on loopback (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def traces_dir() -> Path:
    if not TRACES_DIR.is_dir():
        pytest.fail(f"recorded traces not found at {TRACES_DIR}")
    return TRACES_DIR
