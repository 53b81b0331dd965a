"""The job's logic against a real Redis and an in-memory CRM (the end-to-end runs with real
processes and the reference CRM are in test_pipeline*.py): resume from the ledger, find
again before a retried addcont, retry vs dead letter, the per-phone lock."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from arq import Retry
from arq.constants import job_key_prefix
from redis.asyncio import Redis

from crm_client.errors import PermanentCrmError, TransientCrmError
from crm_client.types import Contact, Credentials, FindResult
from tests.conftest import free_port
from worker import dlq, jobs, keys
from worker.embedded_redis import EmbeddedRedis
from worker.jobs import Runtime
from worker.ledger import PhoneLock, error_history, load, load_and_begin
from worker.outbox import Outbox
from worker.policy import CallPolicy, CrmTarget, RetryPolicy, WorkerConfig
from worker.queue import enqueue_call
from worker.stats import read_stats

SERVICE = Credentials("bridge", "pw")
URL = "http://crm.test/rest"
CONFIG = WorkerConfig(
    crm=CrmTarget(URL, SERVICE.login, SERVICE.password, timeout_s=1.0),
    retry=RetryPolicy(first_delay_s=0.1, max_delay_s=1.0, total_s=60),
    calls=CallPolicy(job_timeout_s=3.0),
)
Q = CONFIG.queue_name


class MemoryCrm:
    """Contacts by phone and events in memory; ``before``/``after`` hooks per op let a test
    fail a request before the CRM acts, or after it acted (the answer lost)."""

    def __init__(self) -> None:
        self.contacts: dict[str, list[str]] = {}
        self.events: list[tuple[str, str, str]] = []
        self.calls: list[str] = []
        self.before: dict[str, Callable[[], Awaitable[None]]] = {}
        self.after: dict[str, Callable[[], Awaitable[None]]] = {}
        self._next = 100

    async def _hook(self, table: dict[str, Callable[[], Awaitable[None]]], op: str) -> None:
        hook = table.pop(op, None)
        if hook is not None:
            await hook()

    async def find(self, phone: str, creds: Credentials) -> FindResult:
        self.calls.append("find")
        await self._hook(self.before, "find")
        ids = self.contacts.get(phone, [])
        return FindResult(tuple(Contact(i) for i in ids), len(ids))

    async def add_contact(
        self, phone: str, name: str, typecont: str, x_pstn: str, creds: Credentials
    ) -> str:
        self.calls.append("addcont")
        await self._hook(self.before, "addcont")
        await asyncio.sleep(0.01)  # room for a concurrent call to interleave
        self._next += 1
        self.contacts.setdefault(phone, []).append(str(self._next))
        await self._hook(self.after, "addcont")
        return str(self._next)

    async def add_event(
        self, contact_id: str, typecont: str, subj: str, desc: str, creds: Credentials
    ) -> str:
        self.calls.append("addevent")
        await self._hook(self.before, "addevent")
        self.events.append((contact_id, subj, desc))
        await self._hook(self.after, "addevent")
        return str(len(self.events))


def unavailable() -> TransientCrmError:
    """HTTP 503: turned away before the CRM did anything."""
    return TransientCrmError("HTTP 503", kind="http", may_have_acted=False)


def reset() -> TransientCrmError:
    """The connection dropped after the request was sent: the CRM may have acted."""
    return TransientCrmError("connection reset", kind="network", may_have_acted=True)


def timed_out() -> TransientCrmError:
    return TransientCrmError("no answer within 1 s", kind="timeout", may_have_acted=True)


def raising(err: Exception) -> Callable[[], Awaitable[None]]:
    async def hook() -> None:
        raise err

    return hook


def record(call_id: str = "1.1", external: str = "+79161234567", **kw: Any) -> dict[str, Any]:
    base = {
        "call_id": call_id,
        "pbx": "default",
        "direction": "in",
        "external": external,
        "did": "+74951234567",
        "extension": "101",
        "answered": True,
        "started_at": "2025-11-26T12:00:00.000Z",
        "answered_at": "2025-11-26T12:00:06.000Z",
        "ended_at": "2025-11-26T12:04:00.000Z",
        "disposition": "answered",
        "transfers": [],
    }
    return base | kw


@pytest.fixture
async def setup(redis_client: Redis) -> tuple[Runtime, MemoryCrm]:
    crm = MemoryCrm()
    return Runtime(CONFIG, redis_client, {URL: crm}, rng=random.Random(0)), crm


async def run(runtime: Runtime, rec: dict[str, Any]) -> str:
    """Enqueue, then run the job as arq would (and drop arq's keys when it returns)."""
    await enqueue_call(runtime.redis, rec, queue_name=Q, expires_s=3600, ledger_ttl_s=3600)
    jid = f"call:default:{rec['call_id']}"
    result = await runtime.deliver(rec, jid)
    await runtime.redis.delete(job_key_prefix + jid)
    await runtime.redis.zrem(Q, jid)
    return result


async def test_a_new_caller_gets_a_contact_and_the_call_an_event(
    setup: tuple[Runtime, MemoryCrm], redis_client: Redis
) -> None:
    runtime, crm = setup
    assert (await run(runtime, record())).startswith("delivered")
    assert crm.calls == ["find", "addcont", "addevent"]
    assert crm.contacts == {"+79161234567": ["101"]}
    assert crm.events == [
        ("101", "Входящий звонок", "Длительность 3:54; добавочный 101; номер +74951234567")
    ]
    entry = await load(redis_client, "call:default:1.1")
    assert entry.state == "done" and entry.event_id == "1" and entry.get("contact_created") == "1"
    stats = await read_stats(redis_client, Q)
    assert stats["pending"] == 0
    counted = ("succeeded", "contacts_created", "events_created")
    assert [stats["counters"][k] for k in counted] == [1, 1, 1]
    assert stats["crm_latency"] == {}  # counted in memory, sent by the worker's next flush
    await runtime.latencies.flush(redis_client)
    latency = (await read_stats(redis_client, Q))["crm_latency"]
    assert {op: v["ok"]["count"] for op, v in latency.items()} == {
        "find": 1,
        "addcont": 1,
        "addevent": 1,
    }


async def test_a_second_run_of_a_delivered_call_does_nothing(
    setup: tuple[Runtime, MemoryCrm],
) -> None:
    runtime, crm = setup
    await run(runtime, record())
    crm.calls.clear()
    assert (await runtime.deliver(record(), "call:default:1.1")).startswith("nothing to do")
    assert crm.calls == []


async def test_a_retry_after_a_failed_addevent_reuses_the_contact(
    setup: tuple[Runtime, MemoryCrm],
) -> None:
    runtime, crm = setup
    crm.before["addevent"] = raising(unavailable())
    with pytest.raises(Retry):
        await run(runtime, record())
    assert crm.calls == ["find", "addcont", "addevent"]
    crm.calls.clear()
    assert (await runtime.deliver(record(), "call:default:1.1")).startswith("delivered")
    assert crm.calls == ["addevent"]  # resumed: no find, no second contact
    assert len(crm.events) == 1


async def test_a_contact_created_whose_answer_was_lost_is_found_not_created_again(
    setup: tuple[Runtime, MemoryCrm],
) -> None:
    runtime, crm = setup
    crm.after["addcont"] = raising(reset())
    with pytest.raises(Retry):
        await run(runtime, record())
    assert crm.contacts == {"+79161234567": ["101"]}  # the CRM made it; we never heard
    crm.calls.clear()
    assert (await runtime.deliver(record(), "call:default:1.1")).startswith("delivered")
    assert crm.calls == ["find", "addevent"]
    assert crm.contacts == {"+79161234567": ["101"]}


async def test_an_event_whose_answer_was_lost_is_sent_again_and_counted(
    setup: tuple[Runtime, MemoryCrm], redis_client: Redis
) -> None:
    """The documented window: no way to ask the CRM, so at-least-once, and it is counted."""
    runtime, crm = setup
    crm.after["addevent"] = raising(reset())
    with pytest.raises(Retry):
        await run(runtime, record())
    await runtime.deliver(record(), "call:default:1.1")
    assert len(crm.events) == 2
    assert (await read_stats(redis_client, Q))["counters"]["possible_duplicates"] == 1


@pytest.mark.parametrize(
    ("err", "stored"),
    [
        (TransientCrmError("connection refused", kind="network", may_have_acted=False), False),
        (TransientCrmError("HTTP 503", kind="http", may_have_acted=False), False),
        (TransientCrmError("HTTP 500", kind="http", may_have_acted=True), True),
    ],
    ids=["refused", "503", "500-after-storing"],
)
async def test_only_an_addevent_the_crm_may_have_acted_on_counts_as_a_possible_duplicate(
    setup: tuple[Runtime, MemoryCrm], redis_client: Redis, err: TransientCrmError, stored: bool
) -> None:
    runtime, crm = setup
    (crm.after if stored else crm.before)["addevent"] = raising(err)
    with pytest.raises(Retry):
        await run(runtime, record())
    await runtime.deliver(record(), "call:default:1.1")
    assert len(crm.events) == (2 if stored else 1)
    counters = (await read_stats(redis_client, Q))["counters"]
    assert counters.get("possible_duplicates", 0) == (1 if err.may_have_acted else 0)


async def test_a_run_that_stops_before_re_sending_an_event_does_not_count_a_duplicate(
    setup: tuple[Runtime, MemoryCrm], redis_client: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime, crm = setup
    crm.after["addevent"] = raising(reset())
    with pytest.raises(Retry):
        await run(runtime, record())
    with monkeypatch.context() as m:  # too little time left in the run to start addevent
        m.setattr(jobs, "JOB_MARGIN_S", CONFIG.job_timeout_s - 0.5)
        with pytest.raises(Retry):
            await runtime.deliver(record(), "call:default:1.1")
    assert len(crm.events) == 1
    await runtime.deliver(record(), "call:default:1.1")
    assert len(crm.events) == 2
    assert (await read_stats(redis_client, Q))["counters"]["possible_duplicates"] == 1


@pytest.mark.parametrize(
    "failures",
    [
        [timed_out(), unavailable()],  # acted unanswered, then turned away: 1 extra event
        [reset(), timed_out()],  # both may have acted: up to 2
        [unavailable(), unavailable()],  # neither: none
    ],
    ids=["acted-then-refused", "acted-twice", "refused-twice"],
)
async def test_possible_duplicates_count_the_sends_that_may_have_acted_once_each(
    setup: tuple[Runtime, MemoryCrm], redis_client: Redis, failures: list[TransientCrmError]
) -> None:
    """The count is what the CRM may hold beyond one event per call: each failed send that
    may have acted, once, counted when the call is delivered; a send turned away adds none."""
    runtime, crm = setup
    may_have_acted = 0
    for n, err in enumerate(failures):
        (crm.after if err.may_have_acted else crm.before)["addevent"] = raising(err)
        may_have_acted += err.may_have_acted
        with pytest.raises(Retry):
            if n == 0:
                await run(runtime, record())
            else:
                await runtime.deliver(record(), "call:default:1.1")
    assert (await read_stats(redis_client, Q))["counters"]["possible_duplicates"] == 0
    assert (await runtime.deliver(record(), "call:default:1.1")).startswith("delivered")
    counters = (await read_stats(redis_client, Q))["counters"]
    assert counters["possible_duplicates"] == may_have_acted == len(crm.events) - 1


async def test_a_run_that_cannot_reach_the_ledger_is_retried_not_failed() -> None:
    """arq fails a job for good on any exception but Retry."""
    redis = Redis.from_url(f"redis://127.0.0.1:{free_port()}", socket_connect_timeout=0.5)
    runtime = Runtime(CONFIG, redis, {URL: MemoryCrm()}, rng=random.Random(0))
    try:
        with pytest.raises(Retry):
            await runtime.deliver(record(), "call:default:1.1")
    finally:
        await redis.aclose()


async def test_wrong_credentials_go_straight_to_the_dead_letters_with_the_reason(
    setup: tuple[Runtime, MemoryCrm], redis_client: Redis
) -> None:
    runtime, crm = setup
    crm.before["find"] = raising(
        PermanentCrmError(
            "CRM answered error (wrong login or password): Неправильный логин или пароль",
            kind="auth",
        )
    )
    result = await run(runtime, record())
    assert result.startswith("dead-lettered")
    [dead] = await dlq.list_dead(redis_client)
    assert dead.id == "call:default:1.1"
    assert "Неправильный логин или пароль" in dead.reason
    assert dead.reason.startswith("permanent: PermanentCrmError")
    assert [e["error"] for e in dead.errors] == ["PermanentCrmError"]
    assert dead.errors[0]["action"] == "dead letter"
    stats = await read_stats(redis_client, Q)
    assert stats["dead_letters"] == 1 and stats["pending"] == 0


async def test_transient_failures_beyond_the_budget_end_in_the_dead_letters(
    redis_client: Redis,
) -> None:
    crm = MemoryCrm()
    config = CONFIG.with_(retry=RetryPolicy(first_delay_s=0.1, max_delay_s=0.1, total_s=0.3))
    runtime = Runtime(config, redis_client, {URL: crm}, rng=random.Random(0))
    outcomes = []
    for _ in range(10):
        crm.before["find"] = raising(timed_out())
        try:
            outcomes.append(await run(runtime, record()))
            break
        except Retry:
            outcomes.append("retry")
            await asyncio.sleep(0.1)
    assert outcomes[0] == "retry"
    assert outcomes[-1].startswith("dead-lettered: gave up after")
    [dead] = await dlq.list_dead(redis_client)
    assert len(dead.errors) == len(outcomes)
    assert all(e["transient"] for e in dead.errors)


async def test_an_unreadable_record_is_dead_lettered_not_retried(
    setup: tuple[Runtime, MemoryCrm], redis_client: Redis
) -> None:
    runtime, _ = setup
    bad = record()
    del bad["direction"]
    assert (await run(runtime, bad)).startswith("dead-lettered: permanent: BadRecord")


async def test_requeue_after_a_fix_delivers_without_redoing_what_the_crm_has(
    setup: tuple[Runtime, MemoryCrm], redis_client: Redis
) -> None:
    runtime, crm = setup
    crm.before["addevent"] = raising(PermanentCrmError("request rejected: x", kind="rejected"))
    assert (await run(runtime, record())).startswith("dead-lettered")
    assert (
        await dlq.requeue(
            redis_client, "call:default:1.1", queue_name=Q, expires_s=60, ledger_ttl_s=60
        )
        == "queued"
    )
    assert await dlq.count(redis_client) == 0
    crm.calls.clear()
    assert (await runtime.deliver(record(), "call:default:1.1")).startswith("delivered")
    assert crm.calls == ["addevent"]
    assert len(crm.contacts["+79161234567"]) == 1


async def test_two_calls_from_one_new_number_at_once_make_one_contact_and_two_events(
    setup: tuple[Runtime, MemoryCrm],
) -> None:
    runtime, crm = setup
    results = await asyncio.gather(
        run(runtime, record("2.1")), run(runtime, record("2.2")), run(runtime, record("2.3"))
    )
    assert all(r.startswith("delivered") for r in results)
    assert crm.calls.count("addcont") == 1
    assert len(crm.contacts["+79161234567"]) == 1
    assert len(crm.events) == 3


async def test_a_run_takes_the_phone_lock_with_its_first_ledger_read(
    redis_client: Redis,
) -> None:
    lock = PhoneLock(keys.phone_lock("crm", "+79161234567"), b"token-1", 30.0)
    entry, locked = await load_and_begin(redis_client, "call:default:9.1", time.time(), 3600, lock)
    assert locked and not entry.exists
    assert await redis_client.get(lock.key) == b"token-1"
    assert 29_000 < await redis_client.pttl(lock.key) <= 30_000
    # another call from the same phone does not get it, and its run is begun all the same
    other = PhoneLock(lock.key, b"token-2", 30.0)
    _, locked = await load_and_begin(redis_client, "call:default:9.2", time.time(), 3600, other)
    assert not locked and await redis_client.get(lock.key) == b"token-1"
    assert (await load(redis_client, "call:default:9.2")).state == "running"
    await redis_client.delete(lock.key)
    # a call whose contact is known, or that is done, needs no lock and takes none
    await redis_client.hset(keys.ledger("call:default:9.2"), "contact_id", "7")  # type: ignore[misc]
    await redis_client.hset(keys.ledger("call:default:9.3"), "state", "done")  # type: ignore[misc]
    for job in ("call:default:9.2", "call:default:9.3"):
        _, locked = await load_and_begin(redis_client, job, time.time(), 3600, other)
        assert not locked and not await redis_client.exists(lock.key)


async def test_a_run_failing_before_its_crm_steps_leaves_the_phone_free(
    redis_client: Redis,
) -> None:
    misconfigured = Runtime(CONFIG, redis_client, {}, rng=random.Random(0))  # no CRM client
    assert (await run(misconfigured, record())).startswith("dead-lettered")
    assert [k async for k in redis_client.scan_iter(match=keys.phone_lock("*", "*"))] == []
    runtime = Runtime(CONFIG, redis_client, {URL: MemoryCrm()}, rng=random.Random(0))
    assert (await run(runtime, record("1.2"))).startswith("delivered")
    assert [k async for k in redis_client.scan_iter(match=keys.phone_lock("*", "*"))] == []


async def test_an_outbound_call_to_an_unknown_number_is_skipped_not_created(
    setup: tuple[Runtime, MemoryCrm], redis_client: Redis
) -> None:
    runtime, crm = setup
    out = record("3.1", direction="out", did=None)
    assert (await run(runtime, out)).startswith("skipped: no CRM contact has +79161234567")
    assert crm.calls == ["find"]
    assert (await load(redis_client, "call:default:3.1")).get("outcome") == "skipped"


async def test_several_matching_contacts_get_the_event_on_the_first(
    setup: tuple[Runtime, MemoryCrm],
) -> None:
    runtime, crm = setup
    crm.contacts["+79161234567"] = ["7", "8"]
    await run(runtime, record())
    assert crm.events[0][0] == "7"


async def test_a_run_that_would_outlast_the_job_timeout_retries_instead(
    redis_client: Redis,
) -> None:
    crm = MemoryCrm()
    runtime = Runtime(CONFIG, redis_client, {URL: crm}, rng=random.Random(0))

    async def slow() -> None:
        await asyncio.sleep(10)

    crm.before["find"] = slow
    with pytest.raises(Retry):
        await asyncio.wait_for(run(runtime, record()), CONFIG.job_timeout_s)
    [err] = await error_history(redis_client, "call:default:1.1")
    assert "took longer than" in err["message"]


async def test_the_ledger_key_names_are_stable(redis_client: Redis) -> None:
    assert keys.ledger("call:default:1.1") == "telefum:ledger:call:default:1.1"


async def test_redis_failing_right_after_the_crm_accepted_the_event_causes_no_duplicate(
    redis_server: EmbeddedRedis, redis_client: Redis
) -> None:
    crm = MemoryCrm()
    runtime = Runtime(
        CONFIG, redis_client, {URL: crm}, rng=random.Random(0), outbox=Outbox(redis_server.url)
    )

    async def redis_goes_away() -> None:
        redis_server.stop()

    crm.after["addevent"] = redis_goes_away
    await enqueue_call(redis_client, record(), queue_name=Q, expires_s=3600, ledger_ttl_s=3600)
    # the run that got the CRM's answer does not fail for Redis
    assert (await runtime.deliver(record(), "call:default:1.1")).startswith("delivered")
    assert runtime.outbox.pending == 1  # the CRM's answer, waiting for Redis
    assert runtime.outbox.holds("call:default:1.1")

    redis_server.start()
    async with asyncio.timeout(10):
        while runtime.outbox.pending:
            await asyncio.sleep(0.02)
    assert (await load(redis_client, "call:default:1.1")).state == "done"
    assert (await runtime.deliver(record(), "call:default:1.1")).startswith("nothing to do")
    assert len(crm.events) == 1
    await runtime.outbox.drain(1)


async def test_a_run_that_finds_another_runs_addevent_unrecorded_waits_before_resending(
    setup: tuple[Runtime, MemoryCrm], redis_client: Redis
) -> None:
    runtime, crm = setup
    jid = "call:default:1.1"
    await enqueue_call(redis_client, record(), queue_name=Q, expires_s=3600, ledger_ttl_s=3600)
    # what a run that was cut off mid-addevent leaves behind, a moment ago
    await redis_client.hset(
        keys.ledger(jid),
        mapping={
            "contact_id": "55",
            "contact_typecont": "contact",
            "event_sent_at": repr(time.time()),
        },
    )
    with pytest.raises(Retry):
        await runtime.deliver(record(), jid)
    assert crm.calls == []
    [err] = await error_history(redis_client, jid)
    assert err["error"] == "OutcomePending"

    settle = CONFIG.job_timeout_s + CONFIG.in_progress_grace_s
    await redis_client.hset(keys.ledger(jid), "event_sent_at", repr(time.time() - settle))
    assert (await runtime.deliver(record(), jid)).startswith("delivered")
    assert crm.events[0][0] == "55"
    assert (await read_stats(redis_client, Q))["counters"]["possible_duplicates"] == 1
