"""What the bridge relies on inside arq and panoramisk, read from the installed libraries.

Two places go below these libraries' public API, each as little as it can:

- ``worker.app.ClaimingWorker.start_jobs`` replaces arq's: one Lua script claims a poll's
  due jobs in one round trip (arq's own WATCH/MULTI costs every worker four round trips per
  job id; README "Performance"). It reads arq's semaphore, job count and task table, and
  calls ``run_job``.
- ``telephony.listener._AmiProtocol`` replaces panoramisk's ``data_received`` and
  ``connection_lost``, and uses its ``send``, ``handle_message`` and ``Action`` rules.

The versions are pinned: an upgrade fails here first, with what to re-check. The other
tests read the behaviour itself, so that a re-check after an upgrade is running this file.
"""

from __future__ import annotations

import asyncio
import socket
from collections import deque
from collections.abc import AsyncIterator
from importlib.metadata import version
from typing import Any

import pytest
from arq.connections import ArqRedis, RedisSettings, create_pool
from arq.constants import in_progress_key_prefix
from arq.worker import Worker, func
from panoramisk.actions import Action
from panoramisk.ami_protocol import AMIProtocol
from panoramisk.message import Message as PanoramiskMessage

from worker.app import ClaimingWorker

RECHECK_ARQ = (
    "re-check worker/app.py ClaimingWorker.start_jobs against arq/worker.py (Worker.__init__: "
    "sem, job_counter, tasks; _poll_iteration; start_jobs; run_job; "
    "_release_sem_dec_counter_on_complete) and its Lua against arq's claim checks, run "
    "this file and `make bench`, then update the pin here and in pyproject.toml"
)
RECHECK_PANORAMISK = (
    "re-check telephony/listener.py _AmiProtocol and _Action against panoramisk/"
    "ami_protocol.py (send, handle_message, data_received, connection_lost, close) and "
    "actions.py (Action.add_message, multi, completed), run this file and "
    "tests/test_listener.py, then update the pin here and in pyproject.toml"
)


def test_arq_is_the_version_claiming_worker_was_checked_against() -> None:
    installed = version("arq")
    assert installed == "0.28.0", f"arq is {installed}, not 0.28.0: {RECHECK_ARQ}"


def test_panoramisk_is_the_version_the_listener_was_checked_against() -> None:
    installed = version("panoramisk")
    assert installed == "1.4", f"panoramisk is {installed}, not 1.4: {RECHECK_PANORAMISK}"


# --- arq ---------------------------------------------------------------------------------


async def job(ctx: dict[str, Any]) -> str:
    return "done"


@pytest.fixture
async def arq_pool(redis_url: str) -> AsyncIterator[ArqRedis]:
    pool = await create_pool(RedisSettings.from_dsn(redis_url))
    try:
        yield pool
    finally:
        await pool.aclose()


def make_worker(cls: type[Worker], pool: ArqRedis, queue: str, max_jobs: int = 10) -> Worker:
    return cls(
        functions=[func(job, name="job")],
        redis_pool=pool,
        queue_name=queue,
        handle_signals=False,
        max_jobs=max_jobs,
        keep_result=0,
    )


async def queue_jobs(pool: ArqRedis, queue: str) -> list[bytes]:
    """Job ids a poll may see: due (two), deferred, already running elsewhere, gone."""
    for name, defer in [("due", None), ("due-2", None), ("deferred", 60), ("running", None)]:
        job_id = f"{queue}:{name}"  # arq's job keys are not per queue
        assert await pool.enqueue_job("job", _job_id=job_id, _queue_name=queue, _defer_by=defer)
    await pool.psetex(f"{in_progress_key_prefix}{queue}:running", 60_000, b"1")
    return [f"{queue}:{name}".encode() for name in ("due", "deferred", "running", "gone", "due-2")]


async def slots_free(worker: Worker) -> int:
    """How many times the worker's semaphore can be taken without waiting (then given back)."""
    taken = 0
    while taken < worker.max_jobs + 5:
        try:
            await asyncio.wait_for(worker.sem.acquire(), 0.01)
        except TimeoutError:
            break
        taken += 1
    for _ in range(taken):
        worker.sem.release()
    return taken


