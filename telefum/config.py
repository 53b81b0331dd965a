"""``settings.toml``: one typed class per section, validated by pydantic.

Most sections are the class of the code that uses them: ``[calls]`` is
``telephony.rules.CallRules``, ``[worker]`` ``worker.policy.CallPolicy``, ``[crm]`` (and a
PBX's own ``[ami.crm]``) ``worker.policy.CrmTarget`` with a ``crm_client.types.Credentials``
per agent, ``[originate]`` ``telefum.originate.OriginateSettings``, ``[health]``
``telefum.health.HealthSettings``, ``[http]`` ``telefum.web.HttpSettings``; ``[ami]`` and
``[redis]`` are here. A default
is written once, in its class; a key that a written section must give has none there, and
what it is when the whole section is absent is in :class:`Settings`. Secrets are pydantic
secret types: masked wherever they are printed; ``telefum.wiring`` hands out plain values.

:func:`load_settings` reads the file and ``TELEFUM_<SECTION>__<KEY>`` variables
(``telefum.settings_load``); a :class:`ConfigError` is one line naming the file, the dotted
key (and the variable it came from), what was expected and what was got.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any

import pydantic
from pydantic import AfterValidator, ConfigDict, Field, PrivateAttr, Secret, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from crm_client.redact import redact_url
from telefum.health import HealthSettings
from telefum.originate import OriginateSettings
from telefum.web import HttpSettings
from telephony.cdr_settings import (
    DEFAULT_CSV,
    CdrSourceSettings,
    SourceKind,
    dsn_secrets,
    redact_dsn,
)
from telephony.phones import to_e164
from telephony.rules import CallRules
from worker.policy import CallPolicy, CrmTarget
from worker.redis_url import RedisAddress

CONFIG_ENV = "TELEFUM_CONFIG"  # path of settings.toml when no --config is given
PLACEHOLDER = "change-me"  # the shipped example's secrets: warned about
MIN_TOKEN_LEN = 16


class ConfigError(Exception):
    """A broken configuration: ``str(err)`` is one line naming file, key and expectation."""

    def __init__(self, file: str, key: str | None, problem: str) -> None:
        self.file, self.key, self.problem = file, key, problem
        super().__init__(f"{file}: {key}: {problem}" if key else f"{file}: {problem}")


def _name(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", value):
        raise ValueError(f'expected a short name of letters, digits, "_", "-", ".", got "{value}"')
    return value


class SecretUrl(Secret[str]):
    """A URL that may carry a password: shown with the password masked."""

    def _display(self) -> str:
        return redact_url(self.get_secret_value())


def _redis_url(url: SecretUrl) -> SecretUrl:
    if not url.get_secret_value():
        return url
    try:
        RedisAddress.parse(url.get_secret_value())  # what every client of the bridge reads
    except ValueError as err:
        raise ValueError(
            f'expected empty (a private Redis) or a URL such as "redis://127.0.0.1:6379/0" '
            f'or "redis+sentinel://10.0.0.1:26379,10.0.0.2:26379/mymaster/0", got "{url}" '
            f"({err})"
        ) from None
    return url


_FORBID = ConfigDict(extra="forbid")
_Seconds = Annotated[float, Field(ge=0.1, strict=True)]
_Span = Annotated[float, Field(ge=0, strict=True)]


class SecretDsn(Secret[str]):
    """A database DSN that may carry a password: shown with it masked."""

    def _display(self) -> str:
        return redact_dsn(self.get_secret_value())


@pydantic.dataclasses.dataclass(frozen=True, kw_only=True, config=_FORBID)
class BackfillSettings:
    """``[backfill]`` (and a PBX's own ``[ami.backfill]``): the PBX's call detail records,
    read at start and after every gap in the AMI link for the calls the bridge did not see
    end (docs/backfill.md). The source keys are ``telephony.cdr_settings.CdrSourceSettings``
    (:meth:`source`); the others say when to read."""

    kind: SourceKind = "none"  # "csv" (Master.csv), "mysql" (FreePBX), "postgres", "none"
    path: str = DEFAULT_CSV  # kind csv: Asterisk's Master.csv
    dsn: SecretDsn = SecretDsn("")  # mysql/postgres: "mysql://host:3306/asteriskcdrdb"
    user: str = ""
    password: SecretStr = SecretStr("")
    table: str = "cdr"
    timezone: str = ""  # the zone of CDR times: "" this host's, "UTC" with usegmtime=yes
    margin_s: _Span = 60.0  # read this much before and after a gap
    lookback_s: _Span = 4 * 3600.0  # the longest call found whole
    timeout_s: _Span = 10.0  # one read of the source
    fallback_encoding: str = "cp1251"  # text that is not UTF-8
    # Asterisk writes a call's CDR once the call is over: a gap is read at once and again
    # this long after it closed; a call the bridge saw only in part waits this long for it
    settle_s: _Span = 5.0
    cdr_batch_s: _Span = 0.0  # cdr.conf batch=yes: its time (s); one more read after that
    first_window_s: _Span = 600.0  # the first start (no record of the last one): read back this far
    retry_max_s: Annotated[float, Field(ge=1, strict=True)] = 60.0  # unreadable: retried up to this

    def __post_init__(self) -> None:
        self.source()  # ValueError names the key (a bad DSN, zone, encoding...)

    @property
    def enabled(self) -> bool:
        return self.kind != "none"

    def source(self) -> CdrSourceSettings:
        """What ``telephony.cdr_sources.open_source`` opens (with the plain password)."""
        return CdrSourceSettings(
            kind=self.kind,
            path=self.path,
            dsn=self.dsn.get_secret_value(),
            user=self.user,
            password=self.password.get_secret_value(),
            table=self.table,
            timezone=self.timezone,
            margin_s=self.margin_s,
            lookback_s=self.lookback_s,
            timeout_s=self.timeout_s,
            fallback_encoding=self.fallback_encoding,
        )


@pydantic.dataclasses.dataclass(frozen=True, kw_only=True, config=_FORBID)
class AmiSettings:
    """One PBX's manager interface (``[ami]``, or one ``[[ami]]`` entry)."""

    name: Annotated[str, AfterValidator(_name)] = "default"  # in job ids, labels, logs
    host: Annotated[str, Field(min_length=1)]
    port: Annotated[int, Field(ge=1, le=65535, strict=True)] = 5038
    username: str
    secret: SecretStr
    ping_interval_s: _Seconds = 10.0  # keep-alive ping period
    ping_timeout_s: _Seconds = 5.0  # no reply this long: the link is dead, reconnect
    reconnect_max_s: _Seconds = 60.0  # cap of the exponential reconnect backoff
    crm: CrmTarget | None = None  # this PBX's own CRM, else the global [crm]
    backfill: BackfillSettings | None = None  # this PBX's own CDR source, else [backfill]


@pydantic.dataclasses.dataclass(frozen=True, config=_FORBID)
class RedisSettings:
    # empty: start a private Redis (``telefum run``, the demo and development)
    url: Annotated[SecretUrl, AfterValidator(_redis_url)] = SecretUrl("")


class Settings(BaseSettings):
    """The whole file. ``Settings()`` is the embedded defaults; :func:`load_settings` adds
    the file and the environment."""

    # strict: pydantic-settings then turns TELEFUM_* strings into each key's type before
    # validation, so the file's own values are held to their types (true is not a number)
    model_config = SettingsConfigDict(
        env_prefix="TELEFUM_", env_nested_delimiter="__", extra="forbid", frozen=True, strict=True
    )

    ami: tuple[AmiSettings, ...] = Field(
        default=(AmiSettings(host="127.0.0.1", username="telefum", secret=SecretStr(PLACEHOLDER)),),
        min_length=1,
        strict=False,
    )
    redis: RedisSettings = RedisSettings()
    crm: CrmTarget = CrmTarget(
        url="http://127.0.0.1:8080/rest", login="bridge", password=SecretStr(PLACEHOLDER)
    )
    calls: CallRules = CallRules()
    sources: dict[str, str] = Field(default_factory=dict)  # tracking number (E.164) -> label
    worker: CallPolicy = CallPolicy()
    http: HttpSettings = HttpSettings()
    health: HealthSettings = HealthSettings()
    originate: OriginateSettings = OriginateSettings()
    backfill: BackfillSettings = BackfillSettings()
    spool_dir: str = "var/spool"  # where finished calls wait while Redis is unreachable

    # where the values came from, set by the loader (not keys of the file)
    _file: Path | None = PrivateAttr(default=None)
    _env: tuple[str, ...] = PrivateAttr(default=())
    _env_warnings: tuple[str, ...] = PrivateAttr(default=())

    @classmethod
    def settings_customise_sources(cls, settings_cls: Any, *sources: Any, **kw: Any) -> Any:
        """``Settings(...)`` takes its arguments only: :func:`load_settings` applies the
        environment, and names the variable in its errors."""
        return (sources[0] if sources else kw["init_settings"],)

    @pydantic.field_validator("sources")
    @classmethod
    def _e164(cls, sources: dict[str, str], info: pydantic.ValidationInfo) -> dict[str, str]:
        calls = info.data.get("calls") or CallRules()
        out: dict[str, str] = {}
        for number, label in sources.items():
            e164 = to_e164(number, calls.default_country)
            if e164 is None:
                raise ValueError(f'expected phone numbers (tracking numbers), got "{number}"')
            if out.get(e164, label) != label:
                raise ValueError(f'"{number}" is {e164}, already labelled "{out[e164]}"')
            out[e164] = label
        return out

    @property
    def source_file(self) -> Path | None:
        return self._file

    @property
    def env_overrides(self) -> tuple[str, ...]:
        """The environment variables that changed something (for ``telefum config check``)."""
        return self._env

    def pbx(self, name: str) -> AmiSettings:
        for ami in self.ami:
            if ami.name == name:
                return ami
        raise KeyError(name)

    def crm_for(self, pbx: str) -> CrmTarget:
        """The CRM a PBX's calls go to: its own ``[ami.crm]``, else the global ``[crm]``."""
        for ami in self.ami:
            if ami.name == pbx and ami.crm is not None:
                return ami.crm
        return self.crm

    def backfill_for(self, pbx: str) -> BackfillSettings:
        """Where a PBX's calls are backfilled from: its own ``[ami.backfill]``, else
        ``[backfill]``."""
        for ami in self.ami:
            if ami.name == pbx and ami.backfill is not None:
                return ami.backfill
        return self.backfill

    def secret_values(self) -> list[str]:
        """Every configured secret (passwords, AMI secrets, tokens, the Redis password, a
        password written into a backfill DSN) but the shipped placeholder: what
        ``crm_client.redact`` masks wherever text is shown."""
        values = [s.get_secret_value() for _, s in _secrets(self.model_dump(), ())]
        redis_url = self.redis.url.get_secret_value()
        if redis_url:
            values.append(RedisAddress.parse(redis_url).password or "")
        for b in (self.backfill, *(a.backfill for a in self.ami if a.backfill is not None)):
            values.extend(dsn_secrets(b.dsn.get_secret_value()))
        return [v for v in values if v and v != PLACEHOLDER]

    def warnings(self) -> list[str]:
        """What runs but should not stay so: ``TELEFUM_`` variables that are no setting,
        the shipped placeholder secrets, short tokens, HTTP reachable from the network."""
        out = list(self._env_warnings)
        for key, secret in _secrets(self.model_dump(), ()):
            value = secret.get_secret_value()
            if value == PLACEHOLDER:
                out.append(f'{key} is "{PLACEHOLDER}", the shipped placeholder: set a real one')
            elif "token" in key and 0 < len(value) < MIN_TOKEN_LEN:
                out.append(f"{key} has {len(value)} characters: use at least {MIN_TOKEN_LEN}")
        if self.http.host not in ("127.0.0.1", "localhost", "::1"):
            exposed = f"http.listen is {self.http.host}, reachable from the network"
            if self.http.token.get_secret_value():
                out.append(f"{exposed}; acting endpoints need the token")
            else:
                out.append(f"{exposed}; http.token is empty, so acting endpoints are disabled")
        return out


def _secrets(value: Any, path: tuple[str, ...]) -> Iterator[tuple[str, SecretStr]]:
    """Every secret in a dump, with its dotted key (a PBX of several by its name)."""
    if isinstance(value, SecretStr):
        yield ".".join(path), value
    elif isinstance(value, Mapping):
        for k, v in value.items():
            yield from _secrets(v, (*path, k if k.isidentifier() else f'"{k}"'))
    elif isinstance(value, tuple) and path == ("ami",):  # [ami], or [[ami]] entries by name
        for v in value:
            yield from _secrets(v, (f"ami[{v['name']}]",) if len(value) > 1 else path)


def load_settings(path: str | Path | None = None) -> Settings:
    """Read, override from the environment, validate (:class:`ConfigError` if broken).

    ``None``: the file named by ``$TELEFUM_CONFIG`` if set, else the embedded defaults (with
    environment overrides still applied).
    """
    return load_settings_from(path, os.environ)


def load_settings_from(path: str | Path | None, environ: Mapping[str, str]) -> Settings:
    """:func:`load_settings` with an explicit environment (for tests and tools)."""
    from telefum.settings_load import load

    return load(path, environ)


def load_or_exit(path: str | Path | None) -> Settings:
    """For commands: the settings, or one line on stderr and exit status 2."""
    try:
        return load_settings(path)
    except ConfigError as err:
        print(f"telefum: configuration error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


def log_warnings(settings: Settings) -> None:
    """For the commands that run the bridge: each warning once, at start."""
    for warning in settings.warnings():
        logging.getLogger("telefum.config").warning("configuration: %s", warning)
