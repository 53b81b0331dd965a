"""Logging for the service: one line per happening, tagged with the call, no secrets.

Redaction is the last line of defence (code should not log secrets in the first place):
every line, its extra fields and its traceback pass through ``crm_client.redact.redact_line``,
which masks every secret shape we know (query pairs, JSON, AMI headers, URL userinfo).

Text from outside (a CRM's contact id or error page, a PBX's channel name) cannot forge a
line or drive the terminal of whoever reads the log: :func:`escape_controls` writes every
control character as an escape (``\\n``, ``\\x1b``) in each line, and the commands that
print stored errors (``telefum dlq list``, ``telefum status``) use it too. A text line is
one record; a traceback follows on lines of its own, each indented, so that nothing in it
starts a line the way a record does.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from typing import Any

from crm_client.redact import redact_line
from telephony.records import iso_utc
from worker.keys import ArqLineTags

_STD_ATTRS = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}

# C0 (LF forges lines, ESC drives terminals), DEL, C1 (0x9b is a CSI to some terminals), the
# Unicode line and paragraph separators, and the bidi controls that reorder what is shown.
_BIDI_AND_SEPARATORS = "\u2028\u2029\u202a-\u202e\u2066-\u2069"
_CONTROLS = re.compile(f"[\\x00-\\x1f\\x7f-\\x9f{_BIDI_AND_SEPARATORS}]")
_NOT_ESCAPED_BY_JSON = re.compile(f"[\\x7f-\\x9f{_BIDI_AND_SEPARATORS}]")  # json does C0
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(m: re.Match[str]) -> str:
    c = m.group()
    return _NAMED.get(c) or (f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}")


def escape_controls(text: str) -> str:
    """``text`` on one line with nothing a terminal acts on: control characters escaped."""
    return _CONTROLS.sub(_escape, text)


def json_dumps_safe(obj: Any, **kwargs: Any) -> str:
    """``json.dumps(obj, ensure_ascii=False)``, and the characters it leaves raw that are
    still controls (DEL, C1, separators, bidi) written as ``\\uXXXX``: same JSON."""
    text = json.dumps(obj, ensure_ascii=False, **kwargs)
    return _NOT_ESCAPED_BY_JSON.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


class RedactingFilter(logging.Filter):
    """Masks secrets in the message before any handler formats it."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        clean = redact_line(msg)
        if clean != msg:
            record.msg, record.args = clean, None
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, and the extra fields (call_id, pbx).

    ``ts`` is UTC with milliseconds (``2026-11-26T12:00:00.120Z``), the form call records
    use: lines of one busy second keep their order in a log shipper that re-sorts them."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": iso_utc(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": redact_line(record.getMessage()),
        }
        for k, v in record.__dict__.items():
            if k not in _STD_ATTRS and not k.startswith("_"):
                out[k] = v
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        line = json_dumps_safe(out, default=str)
        return redact_line(line)  # the whole line, so nested extras are covered too


class TextFormatter(logging.Formatter):
    """The record on one line (extra fields appended as ``key=value``), then its traceback
    on lines of its own, indented; redacted first, then control characters escaped."""

    def format(self, record: logging.LogRecord) -> str:
        saved = record.exc_info, record.exc_text, record.stack_info
        record.exc_info = record.exc_text = record.stack_info = None
        try:
            line = super().format(record)
        finally:
            record.exc_info, record.exc_text, record.stack_info = saved
        extra = [
            f"{k}={v}"
            for k, v in record.__dict__.items()
            if k not in _STD_ATTRS and not k.startswith("_")
        ]
        line = f"{line} {' '.join(extra)}" if extra else line
        line = escape_controls(redact_line(line))
        tail = []
        if record.exc_info:
            tail.append(self.formatException(record.exc_info))
        elif record.exc_text:
            tail.append(record.exc_text)
        if record.stack_info:
            tail.append(self.formatStack(record.stack_info))
        for block in tail:
            for part in redact_line(block).split("\n"):
                line += "\n    " + escape_controls(part)
        return line


def setup_logging(verbose: bool = False, json_lines: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(ArqLineTags())
    handler.addFilter(RedactingFilter())
    text = TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    handler.setFormatter(JsonFormatter() if json_lines else text)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for noisy in ("aiohttp.access", "arq.worker", "panoramisk"):
        logging.getLogger(noisy).setLevel(logging.WARNING if not verbose else logging.DEBUG)
