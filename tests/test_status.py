"""``telefum status``: the ops screen, from the running service or, when it is down, Redis."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
from pathlib import Path

from redis.asyncio import Redis

from telefum.commands.status import base_url, render
from tests.conftest import free_port
from tests.test_health_live import StartBridge, beat, start_bridge  # noqa: F401
from worker import keys, stats

ROOT = Path(__file__).resolve().parent.parent


async def status(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TELEFUM_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "telefum.cli",
        "status",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=ROOT,
        env={**clean, **(env or {})},
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    return int(proc.returncode or 0), out.decode(), err.decode()


async def test_status_of_a_healthy_service_shows_every_part_and_exits_0(
    start_bridge: StartBridge,  # noqa: F811
    redis_client: Redis,
) -> None:
    await beat(redis_client, "box:42", ttl_s=60)
    bridge = await start_bridge()
    code, out, err = await status("--url", bridge.url)
    assert code == 0, out + err
    first = out.splitlines()[0]
    assert "OK" in first and bridge.url in first
    assert "office" in out and " up " in out and "reconnects 0" in out
    assert "Redis         ok" in out
    assert "Queue         0 queued (0 due, 0 retrying)   0 in progress" in out
    assert "Dead letters  0" in out
    assert "Workers       1 alive" in out and "box:42" in out
    assert "Spool" in out


async def test_status_when_the_service_is_down_reads_redis_and_exits_1(
    redis_client: Redis, redis_url: str
) -> None:
    await beat(redis_client, "box:7", ttl_s=60)
    await redis_client.zadd(keys.DLQ, {"call:office:1.1": 1.0, "call:office:1.2": 2.0})
    url = f"http://127.0.0.1:{free_port()}"
    code, out, _ = await status("--url", url, env={"TELEFUM_REDIS__URL": redis_url})
    assert code == 1
    assert f"service not reachable at {url}" in out
    assert "AMI\n  unknown" in out
    assert "Dead letters  2   (telefum dlq list)" in out
    assert "Workers       1 alive" in out


async def test_status_json_is_the_health_document(
    start_bridge: StartBridge,  # noqa: F811
) -> None:
    bridge = await start_bridge()
    code, out, _ = await status("--url", bridge.url, "--json")
    body = json.loads(out)
    assert code == 1  # no worker heartbeat in this test
    assert body["reasons"] == ["no worker alive: no heartbeat in the last 5 s"]
    assert body["service"] == {"url": bridge.url, "reachable": True, "http_status": 503}


async def test_check_worker_looks_for_a_heartbeat_from_this_host(
    redis_client: Redis, redis_url: str
) -> None:
    env = {"TELEFUM_REDIS__URL": redis_url}
    code, _, err = await status("--check-worker", env=env)
    assert code == 1 and "no fresh worker heartbeat" in err
    await stats.heartbeat(
        redis_client, "elsewhere:1", {"host": "another-box", "running": 0}, ttl_s=60
    )
    assert (await status("--check-worker", env=env))[0] == 1
    await stats.heartbeat(
        redis_client, "here:1", {"host": socket.gethostname(), "running": 0}, ttl_s=60
    )
    code, out, _ = await status("--check-worker", env=env)
    assert code == 0 and "here:1" in out


async def test_a_broken_config_is_one_line_and_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "s.toml"
    bad.write_text("[http]\nlisten = 8088\n")
    code, out, err = await status("--config", str(bad))
    assert code == 2 and out == ""
    assert err.strip() == (
        f"telefum: configuration error: {bad}: http.listen: expected a string, got 8088 (a number)"
    )


def test_base_url_reaches_a_wildcard_listen_on_loopback() -> None:
    assert base_url("127.0.0.1:8088") == "http://127.0.0.1:8088"
    assert base_url("0.0.0.0:9000") == "http://127.0.0.1:9000"
    assert base_url("[::]:8088") == "http://[::1]:8088"


def test_screen_shows_a_rejected_login_a_stuck_spool_and_retries() -> None:
    body = {
        "status": "unhealthy",
        "reasons": ["AMI login rejected: Authentication failed (pbx branch)"],
        "ami": [
            {
                "pbx": "branch",
                "connected": False,
                "login_error": "Authentication failed",
                "last_event_age_s": None,
                "events_received": 0,
                "reconnects": 0,
            }
        ],
        "redis": {"checked": True, "ok": True},
        "queue": {
            "depth": 7,
            "due": 2,
            "retrying": 5,
            "in_progress": 2,
            "pending": 9,
            "dead_letters": 0,
        },
        "workers": {
            "alive": 1,
            "heartbeats": [{"id": "w:1", "age_s": 0.4, "running": 2, "done": 1234}],
        },
        "spool": {"size": 12, "draining": False, "stalled_s": 75.0},
        "service": {"url": "http://127.0.0.1:8088", "reachable": True},
    }
    screen = render(body, now=0)
    assert "UNHEALTHY" in screen.splitlines()[0]
    assert "  ! AMI login rejected: Authentication failed (pbx branch)" in screen
    assert "LOGIN REJECTED (Authentication failed)" in screen and "last event never" in screen
    assert "7 queued (2 due, 5 retrying)   2 in progress   9 not yet delivered" in screen
    assert "w:1" in screen and "done 1,234" in screen
    assert "Spool         12 calls waiting (STUCK for 75 s)" in screen


def test_texts_from_the_pbx_cannot_drive_the_terminal_of_whoever_runs_status() -> None:
    body = {
        "status": "unhealthy",
        "reasons": ["AMI login rejected: \x1b[2J\x1b[31mall fine\nOK"],
        "ami": [{"pbx": "office", "connected": False, "login_error": "no\x1b]0;pwned\x07"}],
    }
    screen = render(body, now=0)
    assert "\x1b" not in screen and "\x07" not in screen
    assert "\\x1b[2J\\x1b[31mall fine\\nOK" in screen


def test_screen_shows_a_failing_crm_as_degraded_with_the_calls_waiting() -> None:
    reason = (
        "CRM https://crm.example.com/rest failing since 2026-11-26T12:00:03.120Z (4.2 min: "
        "37 requests failed, none succeeded): 150 calls waiting; last error 3 s ago: ..."
    )
    body = {
        "status": "degraded",
        "reasons": [reason],
        "ami": [],
        "redis": {"checked": True, "ok": True},
        "crm": [
            {
                "url": "https://crm.example.com/rest",
                "failing": True,
                "failing_since": 1764158403.12,
                "failures": 37,
                "waiting": 150,
            },
            {
                "url": "https://branch.example.com/rest",
                "failing": False,
                "failing_since": None,
                "last_ok_age_s": 0.4,
                "waiting": 0,
            },
        ],
        "service": {"url": "http://127.0.0.1:8088", "reachable": True},
    }
    screen = render(body, now=0)
    assert "DEGRADED" in screen.splitlines()[0]
    assert f"  ! {reason}" in screen
    [failing] = [x for x in screen.splitlines() if "crm.example.com" in x and "!" not in x]
    assert failing.startswith("CRM           https://crm.example.com/rest   FAILING since ")
    assert failing.endswith(
        "37 requests failed   150 calls waiting   (once it answers: telefum queue retry-now)"
    )
    assert "CRM           https://branch.example.com/rest   ok   last answer 0.4 s ago" in screen
