"""AMI wire format: raw socket bytes in, whole messages out.

Asterisk sends a banner line, then header blocks (``Key: Value`` lines ended by CRLF)
separated by an empty line. The codec splits on whole messages *before* decoding, so a
UTF-8 character split across two socket reads (a Cyrillic caller name) is never mangled;
panoramisk decodes each read on its own and drops such characters.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterator

log = logging.getLogger(__name__)

Message = dict[str, str]
"""One AMI message: header name -> value. Repeated headers keep the last value,
except ``ChanVariable``/``Output`` style repeats, which are joined with newlines."""

_TERMINATOR = b"\r\n\r\n"
_MAX_MESSAGE = 1 << 20  # a message larger than 1 MiB is garbage, not AMI


_JOINED = frozenset({"ChanVariable", "Output"})  # repeated headers kept, not overwritten


class AmiCodec:
    """Incremental splitter: ``feed(chunk)`` gives every message completed by the chunk.

    Lines that are not ``Key: Value`` are logged and skipped; a block with no valid line
    is dropped whole. Nothing here raises on bad input.

    ``events`` (and ``variables``) say which events the reader will use, to save decoding
    the rest: an event of another type, or a ``VarSet`` of another variable, is passed
    over before it becomes a dict and only counted (``passed_over``). Responses, anything
    carrying an ``ActionID`` and blocks that do not start with ``Event:`` are always given.
    A busy PBX sends mostly events a call tracker ignores (``VarSet``, ``Newexten``,
    ``DeviceStateChange``...), and building their dicts is most of a parser's work.
    """

    __slots__ = ("_buf", "_events", "_skipped", "_variables", "banner", "passed_over")

    def __init__(
        self,
        events: Collection[str] | None = None,
        variables: Collection[str] | None = None,
    ) -> None:
        self._buf = b""
        self.banner: str | None = None
        self._skipped = 0
        self._events = frozenset(events) if events is not None else None
        self._variables = frozenset(variables) if variables is not None else None
        self.passed_over = 0

    @property
    def skipped(self) -> int:
        """How many malformed lines or blocks were dropped so far."""
        return self._skipped

    def feed(self, data: bytes) -> Iterator[Message]:
        buf = self._buf + data if self._buf else data
        if self.banner is None:
            nl = buf.find(b"\r\n")
            if nl < 0:
                self._buf = buf
                return iter(())
            first = buf[:nl]
            if first.startswith(b"Asterisk Call Manager") or b":" not in first:
                self.banner = first.decode("utf-8", "replace")
                buf = buf[nl + 2 :]
            else:
                self.banner = ""
        end = buf.rfind(_TERMINATOR)
        if end >= 2 and buf[end - 2 : end] == b"\r\n":
            end = _sequential_end(buf, end)
        rest = buf[end + 4 :] if end >= 0 else buf
        if len(rest) > _MAX_MESSAGE:
            log.warning("AMI: dropping %d bytes with no message end", len(rest))
            self._skipped += 1
            rest = b""
        self._buf = rest
        if end < 0:
            return iter(())
        # Every message this read completed, decoded at once: the terminator is ASCII, so
        # this is the same text as decoding them one by one, for one call instead of many.
        blocks = buf[:end].decode("utf-8", "replace").split("\r\n\r\n")
        out: list[Message] = []
        append = out.append
        decode = self._decode
        events = self._events
        if events is None:
            for block in blocks:
                if block:
                    msg = decode(block)
                    if msg:
                        append(msg)
            return iter(out)
        variables = self._variables
        passed = 0
        for block in blocks:
            if block.startswith("Event: "):
                nl = block.find("\r\n")
                name = block[7:nl] if nl > 0 else block[7:]
                if (
                    name not in events
                    or (
                        name == "VarSet"
                        and variables is not None
                        and _variable(block) not in variables
                    )
                ) and ("\r\nActionID:" not in block):
                    passed += 1
                    continue
            elif not block:
                continue
            msg = decode(block)
            if msg:
                append(msg)
        self.passed_over += passed
        return iter(out)

    def _decode(self, text: str) -> Message | None:
        msg: Message = {}
        for line in text.split("\r\n"):
            key, sep, value = line.partition(": ")
            if sep and key not in msg:  # nearly every line of a real stream
                msg[key] = value
            elif sep:
                if key in _JOINED:
                    msg[key] += "\n" + value
                else:
                    msg[key] = value
            elif line.endswith(":") and line[:-1] and " " not in line:
                msg[line[:-1]] = ""
            elif line.strip():
                self._skipped += 1
                log.debug("AMI: skipping malformed line %r", line[:200])
        if not msg:
            self._skipped += 1
            log.warning("AMI: skipping a block with no headers (%d characters)", len(text))
            return None
        return msg


def _sequential_end(buf: bytes, end: int) -> int:
    """Where the last terminator is when the buffer is split left to right, given the
    last one found from the right: in a run of empty lines they differ by one line."""
    start = end
    while start >= 2 and buf[start - 2 : start] == b"\r\n":
        start -= 2
    return end - 2 if (end - start) // 2 % 2 else end


def _variable(block: str) -> str | None:
    """The ``Variable`` header of a ``VarSet`` block, read without decoding the block."""
    i = block.find("\r\nVariable: ")
    if i < 0:
        return None
    i += 12
    j = block.find("\r\n", i)
    return block[i:j] if j >= 0 else block[i:]


def parse_trace(data: bytes) -> list[Message]:
    """Every message of a recorded AMI session (the bytes a socket delivered)."""
    return list(AmiCodec().feed(data))


def encode(msg: Message) -> bytes:
    """One message on the wire, as Asterisk writes it."""
    return "".join(f"{k}: {v}\r\n" for k, v in msg.items()).encode() + b"\r\n"


def event_time(msg: Message, arrived: float) -> float:
    """When the PBX says the event happened (``Timestamp``, timestampevents=yes), else
    the arrival time the caller gives us."""
    ts = msg.get("Timestamp")
    if ts:
        try:
            return float(ts)
        except ValueError:
            pass
    return arrived
