"""A Redis URL -> the connection settings of every Redis client of the bridge.

The listener's hand-over, the service's and the ops commands' clients (redis-py) and the
worker's pool (arq) all connect through :class:`RedisAddress`, so one URL means the same
server and the same credentials to all of them. arq's ``RedisSettings.from_dsn`` does not
percent-decode the user and password, while redis-py's ``from_url`` does: a password with
``@``, ``:``, ``/``, ``%`` or non-ASCII letters, percent-encoded as a URL must carry it,
worked for the listener and was refused to the workers.

    redis://[[user]:password@]host[:port][/db]     rediss://...: the same over TLS
    unix://[[user]:password@]/path/to/redis.sock[?db=N]

User and password are percent-decoded as UTF-8 (``quote(password, safe="")`` writes one).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from arq.connections import RedisSettings
from redis.asyncio import Redis

SCHEMES = ("redis", "rediss", "unix")


@dataclass(frozen=True)
class RedisAddress:
    """Where a Redis is and how to log in to it; the password is never in ``repr``."""

    host: str = "127.0.0.1"
    port: int = 6379
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ssl: bool = False
    unix_socket_path: str | None = None

    @classmethod
    def parse(cls, url: str) -> RedisAddress:
        """ValueError, naming what is wrong but never the password, for a URL we cannot use."""
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as err:  # a port that is no number, a bad IPv6 literal
            raise ValueError(f"not a Redis URL: {err}") from None
        if parts.scheme not in SCHEMES:
            raise ValueError(
                f"expected a URL starting with redis://, rediss:// or unix://, got "
                f"{parts.scheme + '://' if parts.scheme else 'no scheme'}"
            )
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
        if self.unix_socket_path:
            return f"unix://{auth}{quote(self.unix_socket_path)}?db={self.db}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        scheme = "rediss" if self.ssl else "redis"
        return f"{scheme}://{auth}{host}:{self.port}/{self.db}"

    def client(self, *, socket_connect_timeout: float, socket_timeout: float,
               **kwargs: Any) -> Redis:  # fmt: skip
        """A redis-py asyncio client (bytes replies unless ``decode_responses=True``)."""
        if self.unix_socket_path:
            return Redis(
                unix_socket_path=self.unix_socket_path, db=self.db, username=self.username,
                password=self.password, socket_connect_timeout=socket_connect_timeout,
                socket_timeout=socket_timeout, **kwargs,
            )  # fmt: skip
        return Redis(
            host=self.host, port=self.port, db=self.db, username=self.username,
            password=self.password, ssl=self.ssl, socket_connect_timeout=socket_connect_timeout,
            socket_timeout=socket_timeout, **kwargs,
        )  # fmt: skip

    def arq_settings(self, *, conn_timeout: float = 1.0) -> RedisSettings:
        """arq's settings for the same server; arq itself never retries the connection
        (``conn_retries=0``): the worker does, with a log line (worker/app.py)."""
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


def redis_client(url: str, *, socket_connect_timeout: float = 1.0, socket_timeout: float = 5.0,
                 **kwargs: Any) -> Redis:  # fmt: skip
    """``RedisAddress.parse(url).client(...)``: the bridge's way to open a Redis URL."""
    return RedisAddress.parse(url).client(
        socket_connect_timeout=socket_connect_timeout, socket_timeout=socket_timeout, **kwargs
    )
