"""What the tracker tells the world: call records and live updates.

``CallRecord.to_json()`` is the public ``telefum replay`` contract (docs/architecture.md):
keep keys and meanings stable; add keys only compatibly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

Direction = Literal["in", "out", "internal"]
Disposition = Literal["answered", "no-answer", "busy", "failed"]
TransferKind = Literal["blind", "attended"]
# Where a record came from: the AMI event stream as it happened, or the PBX's call detail
# records read afterwards (telephony/cdr.py) for a call the bridge did not see end.
Source = Literal["live", "cdr"]
GAP = "gap"  # flag: ended or answered while the AMI link was down (times are bounds)
RING_UNKNOWN = "ring-unknown"  # flag: found answered after a restart (ring not known)


def iso_utc(ts: float | None) -> str | None:
    """Unix seconds -> ``2026-11-26T12:00:00.120Z`` (milliseconds, UTC)."""
    if ts is None:
        return None
    ms = round(ts * 1000)
    return datetime.fromtimestamp(ms // 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.") + (
        f"{ms % 1000:03d}Z"
    )


def log_tags(call_id: str, pbx: str) -> dict[str, str]:
    """The ``extra`` of every log line about one call, in the one form every process writes
    (``call_id=<linkedid> pbx=<name>`` in text, the same two keys in JSON), so that
    ``grep call_id=<linkedid>`` finds the call's whole story. Keep the order: call_id first."""
    return {"call_id": call_id, "pbx": pbx}


@dataclass(frozen=True, slots=True)
class Transfer:
    from_ext: str | None
    to_ext: str | None
    kind: TransferKind

    def to_json(self) -> dict[str, Any]:
        return {"from": self.from_ext, "to": self.to_ext, "kind": self.kind}


@dataclass(frozen=True, slots=True)
class CallRecord:
    """One finished call, built once when its last channel hangs up."""

    call_id: str  # the Linkedid of the call (the first one, after attended-transfer merges)
    direction: Direction
    external: str | None  # the outside party, E.164; None for internal calls
    did: str | None  # number an inbound caller dialled (E.164); None otherwise
    extension: str | None  # who answered (in) / who dialled (out)
    answered: bool
    started_at: float
    answered_at: float | None
    ended_at: float
    disposition: Disposition
    transfers: tuple[Transfer, ...] = ()
    rang: tuple[str, ...] = ()  # every extension that rang, in order
    final_extension: str | None = None  # who had the caller last (after transfers)
    # "reconciled" (closed after a link loss), "gap" (ended or answered while the AMI link
    # was down: its end is the last moment the bridge knew it up, so talk is a lower
    # bound), "stale" (max age), "adopted" (found in progress after a restart),
    # "ring-unknown" (found answered: ``answered_at`` is its earliest, its ring unknown),
    # "overflow" (a channel of it came while the tracker was full)
    flags: tuple[str, ...] = ()
    pbx: str = "default"
    source: Source = "live"
    # Keys below appear in the JSON only when they carry something (the replay contract).
    forwarded_to: str | None = None  # the outside number an inbound call was forwarded to
    joined_with: tuple[str, ...] = ()  # call ids an agent joined this call with
    reasons: tuple[tuple[str, str], ...] = ()  # (flag, why) for what the tracker cannot tell
    # Which rule decided direction, DID, extension, answered (``telefum replay --explain``);
    # not part of the JSON.
    explain: tuple[tuple[str, str], ...] = field(default=(), compare=False)

    @property
    def log_tags(self) -> dict[str, str]:
        """The tags of a log line about this call (:func:`log_tags`)."""
        return log_tags(self.call_id, self.pbx)

    @property
    def ring_s(self) -> float | None:
        """From start until answer (or until the end, unanswered); None: not known (a
        call found already answered after a restart)."""
        if RING_UNKNOWN in self.flags:
            return None
        end = self.answered_at if self.answered_at is not None else self.ended_at
        return round(max(0.0, end - self.started_at), 2)

    @property
    def talk_s(self) -> float:
        if self.answered_at is None:
            return 0.0
        return round(max(0.0, self.ended_at - self.answered_at), 2)

    def to_json(self) -> dict[str, Any]:
        """The public record. Keys after ``pbx`` appear only when they carry something
        (``source`` only when it is not the live stream), so that what ``telefum replay``
        prints for a trace never changes."""
        out: dict[str, Any] = {
            "call_id": self.call_id,
            "direction": self.direction,
            "external": self.external,
            "did": self.did,
            "extension": self.extension,
            "answered": self.answered,
            "started_at": iso_utc(self.started_at),
            "answered_at": iso_utc(self.answered_at),
            "ended_at": iso_utc(self.ended_at),
            "ring_s": self.ring_s,
            "talk_s": self.talk_s,
            "disposition": self.disposition,
            "transfers": [t.to_json() for t in self.transfers],
            "rang": list(self.rang),
            "final_extension": self.final_extension,
            "flags": list(self.flags),
            "pbx": self.pbx,
        }
        if self.source != "live":
            out["source"] = self.source
        if self.forwarded_to is not None:
            out["forwarded_to"] = self.forwarded_to
        if self.joined_with:
            out["joined_with"] = list(self.joined_with)
        if self.reasons:
            out["reasons"] = dict(self.reasons)
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> CallRecord:
        """Inverse of ``to_json`` (for the queue and the spool)."""

        def ts(v: str | None) -> float | None:
            if v is None:
                return None
            return datetime.strptime(v, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()

        started = ts(d["started_at"])
        ended = ts(d["ended_at"])
        assert started is not None and ended is not None
        return cls(
            call_id=d["call_id"],
            direction=d["direction"],
            external=d.get("external"),
            did=d.get("did"),
            extension=d.get("extension"),
            answered=bool(d["answered"]),
            started_at=started,
            answered_at=ts(d.get("answered_at")),
            ended_at=ended,
            disposition=d["disposition"],
            transfers=tuple(
                Transfer(t.get("from"), t.get("to"), t["kind"]) for t in d.get("transfers", ())
            ),
            rang=tuple(d.get("rang", ())),
            final_extension=d.get("final_extension"),
            flags=tuple(d.get("flags", ())),
            pbx=d.get("pbx", "default"),
            source=d.get("source", "live"),
            forwarded_to=d.get("forwarded_to"),
            joined_with=tuple(d.get("joined_with", ())),
            reasons=tuple((d.get("reasons") or {}).items()),
        )


# Live updates, in the order the tracker emits them for one call.


@dataclass(frozen=True, slots=True)
class CallStarted:
    call_id: str
    direction: Direction
    external: str | None
    did: str | None
    at: float
    pbx: str = "default"


@dataclass(frozen=True, slots=True)
class Ringing:
    """An extension's phone started ringing for this call (screen pop)."""

    call_id: str
    extension: str
    external: str | None
    did: str | None
    direction: Direction
    at: float
    pbx: str = "default"


@dataclass(frozen=True, slots=True)
class Answered:
    call_id: str
    extension: str | None
    at: float
    pbx: str = "default"


@dataclass(frozen=True, slots=True)
class CallFinished:
    record: CallRecord


@dataclass(frozen=True, slots=True)
class CallRefused:
    """The tracker is full (``max_active_calls``) and does not track this channel. When it
    began a call (``new_call``), that call is never reported; else its call goes on,
    flagged "overflow" (its record may miss what this channel did)."""

    call_id: str
    channel: str
    new_call: bool
    at: float
    active_calls: int
    pbx: str = "default"


Update = CallStarted | Ringing | Answered | CallFinished | CallRefused
