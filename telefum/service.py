"""The running bridge: the parts of ``telefum run`` / ``listen`` / ``worker`` wired together.

One :class:`Bridge` owns, in start order: Redis (the configured one, or a private
``redis-server`` when ``[redis] url`` is empty), the hand-over of finished calls to Redis
(with its fsync'd spool), one tracker + AMI listener per ``[[ami]]`` entry, the HTTP side
(health, metrics, agent pages, click-to-call, report) and, when it works too, an arq worker
delivering calls to the CRM. ``stop()`` undoes it in reverse, so a finished call is handed
to Redis (or left in the spool) before anything it needs goes away.

Each tracker update fans out here and nowhere else: a finished call goes to the hand-over
and the call counters; a call the full tracker refused to the caps' count and log
(``telefum.limits``); every update goes to the screen pop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from crm_client.redact import redact_url, register_secrets
from telefum import private_redis, wiring
from telefum.agent_routes import AgentServices, setup_agent_routes
from telefum.attribution import attribution_hook
from telefum.config import Settings
from telefum.http_guard import HttpServer
from telefum.limits import Limits
from telefum.web import Service, create_app, start_http
from telephony.backfill import Backfiller
from telephony.listener import AmiListener
from telephony.records import CallFinished, CallRecord, CallRefused
from telephony.supervise import Supervisor
from worker.app import ClientFactory, WorkerService
from worker.embedded_redis import EmbeddedRedis
from worker.handoff import Handoff
from worker.redis_url import RedisAddress, connect

log = logging.getLogger("telefum.service")


class BridgeError(RuntimeError):
    """The bridge cannot start as configured (the message says why and what to set)."""


@dataclass(frozen=True)
class Roles:
    """What this process does: ``run`` is all three, ``listen`` the first and the last."""

    listen: bool = True
    work: bool = True
    http: bool = True


class Bridge:
    """The service of one process. Build it, ``await start()``, later ``await stop()``."""

    def __init__(
        self,
        settings: Settings,
        roles: Roles = Roles(),
        *,
        redis_url: str | None = None,
        worker_id: str | None = None,
        client_factory: ClientFactory | None = None,
        embedded_redis_dir: str | Path | None = None,
    ) -> None:
        self.settings = settings
        self.roles = roles
        self.redis_url = redis_url or settings.redis.url.get_secret_value()
        if self.redis_url:
            register_secrets([RedisAddress.parse(self.redis_url).password or ""])
        self.worker_id = worker_id
        self.client_factory = client_factory
        self.embedded_redis_dir = embedded_redis_dir
        self.embedded: EmbeddedRedis | None = None
        self.redis: Redis | None = None
        self.handoff: Handoff | None = None
        self.listeners: list[AmiListener] = []
        self.backfillers: dict[str, Backfiller] = {}  # by PBX name
        self.service: Service | None = None
        self.agents: AgentServices | None = None
        self.worker: WorkerService | None = None
        self._worker_task: asyncio.Task[None] | None = None
        # every background task of the process: restarted if it fails, named in /health
        self.supervisor = Supervisor()
        self._http: HttpServer | None = None
        self.limits = Limits()

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Start every part; on failure, what did start is stopped again and the error is
        raised (a :class:`BridgeError` for what configuration can fix)."""
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        s = self.settings
        if not self.redis_url:
            if not self.roles.work:
                raise BridgeError(
                    "[redis] url is empty: a private Redis only serves `telefum run`, which "
                    "has its own worker. `telefum listen` needs the Redis its workers use: "
                    "set [redis] url or TELEFUM_REDIS__URL."
                )
            # from the main thread, so the server dies with us even on SIGKILL (see
            # worker.embedded_redis); it answers PING within a fraction of a second
            self.embedded = self._start_embedded()
            self.redis_url = self.embedded.url
        worker_config = wiring.worker_config(s)  # ValueError: a setting does not fit
        self.redis = connect(self.redis_url, socket_connect_timeout=1.0, socket_timeout=5.0)
        if self.roles.listen:
            self.handoff = wiring.handoff(
                s, worker_config, self.redis_url, supervisor=self.supervisor
            )
            await self.handoff.start()
            for ami in s.ami:
                listener = wiring.listener(s, ami, self._on_update, supervisor=self.supervisor)
                self.listeners.append(listener)
                self.backfillers[ami.name] = wiring.backfiller(
                    s, ami, listener, self._submit, supervisor=self.supervisor
                )
        handoff = self.handoff
        backfillers = list(self.backfillers.values())
        self.service = Service(
            s,
            links=self.listeners,
            redis=self.redis,
            spool_size=(lambda: handoff.spool_size) if handoff is not None else None,
            backfills=lambda: [b.status() for b in backfillers],
            limits=self.limits,
            supervisor=self.supervisor,
        )
        self.agents = wiring.agent_services(
            s,
            listeners={x.pbx: x for x in self.listeners},
            redis=self.redis,
            limits=self.limits,
        )
        if self.roles.http:
            agents = self.agents
            app = create_app(
                self.service,
                setups=[
                    lambda app: setup_agent_routes(
                        app,
                        screenpop=agents.screenpop,
                        originator=agents.originator,
                        attribution=agents.attribution,
                        settings=s,
                        limits=self.limits,
                    )
                ],
            )
            self._http = await start_http(app, s.http)
            log.info("HTTP on %s (health, metrics, agent pages)", self.http_url)
        for backfill in backfillers:
            await backfill.start()
        for listener in self.listeners:
            await listener.start()
        if self.roles.work:
            self.worker = WorkerService(
                worker_config,
                self.redis_url,
                worker_id=self.worker_id,
                client_factory=self.client_factory,
                handle_signals=False,
                on_delivered=attribution_hook(self.redis, dict(s.sources)),
                supervisor=self.supervisor,
            )
            self._worker_task = self.supervisor.spawn("worker", self.worker.run)

    def _start_embedded(self) -> EmbeddedRedis:
        data = self.embedded_redis_dir or private_redis.data_dir(self.settings)
        redis = EmbeddedRedis(data, appendonly=True).start()
        register_secrets([redis.password])
        if self.embedded_redis_dir is None:
            private_redis.publish(self.settings, redis.address)
        log.info(
            "[redis] url is empty: started a private Redis at %s (data and password in %s)",
            redis.address,
            redis.data_dir,
        )
        return redis

    def _on_update(self, update: Any) -> None:
        """Every tracker update, from every PBX: quick, never blocking the AMI reader. A
        call the tracker saw only in part may wait for its CDR (``telephony.backfill``)."""
        if isinstance(update, CallFinished):
            backfill = self.backfillers.get(update.record.pbx)
            if backfill is None or not backfill.hold(update.record):
                self._submit(update.record)
            else:
                log.info(
                    "call finished: %s; waits for its CDR (the bridge saw it in part)",
                    _summary(update.record),
                    extra=update.record.log_tags,
                )
        elif isinstance(update, CallRefused):
            what = "a new call" if update.new_call else "a channel (its call is flagged overflow)"
            self.limits.hit(
                "tracked_calls",
                f"pbx {update.pbx}: {update.active_calls} calls in progress, {what} not tracked "
                "([calls] max_active_calls; calls whose hangup was lost expire after "
                "max_call_age_s)",
            )
        if self.agents is not None:
            self.agents.screenpop.on_update(update)

    def _submit(self, record: CallRecord) -> None:
        """A finished call, live or from the CDR, to the hand-over and the call counts."""
        if self.handoff is not None:
            log.info(
                "call finished: %s; handed to the queue", _summary(record), extra=record.log_tags
            )
            self.handoff.submit(record)
        if self.service is not None:
            self.service.calls.observe(record)

    async def stop(self) -> None:
        """Stop in reverse order; finished calls reach Redis or stay in the spool."""
        for listener in self.listeners:
            await _quietly(listener.stop(), "AMI listener")
        for backfill in self.backfillers.values():  # calls held for their CDR: submitted
            await _quietly(backfill.stop(), "backfill")
        if self.handoff is not None:
            await _quietly(self.handoff.close(), "hand-over")
            self.handoff = None
        if self._worker_task is not None:
            self._worker_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._worker_task
            self._worker_task = None
        if self._http is not None:
            await _quietly(self._http.cleanup(), "HTTP")
            self._http = None
        if self.agents is not None:
            await _quietly(self.agents.aclose(), "agent services")
            self.agents = None
        if self.redis is not None:
            await _quietly(self.redis.aclose(), "Redis client")
            self.redis = None
        await _quietly(self.supervisor.close(), "background tasks")
        if self.embedded is not None:
            if self.embedded_redis_dir is None:
                private_redis.withdraw(self.settings)
            self.embedded.stop()
            self.embedded = None

    # -- what others read --------------------------------------------------------------------

    @property
    def http_url(self) -> str:
        if self._http is None:
            raise RuntimeError("HTTP is not running")
        return self.settings.http.local_url(self._http.port)

    def describe(self) -> str:
        """One line for the log: what runs, where (no secrets)."""
        parts = [f"Redis {redact_url(self.redis_url)}"]
        parts += [f"AMI {x.pbx}@{x.host}:{x.port}" for x in self.listeners]
        if self.worker is not None:
            parts.append(f"worker -> {redact_url(self.settings.crm.url)}")
        if self._http is not None:
            parts.append(f"HTTP {self.http_url}")
        return ", ".join(parts)


def _summary(r: CallRecord) -> str:
    """One call in a few words, for the listener's line about it."""
    who = f"{r.direction} {r.external or '(no outside number)'}"
    if r.did:
        who += f" via {r.did}"
    how: str = r.disposition
    if r.answered:
        how += f" by {r.extension or '?'}, talk {r.talk_s:.0f} s"
    if r.source != "live":
        how += f" (from the {r.source.upper()})"
    return f"{who}, {how}"


async def _quietly(step: Any, what: str) -> None:
    try:
        await step
    except Exception as err:  # stopping must go on: the rest still needs closing
        log.warning("stopping %s: %s", what, err)


def signal_stop() -> asyncio.Event:
    """An event set by SIGINT or SIGTERM (the commands' way to stop gracefully)."""
    import signal

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop
