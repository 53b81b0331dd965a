"""Memory of the listener's tracking half: 10,000 calls in progress, then after 100,000
finished calls (it must come back down: nothing kept per finished call).

Measured in a fresh child process holding only what a listener holds (``AmiCodec`` +
``CallTracker``), fed cached AMI streams from disk in 64 KiB reads, so no generator or
stream sits in its memory:

1. ``active``: 10,000 calls with only the events before each call's first Hangup: every
   call started and none finished. Bytes per active call from ``tracemalloc`` (what the
   tracker's state holds, divided by the calls it holds), and resident memory (RSS,
   ``/proc/self/statm``) before and at the peak.
2. the rest: a full stream of finished calls replayed until 100,000 calls have been
   reported. Then RSS, Python's live allocated blocks and the tracker's tables again:
   they must be back where they were, not grown with the calls.

    python -m bench.memory_bench [--quick] [--active N] [--finished N]
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import tracemalloc
from typing import Any

from bench.common import (
    BENCH_DIR,
    file_chunks,
    machine_info,
    mib,
    print_table,
    rss_bytes,
    stream_file,
    write_results,
)

NAME = "memory"
SEED_ACTIVE = 11
SEED_FINISHED = 7
FULL_RATE = 20.0  # the tracker bench's stream: reused when already cached
FULL_CALLS = 10_000  # ~1,000,000 events: the tracker bench's stream, reused


def _tables(tracker: Any) -> dict[str, int]:
    """How many entries each of the tracker's tables holds."""
    return {
        name.lstrip("_"): len(getattr(tracker, name))
        for name in ("_calls", "_by_linkedid", "_channels", "_local_ones", "_bridges")
    }


def _trimmed_rss() -> int | None:
    """RSS once glibc has handed its free heap pages back (``malloc_trim``): what is
    left is what is still in use, not what the allocator keeps for later."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        return None
    return rss_bytes()


def child(active_path: str, full_path: str, finished_target: int) -> dict[str, Any]:
    """The measurement itself, in a process that has done nothing else."""
    from pathlib import Path

    from telephony.ami import AmiCodec
    from telephony.records import CallFinished
    from telephony.tracker import CallTracker

    def feed(codec: AmiCodec, tracker: CallTracker, path: str, limit: int = 0) -> int:
        finished = 0
        handle = tracker.handle
        for i, data in enumerate(file_chunks(Path(path))):
            if limit and i >= limit:
                break
            for msg in codec.feed(data):
                if "Event" in msg and "ActionID" not in msg:
                    for update in handle(msg, 0.0):
                        if type(update) is CallFinished:
                            finished += 1
        return finished

    # Warm up on a few calls so imports, caches and code objects are in "before".
    warm = CallTracker()
    feed(AmiCodec(), warm, full_path, limit=8)
    del warm
    gc.collect()
    tracker = CallTracker()
    gc.collect()
    rss_before = rss_bytes()
    blocks_before = sys.getallocatedblocks()

    tracemalloc.start()
    traced_before = tracemalloc.get_traced_memory()[0]
    finished_in_active = feed(AmiCodec(), tracker, active_path)
    gc.collect()
    traced_active = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    active = tracker.active_count
    tables_active = _tables(tracker)
    rss_peak = rss_bytes()

    # Finish them, then replay finished calls until the target is reported.
    now = 1e12  # far future: every call still open is closed by expire, flagged stale
    finished = finished_in_active + sum(1 for u in tracker.expire(now) if type(u) is CallFinished)
    rss_per_pass: list[int] = []  # flat if nothing is kept per finished call
    while finished < finished_target:
        finished += feed(AmiCodec(), tracker, full_path)
        gc.collect()
        rss_per_pass.append(rss_bytes())
    rss_peak = max([rss_peak, *rss_per_pass])
    gc.collect()
    rss_after = rss_bytes()
    return {
        "active_calls": active,
        "finished_during_active_phase": finished_in_active,
        "bytes_per_active_call": (traced_active - traced_before) / max(1, active),
        "tracker_bytes_active": traced_active - traced_before,
        "tables_active": tables_active,
        "finished_calls": finished,
        "full_stream_passes": len(rss_per_pass),
        "rss_per_pass": rss_per_pass,
        "rss_before": rss_before,
        "rss_peak": rss_peak,
        "rss_after": rss_after,
        "rss_after_trim": _trimmed_rss(),
        "active_after": tracker.active_count,
        "tables_after": _tables(tracker),
        "allocated_blocks_before": blocks_before,
        "allocated_blocks_after": sys.getallocatedblocks(),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        prog="python -m bench.memory_bench", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke run)")
    parser.add_argument(
        "--active", type=int, default=None, help="calls in progress at once (default 10,000)"
    )
    parser.add_argument(
        "--finished", type=int, default=None, help="finished calls afterwards (default 100,000)"
    )
    parser.add_argument("--no-write", action="store_true", help="do not write the JSON")
    parser.add_argument(
        "--child", nargs=3, metavar=("ACTIVE", "FULL", "TARGET"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child[0], args.child[1], int(args.child[2]))))
        return {}
    n_active = args.active or (200 if args.quick else 10_000)
    n_finished = args.finished or (600 if args.quick else 100_000)
    full_calls = 200 if args.quick else FULL_CALLS
    # A burst: all calls start within a few seconds, so all are in progress at once.
    active_path, active_meta = stream_file(n_active, 1000.0, SEED_ACTIVE, active_only=True)
    full_path, full_meta = stream_file(full_calls, FULL_RATE, SEED_FINISHED)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.memory_bench",
            "--child",
            str(active_path),
            str(full_path),
            str(n_finished),
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=3600,
        cwd=BENCH_DIR.parent,
    )
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    figures: dict[str, Any] = {
        "machine": machine_info(),
        "sizes": {
            "active_calls_planned": n_active,
            "active_stream_events": active_meta["events"],
            "finished_calls_target": n_finished,
            "full_stream_calls": full_meta["calls"],
            "full_stream_events": full_meta["events"],
        },
        **r,
        "rss_growth_after": r["rss_after"] - r["rss_before"],
    }
    _print(figures)
    if not args.no_write:
        write_results(NAME, figures)
    return figures


def _print(f: dict[str, Any]) -> None:
    m = f["machine"]
    rows: list[tuple[str, Any]] = [
        ("machine", f"{m['cpu']}, {m['cores']} cores, Python {m['python']}"),
        ("calls in progress", f["active_calls"]),
        ("bytes per active call (tracemalloc)", f["bytes_per_active_call"]),
        ("RSS before, MiB", mib(f["rss_before"])),
        ("RSS peak, MiB", mib(f["rss_peak"])),
        ("finished calls afterwards", f["finished_calls"]),
        (
            f"RSS after each {f['sizes']['full_stream_calls']:,} finished calls, MiB",
            " ".join(f"{mib(r):.1f}" for r in f["rss_per_pass"]),
        ),
        ("RSS after, MiB", mib(f["rss_after"])),
        (
            "RSS after, free pages returned (malloc_trim), MiB",
            mib(f["rss_after_trim"]) if f["rss_after_trim"] is not None else "n/a",
        ),
        ("calls still tracked after", f["active_after"]),
        (
            "live Python blocks before / after",
            f"{f['allocated_blocks_before']:,} / {f['allocated_blocks_after']:,}",
        ),
    ]
    print_table("Memory: codec + tracker (a listener's state)", rows)


if __name__ == "__main__":
    main(sys.argv[1:])
