"""The sample Grafana dashboard queries only metrics the bridge exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from telefum.health import LinkState, Snapshot
from telefum.metrics import CallCounts, render
from tests.test_metrics import record, stats

DASHBOARD = Path(__file__).resolve().parent.parent / "deploy" / "grafana" / "telefum-bridge.json"


def exported_names() -> set[str]:
    calls = CallCounts()
    calls.observe(record("in", "answered"))
    snap = Snapshot(
        now=100.0,
        links=(LinkState("office", True, 99.0, active_calls=1),),
        stats=stats(),
        spool_size=0,
    )
    return {
        s.name
        for fam in text_string_to_metric_families(render(snap, calls, process=False).decode())
        for s in fam.samples
    }


def test_every_metric_the_dashboard_queries_is_exported() -> None:
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    used = {name for e in exprs for name in re.findall(r"\btelefum_[a-z_]+", e)}
    assert used, "the dashboard queries nothing"
    assert used - exported_names() == set()


def test_panels_do_not_overlap() -> None:
    cells: set[tuple[int, int]] = set()
    for p in json.loads(DASHBOARD.read_text())["panels"]:
        g = p["gridPos"]
        xs, ys = range(g["x"], g["x"] + g["w"]), range(g["y"], g["y"] + g["h"])
        mine = {(x, y) for x in xs for y in ys}
        assert not cells & mine, p["title"]
        assert g["x"] + g["w"] <= 24
        cells |= mine
