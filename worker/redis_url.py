"""Which Redis: a plain URL, or a primary that Redis Sentinel names.

``[redis] url`` is either what redis-py's ``Redis.from_url`` reads (``redis://``,
``rediss://``, ``unix://``), or, for a Redis that must not be a single point of failure::

    redis+sentinel://[user:password@]host1:26379[,host2:26379...]/<primary>[/<db>]

the form Celery and Kombu read: the sentinels to ask, the name they monitor the primary
by (``sentinel monitor <primary> ...`` in sentinel.conf) and the database number. The
password in the user part is the primary's (``requirepass``; its replicas need the same
as ``masterauth``). The sentinels themselves are asked without one (arq, which the
workers run on, has no way to give them one): keep them on the private network.

Every part of the bridge gets its Redis client here (:func:`connect`) and the worker its
arq settings (:func:`arq_settings`). With Sentinel each new connection asks the sentinels
where the primary is now; a failover is a connection error for a few seconds (the
listener's spool holds finished calls meanwhile, the worker reconnects), then work goes
on against the new primary. The listener also waits until a replica has each batch of
calls (``WAIT``, :func:`replicas_to_wait_for`) before it forgets them from its spool, so
a primary that dies right after taking them loses none: they are handed over again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from arq.connections import RedisSettings
from redis.asyncio import Redis
from redis.asyncio.sentinel import Sentinel

__all__ = [
    "SENTINEL_SCHEME",
    "SentinelUrl",
    "arq_settings",
    "connect",
    "parse_sentinel",
    "replicas_to_wait_for",
]

SENTINEL_SCHEME = "redis+sentinel"
DEFAULT_SENTINEL_PORT = 26379


@dataclass(frozen=True)
class SentinelUrl:
    """A ``redis+sentinel://`` URL, taken apart."""

    sentinels: tuple[tuple[str, int], ...]
    primary: str
    db: int = 0
    username: str | None = None
    password: str | None = None  # the primary's


def parse_sentinel(url: str) -> SentinelUrl | None:
    """The parts of a ``redis+sentinel://`` URL; None for any other URL. ValueError says
    what is wrong with a Sentinel URL."""
    if not url.startswith(SENTINEL_SCHEME + "://"):
        return None
    parts = urlsplit(url)
    userinfo, _, hosts = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    sentinels = []
    for host in hosts.split(","):
        name, sep, port = host.strip().rpartition(":")
        if not sep:
            name, port = host.strip(), str(DEFAULT_SENTINEL_PORT)
        if not name or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f'expected "host:port" of a sentinel, got "{host}"')
        sentinels.append((name.strip("[]"), int(port)))
    path = [p for p in parts.path.split("/") if p]
    if not path or len(path) > 2 or (len(path) == 2 and not path[1].isdigit()):
        raise ValueError(
            "expected the name of the primary the sentinels monitor and an optional "
            'database after the hosts: "redis+sentinel://host:26379/mymaster/0"'
        )
    if parts.query:
        raise ValueError(f'expected no parameters after the primary, got "?{parts.query}"')
    return SentinelUrl(
        sentinels=tuple(sentinels),
        primary=unquote(path[0]),
        db=int(path[1]) if len(path) == 2 else 0,
        username=unquote(user) or None,
        password=unquote(password) or None,
    )


def connect(url: str, **kwargs: Any) -> Redis:
    """A client of the Redis at ``url`` (``socket_timeout`` and the like in ``kwargs``).
    Connects lazily, as ``Redis.from_url`` does."""
    s = parse_sentinel(url)
    if s is None:
        return Redis.from_url(url, **kwargs)
    sockets = {k: v for k, v in kwargs.items() if k.startswith("socket_")}
    sentinel = Sentinel(list(s.sentinels), sentinel_kwargs=sockets)
    client: Redis = sentinel.master_for(
        s.primary, db=s.db, username=s.username, password=s.password, **kwargs
    )
    return client


def arq_settings(url: str) -> RedisSettings:
    """arq's connection settings for ``url`` (its ``RedisSettings(sentinel=True)`` for a
    Sentinel URL; arq then asks the sentinels itself)."""
    s = parse_sentinel(url)
    if s is None:
        return RedisSettings.from_dsn(url)
    return RedisSettings(
        host=list(s.sentinels),
        sentinel=True,
        sentinel_master=s.primary,
        database=s.db,
        username=s.username,
        password=s.password,
    )


def replicas_to_wait_for(url: str) -> int:
    """How many replicas must have a batch of calls before the listener forgets it: one
    behind Sentinel (a failover promotes a replica), none for a lone Redis."""
    return 1 if parse_sentinel(url) is not None else 0
