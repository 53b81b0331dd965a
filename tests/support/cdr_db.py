"""Real database servers for the CDR source tests: MariaDB and PostgreSQL, Debian's.

Each is started once per test session by the tests themselves, in a throwaway data
directory with its unix socket there, on a free loopback port, and stopped and removed at
the end. Run as root (CI, a fresh machine), the servers run as Debian's ``mysql`` and
``postgres`` users (neither starts as root). A server that cannot be started FAILS the
tests that need it, naming the make target that installs it: ``make db-deps``.

- ``mariadb``: a ``DbServer`` with a database ``asteriskcdrdb`` and a user ``telefum``.
- ``postgres``: a ``DbServer`` with a database ``asterisk`` and a user ``telefum``.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from worker.embedded_redis import _die_with_parent

INSTALL_HINT = "install the database servers the tests use with `make db-deps` (as root)"
PASSWORD = "cdr-S3cret-pw"


class DbServerError(Exception):
    pass


def _free_port() -> int:
    from tests.conftest import free_port

    return free_port()


def _find(name: str, *patterns: str) -> str:
    """A server binary: on PATH, else in Debian's versioned directories (newest first)."""
    found = shutil.which(name)
    if found:
        return found
    for pattern in patterns:
        for path in sorted(glob.glob(pattern), reverse=True):
            if os.access(path, os.X_OK):
                return path
    raise DbServerError(f"{name} not found; {INSTALL_HINT}")


@dataclass
class DbServer:
    """One throwaway server; ``dsn`` has no password (it is ``PASSWORD``)."""

    kind: str
    root: Path
    port: int
    database: str
    user: str = "telefum"
    password: str = PASSWORD
    proc: subprocess.Popen[bytes] | None = None
    log: Path = field(default_factory=Path)

    @property
    def dsn(self) -> str:
        scheme = "mysql" if self.kind == "mariadb" else "postgresql"
        return f"{scheme}://127.0.0.1:{self.port}/{self.database}"

    def log_tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        shutil.rmtree(self.root, ignore_errors=True)


def _service_user(name: str) -> tuple[int, int] | None:
    """As root, the (uid, gid) to run a server as; None when we are not root."""
    if os.geteuid() != 0:
        return None
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        pw = pwd.getpwnam("nobody")
    return pw.pw_uid, pw.pw_gid


def _run_as(ids: tuple[int, int] | None) -> dict[str, object]:
    if ids is None:
        return {}
    return {"user": ids[0], "group": ids[1], "extra_groups": []}


def _wait_port(server: DbServer, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.proc is not None and server.proc.poll() is not None:
            raise DbServerError(
                f"{server.kind} exited at start (code {server.proc.returncode}):\n"
                f"{server.log_tail()}"
            )
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", server.port), timeout=0.2),
        ):
            return
        time.sleep(0.05)
    raise DbServerError(f"{server.kind} not listening after {timeout_s}s:\n{server.log_tail()}")


def _workdir(prefix: str, ids: tuple[int, int] | None) -> Path:
    # Under /tmp itself, not pytest's per-user 0700 tree, which the service user cannot enter.
    root = Path(tempfile.mkdtemp(prefix=prefix))
    if ids is not None:
        os.chown(root, *ids)
    return root


