"""One Redis URL, one meaning: the listener's clients and the worker's arq pool read it alike,
whatever characters the password has."""

from __future__ import annotations

import asyncio
from pathlib import Path
from urllib.parse import quote

import pytest
from redis.asyncio import Redis

from tests.support.crm import RunningRefCrm
from tests.support.redis import inbound_call
from tests.test_pipeline import config
from tests.test_worker_app import wait_until
from worker import stats
from worker.app import WorkerService
from worker.embedded_redis import EmbeddedRedis
from worker.handoff import Handoff
from worker.redis_url import RedisAddress

# every character a URL must percent-encode in a password, and some it need not
PASSWORD = "p@ss:w/rd%41?#&=+ пароль"


def test_the_password_is_percent_decoded_as_utf8() -> None:
    url = f"redis://user%40x:{quote(PASSWORD, safe='')}@redis.example:6380/2"
    address = RedisAddress.parse(url)
    assert (address.username, address.password) == ("user@x", PASSWORD)
    assert (address.host, address.port, address.db) == ("redis.example", 6380, 2)
    assert RedisAddress.parse(address.url()) == address
    assert PASSWORD not in repr(address)
    settings = address.arq_settings()
    assert (settings.password, settings.username, settings.database) == (PASSWORD, "user@x", 2)


def test_unix_sockets_tls_and_db_in_the_query_are_read() -> None:
    unix = RedisAddress.parse("unix://:pw@/run/telefum/redis.sock?db=3")
    assert (unix.unix_socket_path, unix.password, unix.db) == ("/run/telefum/redis.sock", "pw", 3)
    assert RedisAddress.parse(unix.url()) == unix
    assert RedisAddress.parse("rediss://h").ssl is True
    assert RedisAddress.parse("redis://h?db=5").db == 5


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://h:6379", "redis://"),
        ("redis://h:port/0", "not a Redis URL"),
        ("redis://h/zero", "is a number"),
        ("redis://h/0?socket_timeout=1", "unsupported Redis URL option"),
        ("unix://", "socket's path"),
    ],
)
def test_a_url_no_client_could_use_is_refused_by_name(url: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        RedisAddress.parse(url)


def test_the_refusal_never_shows_the_password() -> None:
    with pytest.raises(ValueError) as err:
        RedisAddress.parse(f"redis://:{quote(PASSWORD, safe='')}@h/zero")
    assert "rd%41" not in str(err.value) and PASSWORD not in str(err.value)


async def test_the_listener_and_a_worker_both_log_in_with_a_percent_encoded_password(
    tmp_path: Path, refcrm: RunningRefCrm
) -> None:
    """The hand-over (redis-py) and the worker (arq) on a real redis-server whose password
    has every character a URL must encode: the call reaches the CRM."""
    server = EmbeddedRedis(tmp_path / "redis", password=PASSWORD).start()
    url = server.url
    assert quote(PASSWORD, safe="") in url
    client = RedisAddress.parse(url).client(socket_connect_timeout=1, socket_timeout=5)
    handoff = Handoff(url, tmp_path / "spool", retry_max_s=0.2)
    worker = WorkerService(
        config(refcrm.rest_url, refcrm.creds()), url, worker_id="encoded", handle_signals=False
    )
    task = asyncio.create_task(worker.run(retry_max_s=0.2))
    try:
        await handoff.start()
        handoff.submit(inbound_call("1.1", "+79161234500", extension="102"))
        assert await handoff.wait_drained(10), handoff.last_error
        await wait_until(lambda: _succeeded(client), timeout_s=15)
        assert refcrm.count_events() == 1
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await handoff.close()
        await client.aclose()
        server.cleanup()


async def _succeeded(redis: Redis) -> bool:
    return bool((await stats.read_stats(redis))["counters"]["succeeded"] >= 1)
