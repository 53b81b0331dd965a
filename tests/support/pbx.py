"""Fixtures for the pbx side: a simulated PBX on a real TCP port, and the recorded traces.

``pbx_sim`` is a started :class:`FaultyPbx` (user ``telefum``, secret ``PBX_SECRET``,
instant playback) on a free loopback port; use its Python side (``send``, ``play_trace``,
``drop_clients``, ``inject``, ``originates``, ``messages_sent``) and its faults
(``refuse_connections``, ``silent_actions``). It is stopped after the test.

``TRACES`` (and the ``traces_dir`` fixture) is the folder of recorded real-Asterisk traces:
the one copy, shipped in ``pbxsim/traces`` with its ``manifest.json`` and ``etc/``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from pbxsim import traces_dir as shipped_traces
from pbxsim.server import PbxSimulator

PBX_USER = "telefum"
PBX_SECRET = "sim-secret"
TRACES = Path(str(shipped_traces()))  # pbxsim is a folder of this checkout, not a zip


class FaultyPbx(PbxSimulator):
    """The simulated PBX with the faults a test switches on and off while it runs."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, **kw: Any) -> None:
        super().__init__(host, port, **kw)
        self.refuse_connections = False  # cut every new connection at once (AMI down)
        # actions (lower case: "ping", "originate") taken and left unanswered: a hung PBX
        self.silent_actions: set[str] = set()

    def accepts_connection(self) -> bool:
        return not self.refuse_connections

    def answers(self, action: str) -> bool:
        return action not in self.silent_actions


@pytest.fixture
async def pbx_sim() -> AsyncIterator[FaultyPbx]:
    sim = FaultyPbx("127.0.0.1", 0, username=PBX_USER, secret=PBX_SECRET, speed=0)
    await sim.start()
    try:
        yield sim
    finally:
        await sim.stop()


@pytest.fixture(scope="session")
def traces_dir() -> Path:
    if not (TRACES / "manifest.json").is_file():
        pytest.fail(f"recorded traces not found at {TRACES}")
    return TRACES
