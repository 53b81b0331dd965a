"""The HTTP app other parts plug into: loopback by default, ``/health`` and ``/metrics``
open, a setup adds its routes. Who may open the routes that act: test_agent_tokens.py."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web

from telefum.config import HttpSettings, Settings
from telefum.http_guard import HttpServer
from telefum.web import SERVICE, Service, create_app, start_http

Client = Callable[..., Awaitable[tuple[int, str, aiohttp.typedefs.LooseHeaders]]]


def setup_a_route(app: web.Application) -> None:
    """What another part's setup looks like: it adds a route that reads the service."""

    async def listen(request: web.Request) -> web.Response:
        return web.Response(text=request.app[SERVICE].settings.http.listen)

    app.router.add_get("/listen", listen)


async def serve(http: HttpSettings) -> tuple[HttpServer, str]:
    service = Service(Settings(http=http))
    server = await start_http(create_app(service, [setup_a_route]), http)
    return server, f"http://127.0.0.1:{server.port}"


@pytest.fixture
async def client() -> AsyncIterator[Client]:
    runners: list[HttpServer] = []
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))

    async def call(
        http: HttpSettings, method: str, path: str, headers: dict[str, str] | None = None
    ) -> tuple[int, str, aiohttp.typedefs.LooseHeaders]:
        runner, base = await serve(http)
        runners.append(runner)
        async with session.request(method, base + path, headers=headers) as resp:
            return resp.status, await resp.text(), resp.headers

    yield call
    await session.close()
    for r in runners:
        await r.cleanup()


ADMIN = HttpSettings(listen="127.0.0.1:0", token="admin-tok", agent_tokens={"101": "ivan-tok"})


async def test_a_setup_adds_its_routes_and_finds_the_service(client: Client) -> None:
    status, body, _ = await client(ADMIN, "GET", "/listen")
    assert status == 200 and body == "127.0.0.1:0"


async def test_health_and_metrics_are_served_with_no_token(client: Client) -> None:
    status, body, _ = await client(ADMIN, "GET", "/health")
    assert status == 200 and '"status": "ok"' in body  # no links, no Redis: nothing to fail
    status, body, headers = await client(ADMIN, "GET", "/metrics")
    assert status == 200 and "telefum_build_info" in body
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")


def test_the_default_listen_address_is_loopback() -> None:
    assert Settings().http.host == "127.0.0.1"


async def test_the_server_binds_only_the_configured_loopback_address() -> None:
    server, _ = await serve(HttpSettings(listen="127.0.0.1:0"))
    try:
        assert {address[0] for address in server.addresses} == {"127.0.0.1"}
    finally:
        await server.cleanup()
