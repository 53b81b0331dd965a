"""``[redis] url`` naming a Sentinel-managed primary: the URL, and a real primary, replica
and sentinel (``redis-server`` and ``redis-server --sentinel`` processes) failing over
under the bridge."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest
from arq.connections import create_pool
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from tests.support.crm import REPO
from tests.support.redis import inbound_call
from tests.support.sentinel import PRIMARY_NAME, SentinelSet
from worker.policy import DEFAULT_QUEUE
from worker.queue import enqueue_call
from worker.redis_url import RedisAddress, connect
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
