"""Where the private Redis of ``telefum run`` lives, so that ops commands find it.

With ``[redis] url`` empty, ``telefum run`` starts its own redis-server with its files in
``redis/`` beside ``spool_dir`` (0700): its append-only file, its password (``password``,
0600, generated once) and, while it runs, its address (``url``, without the password).
``telefum status``, ``dlq`` and ``report`` on the same machine, with the same settings and
run as the same user, read both: the private Redis is then as inspectable as a configured
one, and closed to every other local user.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from telefum.config import Settings
from worker.embedded_redis import PASSWORD_FILE
from worker.private_files import write_private
from worker.redis_url import RedisAddress

URL_FILE = "url"


def data_dir(settings: Settings) -> Path:
    """The private Redis's directory: ``redis/`` beside ``spool_dir``."""
    return Path(settings.spool_dir).parent / "redis"


def publish(settings: Settings, address: str) -> None:
    """Say where the running private Redis listens (``address``: no password in it)."""
    write_private(data_dir(settings) / URL_FILE, address.encode() + b"\n")


def withdraw(settings: Settings) -> None:
    with contextlib.suppress(OSError):
        (data_dir(settings) / URL_FILE).unlink()


def redis_url(settings: Settings) -> str:
    """``[redis] url``; when empty, the URL (with its password) of a running ``telefum
    run``'s private Redis; else "" (none runs, or its files are not ours to read)."""
    if settings.redis.url.get_secret_value():
        return settings.redis.url.get_secret_value()
    directory = data_dir(settings)
    try:
        address = (directory / URL_FILE).read_text(encoding="utf-8").strip()
        password = (directory / PASSWORD_FILE).read_text(encoding="utf-8").strip()
        return RedisAddress.parse(address).with_password(password).url()
    except (OSError, ValueError):
        return ""
