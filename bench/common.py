"""What every benchmark shares: the machine it ran on, resident memory, cached AMI
streams, CPU timing, and writing figures as a table and as JSON."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
CACHE_DIR = BENCH_DIR / ".cache"
CHUNK = 64 * 1024  # what one socket read delivers on a busy link
BANNER = b"Asterisk Call Manager/5.0.2\r\n"
_PAGE = os.sysconf("SC_PAGE_SIZE")


def machine_info() -> dict[str, Any]:
    """CPU model, cores and Python: enough to say what the figures were measured on."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.partition(":")[2].strip()
                break
    except OSError:
        pass
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "system": f"{platform.system()} {platform.release()}",
    }


def rss_bytes() -> int:
    """Resident memory of this process now (``/proc/self/statm``, second field)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE


def chunks(blob: bytes, size: int = CHUNK) -> Iterator[bytes]:
    """The blob as a socket would deliver it: ``size``-byte reads, cut anywhere."""
    for i in range(0, len(blob), size):
        yield blob[i : i + size]


def file_chunks(path: Path, size: int = CHUNK) -> Iterator[bytes]:
    """A cached stream read from disk in socket-sized pieces (never whole in memory)."""
    with open(path, "rb") as f:
        while data := f.read(size):
            yield data


def best_of(repeat: int, run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run ``repeat`` times and keep the fastest (least CPU): the machine is shared, and
    other work only ever slows a run down."""
    best: dict[str, Any] | None = None
    for _ in range(max(1, repeat)):
        result = run()
        if best is None or result["cpu_s"] < best["cpu_s"]:
            best = result
    assert best is not None
    return best


class CpuTimer:
    """CPU seconds of this process (what one core spent) and wall seconds, together."""

    def __enter__(self) -> CpuTimer:
        self.cpu0, self.wall0 = time.process_time(), time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cpu_s = time.process_time() - self.cpu0
        self.wall_s = time.perf_counter() - self.wall0


def write_results(name: str, figures: dict[str, Any], path: Path | None = None) -> Path:
    """``bench/results-<name>.json`` (gitignored; ``run_all`` writes the combined one)."""
    out = path or BENCH_DIR / f"results-{name}.json"
    out.write_text(json.dumps(figures, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    return out


def print_table(title: str, rows: list[tuple[str, Any]], file: Any = None) -> None:
    """Figures as two aligned columns under a title."""
    out = file or sys.stdout
    width = max((len(label) for label, _ in rows), default=0)
    print(f"\n{title}", file=out)
    print("-" * len(title), file=out)
    for label, value in rows:
        print(f"  {label:<{width}}  {_fmt(value)}", file=out)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if value >= 100:
            return f"{value:,.0f}"
        return f"{value:,.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def mib(n: float) -> float:
    return n / (1024 * 1024)


def stream_file(
    n_calls: int, rate_per_s: float, seed: int, *, active_only: bool = False
) -> tuple[Path, dict[str, Any]]:
    """A cached AMI byte stream of ``n_calls`` synthetic calls (``pbxsim.synth``), as
    the PBX sends it: banner, then each message ``encode``d. ``active_only`` keeps only
    what comes before each call's first Hangup: calls started and still in progress.

    Built once (it takes a while) under ``bench/.cache/``; ``meta`` counts its messages
    and calls."""
    kind = "active" if active_only else "full"
    path = CACHE_DIR / f"stream-{kind}-{n_calls}-{rate_per_s:g}-{seed}.ami"
    meta_path = path.with_suffix(".json")
    if path.exists() and meta_path.exists():
        return path, json.loads(meta_path.read_text(encoding="utf-8"))
    from pbxsim.synth import generate
    from telephony.ami import encode

    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    ignore = CACHE_DIR / ".gitignore"  # generated data, never committed
    if not ignore.exists():
        ignore.write_text("*\n", encoding="utf-8")
    tmp = path.with_suffix(".tmp")
    events = 0
    hung_up: set[str] = set()
    with open(tmp, "wb") as f:
        f.write(BANNER)
        batch: list[bytes] = []
        for _, msg in generate(n_calls, rate_per_s, seed):
            if active_only:
                lid = msg.get("Linkedid")
                if lid is not None:
                    if lid in hung_up:
                        continue
                    if msg.get("Event") == "Hangup":
                        hung_up.add(lid)
                        continue
            batch.append(encode(msg))
            events += 1
            if len(batch) >= 10_000:
                f.write(b"".join(batch))
                batch.clear()
        f.write(b"".join(batch))
    meta = {
        "calls": n_calls,
        "rate_per_s": rate_per_s,
        "seed": seed,
        "events": events,
        "bytes": tmp.stat().st_size,
        "active_only": active_only,
    }
    tmp.replace(path)
    meta_path.write_text(json.dumps(meta) + "\n", encoding="utf-8")
    return path, meta
