"""The private Redis behind ``[redis] url = ""``, the demo and every pipeline test."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from worker.embedded_redis import EmbeddedRedis, EmbeddedRedisError, _ping


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still "exists": look at its state
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except OSError:
        return False
    return state != "Z"


def test_starts_on_loopback_and_answers_ping(tmp_path: Path) -> None:
    with EmbeddedRedis(tmp_path / "r") as server:
        assert server.address == f"redis://127.0.0.1:{server.port}/0"
        assert server.url == f"redis://:{server.password}@127.0.0.1:{server.port}/0"
        client = redis.Redis.from_url(server.url)
        assert client.ping() is True
        assert client.config_get("bind")["bind"] == "127.0.0.1"
        client.close()


def test_restart_keeps_port_and_appendonly_data(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path / "r", appendonly=True).start()
    try:
        port = server.port
        client = redis.Redis.from_url(server.url)
        client.set("k", "v")
        client.close()
        server.stop()
        assert not _ping(port)
        server.start()
        assert server.port == port
        client = redis.Redis.from_url(server.url)
        assert client.get("k") == b"v"
        client.close()
    finally:
        server.cleanup()


def test_without_appendonly_a_restart_starts_empty(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path / "r").start()
    try:
        client = redis.Redis.from_url(server.url)
        client.set("k", "v")
        client.close()
        server.restart()
        client = redis.Redis.from_url(server.url)
        assert client.get("k") is None
        client.close()
    finally:
        server.cleanup()


def test_stop_leaves_no_process_and_cleanup_removes_its_own_directory() -> None:
    server = EmbeddedRedis().start()
    pid = server.pid
    assert pid is not None and _alive(pid)
    data_dir = server.data_dir
    server.cleanup()
    assert not _alive(pid)
    assert not data_dir.exists()


def test_a_missing_binary_gives_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "no-redis-server"
    with pytest.raises(EmbeddedRedisError, match=f"not found or not executable: {missing}"):
        EmbeddedRedis(tmp_path / "r", binary=str(missing)).start()


def test_a_port_in_use_is_reported_when_the_port_was_asked_for(tmp_path: Path) -> None:
    with EmbeddedRedis(tmp_path / "a") as first, pytest.raises(EmbeddedRedisError, match="in use"):
        EmbeddedRedis(tmp_path / "b", port=first.port).start()


def test_the_server_dies_with_the_process_that_started_it(tmp_path: Path) -> None:
    code = (
        "import sys, time\n"
        "from worker.embedded_redis import EmbeddedRedis\n"
        f"s = EmbeddedRedis({str(tmp_path / 'r')!r}).start()\n"
        "print(s.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    try:
        assert parent.stdout is not None
        redis_pid = int(parent.stdout.readline())
        assert _alive(redis_pid)
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        deadline = time.monotonic() + 10
        while _alive(redis_pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not _alive(redis_pid), "redis-server outlived the process that started it"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(10)


def test_a_client_without_the_password_is_refused(tmp_path: Path) -> None:
    with EmbeddedRedis(tmp_path / "r") as server:
        for password in (None, "wrong"):
            client = redis.Redis(host="127.0.0.1", port=server.port, password=password)
            with pytest.raises(redis.AuthenticationError):
                client.lpush("telefum:queue", "a forged call")
            client.close()
        assert not _ping(server.port)
        assert _ping(server.port, password=server.password)


def test_its_password_is_generated_once_kept_0600_in_a_0700_folder_and_not_in_ps(
    tmp_path: Path,
) -> None:
    server = EmbeddedRedis(tmp_path / "r", appendonly=True).start()
    try:
        password = server.password
        assert len(password) >= 32
        assert (tmp_path / "r" / "password").read_text().strip() == password
        cmdline = Path(f"/proc/{server.pid}/cmdline").read_bytes()
        assert password.encode() not in cmdline
        server.restart()
        assert _ping(server.port, password=password)  # the same password after a restart
        assert EmbeddedRedis(tmp_path / "r").password == password  # and for the next one
        assert stat.S_IMODE((tmp_path / "r").stat().st_mode) == 0o700
        files = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "r").iterdir()}
        assert {"password", "appendonly.aof", "redis.log"} <= set(files)
        assert set(files.values()) == {0o600}, files
    finally:
        server.cleanup()


def test_a_folder_an_older_version_left_open_is_closed(tmp_path: Path) -> None:
    data = tmp_path / "r"
    data.mkdir(mode=0o755)
    (data / "appendonly.aof").write_bytes(b"")
    (data / "appendonly.aof").chmod(0o644)
    with EmbeddedRedis(data, appendonly=True):
        assert stat.S_IMODE(data.stat().st_mode) == 0o700
        assert stat.S_IMODE((data / "appendonly.aof").stat().st_mode) == 0o600


@pytest.mark.parametrize("password", ["p@ss:w/rd%41-пароль", 'sp ace "quote" \\back\\'])
def test_any_password_reaches_the_server_unharmed(tmp_path: Path, password: str) -> None:
    with EmbeddedRedis(tmp_path / "r", password=password) as server:
        client = redis.Redis(host="127.0.0.1", port=server.port, password=password)
        assert client.ping() is True
        client.close()
