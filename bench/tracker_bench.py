"""Tracker throughput: AMI bytes to call records on one core, beside a split-only
baseline and VoIPGRID's cacofonisk on the very same bytes.

The stream is a realistic mix (``pbxsim.synth``: recorded calls rebased and
interleaved, about 100 events a call) of at least a million events, ``encode``d once
and cached under ``bench/.cache/``. Every contender gets it in 64 KiB reads, as a socket
delivers it, and rates are events per CPU second of this process (one core):

- ours: ``AmiCodec.feed`` + the listener's routing test + ``CallTracker.handle``, exactly
  the listener's ``data_received`` hot path (its codec decodes only the events the
  tracker reads and passes over the rest), counting finished call records; also shown
  with every message decoded;
- split-only baseline: the cheapest bytes -> header dicts we know (one decode per read,
  C-level splits, no validation, no tracking): the floor any parser pays;
- cacofonisk: its ``AmiRunner`` wiring (panoramisk ``Manager``, events registered as
  ``attach`` does, ``EventHandler``) with panoramisk's ``AMIProtocol.data_received``
  fed the reads, as in production minus the socket.

    python -m bench.tracker_bench [--quick] [--repeat N] [--events N] [--profile]
"""

from __future__ import annotations

import argparse
import gc
import logging
import sys
from typing import Any

from bench.common import (
    CpuTimer,
    best_of,
    chunks,
    machine_info,
    print_table,
    stream_file,
    write_results,
)

NAME = "tracker"
EVENTS_PER_CALL = 100  # the synth mix's average, to size the stream
RATE_PER_S = 20.0  # call arrivals: a few hundred calls in progress at any time
SEED = 7


def run_ours(blob: bytes, *, decode_all: bool = False) -> dict[str, Any]:
    """Bytes -> call records through the production path: the codec set up as the
    listener sets it up (decoding only the events the tracker reads), unless
    ``decode_all``."""
    from telephony.ami import AmiCodec
    from telephony.records import CallFinished
    from telephony.tracker import CallTracker

    tracker = CallTracker()
    codec = AmiCodec() if decode_all else AmiCodec(tracker.events, tracker.variables)
    handle = tracker.handle
    feed = codec.feed
    events = calls = 0
    gc.collect()
    with CpuTimer() as t:
        for data in chunks(blob):
            for msg in feed(data):
                if "Event" in msg and "ActionID" not in msg:
                    events += 1
                    for update in handle(msg, 0.0):
                        if type(update) is CallFinished:
                            calls += 1
    events += codec.passed_over
    return {
        "events": events,
        "calls": calls,
        "cpu_s": t.cpu_s,
        "wall_s": t.wall_s,
        "skipped": codec.skipped,
        "active_left": tracker.active_count,
    }


def run_split_only(blob: bytes) -> dict[str, Any]:
    """The floor: complete messages decoded once per read, each block split into a
    header dict with C-level string operations; no checks, no tracking."""
    events = 0
    rest = b""
    gc.collect()
    with CpuTimer() as t:
        for data in chunks(blob):
            buf = rest + data if rest else data
            end = buf.rfind(b"\r\n\r\n")
            if end < 0:
                rest = buf
                continue
            rest = buf[end + 4 :]
            for block in buf[:end].decode("utf-8", "replace").split("\r\n\r\n"):
                parts = iter(block.replace("\r\n", ": ").split(": "))
                if "Event" in dict(zip(parts, parts, strict=False)):
                    events += 1
    return {"events": events, "cpu_s": t.cpu_s, "wall_s": t.wall_s}


class _Counter:
    """A cacofonisk reporter that counts what it is told (calls = caller hangups)."""

    def __init__(self) -> None:
        self.calls = 0
        self.events = 0
        self.timestamp: Any = None

    def set_timestamp(self, timestamp: Any) -> None:
        self.timestamp = timestamp

    def on_event(self, event: Any) -> None:
        self.events += 1

    def on_hangup(self, caller: Any, reason: str) -> None:
        self.calls += 1

    def close(self) -> None:
        pass

    def __getattr__(self, name: str) -> Any:  # on_b_dial, on_up, on_*_transfer...
        if name.startswith("on_"):
            return lambda *a, **k: None
        raise AttributeError(name)


