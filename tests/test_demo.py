"""``telefum demo``: the whole chain on embedded defaults, run as the user runs it."""

from __future__ import annotations

import json
import subprocess
import sys

from pbxsim.synth import plan
from tests.support.crm import REPO


def test_demo_delivers_every_played_call_and_ends_with_the_json_summary() -> None:
    calls, rate, seed = 24, 6.0, 5
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "telefum.cli",
            "demo",
            "--calls",
            str(calls),
            "--rate",
            str(rate),
            "--speed",
            "10",
            "--seed",
            str(seed),
            "--timeout",
            "60",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    # the demo creates contacts for every call with an outside party: one per new number
    callers = {c.facts["external"] for c in plan(calls, rate, seed)}
    assert summary == {
        "calls": calls,
        "delivered": calls,
        "contacts_created": len(callers),
        "events": calls,
        "dead_letters": 0,
    }
    assert len(callers) < calls  # regulars called again: found, not created twice
    # the marketers' table counts every inbound call of the mix
    inbound = sum(1 for c in plan(calls, rate, seed) if c.facts["direction"] == "in")
    (total,) = [line for line in proc.stdout.splitlines() if line.startswith("Total ")]
    assert total.split()[1] == str(inbound)
    assert "Traceback" not in proc.stderr
