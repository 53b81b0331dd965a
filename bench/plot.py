"""The README's plot: hangup-to-CRM latency (p50 / p95 / p99) against the call rate.

One panel per percentile, one line per setting (CRM latency, worker processes), from the
end-to-end figures (``bench/results-e2e.json``, or the ``e2e`` part of ``results.json``).
A step that lost or duplicated a call is drawn as a hollow marker; the 1 s target is the
dashed line.

    python -m bench.plot [--results bench/results-e2e.json] [--out docs/perf-latency.png]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_RESULTS = REPO / "bench" / "results-e2e.json"
DEFAULT_OUT = REPO / "docs" / "perf-latency.png"
PERCENTILES = (("p50_s", "p50"), ("p95_s", "p95"), ("p99_s", "p99"))
COLOURS = {0: "tab:green", 50: "tab:blue", 200: "tab:red"}  # by CRM latency, ms


def plot(e2e: dict[str, Any], out: Path = DEFAULT_OUT) -> Path:
    """Draw the end-to-end figures into ``out`` (PNG); returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 4.4), sharey=True, constrained_layout=True)
    for ax, (key, label) in zip(axes, PERCENTILES, strict=True):
        for run in e2e["runs"]:
            steps = [s for s in run["steps"] if s.get(key) is not None]
            if not steps:
                continue
            colour = COLOURS.get(int(run["crm_latency_ms"]))
            style = "-" if run["workers"] > 1 else "--"
            rates = [s.get("hangup_rate", s["rate"]) for s in steps]
            values = [s[key] for s in steps]
            name = f"CRM {run['crm_latency_ms']:g} ms, {run['workers']} worker(s)"
            ax.plot(rates, values, style, color=colour, label=name, linewidth=1.6)
            for s in steps:
                lost = s["missing"] or s["duplicates"]
                ax.plot(
                    s.get("hangup_rate", s["rate"]),
                    s[key],
                    "o",
                    color=colour,
                    markersize=5,
                    markerfacecolor="white" if lost else colour,
                )
        ax.axhline(1.0, color="grey", linestyle=":", linewidth=1)
        ax.set_yscale("log")
        ax.set_title(f"{label}: last hangup -> event stored in the CRM")
        ax.set_xlabel("calls hanging up per second (the load)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("seconds (log scale)")
    axes[0].legend(fontsize=8, loc="upper left")
    machine = e2e.get("machine", {})
    fig.suptitle(
        f"telefum-bridge end to end on {machine.get('cores', '?')} cores "
        f"({machine.get('cpu', 'unknown CPU')}); every part on the same machine",
        fontsize=10,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def load_e2e(path: Path) -> dict[str, Any]:
    """The end-to-end figures from their own file or from the combined results."""
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data["e2e"] if "e2e" in data and "runs" not in data else data


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="python -m bench.plot", description=__doc__.split("\n")[0])
    p.add_argument("--results", type=Path, default=DEFAULT_RESULTS)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    out = plot(load_e2e(args.results), args.out)
    print(f"plot: wrote {out}")
    return {"plot": str(out)}


if __name__ == "__main__":
    main()
