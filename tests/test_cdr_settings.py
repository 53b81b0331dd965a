"""The CDR source's settings (telephony/cdr_settings.py): checked at once, never leaking a
password into what is logged about the source."""

from __future__ import annotations

import pytest

from telephony.cdr_settings import CdrSourceSettings, redact_dsn

SECRET = "S3cr3t-pw"


@pytest.mark.parametrize(
    ("dsn", "shown"),
    [
        ("mysql://cdr:S3cr3t-pw@db:3306/asteriskcdrdb", "mysql://cdr:***@db:3306/asteriskcdrdb"),
        (
            "postgresql://db/asterisk?password=S3cr3t-pw&sslmode=require",
            "postgresql://db/asterisk?password=***&sslmode=require",
        ),
        (
            "mysql://db/asteriskcdrdb?unix_socket=/run/mysqld/mysqld.sock",
            "mysql://db/asteriskcdrdb?unix_socket=/run/mysqld/mysqld.sock",
        ),
        ("mysql://db:port-S3cr3t-pw/x", "***"),
    ],
)
def test_redact_dsn_masks_passwords_and_keeps_the_rest(dsn: str, shown: str) -> None:
    assert redact_dsn(dsn) == shown


def test_describe_and_repr_of_a_source_never_show_its_password() -> None:
    s = CdrSourceSettings(
        kind="mysql",
        dsn=f"mysql://cdr:{SECRET}@db/asteriskcdrdb?password={SECRET}",
        password=SECRET,
    )
    assert SECRET not in s.describe() and SECRET not in repr(s).replace(s.dsn, "")
    assert s.describe() == "mysql cdr@db/asteriskcdrdb?password=*** table cdr"


def test_credentials_fields_come_before_the_dsn_s() -> None:
    s = CdrSourceSettings(kind="postgres", dsn="postgresql://a:b@db/asterisk")
    assert s.credentials() == ("a", "b")
    s = CdrSourceSettings(
        kind="postgres", dsn="postgresql://a:b@db/asterisk", user="u", password="p"
    )
    assert s.credentials() == ("u", "p")


def test_defaults_are_no_backfill_and_freepbx_s_database_when_mysql() -> None:
    assert not CdrSourceSettings().enabled
    s = CdrSourceSettings(kind="mysql")
    assert s.effective_dsn == "mysql://127.0.0.1:3306/asteriskcdrdb"
    assert s.describe() == "mysql 127.0.0.1:3306/asteriskcdrdb table cdr"


@pytest.mark.parametrize(
    ("kw", "error"),
    [
        ({"kind": "sqlite"}, "kind: expected one of"),
        ({"kind": "csv", "path": ""}, "path:"),
        ({"kind": "mysql", "dsn": f"postgresql://u:{SECRET}@db/x"}, "dsn: expected mysql://"),
        ({"kind": "postgres", "dsn": "postgresql://db"}, "dsn: no database name"),
        ({"kind": "mysql", "table": "cdr; DROP TABLE cdr"}, "table: not a table name"),
        ({"kind": "csv", "timezone": "Mars/Olympus"}, "timezone: unknown time zone"),
        ({"kind": "csv", "fallback_encoding": "klingon"}, "fallback_encoding: unknown"),
        ({"kind": "csv", "margin_s": -1}, "margin_s: must be 0 or more"),
    ],
)
def test_a_setting_that_cannot_work_is_refused_naming_the_key(
    kw: dict[str, object], error: str
) -> None:
    with pytest.raises(ValueError, match=error) as err:
        CdrSourceSettings(**kw)  # type: ignore[arg-type]
    assert SECRET not in str(err.value)
