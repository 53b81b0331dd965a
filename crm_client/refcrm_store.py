"""The reference CRM's data: contacts (with several phones and their source), events, authors.

SQLite through the standard library. Every call is one short statement or transaction on
an indexed column, so the server runs them straight on the event loop. WAL mode lets tests,
the demo (:func:`counts`) read the file while the server writes it.

Phones match whatever format they are written in: each phone is stored as written and
under a key from the injected ``phone_key`` (the CLI gives ``telephony.phones.to_e164``;
crm_client must not import telephony). What the key function rejects (an extension,
letters) is keyed by its digits, so it still matches itself.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

PhoneKey = Callable[[str], "str | None"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS contacts (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    typecont    TEXT NOT NULL,
    name        TEXT NOT NULL,
    company     TEXT NOT NULL DEFAULT '',
    description TEXT NOT NULL DEFAULT '',
    x_pstn      TEXT,                      -- the source: tracking number the contact came in on
    created_by  TEXT NOT NULL,             -- login whose credentials came with addcont
    created_at  TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS phones (
    contact_id  INTEGER NOT NULL REFERENCES contacts(id),
    raw         TEXT NOT NULL,             -- as written
    key         TEXT,                      -- what matches: E.164, else digits
    PRIMARY KEY (contact_id, raw)
);
CREATE INDEX IF NOT EXISTS phones_by_key ON phones(key);
CREATE TABLE IF NOT EXISTS events (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    contact_id  INTEGER NOT NULL REFERENCES contacts(id),
    typecont    TEXT NOT NULL,
    subj        TEXT NOT NULL,
    "desc"      TEXT NOT NULL,
    created_by  TEXT NOT NULL,             -- login whose credentials came with addevent
    created_at  TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_contact ON events(contact_id);
"""

_NON_DIGITS = re.compile(r"\D")


@dataclass(frozen=True, slots=True)
class ContactRow:
    id: int
    typecont: str
    name: str
    company: str
    description: str
    x_pstn: str | None
    created_by: str
    created_at: str


@dataclass(frozen=True, slots=True)
class PhoneRow:
    raw: str
    key: str | None

    @property
    def dial(self) -> str:
        """What a ``telf:`` link dials: E.164 when the number is known, else its digits."""
        if self.key and self.key.startswith("+"):
            return self.key
        return _NON_DIGITS.sub("", self.raw) or self.raw


@dataclass(frozen=True, slots=True)
class EventRow:
    id: int
    contact_id: int
    typecont: str
    subj: str
    desc: str
    created_by: str
    created_at: str


def make_key(phone_key: PhoneKey, raw: str) -> str | None:
    """The matching key of a phone as written; None when it has no digits at all."""
    try:
        key = phone_key(raw)
    except Exception:  # a key function must not take the CRM down
        key = None
    if key:
        return key
    digits = _NON_DIGITS.sub("", raw)
    return f"digits:{digits}" if digits else None


