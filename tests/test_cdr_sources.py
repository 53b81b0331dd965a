"""CDR sources (telephony/cdr_csv.py, cdr_sql.py): the calls that ended in a window, from a
real file and real MariaDB and PostgreSQL servers; and every way they can be wrong.

Round trips: the rows of every recorded call, written as each backend writes them, read
back through the source and mapped, give the records the tracker made of the same calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncmy
import asyncpg
import pytest

from telephony.cdr import backfill
from telephony.cdr_settings import CdrSourceSettings
from telephony.cdr_sources import (
    CdrConfigError,
    CdrSource,
    CdrUnavailable,
    backfill_window,
    open_source,
)
from telephony.records import CallRecord
from telephony.rules import CallRules
from tests.conftest import free_port
from tests.support.cdr_db import PASSWORD, DbServer
from tests.support.cdr_rows import (
    ASTERISK_PG_CDR,
    CORPORA,
    FREEPBX_CDR,
    FREEPBX_COLUMNS,
    PG_COLUMNS,
    Corpus,
    TraceCdr,
    csv_line,
    differences,
    mysql_values,
    pg_values,
    trace_cdrs,
    trace_rules,
)
from tests.support.pbx import TRACES
from tests.test_tracker_traces import ALL_SCENARIOS, check_against_manifest, match_calls

RULES = CallRules()
PJSIP = CORPORA["Asterisk 22.10.1 PJSIP"]
# One CDR table per PBX, read with that PBX's [calls] rules
PBXES = [pytest.param(c, id=c.pbx.split()[1] + "-" + c.pbx.split()[-1]) for c in CORPORA.values()]


def span(cdrs: list[TraceCdr]) -> tuple[float, float]:
    from datetime import UTC, datetime

    def ts(text: str) -> float:
        return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()

    return (min(ts(c.event["StartTime"]) for c in cdrs), max(ts(c.event["EndTime"]) for c in cdrs))


async def read_records(source: CdrSource | None, corpus: Corpus) -> dict[str, CallRecord]:
    assert source is not None
    window = await source.read(*span(corpus.cdrs))
    assert window.bad_rows == 0, window.bad_reason
    got, skipped = backfill(window.calls, corpus.rules)
    assert skipped == {}
    return {r.call_id: r for r in got}


def assert_like_live(
    got: dict[str, CallRecord], corpus: Corpus, *, slack_s: float, did: bool
) -> None:
    live = corpus.live
    assert sorted(got) == sorted(live)
    problems = {k: differences(r, live[k], slack_s=slack_s, did=did) for k, r in got.items()}
    assert {k: v for k, v in problems.items() if v} == {}


# --- Master.csv ---------------------------------------------------------------------------


def csv_settings(path: Path, **kw: object) -> CdrSourceSettings:
    return CdrSourceSettings(kind="csv", path=str(path), timezone="UTC", **kw)  # type: ignore[arg-type]


def write_master_csv(path: Path, corpus: Corpus, **options: bool) -> Path:
    path.write_text("".join(csv_line(c, **options) for c in corpus.cdrs), encoding="utf-8")
    return path


@pytest.fixture
def master_csv(tmp_path: Path) -> Path:
    """Master.csv with every recorded call of the Asterisk 22 PBX, as cdr_csv writes it with
    loguniqueid=yes, loguserfield=yes (no linkedid column)."""
    return write_master_csv(tmp_path / "Master.csv", PJSIP)


@pytest.mark.parametrize("corpus", PBXES)
async def test_csv_round_trip_gives_the_tracker_s_records(corpus: Corpus, tmp_path: Path) -> None:
    path = write_master_csv(tmp_path / "Master.csv", corpus)
    got = await read_records(open_source(csv_settings(path)), corpus)
    assert_like_live(got, corpus, slack_s=1.0, did=False)  # the dialplans leave no DID here


# Each Master.csv Asterisk wrote (pbxsim/traces, "cdr_csv_file") against its manifest's calls,
# with the tracker trace tests' comparison (match_calls), less what a CDR cannot know
# (docs/backfill.md), as it shows in these recordings:
# - the DID: every recorded dialplan leaves the inbound context (Goto a route: dst "to101",
#   context inbound-routes) before it dials, and Master.csv has no did column;
# - sub-second times: ring and talk are compared within 1 s, as the tracker's are;
# - the answer of an agent after the PBX answered the caller (a queue), and of the outside
#   party of a click-to-call (the CDR answers when the agent picks up): ring and talk are
#   the CDR's own, which the manifest gives (ring_seconds, talk_seconds), as for the calls
#   whose events the cut AMI link hid (*_events null).
CDR_ANSWER_UNKNOWN = {
    "1796475814.75": "45 queue: the PBX answered the caller before 202 did",
    "1796475904.90": "50 click-to-call: answered when 201 picked up; the callee rang 2.5 s",
}
WITH_MASTER_CSV = sorted(name for name, s in ALL_SCENARIOS.items() if "cdr_csv_file" in s)


def as_a_cdr_knows(call: dict[str, Any]) -> dict[str, Any]:
    """A manifest call as the Master.csv of its recording can tell it (the list above)."""
    known = {k: v for k, v in call.items() if k != "only_in_cdr_csv"}  # Master.csv has those
    if known["direction"] == "in":
        known["did"] = None
    for key in ("ring", "talk"):
        if known[f"{key}_seconds_events"] is None or call["linkedid"] in CDR_ANSWER_UNKNOWN:
            known[f"{key}_seconds_events"] = known[f"{key}_seconds"]
    return known


async def read_master_csv(name: str, since: float = 0, until: float = 4e9) -> list[CallRecord]:
    source = open_source(csv_settings(TRACES / ALL_SCENARIOS[name]["cdr_csv_file"]))
    assert source is not None
    window = await source.read(since, until)
    got, skipped = backfill(window.calls, trace_rules(name))
    assert (window.bad_rows, skipped) == (0, {})
    return got


@pytest.mark.parametrize("name", WITH_MASTER_CSV)
async def test_master_csv_asterisk_wrote_gives_the_calls_it_had(name: str) -> None:
    """Each real Master.csv through the CSV source: every call as the recorder's ground
    truth has it (pickups, blonde transfers, forwards to a mobile, two callers joined, a
    busy click-to-call, a burst of 50 calls, a cut AMI link; Asterisk 22 PJSIP and
    Asterisk 20 chan_sip with phones named by account)."""
    scenario = ALL_SCENARIOS[name]
    got = await read_master_csv(name)
    match_calls({**scenario, "calls": [as_a_cdr_knows(c) for c in scenario["calls"]]}, got)
    assert {r.source for r in got} == {"cdr"}


async def test_the_calls_that_ended_while_the_ami_link_was_cut_are_in_the_cdr() -> None:
    # 29: the AMI link was down 7 s; C2 ended in the gap, C3 began and ended in it (never
    # seen on AMI at all), C4 began in it and ended after, C1 and C5 ended after it
    name = "29-inbound-ami-link-cut-7s.ami"
    scenario = ALL_SCENARIOS[name]
    gap = scenario["gap"]
    got = await read_master_csv(
        name, gap["session1_closed_wallclock"], gap["session2_connected_wallclock"]
    )
    truth = {c["linkedid"]: c for c in scenario["calls"]}
    assert sorted(r.call_id for r in got) == ["1796475313.290", "1796475317.292"]
    assert truth["1796475317.292"].get("only_in_cdr_csv") is True
    for record in got:
        assert check_against_manifest(as_a_cdr_knows(truth[record.call_id]), record.to_json()) == []


@pytest.mark.parametrize("corpus", PBXES)
async def test_csv_with_linkedid_column_gives_the_same_records(
    corpus: Corpus, tmp_path: Path
) -> None:
    path = write_master_csv(tmp_path / "Master.csv", corpus, newcolumns=True)
    got = await read_records(open_source(csv_settings(path)), corpus)
    assert_like_live(got, corpus, slack_s=1.0, did=False)


async def test_csv_window_holds_only_the_calls_that_ended_in_it(master_csv: Path) -> None:
    # 12: three calls ending at 21:19:01, :02 and :03; the window ends at :02
    overlap = trace_cdrs(TRACES / "12-inbound-overlapping-three-calls.ami")
    since, until = span(overlap)
    source = open_source(csv_settings(master_csv))
    assert source is not None
    window = await source.read(since, until - 1)
    assert [c.call_id for c in window.calls] == ["1795727934.34", "1795727935.36"]


async def test_csv_last_line_being_written_waits_for_the_next_read(tmp_path: Path) -> None:
    cdrs = trace_cdrs(TRACES / "01-inbound-answered-caller-hangup.ami")
    line = csv_line(cdrs[0])
    path = tmp_path / "Master.csv"
    path.write_text(line[:-20], encoding="utf-8")  # Asterisk is appending it right now
    source = open_source(csv_settings(path))
    assert source is not None
    since, until = span(cdrs)
    first = await source.read(since, until)
    assert (first.calls, first.bad_rows) == ([], 0)
    with path.open("a", encoding="utf-8") as f:
        f.write(line[-20:])
    second = await source.read(since, until)
    assert [c.call_id for c in second.calls] == ["1795727781.0"]


async def test_csv_reads_only_the_end_of_a_large_file(tmp_path: Path) -> None:
    cdrs = trace_cdrs(TRACES / "01-inbound-answered-caller-hangup.ami")
    old = csv_line(cdrs[0]).replace("2026-11-26", "2026-11-20")  # a week earlier
    path = tmp_path / "Master.csv"
    with path.open("w", encoding="utf-8") as f:
        f.write(old * 100_000)  # about 27 MB of old calls
        f.write(csv_line(cdrs[0]))
    source = open_source(csv_settings(path))
    assert source is not None
    window = await source.read(*span(cdrs))
    assert [c.call_id for c in window.calls] == ["1795727781.0"]
    assert path.stat().st_size > 20_000_000
    assert window.bytes_read < 300_000  # a few 64 KiB blocks from the end


@pytest.mark.parametrize("corpus", PBXES)
async def test_csv_with_a_header_reads_columns_in_its_order(corpus: Corpus, tmp_path: Path) -> None:
    # cdr_custom with a header line written by hand: another order, another spelling
    cdrs = corpus.cdrs
    names = [
        "UniqueID",
        "StartTime",
        "EndTime",
        "BillableSeconds",
        "Disposition",
        "Channel",
        "DestinationChannel",
        "Source",
        "Destination",
        "DestinationContext",
        "LastApplication",
        "LastData",
        "Duration",
    ]
    lines = [",".join(names) + "\n"]
    for c in cdrs:
        lines.append(",".join('"' + c.event[n].replace('"', '""') + '"' for n in names) + "\n")
    path = tmp_path / "Custom.csv"
    path.write_text("".join(lines), encoding="utf-8")
    got = await read_records(open_source(csv_settings(path)), corpus)
    assert_like_live(got, corpus, slack_s=1.0, did=False)


async def test_csv_rows_in_other_encodings_and_garbage_lines_do_not_stop_the_read(
    tmp_path: Path,
) -> None:
    cdrs = trace_cdrs(TRACES / "12-inbound-overlapping-three-calls.ami")
    named = [
        TraceCdr(c.event | {"CallerID": f'"{name}" <{c.event["Source"]}>'}, c.linkedid, c.did)
        for c, name in zip(cdrs, ["Иван Петров", "José", "Zoë"], strict=True)
    ]
    lines = [
        csv_line(named[0]).encode("cp1251"),
        csv_line(named[1]).encode("latin-1"),
        csv_line(named[2]).encode("utf-8"),
    ]
    garbage = b"\x00\xff\xfe not a cdr line at all\n"
    path = tmp_path / "Master.csv"
    path.write_bytes(lines[0] + garbage + lines[1] + lines[2])
    source = open_source(csv_settings(path))
    assert source is not None
    window = await source.read(*span(cdrs))
    assert len(window.calls) == 3
    assert window.bad_rows == 1 and window.bad_reason


async def test_csv_old_rows_without_uniqueid_are_kept_apart_as_unmatchable(
    tmp_path: Path,
) -> None:
    # loguniqueid was turned on today: yesterday's rows have 16 fields, today's 18
    cdrs = trace_cdrs(TRACES / "12-inbound-overlapping-three-calls.ami")
    path = tmp_path / "Master.csv"
    path.write_text(
        csv_line(cdrs[0], uniqueid=False, userfield=False) + csv_line(cdrs[1]) + csv_line(cdrs[2]),
        encoding="utf-8",
    )
    source = open_source(csv_settings(path))
    assert source is not None
    window = await source.read(*span(cdrs))
    got, skipped = backfill(window.calls, RULES)
    assert sorted(r.call_id for r in got) == ["1795727933.32", "1795727935.36"]
    assert skipped == {"no id": 1}


@pytest.mark.parametrize(
    ("options", "call_ids"),
    [
        ({"uniqueid": True, "userfield": False}, ["1795727781.0"]),  # 17 fields: uniqueid
        ({"uniqueid": False, "userfield": True}, [""]),  # 17 fields: userfield, no id
        ({"uniqueid": False, "userfield": False, "newcolumns": True}, ["1795727781.0"]),
    ],
)
async def test_csv_columns_are_told_from_the_field_count_and_content(
    tmp_path: Path, options: dict[str, bool], call_ids: list[str]
) -> None:
    cdrs = trace_cdrs(TRACES / "01-inbound-answered-caller-hangup.ami")
    line = csv_line(cdrs[0], **options)
    if options.get("userfield"):  # a userfield the dialplan set, not an id
        line = line.replace(',""\n', ',"vip"\n')
    path = tmp_path / "Master.csv"
    path.write_text(line, encoding="utf-8")
    source = open_source(csv_settings(path))
    assert source is not None
    window = await source.read(*span(cdrs))
    assert [c.call_id for c in window.calls] == call_ids and window.bad_rows == 0


async def test_csv_missing_file_is_worth_retrying_and_says_what_to_check(tmp_path: Path) -> None:
    source = open_source(csv_settings(tmp_path / "cdr-csv" / "Master.csv"))
    assert source is not None
    with pytest.raises(CdrUnavailable, match=r"not found.*cdr_csv") as err:
        await source.read(0, 1)
    assert err.value.retry


async def test_csv_a_directory_is_a_configuration_error(tmp_path: Path) -> None:
    source = open_source(csv_settings(tmp_path))
    assert source is not None
    with pytest.raises(CdrConfigError, match="directory") as err:
        await source.read(0, 1)
    assert not err.value.retry


@contextlib.contextmanager
def another_user() -> Iterator[None]:
    """As root (who may read anything), read as ``nobody``, like the bridge's own user."""
    if os.geteuid() != 0:
        yield
        return
    os.setegid(65534)
    os.seteuid(65534)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)


