"""``telefum worker`` stops on SIGTERM and SIGINT whatever Redis does: systemd and Docker send
SIGTERM and wait only so long before SIGKILL. The exit status is 0 (a clean stop)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import free_port
from worker.embedded_redis import EmbeddedRedis

REPO = Path(__file__).resolve().parent.parent
STOP_WITHIN_S = 5.0


@pytest.fixture(scope="module")
def locked_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"), password="the-right-one").start()
    try:
        yield server
    finally:
        server.cleanup()


def start_worker(tmp_path: Path, redis_url: str) -> tuple[subprocess.Popen[bytes], Path]:
    settings = tmp_path / "settings.toml"
    settings.write_text(
        '[crm]\nurl = "http://127.0.0.1:9/rest"\nlogin = "bridge"\npassword = "pw"\n',
        encoding="utf-8",
    )
    log = tmp_path / "worker.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "telefum.cli",
                "worker",
                "--config",
                str(settings),
                "--redis-url",
                redis_url,
            ],
            stdout=out,
            stderr=out,
            stdin=subprocess.DEVNULL,
            cwd=REPO,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    return proc, log


def wait_for_line(
    proc: subprocess.Popen[bytes], log: Path, text: str, timeout_s: float = 20
) -> None:
    deadline = time.monotonic() + timeout_s
    while text not in log.read_text(errors="replace"):
        assert proc.poll() is None, f"worker exited early:\n{log.read_text()[-2000:]}"
        assert time.monotonic() < deadline, f"no {text!r} in:\n{log.read_text()[-2000:]}"
        time.sleep(0.05)


@pytest.mark.parametrize(
    ("redis", "sig"),
    [
        ("closed port", "SIGTERM"),
        ("closed port", "SIGINT"),
        ("wrong password", "SIGTERM"),
        ("no password", "SIGTERM"),
    ],
)
def test_a_worker_that_cannot_reach_redis_stops_on_a_signal_with_status_0(
    tmp_path: Path, locked_redis: EmbeddedRedis, redis: str, sig: str
) -> None:
    url = {
        "closed port": f"redis://127.0.0.1:{free_port()}/0",
        "wrong password": f"redis://:wrong@127.0.0.1:{locked_redis.port}/0",
        "no password": locked_redis.address,
    }[redis]
    proc, log = start_worker(tmp_path, url)
    try:
        wait_for_line(proc, log, "unreachable")  # it is between two attempts to connect
        wait_for_line(proc, log, "retrying in")
        proc.send_signal(getattr(signal, sig))
        t0 = time.monotonic()
        code = proc.wait(STOP_WITHIN_S + 5)
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert took < STOP_WITHIN_S, f"stopped {took:.1f} s after {sig}"
    assert code == 0, log.read_text()[-2000:]
    assert "wrong" not in log.read_text()  # nor the password it was given


def test_a_worker_with_redis_stops_on_sigterm_with_status_0(
    tmp_path: Path, locked_redis: EmbeddedRedis
) -> None:
    proc, log = start_worker(tmp_path, locked_redis.url)
    try:
        wait_for_line(proc, log, "started: queue")
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(STOP_WITHIN_S + 5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert code == 0, log.read_text()[-2000:]
