"""Settings -> the runtime objects that use them: the one place they meet.

Most sections are already the objects' own types (``[worker]`` is the worker's
``CallPolicy``, ``[crm]`` its ``CrmTarget``, ``[calls]`` the tracker's ``CallRules``); what
is left is put together here, and secrets are handed over as plain values here. The service
(``telefum.service.Bridge``) and the commands call these; nothing else builds them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from telefum.config import AmiSettings, Settings
from worker.outbox import outbox_dir
from worker.policy import RetryPolicy, WorkerConfig

if TYPE_CHECKING:
    from crm_client.client import TelefumClient
    from telefum.agent_routes import AgentServices
    from telefum.limits import Limits
    from telefum.screenpop import CrmLookup
    from telephony.backfill import Backfiller
    from telephony.listener import AmiListener
    from telephony.supervise import Supervisor
    from worker.handoff import Handoff


def worker_config(settings: Settings) -> WorkerConfig:
    """The worker's parameters. ValueError names what does not fit (job vs CRM timeout)."""
    return WorkerConfig(
        crm=settings.crm,
        crm_by_pbx={a.name: a.crm for a in settings.ami if a.crm is not None},
        calls=settings.worker,
        sources=settings.sources,
        retry=RetryPolicy(total_s=settings.worker.retry_total_s),
        outbox_dir=str(outbox_dir(settings.spool_dir)),
        crm_failing_s=settings.health.crm_failing_s,
    )


def handoff(
    settings: Settings,
    config: WorkerConfig,
    redis_url: str,
    listener_id: str | None = None,
    supervisor: Supervisor | None = None,
) -> Handoff:
    """The listener's hand-over to Redis, queueing the way the workers of ``config`` read
    (start it with ``await handoff.start()``)."""
    from worker.handoff import Handoff
    from worker.redis_url import RedisAddress

    return Handoff(
        redis_url,
        settings.spool_dir,
        queue_name=config.queue_name,
        job_expires_s=config.job_expires_s,
        ledger_ttl_s=config.ledger_ttl_s,
        listener_id=listener_id,
        replicas=RedisAddress.parse(redis_url).replicas_to_wait_for,
        supervisor=supervisor,
    )


def listener(
    settings: Settings,
    ami: AmiSettings,
    on_update: Callable[[Any], None],
    supervisor: Supervisor | None = None,
) -> AmiListener:
    """One PBX's AMI link feeding its own tracker (its records carry the PBX's name)."""
    from telephony.listener import AmiListener
    from telephony.tracker import CallTracker

    return AmiListener(
        ami.host,
        ami.port,
        ami.username,
        ami.secret.get_secret_value(),
        CallTracker(settings.calls, pbx=ami.name),
        on_update,
        ping_interval=ami.ping_interval_s,
        ping_timeout=ami.ping_timeout_s,
        reconnect_max=ami.reconnect_max_s,
        pbx=ami.name,
        supervisor=supervisor,
    )


def backfiller(
    settings: Settings,
    ami: AmiSettings,
    listener: AmiListener,
    submit: Callable[[Any], None],
    supervisor: Supervisor | None = None,
) -> Backfiller:
    """The PBX's backfill from its CDR (``[backfill]``, or its ``[ami.backfill]``), told of
    the listener's sessions and reading its tracker's live calls; its state file beside the
    spool. Without a source it still counts and reports the gaps."""
    from telephony.backfill import Backfiller

    b = settings.backfill_for(ami.name)
    tracker = listener.tracker
    out = Backfiller(
        b.source(),
        settings.calls,
        submit,
        pbx=ami.name,
        state_dir=settings.spool_dir,
        live_ids=lambda: getattr(tracker, "live_ids", frozenset()),
        alive=lambda: listener.last_data_at if listener.connected else None,
        settle_s=b.settle_s,
        cdr_batch_s=b.cdr_batch_s,
        first_window_s=b.first_window_s,
        retry_max_s=b.retry_max_s,
        supervisor=supervisor,
    )
    listener.on_session = out.on_session
    return out


def crm_lookups(
    settings: Settings, *, timeout_s: float = 4.0
) -> tuple[Callable[[str], CrmLookup], Callable[[], Awaitable[None]]]:
    """``crm_for`` for the screen pop: one client per CRM (the global ``[crm]`` and each
    PBX's own), looking up with the service account. Returns ``(crm_for, close)``.

    The lookup timeout is short on purpose: a pop that comes after the call was answered
    helps nobody; the page shows the search link meanwhile.
    """
    from crm_client.client import TelefumClient
    from telefum.screenpop import CrmLookup

    clients: dict[str, TelefumClient] = {}

    def crm_for(pbx: str) -> CrmLookup:
        crm = settings.crm_for(pbx)
        client = clients.get(crm.url)
        if client is None:
            client = clients[crm.url] = TelefumClient(
                crm.url, timeout_s=min(timeout_s, crm.timeout_s)
            )
        return CrmLookup(client, crm.service, crm.phone_format, name=crm.url)

    async def close() -> None:
        for client in clients.values():
            await client.close()

    return crm_for, close


def agent_services(
    settings: Settings,
    *,
    listeners: Mapping[str, Any] | None = None,
    redis: Any = None,
    limits: Limits | None = None,
) -> AgentServices:
    """The screen pop (CRM clients per ``[crm]``), the originator (on the listener of
    ``[originate] pbx``, else the first ``[[ami]]``) and the attribution store (on ``redis``,
    a ``redis.asyncio.Redis``). ``listeners``: PBX name -> ``AmiListener``; None or no
    match: click-to-call answers 503. ``redis`` None: the report answers 503."""
    from telefum.agent_routes import AgentServices
    from telefum.attribution import Attribution
    from telefum.originate import Originator
    from telefum.screenpop import ScreenPop

    crm_for, close_crm = crm_lookups(settings)
    pop = ScreenPop(
        crm_for,
        sources=settings.sources,
        max_call_age_s=settings.calls.max_call_age_s,
        max_lookups=settings.http.max_lookups,
        limits=limits,
    )
    originator = None
    pbx = settings.originate.pbx or settings.ami[0].name
    if listeners and pbx in listeners:
        originator = Originator(
            listeners[pbx].originate,
            settings.originate,
            default_country=settings.calls.default_country,
            extension_pattern=settings.calls.extension_pattern,
        )
    attribution = Attribution(redis, sources=settings.sources) if redis is not None else None
    return AgentServices(pop, originator, attribution, close_crm)
