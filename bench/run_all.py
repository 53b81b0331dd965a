"""``make bench``: every benchmark in turn, the combined ``bench/results.json``, the plot.

Tracker throughput, then memory, then end to end (the longest; it waits for a quiet
machine first). Each prints its own table; a summary of the headline figures and the
targets of issue 7 comes last. ``--quick`` runs each in its smoke-test size.

    python -m bench.run_all [--quick] [--only tracker memory e2e]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import e2e_bench, memory_bench, plot, tracker_bench
from bench.common import machine_info

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results.json"
BENCHES: dict[str, Callable[[list[str] | None], dict[str, Any]]] = {
    "tracker": tracker_bench.main,
    "memory": memory_bench.main,
    "e2e": e2e_bench.main,
}


def summary(results: dict[str, Any]) -> list[str]:
    """The headline figures, one line each, with the target they answer."""
    lines = []
    t = results.get("tracker") or {}
    if "ours" in t:
        lines.append(
            f"tracker: {t['ours']['events_per_s']:,.0f} events/s on one core (target >= 100,000)"
        )
        if "ours_vs_cacofonisk" in t:
            lines.append(f"tracker: {t['ours_vs_cacofonisk']:.1f}x cacofonisk (target >= 2x)")
    m = results.get("memory") or {}
    if "bytes_per_active_call" in m:
        lines.append(
            f"memory: {m['bytes_per_active_call']:,.0f} bytes per active call (target < 4096)"
        )
    e = results.get("e2e") or {}
    for run in e.get("runs", []):
        lines.append(
            f"e2e: CRM {run['crm_latency_ms']:g} ms, {run['workers']} worker(s): "
            f"the {run['max_rate_held']:g} calls/s step held "
            f"({run.get('max_hangup_rate_held', 0):g} hangups/s measured; zero loss, p99 < 1 s)"
        )
    if "target" in e:
        tg = e["target"]
        lines.append(
            f"e2e target ({tg['calls_per_s']} calls/s, {tg['workers']} workers, "
            f"{tg['crm_latency_ms']} ms CRM): {'met' if tg['met'] else 'NOT met'}"
        )
    for name, r in results.items():
        if isinstance(r, dict) and "error" in r and name in BENCHES:
            lines.append(f"{name}: FAILED ({r['error']})")
    return lines


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="python -m bench.run_all", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="every benchmark in its smoke size")
    p.add_argument("--only", nargs="+", choices=list(BENCHES), help="run only these")
    args = p.parse_args(argv)
    t0 = time.monotonic()
    results: dict[str, Any] = {
        "machine": machine_info(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    for name, run in BENCHES.items():
        if args.only and name not in args.only:
            continue
        print(f"\n=== {name} ===", flush=True)
        t = time.monotonic()
        try:
            results[name] = run(["--quick"] if args.quick else [])
        except Exception as err:  # one failed benchmark must not lose the others' figures
            traceback.print_exc()
            results[name] = {"error": f"{type(err).__name__}: {err}"}
        print(f"({name}: {time.monotonic() - t:.0f} s)", flush=True)
    results["elapsed_s"] = round(time.monotonic() - t0, 1)
    if args.only and RESULTS.exists():  # a partial run keeps the others' last figures
        kept = json.loads(RESULTS.read_text(encoding="utf-8"))
        results = {**{k: v for k, v in kept.items() if k in BENCHES}, **results}
    RESULTS.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    if "runs" in results.get("e2e", {}):
        print(f"plot: {plot.plot(results['e2e'])}")
    print("\n=== summary ===")
    for line in summary(results):
        print(line)
    print(f"(all: {results['elapsed_s']:g} s; figures in {RESULTS})", flush=True)
    if any(isinstance(r, dict) and "error" in r for r in results.values()):
        sys.exit(1)
    return results


if __name__ == "__main__":
    main()