async def test_csv_file_the_bridge_may_not_read_is_a_configuration_error() -> None:
    folder = Path(tempfile.mkdtemp(prefix="telefum-cdr-"))  # not under pytest's 0700 tree
    try:
        folder.chmod(0o755)
        path = folder / "Master.csv"
        path.write_text("", encoding="utf-8")
        path.chmod(0o000)
        source = open_source(csv_settings(path))
        assert source is not None
        with another_user(), pytest.raises(CdrConfigError, match="permission denied"):
            await source.read(0, 1)
    finally:
        path.unlink()
        folder.rmdir()


# --- MySQL / MariaDB (FreePBX's asteriskcdrdb.cdr) ---------------------------------------


async def mysql_exec(server: DbServer, *statements: tuple[str, object]) -> None:
    conn = await asyncmy.connect(
        host="127.0.0.1",
        port=server.port,
        user=server.user,
        password=PASSWORD,
        db=server.database,
        autocommit=True,
    )
    try:
        async with conn.cursor() as cur:
            for sql, args in statements:
                if isinstance(args, list):
                    await cur.executemany(sql, args)
                else:
                    await cur.execute(sql, args)
    finally:
        conn.close()


@pytest.fixture
async def freepbx_table(mariadb: DbServer, corpus: Corpus) -> AsyncIterator[str]:
    """A FreePBX cdr table holding every recorded call of one PBX, as cdr_adaptive_odbc
    writes it."""
    name = f"cdr_{secrets.token_hex(4)}"
    marks = ", ".join(["%s"] * len(FREEPBX_COLUMNS))
    await mysql_exec(
        mariadb,
        (FREEPBX_CDR.format(table=name), None),
        (
            f"INSERT INTO {name} ({', '.join(FREEPBX_COLUMNS)}) VALUES ({marks})",
            [mysql_values(c) for c in corpus.cdrs],
        ),
    )
    yield name
    await mysql_exec(mariadb, (f"DROP TABLE IF EXISTS {name}", None))