class _Transport:
    """Enough of an asyncio transport for panoramisk's protocol (it writes the Login)."""

    def write(self, data: bytes) -> None:
        pass

    def close(self) -> None:
        pass

    def is_closing(self) -> bool:
        return False


def cacofonisk_version() -> str | None:
    try:
        from importlib.metadata import version

        return version("cacofonisk")
    except Exception:
        return None


def run_cacofonisk(blob: bytes) -> dict[str, Any]:
    """panoramisk parsing + cacofonisk tracking, wired the way ``AmiRunner.attach`` does
    (its ``Manager``, its registration of the handler's events, its ``on_event``); the
    reads go to panoramisk's ``AMIProtocol.data_received`` as the event loop would."""
    import asyncio

    from cacofonisk.handlers import EventHandler
    from cacofonisk.runners.ami_runner import AmiRunner
    from panoramisk import Manager
    from panoramisk.ami_protocol import AMIProtocol

    quiet = logging.getLogger("bench.cacofonisk")
    quiet.setLevel(logging.CRITICAL)  # it warns per unknown channel; not what we time
    quiet.propagate = False
    reporter = _Counter()
    loop = asyncio.new_event_loop()
    try:
        asyncio.set_event_loop(loop)  # AmiRunner asks for the current loop
        runner = AmiRunner([], reporter, logger=quiet)
        manager = Manager(
            loop=loop, host="127.0.0.1", port=5038, encoding="utf8", log=quiet, ping_delay=3600
        )
        handler = EventHandler(reporter=reporter, hostname="bench", logger=quiet)
        for event_name in handler.event_handlers():  # AmiRunner.attach, minus connect()
            manager.register_event(event_name, runner.on_event)
        runner.ami_managers[manager] = handler
        errors = 0
        on_event = runner.on_event

        def guarded(mgr: Any, event: Any) -> None:
            # Unguarded, an exception here escapes data_received and asyncio drops the
            # link; count it instead so the stream goes on.
            nonlocal errors
            try:
                on_event(mgr, event)
            except Exception:
                errors += 1

        for pattern in list(manager.callbacks):
            manager.callbacks[pattern] = [guarded]
        protocol = AMIProtocol()
        fut = loop.create_future()
        fut.set_result((_Transport(), protocol))
        protocol.connection_made(fut.result()[0])
        manager.connection_made(fut)  # what Manager.connect's callback does
        if manager.pinger is not None:
            manager.pinger.cancel()
        data_received = protocol.data_received
        gc.collect()
        with CpuTimer() as t:
            for data in chunks(blob):
                data_received(data)
        return {
            "events": reporter.events,
            "calls": reporter.calls,
            "cpu_s": t.cpu_s,
            "wall_s": t.wall_s,
            "handler_errors": errors,
        }
    finally:
        asyncio.set_event_loop(None)
        loop.close()


