"""Secrets never reach logs: URLs and free text are masked wherever a password can sit."""

from __future__ import annotations

import html
import time
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest

from crm_client.redact import (
    mask_values,
    redact_line,
    redact_text,
    redact_url,
    register_secrets,
    registered_secrets,
)
from telefum.config import load_settings_from


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "https://crm.example.com/rest?typereq=find&phone=%2B79161234567&login=bridge&password=S3cr3t",
            "https://crm.example.com/rest?typereq=find&phone=%2B79161234567&login=bridge&password=***",
        ),
        ("https://bridge:S3cr3t@crm.example.com/rest", "https://bridge:***@crm.example.com/rest"),
        (
            "https://crm.example.com/rest?apikey=S3cr3t&api_key=S3cr3t&token=S3cr3t",
            "https://crm.example.com/rest?apikey=***&api_key=***&token=***",
        ),
        (
            "https://crm.example.com/rest?PASSWORD=S3cr3t%2B%26",
            "https://crm.example.com/rest?PASSWORD=***",
        ),
        ("https://crm.example.com/rest", "https://crm.example.com/rest"),
    ],
)
def test_redact_url_masks_every_secret_and_keeps_the_rest(url: str, expected: str) -> None:
    assert redact_url(url) == expected
    assert "S3cr3t" not in redact_url(url)


@pytest.mark.parametrize(
    "text",
    [
        "GET /rest?login=bridge&password=S3cr3t HTTP/1.1",
        "form: typereq=addevent&password=S3cr3t&id=1",
        'error at "http://x/rest?secret=S3cr3t"',
        "passwd=S3cr3t",
    ],
)
def test_redact_text_masks_secret_pairs_in_free_text(text: str) -> None:
    assert "S3cr3t" not in redact_text(text)
    assert "***" in redact_text(text)


def test_redact_text_leaves_ordinary_words_alone() -> None:
    text = "Неправильный логин или пароль; password reset needed"
    assert redact_text(text) == text


def test_a_url_that_does_not_parse_is_still_masked() -> None:
    assert "S3cr3t" not in redact_url("http://[broken/rest?password=S3cr3t")


def test_the_worker_process_log_masks_passwords_in_tracebacks_too() -> None:
    import logging

    from worker.__main__ import _Formatter

    try:
        raise RuntimeError("GET http://crm/rest?login=bridge&password=hunter2 failed")
    except RuntimeError:
        import sys

        record = logging.LogRecord(
            "worker", logging.ERROR, __file__, 1, "delivery failed", None, sys.exc_info()
        )
    line = _Formatter("%(message)s").format(record)
    assert "RuntimeError" in line and "hunter2" not in line


def test_mask_values_hides_a_secret_in_every_form_a_server_echoes_it() -> None:
    secret = "S3cr3t+пароль/&x"
    echoed = (
        f"you sent pass {secret}; as a query {quote(secret, safe='')}; as a form "
        f"{quote_plus(secret)}; in HTML {html.escape(secret)}"
    )
    masked = mask_values(echoed, [secret])
    assert masked == "you sent pass ***; as a query ***; as a form ***; in HTML ***"
    assert mask_values("password=other and more", [secret]) == "password=*** and more"
    assert mask_values("nothing to hide", ["", secret]) == "nothing to hide"


def test_registered_secret_values_are_masked_by_every_redaction_in_every_form() -> None:
    secret = "Tr0ub4dor&3 пароль"
    register_secrets([secret, "short", ""])  # under 6 characters: left to the shape rules
    echoed = f"you sent pass {secret} ({quote(secret, safe='')}, {quote_plus(secret)})"
    assert redact_text(echoed) == "you sent pass *** (***, ***)"
    assert redact_line(echoed) == "you sent pass *** (***, ***)"
    assert secret not in redact_url(f"https://crm.example.com/rest?pw={quote(secret)}")
    assert redact_text("a short word") == "a short word"


def test_the_settings_register_their_secrets_and_not_the_placeholder(tmp_path: Path) -> None:
    path = tmp_path / "settings.toml"
    path.write_text(
        '[redis]\nurl = "redis://:r3dis%40pass@127.0.0.1:6379/0"\n'
        '[crm]\nurl = "https://crm.example.com/rest"\nlogin = "bridge"\npassword = "crm-pass-1"\n'
        '[crm.agents."101"]\nlogin = "ivan"\npassword = "ivan-pass-2"\n'
        '[http]\ntoken = "admin-token-3"\n',
        encoding="utf-8",
    )
    load_settings_from(path, {"TELEFUM_AMI__SECRET": "ami-secret-4"})
    assert {"crm-pass-1", "ivan-pass-2", "admin-token-3", "ami-secret-4", "r3dis@pass"} <= (
        registered_secrets()
    )
    assert "change-me" not in registered_secrets()


def test_backfill_and_sentinel_passwords_are_registered_too(tmp_path: Path) -> None:
    """The secrets main's issue-15 settings brought: a password written into a backfill DSN
    (its user part, a password-like parameter, a PBX's own [ami.backfill]), the backfill's
    password field, and the primary's password in a Sentinel URL."""
    path = tmp_path / "settings.toml"
    path.write_text(
        '[redis]\nurl = "redis+sentinel://:s3nt%40pass@10.0.0.1:26379/telefum/0"\n'
        '[backfill]\nkind = "postgres"\n'
        'dsn = "postgresql://cdr:dsn%2Fpass-5@db.example/asterisk?sslpassword=ssl-pass-6"\n'
        '[[ami]]\nname = "office"\nhost = "pbx"\nusername = "u"\nsecret = "ami-secret-7"\n'
        '[ami.backfill]\nkind = "mysql"\ndsn = "mysql://cdr@db.example/asteriskcdrdb"\n'
        'password = "cdr-pass-8"\n',
        encoding="utf-8",
    )
    load_settings_from(path, {})
    assert {"s3nt@pass", "dsn/pass-5", "ssl-pass-6", "ami-secret-7", "cdr-pass-8"} <= (
        registered_secrets()
    )
    assert redact_line("psql: FATAL: password dsn/pass-5 rejected") == (
        "psql: FATAL: password *** rejected"
    )


@pytest.mark.parametrize(
    "line",
    ["a." * 100_000, '"password": "' * 15_000, "x://:" * 40_000],
    ids=["scheme-like run", "unclosed quoted secrets", "schemes without userinfo"],
)
def test_masking_a_hostile_log_line_is_linear(line: str) -> None:
    """Every log line goes through redact_line: 40 KB of "a.a.a..." took 6 s when a URL's
    scheme could be any length (200 KB here would take minutes)."""
    t0 = time.perf_counter()
    redact_line(line)
    assert time.perf_counter() - t0 < 2.0