def mysql_settings(server: DbServer, **kw: object) -> CdrSourceSettings:
    base: dict[str, object] = {
        "kind": "mysql",
        "dsn": server.dsn,
        "user": server.user,
        "password": PASSWORD,
        "timezone": "UTC",
    }
    return CdrSourceSettings(**(base | kw))  # type: ignore[arg-type]


@pytest.mark.parametrize("corpus", PBXES)
async def test_mysql_round_trip_gives_the_tracker_s_records_with_the_did(
    mariadb: DbServer, freepbx_table: str, corpus: Corpus
) -> None:
    got = await read_records(open_source(mysql_settings(mariadb, table=freepbx_table)), corpus)
    # no end column: end = calldate + duration, both cut to the second
    assert_like_live(got, corpus, slack_s=2.0, did=True)


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"password": "wrong"}, "access denied"),
        ({"dsn": "mysql://127.0.0.1:{port}/nosuchdb"}, "no such database"),
        ({"table": "nosuchtable"}, "table nosuchtable not found"),
    ],
)
async def test_mysql_configuration_mistakes_are_configuration_errors(
    mariadb: DbServer, change: dict[str, str], error: str
) -> None:
    change = {k: v.format(port=mariadb.port) for k, v in change.items()}
    source = open_source(mysql_settings(mariadb, **change))
    assert source is not None
    with pytest.raises(CdrConfigError, match=error) as err:
        await source.read(0, 1)
    assert not err.value.retry and PASSWORD not in str(err.value)


