"""Fixtures for the pbx side: a simulated PBX on a real TCP port, and the recorded traces.

``pbx_sim`` is a started :class:`FaultyPbx` (user ``telefum``, secret ``PBX_SECRET``,
instant playback) on a free loopback port; use its Python side (``send``, ``play_trace``,
``drop_clients``, ``inject``, ``originates``, ``messages_sent``), its faults
(``refuse_connections``, ``silent_actions``) and its ``Master.csv`` (``cdr_csv``). It is
stopped after the test.

``TRACES`` (and the ``traces_dir`` fixture) is the folder of recorded real-Asterisk traces:
the one copy, shipped in ``pbxsim/traces`` with its ``manifest.json`` and ``etc/``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from pbxsim import traces_dir as shipped_traces
from pbxsim.server import PbxSimulator
from telephony.ami import Message

if TYPE_CHECKING:
    from tests.support.cdr_rows import TraceCdr

PBX_USER = "telefum"
PBX_SECRET = "sim-secret"
TRACES = Path(str(shipped_traces()))  # pbxsim is a folder of this checkout, not a zip


class FaultyPbx(PbxSimulator):
    """The simulated PBX with the faults a test switches on and off while it runs.

    With ``cdr_csv`` set it also writes ``Master.csv`` as Asterisk's ``cdr_csv`` does
    (``loguniqueid``, ``loguserfield``, ``newcdrcolumns``): a line per ``Cdr`` event it
    plays, whether or not anyone is connected, ``cdr_delay_s`` after it (Asterisk writes
    the CDR from its own thread, a moment after the hangup; ``batch = yes`` much later).
    With ``keep_cdrs`` it keeps those rows in ``cdrs`` (a test puts them in a database)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, **kw: Any) -> None:
        super().__init__(host, port, **kw)
        self.refuse_connections = False  # cut every new connection at once (AMI down)
        # actions (lower case: "ping", "originate") taken and left unanswered: a hung PBX
        self.silent_actions: set[str] = set()
        self.cdr_csv: Path | None = None
        self.cdr_delay_s = 0.0
        self.cdr_lines = 0  # lines written to cdr_csv
        self.keep_cdrs = False  # keep every CDR row played in ``cdrs`` (for a database)
        self.cdrs: list[TraceCdr] = []
        self._linkedid: dict[str, str] = {}
        self._did: dict[str, str] = {}

    def accepts_connection(self) -> bool:
        return not self.refuse_connections

    def answers(self, action: str) -> bool:
        return action not in self.silent_actions

    def played(self, messages: Sequence[Message]) -> None:
        if self.cdr_csv is None and not self.keep_cdrs:
            return
        from tests.support.cdr_rows import TraceCdr, csv_line  # it imports TRACES from here

        for msg in messages:
            uid = msg.get("Uniqueid")
            if uid and msg.get("Linkedid"):
                self._linkedid[uid] = msg["Linkedid"]
            if (
                uid
                and msg.get("Event") == "VarSet"
                and msg.get("Variable") in ("FROM_DID", "__FROM_DID")
            ):
                self._did[uid] = msg.get("Value", "")
            if msg.get("Event") == "Cdr":
                row = msg["UniqueID"]
                cdr = TraceCdr(dict(msg), self._linkedid.get(row, row), self._did.get(row, ""))
                if self.keep_cdrs:
                    self.cdrs.append(cdr)
                if self.cdr_csv is None:
                    continue
                line = csv_line(cdr, newcolumns=True)
                if self.cdr_delay_s > 0:
                    asyncio.get_running_loop().call_later(self.cdr_delay_s, self._write, line)
                else:
                    self._write(line)

    def _write(self, line: str) -> None:
        assert self.cdr_csv is not None
        with self.cdr_csv.open("a", encoding="utf-8") as f:
            f.write(line)
        self.cdr_lines += 1


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
