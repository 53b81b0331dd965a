"""Fixtures for everything that talks to a CRM: the reference CRM, in-loop or as a process.

- ``refcrm`` (async): the reference CRM in the test's own event loop, on a real socket on a
  free port, with a temporary SQLite file and the users of :data:`USERS`. Yields a
  :class:`RunningRefCrm`: ``.rest_url``, ``.base_url``, ``.db_path``, ``.creds("ivan")``,
  counts by phone, the rows themselves, and the test-only failure knobs.
- ``make_refcrm`` (async factory): the same with options (``quirks``, ``latency_s``,
  ``fail_mode``, ``encoding``, ``users``); all are stopped at teardown.
- ``refcrm_process`` (factory): ``telefum refcrm`` in a process of its own, returned once it
  answers, as a :class:`RefCrmProcess` that can be stopped and started again on the same
  port and file (the pipeline's worker-kill and CRM-outage tests, the CLI tests). What it
  started is stopped at teardown, anything still alive at the end of the session too, and
  on Linux a child dies with the process that started it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import select
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape as xml_escape

import aiohttp
import pytest
from aiohttp import web

from crm_client.refcrm import STATE, RefCrmState, create_app
from crm_client.refcrm_store import ContactRow, EventRow, connect
from crm_client.types import Credentials
from telephony.phones import to_e164

USERS: dict[str, str] = {"bridge": "secret", "ivan": "ivanpw", "maria": "mariapw"}
PHONE_KEY = partial(to_e164, default_country="RU")
REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 20.0  # a cold interpreter on a busy 2-core machine


@dataclass
class RunningRefCrm:
    """A reference CRM serving on loopback; the store is the server's own (same loop)."""

    base_url: str  # "http://127.0.0.1:PORT/"
    db_path: Path
    users: dict[str, str]
    app: web.Application
    runner: web.AppRunner

    @property
    def rest_url(self) -> str:
        return f"{self.base_url}rest"

    @property
    def state(self) -> RefCrmState:
        return self.app[STATE]

    def creds(self, login: str = "bridge") -> Credentials:
        return Credentials(login, self.users[login])

    def counts(self, phone: str | None = None) -> dict[str, int]:
        """``{"contacts": n, "events": n}``, all or of one phone (in any format)."""
        return self.state.store.counts(phone)

    def count_contacts(self, phone: str | None = None) -> int:
        return self.counts(phone)["contacts"]

    def count_events(self, phone: str | None = None) -> int:
        return self.counts(phone)["events"]

    def contacts(self, phone: str) -> list[ContactRow]:
        return self.state.store.find(phone)

    def events(self, contact_id: int | str) -> list[EventRow]:
        return self.state.store.events_of(int(contact_id))

    def set_failure(self, mode: str | None, count: int | None = None) -> None:
        """Make the next ``count`` /rest requests (all, when None) fail as ``mode``."""
        self.state.fail_mode, self.state.fail_count = mode, count

    async def stop(self) -> None:
        await self.runner.cleanup()


async def start_refcrm(
    db_path: Path, users: Mapping[str, str] = USERS, **options: Any
) -> RunningRefCrm:
    """The reference CRM in the running loop on a free loopback port (the OS picks it)."""
    app = create_app(db_path, users, PHONE_KEY, **options)
    # handler_cancellation: a "hang" handler ends when its client gives up, so teardown
    # never waits on it.
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return RunningRefCrm(f"http://127.0.0.1:{port}/", Path(db_path), dict(users), app, runner)


@pytest.fixture
async def refcrm(tmp_path: Path) -> AsyncIterator[RunningRefCrm]:
    crm = await start_refcrm(tmp_path / "refcrm.sqlite")
    try:
        yield crm
    finally:
        await crm.stop()


@pytest.fixture
async def make_refcrm(
    tmp_path: Path,
) -> AsyncIterator[Callable[..., Awaitable[RunningRefCrm]]]:
    started: list[RunningRefCrm] = []

    async def make(**options: Any) -> RunningRefCrm:
        users = options.pop("users", USERS)
        crm = await start_refcrm(tmp_path / f"refcrm{len(started)}.sqlite", users, **options)
        started.append(crm)
        return crm

    try:
        yield make
    finally:
        for crm in started:
            await crm.stop()


