"""Rebase a recorded AMI trace so one recording can be played many times at once.

A recording names its calls by Asterisk unique ids (``1795727781.0``), channel names
(``PJSIP/101-00000001``, ``Local/102@rg-members-00000001;1``) and bridge UUIDs, and dates
them by ``Timestamp``/``EventTV``/CDR times. Playing the same file twice, or next to other
files, would make a tracker see one call where there are two. ``rebase`` shifts every one
of those consistently (the same old id always becomes the same new id within one call of
``rebase``) and can swap phone numbers, so a simulator can play a template as a fresh call.

Uniqueness is the caller's job in one respect: two copies of a template stay apart when
their ``id_offset`` values differ by more than the spread of sequence numbers in the
template (ids and channel sequences are shifted by ``id_offset``).
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Iterable
from datetime import datetime, timedelta
from functools import lru_cache

from telephony.ami import Message

__all__ = ["Rebaser", "id_bounds", "id_span", "rebase"]

# `[system-name-]<epoch>.<sequence>`: Asterisk's channel unique id (and so Linkedid).
_UNIQUE_ID = re.compile(r"^(?P<sys>.+-)?(?P<epoch>\d{9,11})\.(?P<seq>\d+)$", re.ASCII)
# A channel name's sequence suffix: `Tech/resource-0000000a` (then maybe `;1`/`;2`).
_CHANNEL_SEQ = re.compile(r"(?P<name>\b[A-Za-z][\w]*/[^\s,&|;]*?)-(?P<seq>[0-9a-f]{8})(?![\w])")
_UUID = re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b")
# Times: epoch floats, EventTV-style ISO stamps, CDR local stamps.
_EPOCH_HEADERS = frozenset({"Timestamp", "SentNTP"})
_ISO_TV = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,6}))?([+-]\d{4}|Z)?$", re.ASCII)
_CDR_TIME = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d$", re.ASCII)
_DIGIT = re.compile(r"\d", re.ASCII)
_UUID_NAMESPACE = uuid.UUID("6f1d1a52-3c1e-4f55-9d0e-7e1f0b0c7a11")


def rebase(
    messages: Iterable[Message],
    *,
    time_offset: float,
    id_offset: int,
    number_map: dict[str, str] | None = None,
) -> list[Message]:
    """New messages: times moved by ``time_offset`` seconds, ids by ``id_offset``.

    - every header value that is an Asterisk unique id (``Uniqueid``, ``Linkedid``,
      ``DestUniqueid``, ``TransferTargetUniqueid``, ``LocalOneLinkedid``, CDR ``UniqueID``...):
      epoch part shifted with the time, sequence part + ``id_offset``;
    - channel names anywhere in a value (``Channel``, ``DestChannel``, ``BRIDGEPEER``
      values...): sequence suffix + ``id_offset`` (8 hex digits; ``;1``/``;2`` kept);
    - bridge UUIDs anywhere in a value: replaced by a UUID derived from the old one and the
      offsets (the same bridge keeps one new id);
    - ``Timestamp``/``SentNTP`` epochs, ``EventTV``-style and CDR date-times: shifted;
    - ``number_map`` (old digits -> new digits): every whole run of those digits in any
      value (caller id, connected line, Exten, DialString, AppData, channel names...).

    The input is not modified. Values that look like none of these pass through as is.
    To rebase the same messages many times, prepare them once with ``Rebaser``.
    """
    return Rebaser(messages).apply(
        time_offset=time_offset, id_offset=id_offset, number_map=number_map
    )


class Rebaser:
    """Messages prepared once for many ``rebase`` runs (the simulator's templates): which
    values can change is worked out here, so each copy only renders those."""

    __slots__ = ("_digits", "_moving", "_rows")

    def __init__(self, messages: Iterable[Message]) -> None:
        rows: list[tuple[tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]]] = []
        values: dict[str, None] = {}
        for msg in messages:
            items = tuple(msg.items())
            rows.append((items, tuple((k, v) for k, v in items if k in _EPOCH_HEADERS)))
            for key, value in items:
                if key not in _EPOCH_HEADERS:
                    values[value] = None
        self._rows = rows
        # Ids, times, channel names, UUIDs: change with the offsets.
        self._moving = tuple(v for v in values if _may_move(v))
        # Anything else with digits in it: may hold a phone number of a number_map.
        self._digits = tuple(v for v in values if not _may_move(v) and _DIGIT.search(v))

    def apply(
        self,
        *,
        time_offset: float,
        id_offset: int,
        number_map: dict[str, str] | None = None,
    ) -> list[Message]:
        """One rebased copy (see ``rebase``)."""
        numbers = _number_replacer(number_map) if number_map else None
        changed = {v: _rebase_value(v, time_offset, id_offset, numbers) for v in self._moving}
        if numbers is not None:
            for value in self._digits:
                new_value = numbers(value)
                if new_value != value:
                    changed[value] = new_value
        get = changed.get
        out: list[Message] = []
        for items, epochs in self._rows:
            new = {k: get(v, v) for k, v in items}
            for key, value in epochs:
                new[key] = _shift_epoch(value, time_offset)
            out.append(new)
        return out


def id_bounds(messages: Iterable[Message]) -> tuple[int, int]:
    """Lowest and highest unique-id or channel sequence number the messages use
    ((0, -1) when none): copies rebased onto disjoint ranges share no id."""
    low, top = -1, -1
    for msg in messages:
        for key, value in msg.items():
            if key in _EPOCH_HEADERS or not value:
                continue
            seqs: list[int] = []
            m = _UNIQUE_ID.match(value)
            if m:
                seqs.append(int(m["seq"]))
            elif "/" in value:
                seqs.extend(int(cm["seq"], 16) for cm in _CHANNEL_SEQ.finditer(value))
            for seq in seqs:
                top = max(top, seq)
                low = seq if low < 0 else min(low, seq)
    return (0, -1) if top < 0 else (low, top)


def id_span(messages: Iterable[Message]) -> int:
    """How far apart two ``id_offset`` values must be for copies of these messages not to
    share an id: one more than the largest unique-id or channel sequence number seen."""
    return id_bounds(messages)[1] + 1


@lru_cache(maxsize=1 << 16)
def _may_move(value: str) -> bool:
    """Whether the offsets can change this value (an id, a time, a channel, a UUID)."""
    if not value:
        return False
    if _UNIQUE_ID.match(value):
        return True
    if value[0].isdigit() and "-" in value[:5] and (_CDR_TIME.match(value) or _ISO_TV.match(value)):
        return True
    if "/" in value and _CHANNEL_SEQ.search(value):
        return True
    return value.count("-") >= 4 and _UUID.search(value) is not None


def _rebase_value(value: str, dt: float, di: int, numbers: _NumberReplacer | None) -> str:
    if not value:
        return value
    m = _UNIQUE_ID.match(value)
    if m:
        epoch = math.floor(int(m["epoch"]) + dt)
        return f"{m['sys'] or ''}{epoch}.{int(m['seq']) + di}"
    first = value[0]
    if first.isdigit() and ("-" in value[:5]):
        shifted = _shift_datetime(value, dt)
        if shifted is not None:
            return shifted
    if numbers is not None:
        value = numbers(value)
    if "/" in value:
        value = _CHANNEL_SEQ.sub(
            lambda cm: f"{cm['name']}-{(int(cm['seq'], 16) + di) & 0xFFFFFFFF:08x}", value
        )
    if value.count("-") >= 4:
        value = _UUID.sub(lambda um: _new_uuid(um.group(0), dt, di), value)
    return value


def _new_uuid(old: str, dt: float, di: int) -> str:
    return str(uuid.uuid5(_UUID_NAMESPACE, f"{old}|{di}|{dt!r}"))


def _shift_epoch(value: str, dt: float) -> str:
    try:
        return f"{float(value) + dt:.6f}"
    except ValueError:
        return value


def _shift_datetime(value: str, dt: float) -> str | None:
    """``2026-11-26T21:16:20.288+0000`` or ``2026-11-26 21:16:21``, moved by ``dt``."""
    parsed = _parse_datetime(value)
    if parsed is None:
        return None
    when, digits, zone = parsed
    when += timedelta(seconds=dt)
    if zone is None:  # CDR style
        return when.strftime("%Y-%m-%d %H:%M:%S")
    text = when.strftime("%Y-%m-%dT%H:%M:%S")
    if digits:
        text += "." + f"{when.microsecond:06d}"[:digits]
    return text + zone


@lru_cache(maxsize=4096)
def _parse_datetime(value: str) -> tuple[datetime, int, str | None] | None:
    """(naive time, fraction digits, zone suffix or None for the CDR style); parsed once
    per distinct value, as a template is rebased many times."""
    if _CDR_TIME.match(value):
        return datetime.fromisoformat(value), 0, None
    m = _ISO_TV.match(value)
    if not m:
        return None
    frac = m[2] or ""
    when = datetime.fromisoformat(m[1])
    if frac:
        when += timedelta(microseconds=round(int(frac) * 10 ** (6 - len(frac))))
    return when, len(frac), m[3] or ""


class _NumberReplacer:
    """Swaps whole digit runs (not parts of longer numbers, ids or hex suffixes)."""

    __slots__ = ("_map", "_re")

    def __init__(self, number_map: dict[str, str]) -> None:
        self._map = dict(number_map)
        keys = sorted(self._map, key=len, reverse=True)
        alt = "|".join(re.escape(k) for k in keys)
        self._re = re.compile(rf"(?<![0-9A-Za-z.\-])(?:{alt})(?![0-9A-Za-z])")

    def __call__(self, value: str) -> str:
        return self._re.sub(lambda m: self._map[m.group(0)], value)


def _number_replacer(number_map: dict[str, str]) -> _NumberReplacer | None:
    clean = {k: v for k, v in number_map.items() if k}
    return _NumberReplacer(clean) if clean else None
