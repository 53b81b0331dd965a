"""Fixtures for everything that talks to a CRM: the reference CRM, in-loop or as a process.

- ``refcrm`` (async): the reference CRM in the test's own event loop, on a real socket on a
  free port, with a temporary SQLite file and the users of :data:`USERS`. Yields a
  :class:`RunningRefCrm`: ``.rest_url``, ``.base_url``, ``.db_path``, ``.creds("ivan")``,
  counts by phone, the rows themselves, and the test-only failure knobs.
- ``make_refcrm`` (async factory): the same with options (``quirks``, ``latency_s``,
  ``fail_mode``, ``encoding``, ``users``); all are stopped at teardown.
- :func:`start_refcrm_process`: ``telefum refcrm`` in a separate process, returned once it
  answers (worker kill tests, the demo). The ``refcrm_process`` fixture is a factory that
  kills what it started at teardown; anything still alive at the end of the session is
  killed too, and on Linux a child dies with the process that started it.
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

import pytest
from aiohttp import web

from crm_client.refcrm import STATE, RefCrmState, create_app
from crm_client.refcrm_store import ContactRow, EventRow
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


class RefCrmProcess(subprocess.Popen[bytes]):
    """``telefum refcrm`` running; ``base_url``/``rest_url`` are set once it answers."""

    base_url: str = ""
    rest_url: str = ""
    log_path: Path | None = None


_PROCESSES: list[RefCrmProcess] = []


def _die_with_parent() -> None:  # runs in the child before exec
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def start_refcrm_process(
    db_path: str | Path,
    port: int,
    users: Mapping[str, str] = USERS,
    latency_ms: float = 0,
    *,
    extra_args: tuple[str, ...] = (),
    timeout_s: float = START_TIMEOUT_S,
) -> RefCrmProcess:
    """Run ``telefum refcrm`` and return once it accepts requests (``port=0``: any free one;
    read ``proc.base_url``). Its log goes to ``<db>.log``. Stop it with
    :func:`stop_refcrm_process` (the ``refcrm_process`` fixture does)."""
    db_path = Path(db_path)
    log_path = db_path.with_name(db_path.name + ".log")
    args = [
        sys.executable, "-m", "telefum.cli", "refcrm", "--db", str(db_path),
        "--port", str(port), "--host", "127.0.0.1", "--latency-ms", str(latency_ms),
    ]  # fmt: skip
    for login, password in users.items():
        args += ["--user", f"{login}:{password}"]
    args += list(extra_args)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log_path, "ab") as log:
        proc = RefCrmProcess(
            args, stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL, cwd=REPO,
            env=env, preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )  # fmt: skip
    _PROCESSES.append(proc)
    proc.log_path = log_path
    try:
        line = _ready_line(proc, timeout_s)
        proc.base_url = line.split(" on ", 1)[1].split(" ", 1)[0]
        proc.rest_url = proc.base_url + "rest"
        with urllib.request.urlopen(proc.base_url + "_stats", timeout=timeout_s) as resp:
            json.load(resp)
    except BaseException:
        stop_refcrm_process(proc)
        raise
    return proc


def _ready_line(proc: RefCrmProcess, timeout_s: float) -> str:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout_s
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"refcrm did not start within {timeout_s:g} s; {_log_tail(proc)}")
        ready, _, _ = select.select([proc.stdout], [], [], left)
        if not ready:
            continue
        line = proc.stdout.readline().decode(errors="replace")
        if not line:  # EOF: it exited
            proc.wait(timeout=5)
            raise RuntimeError(f"refcrm exited with {proc.returncode}; {_log_tail(proc)}")
        if line.startswith("refcrm listening on "):
            return line.strip()


def _log_tail(proc: RefCrmProcess) -> str:
    if proc.log_path is None or not proc.log_path.exists():
        return "no log"
    return "log: " + proc.log_path.read_text(errors="replace")[-2000:]


def stop_refcrm_process(proc: subprocess.Popen[bytes], timeout_s: float = 5.0) -> None:
    """SIGTERM, then SIGKILL if it does not stop in time; always reaped."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout_s)
    if proc.stdout is not None:
        proc.stdout.close()
    if proc in _PROCESSES:
        _PROCESSES.remove(proc)


@pytest.fixture
def refcrm_process(tmp_path: Path) -> Iterator[Callable[..., RefCrmProcess]]:
    """Factory: ``refcrm_process(port=0, users=USERS, latency_ms=0, extra_args=())``."""
    started: list[RefCrmProcess] = []

    def start(
        port: int = 0, users: Mapping[str, str] = USERS, latency_ms: float = 0,
        db_path: Path | None = None, extra_args: tuple[str, ...] = (),
    ) -> RefCrmProcess:  # fmt: skip
        db = db_path or tmp_path / f"refcrm-proc{len(started)}.sqlite"
        proc = start_refcrm_process(db, port, users, latency_ms, extra_args=extra_args)
        started.append(proc)
        return proc

    try:
        yield start
    finally:
        for proc in started:
            stop_refcrm_process(proc)


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


def _static(body: bytes, ctype: str = "text/xml", status: int = 200,
            headers: Mapping[str, str] | None = None) -> Callable[[web.Request], Awaitable[Any]]:
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
        b"<body><h1>502 Bad Gateway</h1><hr>nginx</body></html>", "text/html"
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
        "<response><result>ok</result><description>Контакт добавлен</description></response>"
        .encode()
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
    "502": _static(
        b"<html><head><title>502 Bad Gateway</title></head></html>", "text/html", 502
    ),
    "504": _static(
        b"<html><head><title>504 Gateway Time-out</title></head></html>", "text/html", 504
    ),
    "503": _static(
        "<response><result>error</result><description>Ведутся технические работы"
        "</description></response>".encode(), "text/xml; charset=utf-8", 503,
    ),
    "401": _static(b"Unauthorized", "text/plain", 401),
    "404": _static(b"<html><title>404 Not Found</title></html>", "text/html", 404),
    "redirect": _static(b"", "text/html", 302,
                        {"Location": "https://crm.example.com/login?login=x&password=S3cr3t"}),
    "slow": _slow,
    "drop": _drop,
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
    for proc in list(_PROCESSES):
        stop_refcrm_process(proc)


__all__ = [
    "HOSTILE_CASES",
    "PHONE_KEY",
    "USERS",
    "HostileCrm",
    "RefCrmProcess",
    "RunningRefCrm",
    "start_refcrm",
    "start_refcrm_process",
    "stop_refcrm_process",
]