@pytest.mark.parametrize("max_jobs", [10, 1], ids=["room", "one-slot"])
async def test_claiming_worker_starts_exactly_the_jobs_arqs_own_start_jobs_would(
    arq_pool: ArqRedis, max_jobs: int
) -> None:
    started: dict[str, set[str]] = {}
    for cls in (Worker, ClaimingWorker):
        queue = f"contract:{cls.__name__}"
        ids = await queue_jobs(arq_pool, queue)
        worker = make_worker(cls, arq_pool, queue, max_jobs)
        assert await slots_free(worker) == max_jobs + 1, RECHECK_ARQ  # BoundedSemaphore(n + 1)
        await worker.start_jobs(ids)
        started[cls.__name__] = {i.removeprefix(f"{queue}:") for i in worker.tasks}
        await asyncio.gather(*worker.tasks.values())
        # arq's completion callback gives back what start_jobs took
        assert worker.job_counter == 0, RECHECK_ARQ
        assert await slots_free(worker) == max_jobs + 1, RECHECK_ARQ
        assert worker.jobs_complete == len(started[cls.__name__]), RECHECK_ARQ
    assert started["ClaimingWorker"] == started["Worker"], RECHECK_ARQ
    assert started["Worker"] == ({"due", "due-2"} if max_jobs > 1 else {"due"})


async def test_arq_polls_for_jobs_only_while_a_slot_is_free(arq_pool: ArqRedis) -> None:
    """ClaimingWorker.start_jobs counts on it: it never waits for a slot."""
    calls: list[list[bytes]] = []

    class Watching(Worker):
        async def start_jobs(self, job_ids: list[bytes]) -> None:
            calls.append(job_ids)

    queue = "contract:poll"
    await arq_pool.enqueue_job("job", _job_id="due", _queue_name=queue)
    worker = make_worker(Watching, arq_pool, queue, max_jobs=2)
    worker.job_counter = 2  # full
    await worker._poll_iteration()
    assert calls == [], RECHECK_ARQ
    worker.job_counter = 1
    await worker._poll_iteration()
    assert calls == [[b"due"]], RECHECK_ARQ


# --- panoramisk --------------------------------------------------------------------------


async def protocol(factory: type[AMIProtocol] = AMIProtocol) -> tuple[AMIProtocol, socket.socket]:
    """panoramisk's protocol on one end of a real socket pair; the other end for the test."""
    ours, theirs = socket.socketpair()
    _, proto = await asyncio.get_running_loop().create_connection(factory, sock=ours)
    proto.encoding = "utf-8"
    return proto, theirs


async def test_panoramisk_send_writes_the_action_in_the_protocols_encoding_and_awaits_it() -> None:
    proto, peer = await protocol()
    action = Action({"Action": "Originate", "CallerID": "Иван <79161234567>", "Async": "true"})
    future = proto.send(action, as_list=False)
    peer.setblocking(False)
    await asyncio.sleep(0.05)
    assert peer.recv(65536) == str(action).encode("utf-8"), RECHECK_PANORAMISK
    assert proto.responses[action.id] is action and not future.done(), RECHECK_PANORAMISK
    proto.transport.abort()
    peer.close()


def reply(**headers: str) -> PanoramiskMessage:
    return PanoramiskMessage(headers)


