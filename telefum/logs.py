"""Logging for the service: one line per happening, tagged with the call, no secrets.

Redaction is the last line of defence (code should not log secrets in the first place):
every line, its extra fields and its traceback pass through ``crm_client.redact.redact_line``,
which masks every secret shape we know (query pairs, JSON, AMI headers, URL userinfo).
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

from crm_client.redact import redact_line
from telephony.records import iso_utc
from worker.keys import ArqLineTags

_STD_ATTRS = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}

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
        line = json.dumps(out, ensure_ascii=False, default=str)
        return redact_line(line)  # the whole line, so nested extras are covered too


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extra = [
            f"{k}={v}"
            for k, v in record.__dict__.items()
            if k not in _STD_ATTRS and not k.startswith("_")
        ]
        line = f"{line} {' '.join(extra)}" if extra else line
        return redact_line(line)


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
