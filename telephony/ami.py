"""AMI wire format: raw socket bytes in, whole messages out.

Asterisk sends a banner line, then header blocks (``Key: Value`` lines ended by CRLF)
separated by an empty line. The codec splits on whole messages *before* decoding, so a
UTF-8 character split across two socket reads (a Cyrillic caller name) is never mangled;
panoramisk decodes each read on its own and drops such characters.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

log = logging.getLogger(__name__)

Message = dict[str, str]
"""One AMI message: header name -> value. Repeated headers keep the last value,
except ``ChanVariable``/``Output`` style repeats, which are joined with newlines."""

_TERMINATOR = b"\r\n\r\n"
_MAX_MESSAGE = 1 << 20  # a message larger than 1 MiB is garbage, not AMI


class AmiCodec:
    """Incremental splitter: ``feed(chunk)`` yields every message completed by the chunk.

    Lines that are not ``Key: Value`` are logged and skipped; a block with no valid line
    is dropped whole. Nothing here raises on bad input.
    """

    __slots__ = ("_buf", "_skipped", "banner")

    def __init__(self) -> None:
        self._buf = b""
        self.banner: str | None = None
        self._skipped = 0

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
                return
            first = buf[:nl]
            if first.startswith(b"Asterisk Call Manager") or b":" not in first:
                self.banner = first.decode("utf-8", "replace")
                buf = buf[nl + 2 :]
            else:
                self.banner = ""
        start = 0
        find = buf.find
        while True:
            end = find(_TERMINATOR, start)
            if end < 0:
                break
            block = buf[start:end]
            start = end + 4
            if block:
                msg = self._decode(block)
                if msg:
                    yield msg
        rest = buf[start:]
        if len(rest) > _MAX_MESSAGE:
            log.warning("AMI: dropping %d bytes with no message end", len(rest))
            self._skipped += 1
            rest = b""
        self._buf = rest

    def _decode(self, block: bytes) -> Message | None:
        text = block.decode("utf-8", "replace")
        msg: Message = {}
        for line in text.split("\r\n"):
            key, sep, value = line.partition(": ")
            if not sep:
                if line.endswith(":") and line[:-1] and " " not in line:
                    msg[line[:-1]] = ""
                    continue
                if line.strip():
                    self._skipped += 1
                    log.debug("AMI: skipping malformed line %r", line[:200])
                continue
            if key in msg and key in ("ChanVariable", "Output"):
                msg[key] += "\n" + value
            else:
                msg[key] = value
        if not msg:
            self._skipped += 1
            log.warning("AMI: skipping a block with no headers (%d bytes)", len(block))
            return None
        return msg


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