async def test_mysql_table_without_uniqueid_is_refused_naming_the_column(
    mariadb: DbServer,
) -> None:
    await mysql_exec(
        mariadb,
        (
            "CREATE TABLE IF NOT EXISTS cdr_lean (calldate datetime, "
            "channel varchar(80), dstchannel varchar(80), duration int, "
            "billsec int, disposition varchar(45))",
            None,
        ),
    )
    source = open_source(mysql_settings(mariadb, table="cdr_lean"))
    assert source is not None
    with pytest.raises(CdrConfigError, match="no column uniqueid"):
        await source.read(0, 1)


async def test_mysql_server_down_is_worth_retrying() -> None:
    port = free_port()  # nothing listens there
    settings = CdrSourceSettings(
        kind="mysql",
        dsn=f"mysql://127.0.0.1:{port}/asteriskcdrdb",
        user="telefum",
        password=PASSWORD,
        timeout_s=5,
    )
    source = open_source(settings)
    assert source is not None
    with pytest.raises(CdrUnavailable, match="cannot read") as err:
        await source.read(0, 1)
    assert err.value.retry and PASSWORD not in str(err.value)


async def test_a_server_that_accepts_but_never_answers_is_a_timeout_worth_retrying() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # no greeting, ever

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        for kind, dsn in (
            ("mysql", f"mysql://127.0.0.1:{port}/asteriskcdrdb"),
            ("postgres", f"postgresql://127.0.0.1:{port}/asterisk"),
        ):
            settings = CdrSourceSettings(
                kind=kind,
                dsn=dsn,
                user="telefum",  # type: ignore[arg-type]
                password=PASSWORD,
                timeout_s=0.5,
            )
            source = open_source(settings)
            assert source is not None
            with pytest.raises(CdrUnavailable) as err:
                await source.read(0, 1)
            assert err.value.retry, kind
    finally:
        server.close()
        await server.wait_closed()


