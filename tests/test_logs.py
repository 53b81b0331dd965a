"""Logs: text or JSON lines, tagged with the call, and no secret ever written."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from telefum.logs import JsonFormatter, RedactingFilter, TextFormatter, redact_line

SECRETS = ("pw-in-query", "ami-s3cret", "userinfo-pw", "nested-pw", "redis-pw", "tok-123")


def emit(log: logging.Logger) -> None:
    log.warning(
        "CRM said no: %s",
        "https://crm.example.com/rest?login=bridge&password=pw-in-query",
        extra={
            "call_id": "1732633200.17",
            "pbx": "office",
            "settings": {"crm": {"password": "nested-pw"}},
            "redis": "redis://:redis-pw@10.0.0.9:6379/0",
        },
    )
    log.info("AMI sent:\r\nAction: Login\r\nUsername: telefum\r\nSecret: ami-s3cret\r\n")
    log.info("token=tok-123 for https://ivan:userinfo-pw@crm.example.com/card")
    try:
        raise RuntimeError("GET /rest?password=pw-in-query failed")
    except RuntimeError:
        log.exception("delivery failed", extra={"call_id": "1.2"})


@contextlib.contextmanager
def capture(kind: str) -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A logger wired the way setup_logging wires the root: filter + formatter."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.addFilter(RedactingFilter())
    handler.setFormatter(
        JsonFormatter() if kind == "json" else TextFormatter("%(levelname)s %(message)s")
    )
    log = logging.getLogger(f"test.logs.{kind}")
    log.addHandler(handler)
    log.propagate = False
    log.setLevel(logging.DEBUG)
    try:
        yield log, out
    finally:
        log.removeHandler(handler)


@pytest.mark.parametrize("kind", ["text", "json"])
def test_no_secret_reaches_the_log_in_either_format(kind: str) -> None:
    with capture(kind) as (log, out):
        emit(log)
    text = out.getvalue()
    for secret in SECRETS:
        assert secret not in text
    assert "***" in text


def test_json_lines_are_one_object_each_with_the_call_id() -> None:
    with capture("json") as (log, out):
        emit(log)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(lines) == 4
    first = lines[0]
    assert first["call_id"] == "1732633200.17" and first["pbx"] == "office"
    assert first["level"] == "warning" and first["msg"].startswith("CRM said no: ")
    assert "RuntimeError" in lines[3]["exc"] and lines[3]["call_id"] == "1.2"


def test_text_lines_carry_the_call_id_as_a_field() -> None:
    with capture("text") as (log, out):
        log.info("call delivered", extra={"call_id": "9.9"})
    assert out.getvalue().strip() == "INFO call delivered call_id=9.9"


def test_redaction_leaves_ordinary_text_alone() -> None:
    assert redact_line("call delivered: event 3 on contact 7 (created)") == (
        "call delivered: event 3 on contact 7 (created)"
    )
    assert redact_line("https://crm.example.com/rest?typereq=find") == (
        "https://crm.example.com/rest?typereq=find"
    )


def test_the_cli_logs_json_to_stderr_without_secrets(tmp_path: Path) -> None:
    """The real CLI path: --log-json and a configuration error mentioning a secret URL."""
    bad = tmp_path / "s.toml"
    bad.write_text('[redis]\nurl = "http://:redis-pw@r:6379"\n')
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "telefum.cli",
            "--log-json",
            "config",
            "check",
            "--config",
            str(bad),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert "redis-pw" not in done.stderr + done.stdout
    assert "redis.url" in done.stderr


def test_json_timestamps_are_utc_iso_8601_with_milliseconds(redis_url: str) -> None:
    """As journald and log shippers get them: ``telefum --log-json worker`` as a process."""
    before = time.time()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "telefum.cli",
            "--log-json",
            "worker",
            "--burst",
            "--redis-url",
            redis_url,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stderr.splitlines()]
    assert lines and all(set(line) >= {"ts", "level", "logger", "msg"} for line in lines)
    for line in lines:
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["ts"]), line["ts"]
        at = datetime.strptime(line["ts"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
        assert before - 1 <= at.timestamp() <= time.time() + 1


FORGED = "42\n2026-11-26 12:00:00 INFO telefum: all calls delivered\x1b[2J\x9b31m\u2028\u202e"


def test_text_from_a_crm_cannot_forge_a_text_log_line_or_drive_the_terminal() -> None:
    with capture("text") as (log, out):
        log.info("contact %s created", FORGED, extra={"call_id": "1.2\r\nINFO x"})
    text = out.getvalue()
    assert text.count("\n") == 1  # one record, one line
    assert "\\n2026-11-26" in text and "call_id=1.2\\r\\nINFO x" in text
    assert "\\x1b[2J\\x9b31m\\u2028\\u202e" in text
    assert not any(c in text for c in "\x1b\x9b\u2028\u202e\r")


def test_a_traceback_keeps_its_lines_but_none_can_pass_for_a_record() -> None:
    with capture("text") as (log, out):
        try:
            raise RuntimeError(f"CRM said: {FORGED}")
        except RuntimeError:
            log.exception("delivery failed")
    first, *rest = out.getvalue().splitlines()
    assert first == "ERROR delivery failed"
    assert rest[0] == "    Traceback (most recent call last):"
    assert all(line.startswith("    ") for line in rest)  # a record starts at column 0
    assert any(line.startswith("    2026-11-26 12:00:00 INFO") for line in rest)
    assert "\x1b" not in out.getvalue() and "\x9b" not in out.getvalue()


def test_json_lines_escape_every_control_character_and_keep_the_text() -> None:
    with capture("json") as (log, out):
        log.info("contact %s created", FORGED)
    raw = out.getvalue()
    assert raw.count("\n") == 1
    assert not any(c in raw for c in "\x1b\x9b\u2028\u202e")
    assert json.loads(raw)["msg"] == f"contact {FORGED} created"


@pytest.mark.parametrize(
    ("msg", "arg"),
    [
        ("job %s expired", "call:office:1732633200.17"),
        ("%s failed", "call:office:1732633200.17:deliver_call"),
    ],
)
def test_arqs_own_lines_about_a_job_carry_the_calls_tags_not_the_job_id(msg: str, arg: str) -> None:
    """arq names a job by its id; the line gets the one form every line about a call has."""
    from worker.keys import ArqLineTags

    record = logging.LogRecord("arq.worker", logging.WARNING, __file__, 1, msg, (arg,), None)
    assert ArqLineTags().filter(record)
    line = TextFormatter("%(levelname)s %(message)s").format(record)
    assert line.endswith(" call_id=1732633200.17 pbx=office")
    assert json.loads(JsonFormatter().format(record))["pbx"] == "office"
