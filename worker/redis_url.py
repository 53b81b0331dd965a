"""A Redis URL -> the connection settings of every Redis client of the bridge.

The listener's hand-over, the service's and the ops commands' clients (redis-py) and the
worker's pool (arq) all connect through :class:`RedisAddress` (:func:`connect` for a
redis-py client, :meth:`RedisAddress.arq_settings` for arq), so one URL means the same
server and the same credentials to all of them. ``[redis] url`` is one of::

    redis://[[user]:password@]host[:port][/db]     rediss://...: the same over TLS
    unix://[[user]:password@]/path/to/redis.sock[?db=N]
    redis+sentinel://[[user]:password@]host1:26379[,host2:26379...]/<primary>[/<db>]

User and password are percent-decoded as UTF-8 (``quote(password, safe="")`` writes one):
arq's ``RedisSettings.from_dsn`` does not decode them while redis-py's ``from_url`` does, so
a password with ``@``, ``:``, ``/``, ``%`` or non-ASCII letters, percent-encoded as a URL
must carry it, worked for the listener and was refused to the workers.

``redis+sentinel://`` names a Redis that must not be a single point of failure, in the form
Celery and Kombu read: the sentinels to ask, the name they monitor the primary by
(``sentinel monitor <primary> ...`` in sentinel.conf) and the database number. The password
is the primary's (``requirepass``; its replicas need the same as ``masterauth``). The
sentinels themselves are asked without one (arq, which the workers run on, has no way to
give them one): keep them on the private network. With Sentinel each new connection asks
the sentinels where the primary is now; a failover is a connection error for a few seconds
(the listener's spool holds finished calls meanwhile, the worker reconnects), then work goes
on against the new primary. The listener also waits until a replica has each batch of calls
(``WAIT``, :attr:`RedisAddress.replicas_to_wait_for`) before it forgets them from its spool,
so a primary that dies right after taking them loses none: they are handed over again.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from arq.connections import RedisSettings
from redis.asyncio import Redis
from redis.asyncio.sentinel import Sentinel

SENTINEL_SCHEME = "redis+sentinel"
SCHEMES = ("redis", "rediss", "unix", SENTINEL_SCHEME)
DEFAULT_SENTINEL_PORT = 26379


@dataclass(frozen=True)
class RedisAddress:
    """Where a Redis is and how to log in to it; the password is never in ``repr``.

    ``sentinels`` (and ``primary``, the name they know it by) set: the Redis is whichever
    server those sentinels name as the primary now; ``host`` and ``port`` are then unused.
    """

    host: str = "127.0.0.1"
    port: int = 6379
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ssl: bool = False
    unix_socket_path: str | None = None
    sentinels: tuple[tuple[str, int], ...] = ()
    primary: str | None = None

    @classmethod
    def parse(cls, url: str) -> RedisAddress:
        """ValueError, naming what is wrong but never the password, for a URL we cannot use."""
        try:
            parts = urlsplit(url)
            port = None if parts.scheme == SENTINEL_SCHEME else parts.port  # "h1:1,h2:2"
        except ValueError as err:  # a port that is no number, a bad IPv6 literal
            raise ValueError(f"not a Redis URL: {err}") from None
        if parts.scheme not in SCHEMES:
            raise ValueError(
                f"expected a URL starting with redis://, rediss://, unix:// or "
                f"{SENTINEL_SCHEME}://, got {parts.scheme + '://' if parts.scheme else 'no scheme'}"
            )
        if parts.scheme == SENTINEL_SCHEME:
            return cls._parse_sentinel(url)
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        unknown = sorted(set(query) - {"db"})
        if unknown:
            raise ValueError(f"unsupported Redis URL option(s): {', '.join(unknown)}")
        db_text = query.get("db")
        if db_text is None and parts.scheme != "unix":
            db_text = unquote(parts.path).strip("/") or "0"
        try:
            db = int(db_text or "0")
        except ValueError:
            raise ValueError(f"the database of a Redis URL is a number, got {db_text!r}") from None
        user = unquote(parts.username) if parts.username else None
        password = unquote(parts.password) if parts.password is not None else None
        if parts.scheme == "unix":
            path = unquote(parts.path)
            if not path:
                raise ValueError("a unix:// Redis URL needs the socket's path")
            return cls(db=db, username=user, password=password or None, unix_socket_path=path)
        return cls(
            host=parts.hostname or "127.0.0.1",
            port=port or 6379,
            db=db,
            username=user,
            password=password or None,
            ssl=parts.scheme == "rediss",
        )

    @classmethod
    def _parse_sentinel(cls, url: str) -> RedisAddress:
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
                f'database after the hosts: "{SENTINEL_SCHEME}://host:26379/mymaster/0"'
            )
        if parts.query:
            raise ValueError(f'expected no parameters after the primary, got "?{parts.query}"')
        return cls(
            db=int(path[1]) if len(path) == 2 else 0,
            username=unquote(user) or None,
            password=unquote(password) or None,
            sentinels=tuple(sentinels),
            primary=unquote(path[0]),
        )

    @property
    def replicas_to_wait_for(self) -> int:
        """How many replicas must have a batch of calls before the listener forgets it: one
        behind Sentinel (a failover promotes a replica), none for a lone Redis."""
        return 1 if self.sentinels else 0

    def with_password(self, password: str | None) -> RedisAddress:
        return replace(self, password=password)

    def url(self) -> str:
        """The URL again, password percent-encoded (what :meth:`parse` reads back)."""
        auth = ""
        if self.username or self.password:
            auth = quote(self.username or "", safe="")
            if self.password:
                auth += ":" + quote(self.password, safe="")
            auth += "@"
        if self.sentinels:
            hosts = ",".join(f"{_host(h)}:{p}" for h, p in self.sentinels)
            primary = quote(self.primary or "", safe="")
            return f"{SENTINEL_SCHEME}://{auth}{hosts}/{primary}/{self.db}"
        if self.unix_socket_path:
            return f"unix://{auth}{quote(self.unix_socket_path)}?db={self.db}"
        scheme = "rediss" if self.ssl else "redis"
        return f"{scheme}://{auth}{_host(self.host)}:{self.port}/{self.db}"

    def client(
        self, *, socket_connect_timeout: float, socket_timeout: float, **kwargs: Any
    ) -> Redis:
        """A redis-py asyncio client (bytes replies unless ``decode_responses=True``); it
        connects lazily, behind Sentinel to whichever server is the primary then."""
        sockets: dict[str, Any] = {
            "socket_connect_timeout": socket_connect_timeout,
            "socket_timeout": socket_timeout,
        }
        if self.sentinels:
            sentinel = Sentinel(list(self.sentinels), sentinel_kwargs=sockets)
            client: Redis = sentinel.master_for(
                self.primary or "",
                db=self.db,
                username=self.username,
                password=self.password,
                **sockets,
                **kwargs,
            )
            return client
        if self.unix_socket_path:
            return Redis(
                unix_socket_path=self.unix_socket_path,
                db=self.db,
                username=self.username,
                password=self.password,
                **sockets,
                **kwargs,
            )
        return Redis(
            host=self.host,
            port=self.port,
            db=self.db,
            username=self.username,
            password=self.password,
            ssl=self.ssl,
            **sockets,
            **kwargs,
        )

    def arq_settings(self, *, conn_timeout: float = 1.0) -> RedisSettings:
        """arq's settings for the same server (behind Sentinel its ``sentinel=True``: arq then
        asks the sentinels itself); arq itself never retries the connection
        (``conn_retries=0``): the worker does, with a log line (worker/app.py)."""
        if self.sentinels:
            return RedisSettings(
                host=list(self.sentinels),
                sentinel=True,
                sentinel_master=self.primary or "",
                database=self.db,
                username=self.username,
                password=self.password,
                conn_timeout=int(conn_timeout) or 1,
                conn_retries=0,
            )
        return RedisSettings(
            host=self.host,
            port=self.port,
            unix_socket_path=self.unix_socket_path,
            database=self.db,
            username=self.username,
            password=self.password,
            ssl=self.ssl,
            conn_timeout=int(conn_timeout) or 1,
            conn_retries=0,
        )


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def connect(
    url: str, *, socket_connect_timeout: float = 1.0, socket_timeout: float = 5.0, **kwargs: Any
) -> Redis:
    """``RedisAddress.parse(url).client(...)``: the bridge's way to open a Redis URL."""
    return RedisAddress.parse(url).client(
        socket_connect_timeout=socket_connect_timeout, socket_timeout=socket_timeout, **kwargs
    )
