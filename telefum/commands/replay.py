"""``telefum replay TRACE [--config FILE]``: what the bridge makes of a PBX's traffic.

Reads a raw AMI trace (the bytes an AMI socket delivered) and prints one JSON object per
finished call (JSON Lines, in the order the calls finished). Calls still open at the end
of the trace are not printed; stderr says how many. Admins diff this output, so it must
stay stable: the record keys are the contract in docs/architecture.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from telephony.ami import AmiCodec, event_time
from telephony.records import CallFinished
from telephony.rules import CallRules
from telephony.tracker import CallTracker

HELP = "print the call records a raw AMI trace yields (JSON Lines)"

_CHUNK = 1 << 16


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("trace", metavar="TRACE", help="raw AMI bytes, as a socket delivered them")
    parser.add_argument("--config", metavar="FILE", help="settings.toml ([calls] rules)")


def _rules(config: str | None) -> CallRules:
    """The [calls] rules of --config, else of $TELEFUM_CONFIG, else the defaults."""
    from telefum.config import load_settings

    return load_settings(config).calls


def run(args: argparse.Namespace) -> int:
    path = Path(args.trace)
    try:
        rules = _rules(args.config)
    except Exception as exc:  # ConfigError, or a loader not written yet
        print(f"telefum replay: cannot use config {args.config}: {exc}", file=sys.stderr)
        return 2
    try:
        fh = path.open("rb")
    except OSError as exc:
        print(f"telefum replay: cannot read {path}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    tracker = CallTracker(rules)
    codec = AmiCodec()
    out = sys.stdout
    last_time = 0.0
    try:
        with fh:
            while chunk := fh.read(_CHUNK):
                for msg in codec.feed(chunk):
                    # A trace has no arrival times of its own: an event without a Timestamp
                    # is taken to arrive with the last one that had it.
                    last_time = event_time(msg, last_time)
                    for update in tracker.handle(msg, last_time):
                        if isinstance(update, CallFinished):
                            out.write(json.dumps(update.record.to_json(), ensure_ascii=False))
                            out.write("\n")
    except BrokenPipeError:
        raise  # our reader went away (`| head`): not a read error; the CLI ends quietly
    except OSError as exc:
        print(f"telefum replay: error reading {path}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    out.flush()
    if tracker.active_count:
        print(
            f"telefum replay: {tracker.active_count} call(s) still open at the end of the "
            "trace, not printed",
            file=sys.stderr,
        )
    if codec.skipped:
        print(f"telefum replay: skipped {codec.skipped} malformed line(s)", file=sys.stderr)
    return 0
