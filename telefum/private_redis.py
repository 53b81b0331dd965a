"""Where the private Redis of ``telefum run`` lives, so that ops commands find it.

With ``[redis] url`` empty, ``telefum run`` starts its own redis-server with its files beside
``spool_dir`` and writes the server's URL there while it runs. ``telefum status``, ``dlq``
and ``report`` on the same machine, with the same settings, read it: the private Redis is
then as inspectable as a configured one.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from telefum.config import Settings

URL_FILE = "url"


def data_dir(settings: Settings) -> Path:
    """The private Redis's directory: ``redis/`` beside ``spool_dir``."""
    return Path(settings.spool_dir).parent / "redis"


def publish(settings: Settings, url: str) -> None:
    path = data_dir(settings) / URL_FILE
    path.write_text(url + "\n", encoding="utf-8")


def withdraw(settings: Settings) -> None:
    with contextlib.suppress(OSError):
        (data_dir(settings) / URL_FILE).unlink()


def redis_url(settings: Settings) -> str:
    """``[redis] url``; when empty, the URL of a running ``telefum run``'s private Redis;
    else ""."""
    if settings.redis.url.get_secret_value():
        return settings.redis.url.get_secret_value()
    try:
        return (data_dir(settings) / URL_FILE).read_text(encoding="utf-8").strip()
    except OSError:
        return ""
