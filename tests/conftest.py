"""Shared fixtures. Area fixtures live in tests/support/<area>.py (loaded below)."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from crm_client import redact

pytest_plugins = [
    "tests.support.crm",
    "tests.support.redis",
    "tests.support.pbx",
    "tests.support.cdr_db",
    "tests.support.sentinel",
    "tests.support.procs",
]


def free_port() -> int:
    """A free TCP port on loopback (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(autouse=True)
def _registered_secrets_stay_in_their_test() -> Iterator[None]:
    """Secrets registered by one test's settings are masked in that test only."""
    before = redact.registered_secrets()
    yield
    redact.forget_secrets(keep=before)