# --- as a separate process --------------------------------------------------------------


class RefCrmProcess:
    """``telefum refcrm`` in a process of its own. :meth:`stop` and :meth:`start` bring it
    back on the same port with the same SQLite file, where its clients look; its log goes
    to ``<db>.log``; what it stored is read straight from the file."""

    def __init__(
        self,
        db: Path,
        users: Mapping[str, str] = USERS,
        *,
        port: int = 0,
        latency_ms: float = 0,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.db = db
        self.users = dict(users)
        self.port = port  # 0 until the first start: any free one, kept for restarts
        self.latency_ms = latency_ms
        self.extra_args = extra_args
        self.log_path = db.with_name(db.name + ".log")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    @property
    def rest_url(self) -> str:
        return self.base_url + "rest"

    def start(self, timeout_s: float = START_TIMEOUT_S) -> RefCrmProcess:
        """Run it and return once it answers requests."""
        args = [
            sys.executable,
            "-m",
            "telefum.cli",
            "refcrm",
            "--db",
            str(self.db),
            "--port",
            str(self.port),
            "--host",
            "127.0.0.1",
            "--latency-ms",
            str(self.latency_ms),
        ]
        for login, password in self.users.items():
            args += ["--user", f"{login}:{password}"]
        args += list(self.extra_args)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                args,
                stdout=subprocess.PIPE,
                stderr=log,
                stdin=subprocess.DEVNULL,
                cwd=REPO,
                env=env,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
        _RUNNING.append(self)
        try:
            line = self._ready_line(timeout_s)
            base_url = line.split(" on ", 1)[1].split(" ", 1)[0]  # http://127.0.0.1:PORT/
            self.port = int(base_url.rstrip("/").rpartition(":")[2])
            with urllib.request.urlopen(self.base_url + "_stats", timeout=timeout_s) as resp:
                json.load(resp)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, timeout_s: float = 5.0) -> int | None:
        """SIGTERM, then SIGKILL if it does not stop in time; always reaped (its log is
        complete then). Returns its exit status (None: it was not running)."""
        proc, self.proc = self.proc, None
        if self in _RUNNING:
            _RUNNING.remove(self)
        if proc is None:
            return None
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=timeout_s)
        if proc.stdout is not None:
            proc.stdout.close()
        return proc.returncode

    def _ready_line(self, timeout_s: float) -> str:
        assert self.proc is not None and self.proc.stdout is not None
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(
                    f"refcrm did not start within {timeout_s:g} s; {self._log_tail()}"
                )
            ready, _, _ = select.select([self.proc.stdout], [], [], left)
            if not ready:
                continue
            line = self.proc.stdout.readline().decode(errors="replace")
            if not line:  # EOF: it exited
                self.proc.wait(timeout=5)
                raise RuntimeError(f"refcrm exited with {self.proc.returncode}; {self._log_tail()}")
            if line.startswith("refcrm listening on "):
                return line.strip()

    def _log_tail(self) -> str:
        if not self.log_path.exists():
            return "no log"
        return "log: " + self.log_path.read_text(errors="replace")[-2000:]

    # -- what it stored, straight from its SQLite file ------------------------------------

    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        if not self.db.exists():
            return []
        conn = connect(self.db, readonly=True)
        try:
            return list(conn.execute(sql, args).fetchall())
        finally:
            conn.close()

    def events(self) -> list[tuple[int, str, str, str]]:
        """(contact_id, subj, desc, created_by), in creation order."""
        return [
            tuple(r)
            for r in self._query(  # type: ignore[misc]
                'SELECT contact_id, subj, "desc", created_by FROM events ORDER BY id'
            )
        ]

    def contacts(self) -> list[tuple[int, str, str, str]]:
        """(id, phone as written, x_pstn, created_by)."""
        return [
            tuple(r)
            for r in self._query(  # type: ignore[misc]
                "SELECT c.id, p.raw, c.x_pstn, c.created_by FROM contacts c "
                "JOIN phones p ON p.contact_id = c.id ORDER BY c.id"
            )
        ]

    async def control(self, **params: str | int) -> None:
        """Switch its failure knobs at run time (needs ``--test-control``)."""
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as s:
            query = {k: str(v) for k, v in params.items()}
            async with s.post(self.base_url + "_control", params=query) as r:
                assert r.status == 200, await r.text()