def start_mariadb() -> DbServer:
    mariadbd = _find("mariadbd", "/usr/sbin/mariadbd", "/usr/sbin/mysqld")
    install = _find("mariadb-install-db", "/usr/bin/mysql_install_db")
    ids = _service_user("mysql")
    root = _workdir("telefum-mariadb-", ids)
    server = DbServer("mariadb", root, _free_port(), "asteriskcdrdb", log=root / "server.log")
    small = ["--innodb-log-file-size=4M", "--innodb-buffer-pool-size=16M", "--skip-name-resolve"]
    done = subprocess.run(
        [
            install,
            "--no-defaults",
            f"--datadir={root / 'data'}",
            "--skip-test-db",
            "--auth-root-authentication-method=normal",
            *small,
        ],
        capture_output=True,
        timeout=120,
        check=False,
        **_run_as(ids),  # type: ignore[call-overload]
    )
    if done.returncode != 0:
        server.stop()
        raise DbServerError(f"mariadb-install-db failed: {done.stderr.decode(errors='replace')}")
    init = root / "init.sql"
    init.write_text(
        f"CREATE DATABASE {server.database} CHARACTER SET utf8mb4;\n"
        f"CREATE USER '{server.user}'@'127.0.0.1' IDENTIFIED BY '{PASSWORD}';\n"
        f"GRANT ALL ON *.* TO '{server.user}'@'127.0.0.1';\n",
        encoding="utf-8",
    )
    if ids is not None:
        os.chown(init, *ids)
    log = open(server.log, "ab")  # noqa: SIM115 - handed to the child
    server.proc = subprocess.Popen(
        [
            mariadbd,
            "--no-defaults",
            f"--datadir={root / 'data'}",
            f"--socket={root / 'sock'}",
            f"--port={server.port}",
            "--bind-address=127.0.0.1",
            f"--pid-file={root / 'pid'}",
            f"--init-file={init}",
            "--skip-log-bin",
            *small,
        ],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=log,
        preexec_fn=_die_with_parent,
        **_run_as(ids),  # type: ignore[call-overload]
    )
    log.close()
    try:
        _wait_port(server, 30.0)
    except DbServerError:
        server.stop()
        raise
    return server


def start_postgres() -> DbServer:
    initdb = _find("initdb", "/usr/lib/postgresql/*/bin/initdb")
    postgres = _find("postgres", "/usr/lib/postgresql/*/bin/postgres")
    ids = _service_user("postgres")
    root = _workdir("telefum-postgres-", ids)
    server = DbServer("postgres", root, _free_port(), "asterisk", log=root / "server.log")
    pwfile = root / "pw"
    pwfile.write_text(PASSWORD, encoding="utf-8")
    if ids is not None:
        os.chown(pwfile, *ids)
    done = subprocess.run(
        [
            initdb,
            "-D",
            str(root / "data"),
            "-U",
            server.user,
            f"--pwfile={pwfile}",
            "-A",
            "scram-sha-256",
            "--no-sync",
            "-E",
            "UTF8",
            "--locale=C.UTF-8",
        ],
        capture_output=True,
        timeout=120,
        check=False,
        **_run_as(ids),  # type: ignore[call-overload]
    )
    if done.returncode != 0:
        server.stop()
        raise DbServerError(f"initdb failed: {done.stderr.decode(errors='replace')}")
    log = open(server.log, "ab")  # noqa: SIM115 - handed to the child
    server.proc = subprocess.Popen(
        [
            postgres,
            "-D",
            str(root / "data"),
            "-p",
            str(server.port),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            f"unix_socket_directories={root}",
            "-c",
            "fsync=off",
            "-c",
            "shared_buffers=16MB",
            "-c",
            "TimeZone=UTC",
        ],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=log,
        preexec_fn=_die_with_parent,
        **_run_as(ids),  # type: ignore[call-overload]
    )
    log.close()
    try:
        _wait_port(server, 30.0)
        _create_pg_database(server)
    except DbServerError:
        server.stop()
        raise
    return server


def _create_pg_database(server: DbServer) -> None:
    import asyncio

    import asyncpg

    async def create() -> None:
        deadline = time.monotonic() + 20
        while True:  # listening is not yet accepting: "the database system is starting up"
            try:
                conn = await asyncpg.connect(
                    host="127.0.0.1",
                    port=server.port,
                    user=server.user,
                    password=PASSWORD,
                    database="postgres",
                    timeout=5,
                )
                break
            except asyncpg.CannotConnectNowError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.05)
        try:
            await conn.execute(f"CREATE DATABASE {server.database}")
        finally:
            await conn.close()

    try:
        asyncio.run(create())
    except Exception as err:
        raise DbServerError(f"creating the database failed: {err}\n{server.log_tail()}") from err


@pytest.fixture(scope="session")
def mariadb() -> Iterator[DbServer]:
    try:
        server = start_mariadb()
    except (DbServerError, OSError, subprocess.SubprocessError) as err:
        pytest.fail(f"cannot start MariaDB for the CDR tests: {err}\n{INSTALL_HINT}")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def postgres() -> Iterator[DbServer]:
    try:
        server = start_postgres()
    except (DbServerError, OSError, subprocess.SubprocessError) as err:
        pytest.fail(f"cannot start PostgreSQL for the CDR tests: {err}\n{INSTALL_HINT}")
    try:
        yield server
    finally:
        server.stop()