def _now() -> str:
    """UTC to the millisecond: the end-to-end benchmark times calls from hangup to here."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def connect(db_path: str | Path, *, readonly: bool = False) -> sqlite3.Connection:
    if readonly:
        conn = sqlite3.connect(f"file:{Path(db_path)}?mode=ro", uri=True, timeout=5.0)
    else:
        conn = sqlite3.connect(str(db_path), timeout=5.0)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.executescript(_SCHEMA)
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


class CrmStore:
    """One SQLite file; the server holds one of these for its lifetime."""

    def __init__(self, db_path: str | Path, phone_key: PhoneKey) -> None:
        self.db_path = Path(db_path)
        self.phone_key = phone_key
        self._conn = connect(db_path)

    def close(self) -> None:
        self._conn.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._conn:  # commit, or roll back on error
            yield self._conn

    def key(self, raw: str) -> str | None:
        return make_key(self.phone_key, raw)

    # --- writes -----------------------------------------------------------------------

    def add_contact(
        self,
        *,
        phones: Iterable[str],
        name: str,
        typecont: str,
        created_by: str,
        x_pstn: str | None = None,
        company: str = "",
        description: str = "",
    ) -> int:
        with self._tx() as db:
            cur = db.execute(
                "INSERT INTO contacts (typecont, name, company, description, x_pstn,"
                " created_by, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (typecont, name, company, description, x_pstn, created_by, _now()),
            )
            cid = int(cur.lastrowid or 0)
            for raw in dict.fromkeys(p for p in phones if p):
                db.execute(
                    "INSERT OR IGNORE INTO phones (contact_id, raw, key) VALUES (?, ?, ?)",
                    (cid, raw, self.key(raw)),
                )
        return cid

    def add_phone(self, contact_id: int, raw: str) -> None:
        """Another phone for a contact (contacts keep several; the protocol has no call for
        it, so tests and the demo seed them here)."""
        with self._tx() as db:
            db.execute(
                "INSERT OR IGNORE INTO phones (contact_id, raw, key) VALUES (?, ?, ?)",
                (contact_id, raw, self.key(raw)),
            )

    def add_event(
        self, *, contact_id: int, typecont: str, subj: str, desc: str, created_by: str
    ) -> int:
        with self._tx() as db:
            cur = db.execute(
                'INSERT INTO events (contact_id, typecont, subj, "desc", created_by, created_at)'
                " VALUES (?, ?, ?, ?, ?, ?)",
                (contact_id, typecont, subj, desc, created_by, _now()),
            )
            return int(cur.lastrowid or 0)

    # --- reads ------------------------------------------------------------------------

    def find(self, phone: str) -> list[ContactRow]:
        key = self.key(phone)
        return [] if key is None else self._with_phone("key", key)

    def find_exact(self, phone: str) -> list[ContactRow]:
        """Match the phone only as written (what a naive CRM does; for the quirk)."""
        return self._with_phone("raw", phone)

    def _with_phone(self, column: Literal["key", "raw"], value: str) -> list[ContactRow]:
        rows = self._conn.execute(
            "SELECT DISTINCT c.* FROM contacts c JOIN phones p ON p.contact_id = c.id"
            f" WHERE p.{column} = ? ORDER BY c.id",
            (value,),
        ).fetchall()
        return [ContactRow(*r) for r in rows]

    def get(self, contact_id: int) -> ContactRow | None:
        row = self._conn.execute("SELECT * FROM contacts WHERE id = ?", (contact_id,)).fetchone()
        return ContactRow(*row) if row else None

    def phones_of(self, contact_id: int) -> list[PhoneRow]:
        rows = self._conn.execute(
            "SELECT raw, key FROM phones WHERE contact_id = ? ORDER BY rowid", (contact_id,)
        ).fetchall()
        return [PhoneRow(*r) for r in rows]

    def events_of(self, contact_id: int) -> list[EventRow]:
        rows = self._conn.execute(
            'SELECT id, contact_id, typecont, subj, "desc", created_by, created_at'
            " FROM events WHERE contact_id = ? ORDER BY id",
            (contact_id,),
        ).fetchall()
        return [EventRow(*r) for r in rows]

    def recent(self, limit: int = 20) -> list[ContactRow]:
        rows = self._conn.execute(
            "SELECT * FROM contacts ORDER BY id DESC LIMIT ?", (limit,)
        ).fetchall()
        return [ContactRow(*r) for r in rows]

    def counts(self, phone: str | None = None) -> dict[str, int]:
        return _counts(self._conn, self.phone_key, phone)


def _counts(conn: sqlite3.Connection, phone_key: PhoneKey, phone: str | None) -> dict[str, int]:
    if phone is None:
        contacts = conn.execute("SELECT count(*) FROM contacts").fetchone()[0]
        events = conn.execute("SELECT count(*) FROM events").fetchone()[0]
        return {"contacts": int(contacts), "events": int(events)}
    key = make_key(phone_key, phone)
    ids = [
        r[0] for r in conn.execute("SELECT DISTINCT contact_id FROM phones WHERE key = ?", (key,))
    ]
    if not ids:
        return {"contacts": 0, "events": 0}
    marks = ",".join("?" * len(ids))
    events = conn.execute(f"SELECT count(*) FROM events WHERE contact_id IN ({marks})", ids)
    return {"contacts": len(ids), "events": int(events.fetchone()[0])}


# --- in-process helpers on the file (tests, demo) -------------------------------------------


def _identity(raw: str) -> str | None:
    return None  # digits only


def counts(
    db_path: str | Path, phone: str | None = None, phone_key: PhoneKey = _identity
) -> dict[str, int]:
    """``{"contacts": n, "events": n}`` straight from the SQLite file, all or for one phone
    (matched with ``phone_key``: pass the same one the server uses)."""
    with closing(connect(db_path, readonly=True)) as conn:
        return _counts(conn, phone_key, phone)