_RUNNING: list[RefCrmProcess] = []


def _die_with_parent() -> None:  # runs in the child before exec
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


@pytest.fixture
def refcrm_process(tmp_path: Path) -> Iterator[Callable[..., RefCrmProcess]]:
    """Factory: ``refcrm_process(users=USERS, *, port=0, latency_ms=0, db_path=None,
    extra_args=())`` -> a started :class:`RefCrmProcess`; all are stopped at teardown."""
    started: list[RefCrmProcess] = []

    def start(
        users: Mapping[str, str] = USERS,
        *,
        port: int = 0,
        latency_ms: float = 0,
        db_path: Path | None = None,
        extra_args: tuple[str, ...] = (),
    ) -> RefCrmProcess:
        db = db_path or tmp_path / f"refcrm-proc{len(started)}.sqlite"
        crm = RefCrmProcess(db, users, port=port, latency_ms=latency_ms, extra_args=extra_args)
        started.append(crm)
        return crm.start()

    try:
        yield start
    finally:
        for crm in started:
            crm.stop()


# --- a CRM that answers every bad case real CRMs produce ---------------------------------


def _find_xml(items: list[tuple[str, str]], total: str | None) -> str:
    body = "".join(
        f"<item><id>{i}</id><typecont>contact</typecont><name>{n}</name>"
        "<company>ООО Ромашка</company><description></description></item>"
        for i, n in items
    )
    return f"<response>{body}{'' if total is None else f'<total>{total}</total>'}</response>"


_DECL_1251 = '<?xml version="1.0" encoding="windows-1251"?>\n'
_ONE = _find_xml([("7", "Иван Петрович")], "1")


def _static(
    body: bytes,
    ctype: str = "text/xml",
    status: int = 200,
    headers: Mapping[str, str] | None = None,
) -> Callable[[web.Request], Awaitable[Any]]:
    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.Response(body=body, status=status, headers=dict(headers or {}))
        resp.headers["Content-Type"] = ctype
        return resp

    return handler


async def _truncated_transfer(request: web.Request) -> web.StreamResponse:
    """Promises 500 bytes, sends 40, drops the connection."""
    resp = web.StreamResponse(headers={"Content-Type": "text/xml", "Content-Length": "500"})
    await resp.prepare(request)
    await resp.write(b'<?xml version="1.0"?><response><item><id>')
    assert request.transport is not None
    request.transport.close()
    return resp


async def _echo_password(request: web.Request) -> web.StreamResponse:
    """Refuses the request and, as some CRMs do, repeats the password it got in its words
    (``you sent pass X``), where no rule by shape can tell it is one."""
    fields = dict(request.query)
    if request.method == "POST":
        fields |= {k: str(v) for k, v in (await request.post()).items()}
    words = xml_escape(f"Доступ запрещён: you sent pass {fields.get('password', '')}")
    body = f"<response><result>error</result><description>{words}</description></response>"
    return web.Response(body=body.encode(), content_type="text/xml", charset="utf-8")


async def _drop(request: web.Request) -> web.StreamResponse:
    """Reads the whole request, then closes the connection without a word: a CRM (or the
    proxy in front of it) that died while processing it."""
    await request.read()
    assert request.transport is not None
    request.transport.close()
    return web.Response()  # goes nowhere: the connection is closed


async def _slow(request: web.Request) -> web.StreamResponse:
    await asyncio.Event().wait()  # cancelled when the client gives up (handler_cancellation)
    raise AssertionError("unreachable")


