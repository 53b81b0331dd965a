"""Whose CRM login a call uses, and what happens when the CRM refuses it.

Lookups (``find``) use the service account; the contact and the event are written with the
agent's own login when ``[crm.agents."EXT"]`` has one, so the CRM credits the agent. The
agent's login refused: the call is written with the service account (logged, counted),
not dead-lettered. A dead letter names the login its fatal request used and whose it is,
never the password. Real processes: redis-server, ``telefum refcrm``, ``python -m worker``.
"""

from __future__ import annotations

import json
import random
import urllib.request
from collections.abc import Callable
from typing import Any

from redis.asyncio import Redis

from crm_client.errors import PermanentCrmError
from crm_client.types import Credentials
from tests.support.crm import RefCrmProcess
from tests.support.redis import WorkerProcess
from tests.test_pipeline import USERS, call, config, enqueue, settled
from tests.test_worker_jobs import URL, MemoryCrm, raising, record, run
from worker import dlq
from worker.jobs import Runtime
from worker.ledger import load
from worker.policy import CallPolicy, CrmTarget, RetryPolicy, WorkerConfig

Procs = Callable[..., WorkerProcess]
UNKNOWN = "+79035550101"  # no contact has it


def requests_of(crm: RefCrmProcess) -> dict[str, int]:
    """What the CRM was asked, by ``typereq`` (and ``auth_error``: logins it refused)."""
    with urllib.request.urlopen(crm.base_url + "_stats", timeout=5) as resp:
        counts: dict[str, int] = json.load(resp)["requests"]
    return counts


def with_agent(crm_url: str, agent_password: str, **kw: Any) -> WorkerConfig:
    """Agent 101 is ``ivan`` with ``agent_password``; the service account is right."""
    base = config(crm_url, **kw)
    return base.with_(
        crm=CrmTarget(
            crm_url,
            "bridge",
            USERS["bridge"],
            timeout_s=1.0,
            agents={"101": Credentials("ivan", agent_password)},
        )
    )


def outbound(call_id: str, phone: str = UNKNOWN, *, answered: bool = True) -> dict[str, Any]:
    rec = call(call_id, phone, extension="101")
    rec.update(
        direction="out",
        did=None,
        answered=answered,
        disposition="answered" if answered else "no-answer",
        answered_at=rec["answered_at"] if answered else None,
    )
    return rec


async def test_a_call_the_policy_skips_is_skipped_whatever_the_agents_password(
    redis_client: Redis, refcrm_process: Callable[..., RefCrmProcess], worker_procs: Procs
) -> None:
    """An outbound call to a number the CRM does not know is not logged (contacts are
    created for inbound calls only): the service account's lookup says so, and the agent's
    wrong password never comes into it. A call the settings skip outright costs no request."""
    crm = refcrm_process(USERS)
    policy = CallPolicy(log_unanswered_outbound=False, job_timeout_s=3.0)
    w = worker_procs(with_agent(crm.rest_url, "wrong-pw", calls=policy))
    await w.wait_ready(redis_client)
    await enqueue(redis_client, outbound("8.1"))
    stats = await settled(redis_client, 1)
    assert stats["dead_letters"] == 0 and stats["counters"]["skipped"] == 1
    skipped = await load(redis_client, "call:default:8.1")
    assert skipped.get("skip_reason").startswith(f"no CRM contact has {UNKNOWN}")
    assert requests_of(crm) == {"find": 1}  # as the service account: no login refused

    await enqueue(redis_client, outbound("8.2", answered=False))  # log_unanswered_outbound off
    stats = await settled(redis_client, 2)
    assert stats["counters"]["skipped"] == 2 and requests_of(crm) == {"find": 1}
    assert "wrong-pw" not in w.log()


async def test_a_refused_agent_login_writes_the_call_with_the_service_account_and_says_so(
    redis_client: Redis, refcrm_process: Callable[..., RefCrmProcess], worker_procs: Procs
) -> None:
    crm = refcrm_process(USERS)
    w = worker_procs(with_agent(crm.rest_url, "wrong-pw"))
    await w.wait_ready(redis_client)
    await enqueue(redis_client, call("9.1", extension="101"), call("9.2", extension="102"))
    stats = await settled(redis_client, 2, delivered=True)
    assert stats["dead_letters"] == 0
    assert stats["counters"]["agent_login_fallbacks"] == 1  # the call of 101, once
    assert {by for _, _, _, by in crm.events()} == {"bridge"}
    assert {by for _, _, _, by in crm.contacts()} == {"bridge"}
    assert requests_of(crm)["auth_error"] == 1  # ivan once: the event went straight on
    [warning] = [line for line in w.log().splitlines() if "refused" in line]
    assert 'the CRM refused login "ivan" (agent 101\'s own)' in warning
    assert "goes with the service account's login 'bridge'" in warning
    assert warning.endswith("call_id=9.1 pbx=default")
    assert "wrong-pw" not in w.log()


async def test_a_dead_letter_for_a_refused_login_names_the_login_and_whose_it_is(
    redis_url: str,
    redis_client: Redis,
    refcrm_process: Callable[..., RefCrmProcess],
    worker_procs: Procs,
) -> None:
    crm = refcrm_process(USERS)
    w = worker_procs(config(crm.rest_url, Credentials("bridge", "typo-pw")))
    await w.wait_ready(redis_client)
    await enqueue(redis_client, call("10.1", extension="101"))
    await settled(redis_client, 1)
    [dead] = await dlq.list_dead(redis_client)
    assert dead.login == 'login "bridge" (the service account)'
    assert dead.reason.endswith(
        'Неправильный логин или пароль; login "bridge" (the service account)'
    )
    [line] = [x for x in w.log().splitlines() if "call dead-lettered" in x]
    assert 'login "bridge" (the service account)' in line
    assert "typo-pw" not in w.log() + dead.reason


async def test_a_dead_letter_from_a_write_names_the_agents_own_login(
    redis_client: Redis,
) -> None:
    """The agent's login accepted, the event refused for another reason: the dead letter
    says the request was the agent's (a permanent answer other than a refused login is
    not fallen back on)."""
    crm = MemoryCrm()
    target = CrmTarget(
        URL, "bridge", "pw", timeout_s=1.0, agents={"101": Credentials("ivan", "ivan-pw")}
    )
    cfg = WorkerConfig(
        crm=target, calls=CallPolicy(job_timeout_s=3.0), retry=RetryPolicy(total_s=60)
    )
    runtime = Runtime(cfg, redis_client, {URL: crm}, rng=random.Random(0))
    crm.before["addevent"] = raising(
        PermanentCrmError(
            "CRM answered error (request rejected): Не указано id-контакта", kind="rejected"
        )
    )
    result = await run(runtime, record("11.1", extension="101"))
    assert result.endswith('Не указано id-контакта; login "ivan" (agent 101\'s own)')
    [dead] = await dlq.list_dead(redis_client)
    assert dead.login == 'login "ivan" (agent 101\'s own)'
    assert "ivan-pw" not in json.dumps(dead.to_json(), ensure_ascii=False)
