"""The HTTP side under a hostile network, over real sockets: connections that never finish
their request cannot exhaust the service (a cap, the oldest idle one closed to make room, a
header timeout, an idle timeout), and only this service's own Host names are answered
(DNS rebinding)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web

from telefum.config import HttpSettings, Settings
from telefum.http_guard import HttpServer, host_allowed
from telefum.limits import Limits
from telefum.web import Service, create_app, start_http

Serve = Callable[..., Awaitable[HttpServer]]
HEAD = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n"  # no empty line: the head never ends


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """``await serve(http_settings, *setups, header_timeout_s=..., idle_timeout_s=...)``."""
    servers: list[HttpServer] = []

    async def start(
        http: HttpSettings, *setups: Callable[[web.Application], None], **timeouts: float
    ) -> HttpServer:
        app = create_app(Service(Settings(http=http)), setups)
        server = await start_http(app, http, **timeouts)
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.cleanup()


async def get(server: HttpServer, path: str, **headers: str) -> tuple[int, str]:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http,
        http.get(f"http://127.0.0.1:{server.port}{path}", headers=headers) as resp,
    ):
        return resp.status, await resp.text()


async def slow_client(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A client that opens a connection, sends half a request head and stops."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(HEAD)
    await writer.drain()
    return reader, writer


async def closed_by_server(reader: asyncio.StreamReader, within: float) -> bool:
    """Whether the server closes the connection within ``within`` seconds."""
    try:
        await asyncio.wait_for(reader.read(), within)  # returns at the end of the stream
    except TimeoutError:
        return False
    except ConnectionError:
        pass
    return True


def hits(metrics_text: str, limit: str) -> float:
    prefix = f'telefum_limit_hits_total{{limit="{limit}"}} '
    (line,) = [x for x in metrics_text.splitlines() if x.startswith(prefix)]
    return float(line.removeprefix(prefix))


async def test_slow_clients_beyond_the_cap_cannot_lock_out_a_fresh_health_check(
    serve: Serve,
) -> None:
    server = await serve(
        HttpSettings(listen="127.0.0.1:0", max_connections=20), header_timeout_s=60.0
    )
    slow = [await slow_client(server.port) for _ in range(30)]
    await asyncio.sleep(0.1)
    assert server.connections <= 20  # 1,100 of them no longer exhaust the descriptors

    t0 = time.monotonic()
    status, body = await get(server, "/health")  # a fresh connection, served at once
    assert status == 200 and '"status": "ok"' in body and time.monotonic() - t0 < 2
    # the oldest idle ones were closed to make room, the newest are still open
    oldest = [await closed_by_server(r, within=1.0) for r, _ in slow[:10]]
    newest = [await closed_by_server(r, within=0.05) for r, _ in slow[-5:]]
    assert all(oldest) and not any(newest)
    _, text = await get(server, "/metrics")
    assert hits(text, "http_idle_closed") >= 11  # 10 slow ones, then room for /health
    for _, w in slow:
        w.close()


async def test_a_connection_that_never_finishes_its_head_is_closed_after_the_timeout(
    serve: Serve,
) -> None:
    server = await serve(
        HttpSettings(listen="127.0.0.1:0"), header_timeout_s=1.0, idle_timeout_s=1.5
    )
    slow = [await slow_client(server.port) for _ in range(5)]

    async def trickle(w: asyncio.StreamWriter) -> None:  # a byte now and then: slowloris
        with contextlib.suppress(ConnectionError):
            for _ in range(20):
                await asyncio.sleep(0.2)
                w.write(b"X-A: b\r\n")

    tricklers = [asyncio.create_task(trickle(w)) for _, w in slow]
    t0 = time.monotonic()
    assert all([await closed_by_server(r, within=5.0) for r, _ in slow])
    assert 0.8 < time.monotonic() - t0 < 4.0
    for t in tricklers:
        t.cancel()
    # a kept-alive connection idle after its answer is closed too
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(HEAD + b"\r\n")
    await writer.drain()
    assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
    assert await closed_by_server(reader, within=5.0)
    writer.close()
    _, text = await get(server, "/metrics")
    assert hits(text, "http_header_timeout") == 5


async def test_when_every_connection_is_inside_a_request_a_new_one_gets_a_503(
    serve: Serve,
) -> None:
    release = asyncio.Event()

    def hold(app: web.Application) -> None:
        async def handler(request: web.Request) -> web.Response:
            await release.wait()
            return web.Response(text="done")

        app.router.add_get("/hold", handler)

    server = await serve(HttpSettings(listen="127.0.0.1:0", max_connections=4), hold)
    held = [asyncio.create_task(get(server, "/hold")) for _ in range(4)]
    while server.connections < 4:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    answer = await asyncio.wait_for(reader.read(), 2)
    assert answer.startswith(b"HTTP/1.1 503") and b"Connection: close" in answer
    writer.close()
    release.set()
    assert [await t for t in held] == [(200, "done")] * 4
    _, text = await get(server, "/metrics")
    assert hits(text, "http_connections") == 1


# --- Host ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "listen", "allowed", "answered"),
    [
        ("127.0.0.1:8088", "127.0.0.1", (), True),
        ("localhost:8088", "127.0.0.1", (), True),
        ("LOCALHOST.", "127.0.0.1", (), True),
        ("[::1]:8088", "127.0.0.1", (), True),
        ("127.0.0.2", "127.0.0.1", (), True),
        ("10.0.0.5:8088", "10.0.0.5", (), True),
        ("10.0.0.6:8088", "10.0.0.5", (), False),
        ("10.0.0.6:8088", "0.0.0.0", (), True),  # any address of a wildcard listen
        ("[fe80::1]:8088", "::", (), True),
        ("attacker.example", "127.0.0.1", (), False),  # DNS rebinding: a name
        ("attacker.example", "0.0.0.0", (), False),
        ("127.0.0.1.nip.io", "0.0.0.0", (), False),
        ("2130706433", "0.0.0.0", (), False),
        ("bridge.office:8088", "0.0.0.0", ("bridge.office",), True),
        ("Bridge.Office.", "0.0.0.0", ("bridge.office",), True),
        ("bridge.office:x", "0.0.0.0", ("bridge.office",), False),
        ("", "127.0.0.1", (), False),
        (None, "127.0.0.1", (), True),  # no Host at all: not a browser
    ],
)
def test_which_host_names_are_answered(
    host: str | None, listen: str, allowed: tuple[str, ...], answered: bool
) -> None:
    assert host_allowed(host, listen, allowed) is answered


async def test_every_route_answers_only_for_this_services_own_names(serve: Serve) -> None:
    def act(app: web.Application) -> None:
        async def originate(request: web.Request) -> web.Response:
            return web.Response(text="would dial")

        app.router.add_post("/originate", originate)

    server = await serve(HttpSettings(listen="127.0.0.1:0", allowed_hosts=("bridge.office",)), act)
    for path in ("/health", "/metrics"):
        assert (await get(server, path, Host="attacker.example"))[0] == 421
        assert (await get(server, path, Host=f"localhost:{server.port}"))[0] == 200
        assert (await get(server, path, Host="bridge.office"))[0] == 200
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"http://127.0.0.1:{server.port}/originate", headers={"Host": "attacker.example"}
        ) as resp,
    ):
        assert resp.status == 421 and "allowed_hosts" in await resp.text()
    _, text = await get(server, "/metrics")
    assert hits(text, "http_host") == 3


async def test_a_request_without_host_is_answered(serve: Serve) -> None:
    server = await serve(HttpSettings(listen="127.0.0.1:0"))
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET /health HTTP/1.0\r\n\r\n")
    assert (await asyncio.wait_for(reader.read(), 5)).startswith(b"HTTP/1.0 200")
    writer.close()


# --- the log line of a cap -----------------------------------------------------------------


def test_a_cap_hit_is_counted_each_time_and_logged_at_most_once_a_minute(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    limits = Limits(clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="telefum.limits"):
        for _ in range(1000):
            limits.hit("http_host", "refused Host 'x'")
        now[0] = 61.0
        limits.hit("http_host", "refused Host 'y'")
    assert limits.hits["http_host"] == 1001
    assert [r.getMessage() for r in caplog.records] == [
        "limit http_host reached: refused Host 'x'",
        "limit http_host reached: refused Host 'y' (and 999 more since the last such line)",
    ]