def _profile(blob: bytes) -> None:
    from pyinstrument import Profiler

    profiler = Profiler(interval=0.0005)
    profiler.start()
    run_ours(blob)
    profiler.stop()
    print(profiler.output_text(unicode=True, color=False, show_all=False))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        prog="python -m bench.tracker_bench", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="a small stream (smoke run)")
    parser.add_argument(
        "--events", type=int, default=None, help="at least this many events (default 1,000,000)"
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=None,
        help="runs per contender, best kept (default 3; 1 with --quick)",
    )
    parser.add_argument("--no-cacofonisk", action="store_true")
    parser.add_argument(
        "--profile", action="store_true", help="also print a pyinstrument profile of our path"
    )
    parser.add_argument("--no-write", action="store_true", help="do not write the JSON")
    args = parser.parse_args(argv)
    want = args.events or (20_000 if args.quick else 1_000_000)
    repeat = args.repeat or (1 if args.quick else 3)
    n_calls = max(10, -(-want // EVENTS_PER_CALL))
    path, meta = stream_file(n_calls, RATE_PER_S, SEED)
    if meta["events"] < want:
        print(
            f"note: the stream has {meta['events']:,} events, fewer than {want:,}", file=sys.stderr
        )
    blob = path.read_bytes()

    ours = best_of(repeat, lambda: run_ours(blob))
    full = best_of(repeat, lambda: run_ours(blob, decode_all=True))
    base = best_of(repeat, lambda: run_split_only(blob))
    caco: dict[str, Any] | None = None
    caco_error: str | None = None
    if not args.no_cacofonisk:
        try:
            caco = best_of(repeat, lambda: run_cacofonisk(blob))
        except ImportError as exc:
            caco_error = f"cacofonisk not installed ({exc}); pip install -e '.[bench]'"

    ev = ours["events"]
    figures: dict[str, Any] = {
        "machine": machine_info(),
        "stream": {
            "events": meta["events"],
            "calls": meta["calls"],
            "bytes": meta["bytes"],
            "chunk_bytes": 64 * 1024,
            "seed": SEED,
            "repeat": repeat,
        },
        "ours": {
            "events_per_s": ev / ours["cpu_s"],
            "calls_per_s": ours["calls"] / ours["cpu_s"],
            "calls": ours["calls"],
            "cpu_s": ours["cpu_s"],
            "wall_s": ours["wall_s"],
            "us_per_event": ours["cpu_s"] / ev * 1e6,
            "malformed_skipped": ours["skipped"],
        },
        "ours_decode_all": {  # the same, with the codec decoding every message
            "events_per_s": full["events"] / full["cpu_s"],
            "calls_per_s": full["calls"] / full["cpu_s"],
            "cpu_s": full["cpu_s"],
        },
        "split_only": {
            "events_per_s": base["events"] / base["cpu_s"],
            "cpu_s": base["cpu_s"],
        },
    }
    figures["ours_vs_split_only"] = (
        figures["ours"]["events_per_s"] / (figures["split_only"]["events_per_s"])
    )
    if caco is not None:
        figures["cacofonisk"] = {
            "version": cacofonisk_version(),
            "events_per_s": ev / caco["cpu_s"],  # the same stream, the same events
            "calls_per_s": caco["calls"] / caco["cpu_s"],
            "calls": caco["calls"],
            "cpu_s": caco["cpu_s"],
            "handler_errors": caco["handler_errors"],
        }
        figures["ours_vs_cacofonisk"] = (
            figures["ours"]["events_per_s"] / (figures["cacofonisk"]["events_per_s"])
        )
    elif caco_error:
        figures["cacofonisk"] = {"error": caco_error}
    _print(figures)
    if args.profile:
        _profile(blob)
    if not args.no_write:
        write_results(NAME, figures)
    return figures


def _print(f: dict[str, Any]) -> None:
    m, s, o = f["machine"], f["stream"], f["ours"]
    rows: list[tuple[str, Any]] = [
        ("machine", f"{m['cpu']}, {m['cores']} cores, Python {m['python']}"),
        (
            "stream",
            f"{s['events']:,} events, {s['calls']:,} calls, "
            f"{s['bytes'] / 2**20:,.0f} MiB in 64 KiB reads (best of {s['repeat']})",
        ),
        ("ours: events/s (one core)", o["events_per_s"]),
        ("ours: calls/s", o["calls_per_s"]),
        ("ours: µs per event", o["us_per_event"]),
        ("ours, every message decoded: events/s", f["ours_decode_all"]["events_per_s"]),
        ("split-only baseline: events/s", f["split_only"]["events_per_s"]),
        ("ours / split-only", f"{f['ours_vs_split_only']:.2f}"),
    ]
    c = f.get("cacofonisk", {})
    if "events_per_s" in c:
        rows += [
            (f"cacofonisk {c['version']}: events/s", c["events_per_s"]),
            ("cacofonisk: calls/s", c["calls_per_s"]),
            ("ours / cacofonisk", f"{f['ours_vs_cacofonisk']:.2f}"),
        ]
        if c["handler_errors"]:
            rows.append(("cacofonisk: events it raised on", c["handler_errors"]))
    elif c:
        rows.append(("cacofonisk", c["error"]))
    print_table("Tracker throughput: AMI bytes -> call records", rows)


if __name__ == "__main__":
    main(sys.argv[1:])
