"""``[redis] url`` naming a Sentinel-managed primary: the URL, and a real primary, replica
and sentinel (``redis-server`` and ``redis-server --sentinel`` processes) failing over
under the bridge."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time

import pytest
from arq.connections import create_pool
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from tests.support.crm import REPO
from tests.support.redis import inbound_call
from tests.support.sentinel import PRIMARY_NAME, SentinelSet
from worker import ledger
from worker.app import WorkerService
from worker.policy import DEFAULT_QUEUE, CrmTarget, WorkerConfig
from worker.queue import enqueue_call
from worker.redis_url import RedisAddress, connect
from worker.replicas import ReplicaWait
from worker.stats import read_stats


def test_a_sentinel_url_names_the_sentinels_the_primary_and_the_database() -> None:
    url = "redis+sentinel://bridge:s3cr%40t@10.0.0.1:26379,10.0.0.2/mymaster/2"
    address = RedisAddress.parse(url)
    assert (address.sentinels, address.primary, address.db) == (
        (("10.0.0.1", 26379), ("10.0.0.2", 26379)),
        "mymaster",
        2,
    )
    assert (address.username, address.password) == ("bridge", "s3cr@t")  # percent-decoded
    assert RedisAddress.parse(address.url()) == address
    assert address.replicas_to_wait_for == 1
    settings = address.arq_settings()
    assert (settings.sentinel, settings.host, settings.sentinel_master, settings.database) == (
        True,
        [("10.0.0.1", 26379), ("10.0.0.2", 26379)],
        "mymaster",
        2,
    )
    assert (settings.username, settings.password) == ("bridge", "s3cr@t")
    plain = RedisAddress.parse("redis://127.0.0.1:6379/0")
    assert not plain.sentinels and plain.replicas_to_wait_for == 0


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("redis+sentinel://10.0.0.1:26379", "the name of the primary"),
        ("redis+sentinel://10.0.0.1:port/m", 'expected "host:port" of a sentinel'),
        ("redis+sentinel://10.0.0.1/m/zero", "the name of the primary"),
        ("redis+sentinel://10.0.0.1/m?db=1", "expected no parameters"),
    ],
)
def test_a_sentinel_url_missing_a_part_says_which(url: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        RedisAddress.parse(url)


async def test_a_client_follows_the_primary_through_a_failover(
    sentinel_redis: SentinelSet,
) -> None:
    client = connect(sentinel_redis.url, socket_connect_timeout=0.5, socket_timeout=1)
    arq = await create_pool(RedisAddress.parse(sentinel_redis.url).arq_settings())
    try:
        await client.set("before", "1")
        await client.execute_command("WAIT", 1, 1000)
        old = sentinel_redis.kill_primary()
        new = await asyncio.to_thread(sentinel_redis.wait_failover, old)
        for _ in range(50):  # the first command after the failover may meet the dead socket
            try:
                got = await client.get("before")
                break
            except (RedisConnectionError, RedisTimeoutError):
                await asyncio.sleep(0.1)
        assert got == b"1"  # replicated before the crash (WAIT)
        await client.set("after", "2")
        assert (await client.connection_pool.get_master_address())[1] == new  # type: ignore[attr-defined]
        assert await arq.get("after") == b"2"
        assert PRIMARY_NAME in sentinel_redis.url
    finally:
        await client.aclose()
        await arq.aclose()


async def test_telefum_queue_retry_now_reaches_a_redis_behind_sentinel(
    sentinel_redis: SentinelSet,
) -> None:
    """Ops commands open Redis the way the bridge does (worker/redis_url.py): the one
    added with CRM health read a Sentinel URL as a plain one and failed."""
    client = connect(sentinel_redis.url)
    try:
        await enqueue_call(
            client,
            inbound_call("1.1"),
            queue_name=DEFAULT_QUEUE,
            expires_s=3600,
            ledger_ttl_s=3600,
            defer_s=600,
        )
        done = await asyncio.to_thread(
            subprocess.run,
            [
                sys.executable,
                "-m",
                "telefum.cli",
                "queue",
                "retry-now",
                "--redis-url",
                sentinel_redis.url,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO,
        )
        assert done.returncode == 0, done.stderr
        assert "1 waiting call(s) made due now" in done.stdout
        assert (await read_stats(client))["queue"]["due"] == 1
    finally:
        await client.aclose()


def _primary(sentinel_redis: SentinelSet) -> Redis:
    return Redis(port=sentinel_redis.primary_port(), socket_timeout=5)


async def test_the_wait_covers_writes_another_connection_made(
    sentinel_redis: SentinelSet, caplog: pytest.LogCaptureFixture
) -> None:
    """WAIT counts only its own connection's writes, and a pooled client sends each command
    on any free connection: a WAIT on a connection whose own last write the replica has
    returned at once, confirming nothing of a ledger write made on another one."""
    waiter, writer = _primary(sentinel_redis), _primary(sentinel_redis)
    replica = sentinel_redis.procs["b"]
    try:
        await waiter.set("earlier", "1")
        assert await waiter.execute_command("WAIT", 1, 2000) == 1
        replica.send_signal(signal.SIGSTOP)  # the replica hangs: nothing new reaches it
        await writer.hset("telefum:ledger:call:pbx:1", "event_id", "ev1")
        wait = ReplicaWait(1, timeout_s=0.5)
        t0 = time.monotonic()
        assert await wait(waiter, "the ledger of call:pbx:1", "it could be sent again") is False
        assert time.monotonic() - t0 >= 0.45  # it waited, on the waiter's connection
        assert "no Redis replica confirmed the ledger of call:pbx:1 within 0.5 s" in caplog.text
        t0 = time.monotonic()  # a replica that did not answer is not waited for by every write
        assert await wait(waiter, "the next", "-") is False
        assert time.monotonic() - t0 < 0.2
        replica.send_signal(signal.SIGCONT)
        assert await ReplicaWait(1, timeout_s=5)(waiter, "the ledger", "-") is True
        on_replica = Redis(port=sentinel_redis.ports["b"], socket_timeout=5)
        try:
            assert await on_replica.hget("telefum:ledger:call:pbx:1", "event_id") == b"ev1"
        finally:
            await on_replica.aclose()
    finally:
        replica.send_signal(signal.SIGCONT)
        await waiter.aclose()
        await writer.aclose()


async def test_a_workers_ledger_writes_wait_for_the_replica_behind_sentinel(
    sentinel_redis: SentinelSet,
) -> None:
    """A CRM write recorded on a primary that dies before its replica has the record is
    sent again by the next run: behind Sentinel the record waits for the replica."""
    redis = _primary(sentinel_redis)
    replica = sentinel_redis.procs["b"]
    wait = WorkerService(
        WorkerConfig(crm=CrmTarget("http://127.0.0.1:9/rest", "u", "p")), sentinel_redis.url
    ).replicas
    assert wait.replicas == 1  # from the redis+sentinel:// URL; a plain URL: 0
    wait.timeout_s = 0.5
    try:
        entry = await ledger.load(redis, "call:pbx:2")
        led = ledger.CallLedger(redis, entry, 3600, replicas=wait)
        replica.send_signal(signal.SIGSTOP)
        t0 = time.monotonic()
        await led.contact_sending(time.time())
        assert time.monotonic() - t0 >= 0.45
        assert (await ledger.load(redis, "call:pbx:2")).get("contact_sent_at")  # taken anyway
    finally:
        replica.send_signal(signal.SIGCONT)
        await redis.aclose()