class Recording(Action):
    """An Action subclass, as the listener's: panoramisk must call its add_message."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.seen: list[tuple[int, bool]] = []

    def add_message(self, message: PanoramiskMessage) -> bool | None:
        done: bool | None = super().add_message(message)
        self.seen.append((len(self.responses), bool(done)))
        return done


# action fields, as_list, the answer's messages, the result panoramisk completes it with
ANSWERS = [
    (
        {"Action": "Login"},
        False,
        [reply(Response="Success", Message="Authentication accepted")],
        "message",
    ),
    (
        {"Action": "Login"},
        False,
        [reply(Response="Error", Message="Authentication failed")],
        "message",
    ),
    ({"Action": "Ping"}, False, [reply(Response="Success", Ping="Pong")], "message"),
    (
        {"Action": "Getvar"},
        False,
        [reply(Response="Success", Variable="FROM_DID", Value="7495")],
        "message",
    ),
    (
        {"Action": "Originate", "Async": "true"},
        False,
        [reply(Response="Success", Message="Originate successfully queued")],
        "message",
    ),
    (
        {"Action": "CoreShowChannels"},
        None,
        [
            reply(Response="Success", EventList="start", Message="Channels will follow"),
            reply(Event="CoreShowChannel", Channel="PJSIP/101-1"),
            reply(Event="CoreShowChannel", Channel="PJSIP/102-2"),
            reply(Event="CoreShowChannelsComplete", EventList="Complete", ListItems="2"),
        ],
        "list",
    ),
    (
        {"Action": "CoreShowChannels"},
        None,
        [reply(Response="Error", Message="Permission denied")],
        "message",
    ),
]


@pytest.mark.parametrize(
    ("fields", "as_list", "messages", "result"),
    ANSWERS,
    ids=[
        "login",
        "login-rejected",
        "ping",
        "getvar",
        "originate",
        "coreshowchannels",
        "coreshowchannels-refused",
    ],
)
async def test_panoramisk_matches_each_answer_to_its_action_and_completes_it_in_order(
    fields: dict[str, str], as_list: bool | None, messages: list[PanoramiskMessage], result: str
) -> None:
    proto, peer = await protocol()
    action = Recording(fields, as_list=as_list)
    proto.send(action, as_list=as_list)
    for i, msg in enumerate(messages):
        msg["ActionID"] = action.id
        proto.handle_message(msg)
        last = i == len(messages) - 1
        # told at once, inside handle_message, and forgotten the moment it is complete
        assert action.seen[-1] == (i + 1, last), RECHECK_PANORAMISK
        assert (action.id in proto.responses) is not last, RECHECK_PANORAMISK
    answer = action.future.result()
    if result == "list":
        assert answer == messages, RECHECK_PANORAMISK
    else:
        assert answer is messages[0], RECHECK_PANORAMISK
        assert answer.success is (messages[0]["Response"] == "Success"), RECHECK_PANORAMISK
    proto.transport.abort()
    peer.close()


class Dispatched:
    """Stands where panoramisk expects its Manager (``factory``)."""

    save_stream = None

    def __init__(self) -> None:
        self.events: list[PanoramiskMessage] = []
        self.awaiting_actions: deque[Action] = deque()
        self.forgetable_actions = ("ping", "login")
        self.lost: list[object] = []

    def dispatch(self, message: PanoramiskMessage) -> None:
        self.events.append(message)

    def connection_lost(self, exc: object) -> None:
        self.lost.append(exc)


async def test_panoramisk_still_drops_a_utf8_character_split_across_two_reads() -> None:
    """Why _AmiProtocol.data_received is ours. If this fails, panoramisk decodes whole
    messages now: its data_received may do, if it can keep AmiCodec's event filter (the
    tracker bench, bench/tracker_bench.py, says what that filter is worth)."""
    proto, peer = await protocol()
    proto.factory = Dispatched()
    wire = "Event: Newchannel\r\nCallerIDName: Иван\r\n\r\n".encode()
    cut = wire.index("в".encode()) + 1  # inside "в"
    proto.data_received(wire[:cut])
    proto.data_received(wire[cut:])
    (event,) = proto.factory.events
    assert event["CallerIDName"] == "Иан", RECHECK_PANORAMISK
    proto.transport.abort()
    peer.close()


async def test_panoramisk_keeps_unanswered_actions_for_re_sending_when_the_link_drops() -> None:
    """Why _AmiProtocol.connection_lost is ours: panoramisk's hands an unanswered Originate
    to its Manager, which sends it again after the next login (the call rings twice), and
    leaves its future waiting."""
    proto, peer = await protocol()
    proto.factory = Dispatched()
    originate = Action({"Action": "Originate", "Async": "true"})
    proto.send(originate, as_list=False)
    proto.connection_lost(None)
    assert list(proto.factory.awaiting_actions) == [originate], RECHECK_PANORAMISK
    assert not originate.future.done(), RECHECK_PANORAMISK
    assert proto.factory.lost == [None], RECHECK_PANORAMISK
    peer.close()
