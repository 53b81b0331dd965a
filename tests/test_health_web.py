"""The HTTP app other parts plug into: loopback by default, tokens for anything that acts."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web

from telefum.config import HttpSettings, Settings
from telefum.web import (
    SERVICE,
    Service,
    bound_port,
    check_agent_token,
    create_app,
    require_token,
    start_http,
)

Client = Callable[..., Awaitable[tuple[int, str, aiohttp.typedefs.LooseHeaders]]]


def setup_acting_routes(app: web.Application) -> None:
    """What another part's setup looks like: routes that act, guarded by the helpers."""
    requeued: list[str] = []

    @require_token
    async def requeue(request: web.Request) -> web.Response:
        requeued.append(request.match_info["id"])
        return web.json_response({"requeued": requeued})

    async def agent(request: web.Request) -> web.Response:
        check_agent_token(request, request.match_info["ext"])
        # the app's shared service is reachable from any route
        assert request.app[SERVICE].settings.http.listen.startswith("127.0.0.1")
        return web.Response(text=f"page of {request.match_info['ext']}")

    app.router.add_post("/requeue/{id}", requeue)
    app.router.add_get("/agent/{ext}", agent)


async def serve(http: HttpSettings) -> tuple[web.AppRunner, str]:
    service = Service(Settings(http=http))
    runner = await start_http(create_app(service, [setup_acting_routes]), http.listen)
    return runner, f"http://127.0.0.1:{bound_port(runner)}"


@pytest.fixture
async def client() -> AsyncIterator[Client]:
    runners: list[web.AppRunner] = []
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


async def test_acting_route_without_a_token_is_401(client: Client) -> None:
    status, body, headers = await client(ADMIN, "POST", "/requeue/j1")
    assert status == 401 and "token required" in body
    assert headers["WWW-Authenticate"].startswith("Bearer")


async def test_acting_route_with_a_wrong_token_is_401(client: Client) -> None:
    status, body, _ = await client(
        ADMIN, "POST", "/requeue/j1", {"Authorization": "Bearer admin-tok-not"}
    )
    assert status == 401 and "wrong token" in body


async def test_acting_route_with_the_token_acts(client: Client) -> None:
    bearer = {"Authorization": "Bearer admin-tok"}
    status, body, _ = await client(ADMIN, "POST", "/requeue/j1", bearer)
    assert status == 200 and '"j1"' in body
    status, _, _ = await client(ADMIN, "POST", "/requeue/j2?token=admin-tok")
    assert status == 200


async def test_an_agent_token_does_not_open_acting_routes(client: Client) -> None:
    status, _, _ = await client(ADMIN, "POST", "/requeue/j1", {"Authorization": "Bearer ivan-tok"})
    assert status == 401


async def test_no_token_configured_disables_acting_routes_rather_than_opening_them(
    client: Client,
) -> None:
    open_http = HttpSettings(listen="127.0.0.1:0")
    status, body, _ = await client(open_http, "POST", "/requeue/j1")
    assert status == 403 and "[http] token" in body
    status, _, _ = await client(open_http, "POST", "/requeue/j1", {"Authorization": "Bearer "})
    assert status == 403


async def test_an_agent_token_opens_its_own_extension_only(client: Client) -> None:
    assert (await client(ADMIN, "GET", "/agent/101?token=ivan-tok"))[0] == 200
    assert (await client(ADMIN, "GET", "/agent/102?token=ivan-tok"))[0] == 401
    assert (await client(ADMIN, "GET", "/agent/102?token=admin-tok"))[0] == 200
    assert (await client(ADMIN, "GET", "/agent/102"))[0] == 401


async def test_extensions_without_a_token_are_not_opened_by_an_empty_one(client: Client) -> None:
    status, _, _ = await client(ADMIN, "GET", "/agent/103?token=")
    assert status == 401


async def test_health_and_metrics_are_served_with_no_token(client: Client) -> None:
    status, body, _ = await client(ADMIN, "GET", "/health")
    assert status == 200 and '"status": "ok"' in body  # no links, no Redis: nothing to fail
    status, body, headers = await client(ADMIN, "GET", "/metrics")
    assert status == 200 and "telefum_build_info" in body
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")


def test_the_default_listen_address_is_loopback() -> None:
    assert Settings().http.host == "127.0.0.1"


async def test_the_server_binds_only_the_configured_loopback_address() -> None:
    runner, _ = await serve(HttpSettings(listen="127.0.0.1:0"))
    try:
        sockets = [s for site in runner.sites for s in site._server.sockets]  # type: ignore[attr-defined]
        assert {s.getsockname()[0] for s in sockets} == {"127.0.0.1"}
    finally:
        await runner.cleanup()
