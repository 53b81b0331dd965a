"""Fixtures for the durable pipeline: a real private Redis, worker processes, a holding proxy.

- ``redis_server``: a fresh ``EmbeddedRedis`` (appendonly on) per test; ``.stop()`` and
  ``.start()`` bring the same server back on the same port with the same data.
- ``redis_url``, ``redis_client`` (redis.asyncio, bytes).
- ``worker_procs``: a factory of ``python -m worker`` subprocesses, all SIGKILLed at teardown.
- ``HoldingProxy``: an HTTP proxy in front of a CRM that can park the next request of a
  given ``typereq`` until the test forwards or drops it: how a test "kills a worker in
  the middle of addevent" at exactly that moment, without sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import pytest
from aiohttp import ClientSession, ClientTimeout, web
from redis.asyncio import Redis

from worker.embedded_redis import EmbeddedRedis, _die_with_parent
from worker.policy import WorkerConfig

REPO = Path(__file__).resolve().parents[2]


def inbound_call(
    call_id: str,
    external: str = "+79161234567",
    *,
    pbx: str = "default",
    extension: str | None = "101",
) -> dict[str, Any]:
    """An answered inbound call's record (``CallRecord.to_json`` form), for the queue tests."""
    return {
        "call_id": call_id,
        "pbx": pbx,
        "direction": "in",
        "external": external,
        "did": "+74951234567",
        "extension": extension,
        "answered": True,
        "started_at": "2025-11-26T12:00:00.000Z",
        "answered_at": "2025-11-26T12:00:06.000Z",
        "ended_at": "2025-11-26T12:04:00.000Z",
        "disposition": "answered",
        "transfers": [],
    }


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(tmp_path / "redis", appendonly=True)
    server.start()
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def redis_url(redis_server: EmbeddedRedis) -> str:
    return redis_server.url


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url, socket_connect_timeout=1, socket_timeout=5)
    try:
        yield client
    finally:
        await client.aclose()


# --- worker processes ------------------------------------------------------------------------


class WorkerProcess:
    """``python -m worker`` in a subprocess, its log in a file (shown when a test fails)."""

    def __init__(self, config: WorkerConfig, redis_url: str, workdir: Path, wid: str) -> None:
        self.wid = wid
        self.redis_url = redis_url
        self.config_path = workdir / f"{wid}.json"
        self.config_path.write_text(config.dumps())
        self.log_path = workdir / f"{wid}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "worker",
                "--redis-url",
                self.redis_url,
                "--config-json",
                str(self.config_path),
                "--worker-id",
                self.wid,
            ],
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            preexec_fn=_die_with_parent,  # a killed test run leaves no worker behind
        )
        log.close()
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    async def wait_ready(self, redis: Redis, timeout_s: float = 20.0) -> None:
        """Until its first heartbeat is in Redis (it has connected and started)."""
        key = f"telefum:stats:worker:{self.wid}"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"worker {self.wid} exited early:\n{self.log()[-3000:]}")
            if await redis.exists(key):
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"worker {self.wid} not ready in {timeout_s}s:\n{self.log()[-3000:]}")

    def kill(self) -> None:
        """SIGKILL: no cleanup, no goodbye, as in a crash."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def terminate(self, timeout_s: float = 40.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


@pytest.fixture
def worker_procs(tmp_path: Path, redis_url: str) -> Iterator[Callable[..., WorkerProcess]]:
    started: list[WorkerProcess] = []
    workdir = tmp_path / "workers"
    workdir.mkdir()

    def start(config: WorkerConfig, wid: str | None = None) -> WorkerProcess:
        wp = WorkerProcess(config, redis_url, workdir, wid or f"w{len(started) + 1}")
        started.append(wp.start())
        return wp

    yield start
    for wp in started:
        wp.kill()
        # captured: pytest shows it only when the test failed
        print(f"--- log of worker {wp.wid} ---\n{wp.log()[-4000:]}")


# --- a proxy that can hold a CRM request ----------------------------------------------------


@dataclass
class Held:
    """A parked request: decide with ``forward()`` (the CRM gets it) or ``drop()``."""

    typereq: str
    params: dict[str, str]
    _decision: asyncio.Future[str] = field(repr=False)
    _forwarded: asyncio.Future[tuple[int, bytes]] = field(repr=False)

    async def forward(self, timeout_s: float = 10.0) -> tuple[int, bytes]:
        """Send it on to the CRM and wait for the CRM's answer (which nobody will read)."""
        self._decision.set_result("forward")
        return await asyncio.wait_for(asyncio.shield(self._forwarded), timeout_s)

    def drop(self) -> None:
        self._decision.set_result("drop")


