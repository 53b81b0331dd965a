"""The end-to-end benchmark in its smallest size: the real processes (listener, worker,
reference CRM, private Redis) and the simulated PBX, one short step of calls.

It checks the plumbing the figures depend on, not the figures: every played call is
found in the CRM's own file once, and each has a hangup-to-stored latency.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import e2e_bench


@pytest.mark.timeout(90)
def test_quick_run_finds_every_played_call_in_the_crm_with_its_latency(tmp_path: Path) -> None:
    out = tmp_path / "e2e.json"
    figures = e2e_bench.main(["--quick", "--no-wait-quiet", "--out", str(out)])

    assert json.loads(out.read_text(encoding="utf-8"))["runs"] == figures["runs"]
    (run,) = figures["runs"]
    (step,) = run["steps"]
    assert step["calls"] == step["expected"] > 0
    assert step["stored"] == step["calls"] and step["missing"] == 0
    assert step["duplicates"] == 0
    for key in ("p50_s", "p95_s", "p99_s", "max_s"):
        assert step[key] is not None and 0 < step[key] < 30, (key, step[key])
    assert step["p50_s"] <= step["p95_s"] <= step["p99_s"] <= step["max_s"]
    assert set(step["cpu_cores"]) >= {"listener", "worker1", "crm", "redis", "others"}


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert e2e_bench.percentile(values, 50) == 50.0
    assert e2e_bench.percentile(values, 99) == 99.0
    assert e2e_bench.percentile([3.0], 99) == 3.0
    assert e2e_bench.percentile([], 50) is None