async def test_mysql_rows_in_another_encoding_are_read(mariadb: DbServer) -> None:
    # a latin1 table holding cp1251 bytes, as an old cdr_mysql with charset unset wrote them
    name = f"cdr_{secrets.token_hex(4)}"
    cdrs = trace_cdrs(TRACES / "01-inbound-answered-caller-hangup.ami")
    values = mysql_values(cdrs[0])
    marks = ", ".join(["%s"] * len(FREEPBX_COLUMNS))
    cols = ", ".join(FREEPBX_COLUMNS)
    await mysql_exec(
        mariadb,
        (FREEPBX_CDR.format(table=name).replace("utf8mb4", "latin1"), None),
        (f"INSERT INTO {name} ({cols}) VALUES ({marks})", values),
        (f"UPDATE {name} SET lastdata = CAST(%s AS BINARY)", "Звонок".encode("cp1251")),
    )
    source = open_source(mysql_settings(mariadb, table=name))
    assert source is not None
    window = await source.read(*span(cdrs))
    assert [c.call_id for c in window.calls] == ["1795727781.0"] and window.bad_rows == 0
    assert window.calls[0].rows[0].lastdata == "Звонок"  # the bytes, not latin1 mojibake


# --- PostgreSQL (cdr_pgsql) --------------------------------------------------------------


