"""The service's HTTP side: one aiohttp app serving ``/health`` and ``/metrics``, to which
other parts add their routes.

:class:`Service` is what those two endpoints read (settings, AMI links, Redis, spool size,
call counts, the caps' hits); :func:`create_app` builds the app and runs each setup function
given, which adds its routes and may read ``app[SERVICE]``; :func:`start_http` serves it on
``[http] listen`` (loopback unless configured). ``telefum.service.Bridge`` does all three,
with ``telefum.agent_routes.setup_agent_routes`` as the one setup: the agent pages,
click-to-call and the report, and the tokens that guard them. ``/health`` and
``/metrics`` need no token. Every route answers only for this service's own Host names, and
the server caps its connections (``telefum.http_guard``).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any

import pydantic
from aiohttp import web
from pydantic import AfterValidator, ConfigDict, Field, SecretStr

from telefum import __version__, metrics
from telefum.health import (
    AmiLinkView,
    Health,
    RedisPing,
    SpoolWatch,
    crm_routes,
    evaluate,
    observe,
)
from telefum.http_guard import HttpServer, host_check
from telefum.limits import Limits
from telephony.supervise import Supervisor
from worker.policy import DEFAULT_QUEUE

if TYPE_CHECKING:
    from telefum.config import Settings
    from telephony.backfill import BackfillStatus


# --- the settings ([http]) -----------------------------------------------------------------


def split_listen(listen: str) -> tuple[str, int]:
    """``"127.0.0.1:8088"`` / ``"[::1]:8088"`` -> (host, port); port 0: the OS picks one."""
    host, sep, port_s = listen.rpartition(":")
    if not sep or not host or not re.fullmatch("[0-9]+", port_s) or int(port_s) > 65535:
        raise ValueError(f'expected "host:port" such as "127.0.0.1:8088", got "{listen}"')
    return host.strip("[]"), int(port_s)


def _listen(value: str) -> str:
    split_listen(value)
    return value


def _token(token: SecretStr) -> SecretStr:
    if not token.get_secret_value():
        raise ValueError("expected a non-empty token")
    return token


@pydantic.dataclasses.dataclass(frozen=True, kw_only=True, config=ConfigDict(extra="forbid"))
class HttpSettings:
    """``[http]``: where ``/health``, ``/metrics`` and the agent endpoints listen, and the
    tokens that open them."""

    listen: Annotated[str, AfterValidator(_listen)] = "127.0.0.1:8088"  # loopback by default
    # required for anything that acts (requeue, originate); empty: acting endpoints refuse
    token: SecretStr = SecretStr("")
    # read-only: the /report page and `telefum report` (the admin token works too)
    report_token: SecretStr = SecretStr("")
    # extension -> that agent's own token
    agent_tokens: dict[str, Annotated[SecretStr, AfterValidator(_token)]] = Field(
        default_factory=dict
    )
    # names (besides localhost, loopback and the listen address) this service answers to
    allowed_hosts: tuple[str, ...] = ()
    max_connections: Annotated[int, Field(ge=1, strict=True)] = 512  # open at once
    # agent live feeds (SSE) per extension
    max_streams_per_extension: Annotated[int, Field(ge=1, strict=True)] = 8
    max_lookups: Annotated[int, Field(ge=1, strict=True)] = 32  # screen-pop CRM finds at once

    @property
    def host(self) -> str:
        return split_listen(self.listen)[0]

    @property
    def port(self) -> int:
        return split_listen(self.listen)[1]

    def local_url(self, port: int | None = None) -> str:
        """Where a client on this machine reaches the service (a wildcard address means
        loopback); ``port``: the one actually bound, when ``listen`` says 0."""
        host = self.host
        host = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{self.port if port is None else port}"


Setup = Callable[[web.Application], Any]

QUEUE_NAME = DEFAULT_QUEUE  # arq's queue of call jobs, as the workers and hand-over use it


@dataclass
class Service:
    """What the HTTP side reads: built once by the command that runs the service."""

    settings: Settings
    links: Sequence[AmiLinkView] = ()
    redis: RedisPing | None = None  # a redis.asyncio.Redis; None: no Redis checks
    spool_size: Callable[[], int] | None = None  # calls waiting in this process's spool
    backfills: Callable[[], Sequence[BackfillStatus]] | None = None  # one per PBX listened to
    calls: metrics.CallCounts = field(default_factory=metrics.CallCounts)
    queue_name: str = QUEUE_NAME
    started_at: float = field(default_factory=time.time)
    spool_watch: SpoolWatch = field(default_factory=SpoolWatch)
    limits: Limits = field(default_factory=Limits)
    supervisor: Supervisor | None = None  # the process's background tasks

    async def health(self) -> tuple[Health, Any]:
        """One reading of the world and the verdict on it (the snapshot for /metrics)."""
        queue = self.queue_name

        async def read(redis: Any) -> dict[str, Any]:
            from worker.stats import read_stats

            return await read_stats(redis, queue_name=queue)

        snap = await observe(
            self.links,
            self.redis,
            self.settings.health,
            read_stats=read,
            spool_size=self.spool_size,
            crms=crm_routes(self.settings),
            backfills=self.backfills,
            failing=self.supervisor.failing if self.supervisor is not None else None,
        )
        return evaluate(snap, self.settings.health, self.spool_watch), snap


SERVICE = web.AppKey("telefum_service", Service)


def create_app(service: Service, setups: Iterable[Setup] = ()) -> web.Application:
    """The app with ``/health`` and ``/metrics``; each setup then adds its own routes.
    Requests for a Host that is not this service's get a 421 (``telefum.http_guard``)."""
    http = service.settings.http
    app = web.Application(middlewares=[host_check(http.host, http.allowed_hosts, service.limits)])
    app[SERVICE] = service
    app.router.add_get("/health", _health)
    app.router.add_get("/metrics", _metrics)
    for setup in setups:
        setup(app)
    return app


async def start_http(app: web.Application, http: HttpSettings, **timeouts: float) -> HttpServer:
    """Serve ``app`` (made by :func:`create_app`) on ``[http] listen`` with at most ``[http]
    max_connections``; ``server.port`` is the port bound, ``await server.cleanup()`` stops.
    ``timeouts``: ``header_timeout_s``, ``idle_timeout_s`` (tests shorten them)."""
    host, port = split_listen(http.listen)
    server = HttpServer(
        app,
        host,
        port,
        limits=app[SERVICE].limits,
        max_connections=http.max_connections,
        **timeouts,
    )
    await server.start()
    return server


async def _health(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    health, _ = await service.health()
    body = health.to_json() | {
        "version": __version__,
        "uptime_s": round(time.time() - service.started_at, 1),
    }
    return web.Response(
        text=json.dumps(body, ensure_ascii=False),
        status=200 if health.ok else 503,  # degraded too: 200 means fine (docs/operations.md)
        content_type="application/json",
        headers={"Cache-Control": "no-store"},
    )


async def _metrics(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    _, snap = await service.health()
    body = metrics.render(snap, service.calls, service.settings.health, limits=service.limits)
    return web.Response(body=body, headers={"Content-Type": metrics.CONTENT_TYPE})
