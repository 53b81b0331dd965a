"""Fixtures for the pbx side: a simulated PBX on a real TCP port.

``pbx_sim`` is a started :class:`telephony.simulator.PbxSimulator` (user ``telefum``,
secret ``PBX_SECRET``, instant playback) on a free loopback port; use its Python hooks
(``send``, ``play_trace``, ``drop_clients``, ``inject``, ``answer_pings``,
``refuse_connections``, ``originates``, ``messages_sent``). It is stopped after the test.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from telephony.simulator import PbxSimulator

PBX_USER = "telefum"
PBX_SECRET = "sim-secret"


@pytest.fixture
async def pbx_sim() -> AsyncIterator[PbxSimulator]:
    sim = PbxSimulator("127.0.0.1", 0, username=PBX_USER, secret=PBX_SECRET, speed=0)
    await sim.start()
    try:
        yield sim
    finally:
        await sim.stop()