async def pg_connect(server: DbServer, database: str | None = None) -> asyncpg.Connection:
    return await asyncpg.connect(
        host="127.0.0.1",
        port=server.port,
        user=server.user,
        password=PASSWORD,
        database=database or server.database,
    )


@pytest.fixture
async def pg_table(postgres: DbServer, corpus: Corpus) -> AsyncIterator[str]:
    """Asterisk's own cdr_pgsql schema, holding every recorded call of one PBX."""
    name = f"cdr_{secrets.token_hex(4)}"
    conn = await pg_connect(postgres)
    try:
        await conn.execute(ASTERISK_PG_CDR.format(table=name))
        cols = ", ".join(f'"{c}"' for c in PG_COLUMNS)
        marks = ", ".join(f"${i + 1}" for i in range(len(PG_COLUMNS)))
        await conn.executemany(
            f"INSERT INTO {name} ({cols}) VALUES ({marks})", [pg_values(c) for c in corpus.cdrs]
        )
        yield name
        await conn.execute(f"DROP TABLE {name}")
    finally:
        await conn.close()


def pg_settings(server: DbServer, **kw: object) -> CdrSourceSettings:
    base: dict[str, object] = {
        "kind": "postgres",
        "dsn": server.dsn,
        "user": server.user,
        "password": PASSWORD,
        "timezone": "UTC",
    }
    return CdrSourceSettings(**(base | kw))  # type: ignore[arg-type]


@pytest.mark.parametrize("corpus", PBXES)
async def test_postgres_round_trip_gives_the_tracker_s_records(
    postgres: DbServer, pg_table: str, corpus: Corpus
) -> None:
    got = await read_records(open_source(pg_settings(postgres, table=pg_table)), corpus)
    assert_like_live(got, corpus, slack_s=1.0, did=False)


async def test_postgres_old_calldate_timestamptz_table_is_read(postgres: DbServer) -> None:
    # the schema of older docs: calldate TIMESTAMP WITH TIME ZONE, no answer/end/linkedid
    cdrs = trace_cdrs(TRACES / "06-inbound-ringgroup-102-answers.ami")
    conn = await pg_connect(postgres)
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS cdr_old (calldate timestamptz NOT NULL, src text, "
            "dst text, dcontext text, channel text, dstchannel text, lastapp text, "
            "lastdata text, duration bigint, billsec bigint, disposition text, uniqueid text)"
        )
        await conn.executemany(
            "INSERT INTO cdr_old VALUES ($1::timestamp AT TIME ZONE 'UTC', $2, $3, $4, $5, $6,"
            " $7, $8, $9, $10, $11, $12)",
            [
                (v[9], v[1], v[2], v[3], v[5], v[6], v[7], v[8], v[12], v[13], v[14], v[17])
                for v in map(pg_values, cdrs)
            ],
        )
    finally:
        await conn.close()
    source = open_source(pg_settings(postgres, table="cdr_old", timezone="Asia/Tokyo"))
    assert source is not None  # a wrong zone must not matter: these times carry their own
    window = await source.read(*span(cdrs))
    (call,) = window.calls
    assert call.call_id == "1795727830.10" and len(call.rows) == 4


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"password": "wrong"}, "password authentication failed"),
        ({"dsn": "postgresql://127.0.0.1:{port}/nosuchdb"}, "does not exist"),
        ({"table": "nosuchtable"}, "table nosuchtable not found"),
    ],
)
async def test_postgres_configuration_mistakes_are_configuration_errors(
    postgres: DbServer, change: dict[str, str], error: str
) -> None:
    change = {k: v.format(port=postgres.port) for k, v in change.items()}
    source = open_source(pg_settings(postgres, **change))
    assert source is not None
    with pytest.raises(CdrConfigError, match=error) as err:
        await source.read(0, 1)
    assert not err.value.retry and PASSWORD not in str(err.value)