class HoldingProxy:
    """Transparent HTTP proxy to a CRM's /rest; ``hold(typereq)`` parks the next such request."""

    def __init__(self, upstream_rest_url: str) -> None:
        self.upstream = upstream_rest_url
        self._holds: dict[str, int] = {}
        self.held: asyncio.Queue[Held] = asyncio.Queue()
        self.seen: list[str] = []
        self._runner: web.AppRunner | None = None
        self._session: ClientSession | None = None
        self._bg: set[asyncio.Task[Any]] = set()
        self.url = ""

    def hold(self, typereq: str, count: int = 1) -> None:
        self._holds[typereq] = self._holds.get(typereq, 0) + count

    async def wait_held(self, timeout_s: float = 20.0) -> Held:
        return await asyncio.wait_for(self.held.get(), timeout_s)

    async def start(self) -> str:
        from tests.conftest import free_port

        self._session = ClientSession(timeout=ClientTimeout(total=30))
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self.url = f"http://127.0.0.1:{port}/rest"
        return self.url

    async def close(self) -> None:
        for t in list(self._bg):
            t.cancel()
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def _send(
        self, method: str, query: str, body: bytes, ctype: str | None
    ) -> tuple[int, bytes]:
        assert self._session is not None
        url = self.upstream + (f"?{query}" if query else "")
        headers = {"Content-Type": ctype} if ctype else {}
        async with self._session.request(method, url, data=body or None, headers=headers) as r:
            return r.status, await r.read()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        query = request.query_string
        params = dict(parse_qsl(query, keep_blank_values=True))
        if body and request.content_type == "application/x-www-form-urlencoded":
            params.update(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
        typereq = params.get("typereq", "")
        self.seen.append(typereq)
        method, ctype = request.method, request.headers.get("Content-Type")
        if self._holds.get(typereq, 0) > 0:
            self._holds[typereq] -= 1
            loop = asyncio.get_running_loop()
            held = Held(typereq, params, loop.create_future(), loop.create_future())
            await self.held.put(held)
            decision = await held._decision
            if decision == "drop":
                held._forwarded.set_result((0, b""))
                return web.Response(status=502, text="dropped by the test proxy")

            # forward in a task of its own: the client (a killed worker) is gone
            async def forward() -> None:
                try:
                    held._forwarded.set_result(await self._send(method, query, body, ctype))
                except Exception as err:  # pragma: no cover
                    held._forwarded.set_exception(err)

            task = asyncio.create_task(forward())
            self._bg.add(task)
            task.add_done_callback(self._bg.discard)
            with contextlib.suppress(Exception):
                status, data = await asyncio.shield(held._forwarded)
                return web.Response(status=status, body=data, content_type="text/xml")
            return web.Response(status=502)
        status, data = await self._send(method, query, body, ctype)
        return web.Response(status=status, body=data, content_type="text/xml")


@pytest.fixture
async def holding_proxy_factory() -> AsyncIterator[Callable[[str], Any]]:
    proxies: list[HoldingProxy] = []

    async def make(upstream_rest_url: str) -> HoldingProxy:
        p = HoldingProxy(upstream_rest_url)
        await p.start()
        proxies.append(p)
        return p

    yield make
    for p in proxies:
        await p.close()
