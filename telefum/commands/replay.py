"""``telefum replay TRACE [--config FILE] [--explain]``: what the bridge makes of a PBX's
traffic.

Reads a raw AMI trace (the bytes an AMI socket delivered) and prints one JSON object per
finished call (JSON Lines, in the order the calls finished). Calls still open at the end
of the trace are not printed; stderr says how many. Admins diff this output, so it must
stay stable: the record keys are the contract in docs/architecture.md.

``--explain`` prints, instead, for each call the ``[calls]`` rule that decided its
direction, DID, extension and answered, and what the tracker could not tell: the tool to
fix the ``[calls]`` settings for a dialplan the defaults do not fit.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from telephony.ami import AmiCodec, event_time
from telephony.records import CallFinished, CallRecord
from telephony.rules import CallRules
from telephony.tracker import CallTracker

HELP = "print the call records a raw AMI trace yields (JSON Lines)"

_CHUNK = 1 << 16


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("trace", metavar="TRACE", help="raw AMI bytes, as a socket delivered them")
    parser.add_argument("--config", metavar="FILE", help="settings.toml ([calls] rules)")
    parser.add_argument(
        "--explain",
        action="store_true",
        help="for each call, which [calls] rule decided direction, DID, extension, answered",
    )


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
                        if not isinstance(update, CallFinished):
                            continue
                        if args.explain:
                            out.write(explained(update.record))
                        else:
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


def explained(rec: CallRecord) -> str:
    """A call and the rule behind each of its decisions, as text for an admin."""
    outcome = rec.disposition if rec.answered else f"not answered ({rec.disposition})"
    parties = rec.external or "-"
    if rec.direction == "in":
        parties = f"{rec.external or 'unknown caller'} -> {rec.did or 'unknown DID'}"
    lines = [
        f"call {rec.call_id}  {rec.direction}  {parties}  extension "
        f"{rec.extension or '-'}  {outcome}"
    ]
    lines += [f"  {what:<10} {why}" for what, why in rec.explain]
    if rec.transfers:
        moves = ", ".join(
            f"{t.kind} {t.from_ext or '?'} -> {t.to_ext or '?'}" for t in rec.transfers
        )
        lines.append(f"  {'transfers':<10} {moves}")
    if rec.joined_with:
        lines.append(
            f"  {'joined':<10} with call {', '.join(rec.joined_with)} (an agent put "
            "the two outside parties through to each other)"
        )
    reasons = dict(rec.reasons)
    for flag in rec.flags:
        lines.append(f"  {'flag':<10} {flag}" + (f": {reasons[flag]}" if flag in reasons else ""))
    return "\n".join(lines) + "\n\n"