async def test_postgres_table_without_uniqueid_is_refused_naming_the_column(
    postgres: DbServer,
) -> None:
    conn = await pg_connect(postgres)
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS cdr_lean (start timestamp, "
            "channel text, dstchannel text, duration int, billsec int, "
            "disposition text)"
        )
    finally:
        await conn.close()
    source = open_source(pg_settings(postgres, table="cdr_lean"))
    assert source is not None
    with pytest.raises(CdrConfigError, match="no column uniqueid"):
        await source.read(0, 1)


async def test_postgres_server_down_is_worth_retrying() -> None:
    port = free_port()
    settings = CdrSourceSettings(
        kind="postgres",
        dsn=f"postgresql://127.0.0.1:{port}/asterisk",
        user="telefum",
        password=PASSWORD,
        timeout_s=5,
    )
    source = open_source(settings)
    assert source is not None
    with pytest.raises(CdrUnavailable) as err:
        await source.read(0, 1)
    assert err.value.retry and PASSWORD not in str(err.value)


async def test_postgres_sql_ascii_database_with_cp1251_rows_is_read(postgres: DbServer) -> None:
    # cdr_pgsql with encoding=WIN1251 into an old SQL_ASCII database: the bytes as written
    conn = await pg_connect(postgres, "postgres")
    try:
        await conn.execute(
            "CREATE DATABASE asterisk_ascii ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C' "
            "TEMPLATE template0"
        )
    except asyncpg.DuplicateDatabaseError:
        pass
    finally:
        await conn.close()
    cdrs = trace_cdrs(TRACES / "01-inbound-answered-caller-hangup.ami")
    conn = await pg_connect(postgres, "asterisk_ascii")
    try:
        await conn.execute(ASTERISK_PG_CDR.format(table="cdr_ascii"))
        cols = ", ".join(f'"{c}"' for c in PG_COLUMNS)
        marks = ", ".join(f"${i + 1}" for i in range(len(PG_COLUMNS)))
        await conn.execute(f"INSERT INTO cdr_ascii ({cols}) VALUES ({marks})", *pg_values(cdrs[0]))
        await conn.execute(
            "UPDATE cdr_ascii SET lastdata = convert_from($1, 'SQL_ASCII')",
            "Звонок".encode("cp1251"),
        )
    finally:
        await conn.close()
    dsn = f"postgresql://127.0.0.1:{postgres.port}/asterisk_ascii"
    source = open_source(pg_settings(postgres, dsn=dsn, table="cdr_ascii"))
    assert source is not None
    window = await source.read(*span(cdrs))
    assert [c.call_id for c in window.calls] == ["1795727781.0"] and window.bad_rows == 0
    assert window.calls[0].rows[0].lastdata == "Звонок"


async def test_backfill_window_gives_records_to_submit_and_leaves_out_live_calls(
    master_csv: Path,
) -> None:
    overlap = trace_cdrs(TRACES / "12-inbound-overlapping-three-calls.ami")
    source = open_source(csv_settings(master_csv))
    assert source is not None
    done = await backfill_window(source, RULES, *span(overlap), skip={"1795727935.36"})
    assert sorted(r.call_id for r in done.records) == ["1795727933.32", "1795727934.34"]
    assert done.skipped == {"known": 1} and len(done.window.calls) == 3


def test_a_database_server_that_is_not_installed_fails_naming_the_make_target(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tests.support import cdr_db

    monkeypatch.setattr(cdr_db.shutil, "which", lambda name: None)
    monkeypatch.setattr(cdr_db.glob, "glob", lambda pattern: [])
    for start in (cdr_db.start_mariadb, cdr_db.start_postgres):
        with pytest.raises(cdr_db.DbServerError, match="make db-deps"):
            start()