HOSTILE_CASES: dict[str, Callable[[web.Request], Awaitable[Any]]] = {
    "html": _static(
        b"<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head>"
        b"<body><h1>502 Bad Gateway</h1><hr>nginx</body></html>",
        "text/html",
    ),
    "garbage": _static(b"\x89PNG\r\n\x1a\n\x00\x00 binary", "application/octet-stream"),
    "empty": _static(b""),
    "truncated_xml": _static(_ONE.encode()[:60]),
    "truncated_transfer": _truncated_transfer,
    "cp1251_declared": _static((_DECL_1251 + _ONE).encode("cp1251"), "text/xml"),
    "cp1251_http_only": _static(_ONE.encode("cp1251"), "text/xml; charset=windows-1251"),
    "cp1251_behind_utf8_header": _static(
        (_DECL_1251 + _ONE).encode("cp1251"), "text/html; charset=UTF-8"
    ),
    "bom": _static(b"\xef\xbb\xbf" + ('<?xml version="1.0" encoding="utf-8"?>' + _ONE).encode()),
    "one_item": _static(_ONE.encode()),
    "many_items": _static(
        _find_xml([("1", "Василий Петрович"), ("2", "Иван Павлович"), ("3", "Мария")], "3").encode()
    ),
    "total_mismatch": _static(_find_xml([("1", "Василий"), ("2", "Иван")], "5").encode()),
    "no_total": _static(_find_xml([("1", "Василий"), ("2", "Иван")], None).encode()),
    "zero_items": _static(_find_xml([], "0").encode()),
    "auth_error": _static(
        "<response><result>error</result><description>Неправильный логин или пароль"
        "</description></response>".encode()
    ),
    "rejected": _static(
        "<response><result>error</result><description>Не указан номер телефона"
        "</description></response>".encode()
    ),
    "ok_without_id": _static(
        "<response><result>ok</result><description>Контакт добавлен</description>"
        "</response>".encode()
    ),
    "contact_added": _static(
        "<response><result>ok</result><id>3453</id><typecont>contact</typecont>"
        "<description>Контакт добавлен</description></response>".encode()
    ),
    "event_added": _static(
        "<response><result>ok</result><idev>77</idev><description>Событие добавлено"
        "</description></response>".encode()
    ),
    "429": _static(b"Too Many Requests", "text/plain", 429, {"Retry-After": "30"}),
    "500": _static(
        b"<html><head><title>500 Internal Server Error</title></head></html>", "text/html", 500
    ),
    "408": _static(b"Request Timeout", "text/plain", 408),
    "502": _static(b"<html><head><title>502 Bad Gateway</title></head></html>", "text/html", 502),
    "504": _static(
        b"<html><head><title>504 Gateway Time-out</title></head></html>", "text/html", 504
    ),
    "503": _static(
        "<response><result>error</result><description>Ведутся технические работы"
        "</description></response>".encode(),
        "text/xml; charset=utf-8",
        503,
    ),
    "401": _static(b"Unauthorized", "text/plain", 401),
    "404": _static(b"<html><title>404 Not Found</title></html>", "text/html", 404),
    "redirect": _static(
        b"", "text/html", 302, {"Location": "https://crm.example.com/login?login=x&password=S3cr3t"}
    ),
    "slow": _slow,
    "drop": _drop,
    "echo_password": _echo_password,
}


@dataclass
class HostileCrm:
    """``url(case)`` is a /rest URL answering as :data:`HOSTILE_CASES` says; ``seen`` holds
    what each request sent: (method, raw query string, raw body)."""

    base_url: str
    runner: web.AppRunner
    seen: list[tuple[str, str, bytes]]

    def url(self, case: str) -> str:
        return f"{self.base_url}{case}/rest"


@pytest.fixture
async def hostile_crm() -> AsyncIterator[HostileCrm]:
    seen: list[tuple[str, str, bytes]] = []

    async def route(request: web.Request) -> web.StreamResponse:
        raw_query = request.raw_path.partition("?")[2]  # as sent, still percent-encoded
        seen.append((request.method, raw_query, await request.read()))
        handler = HOSTILE_CASES.get(request.match_info["case"])
        if handler is None:
            raise web.HTTPNotFound()
        return await handler(request)

    app = web.Application()
    app.router.add_route("*", "/{case}/rest", route)
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    crm = HostileCrm(f"http://127.0.0.1:{runner.addresses[0][1]}/", runner, seen)
    try:
        yield crm
    finally:
        await runner.cleanup()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Nothing started here outlives the test run."""
    for crm in list(_RUNNING):
        crm.stop()


__all__ = [
    "HOSTILE_CASES",
    "PHONE_KEY",
    "USERS",
    "HostileCrm",
    "RefCrmProcess",
    "RunningRefCrm",
    "start_refcrm",
]
