"""``settings.toml``: one typed class per section, validated by pydantic; one-line errors.

Most sections are the class of the code that uses them: ``[calls]`` is
``telephony.rules.CallRules``, ``[worker]`` ``worker.policy.CallPolicy``, ``[crm]`` (and a
PBX's own ``[ami.crm]``) ``worker.policy.CrmTarget`` with ``crm_client.types.Credentials``
per agent, ``[originate]`` ``telefum.originate.OriginateSettings``, ``[health]``
``telefum.health.HealthSettings``; ``[ami]``, ``[redis]`` and ``[http]`` are below. A default
is written once, in its class; a key a written section must give has none there, and its
default for an absent section is in :class:`Settings`. Secrets are pydantic secret types.

Loading (:mod:`telefum.settings_load`): the file, then ``TELEFUM_<SECTION>__<KEY>`` from the
environment, then pydantic; a :class:`ConfigError` names the file, the dotted key (and the
variable it came from), what was expected and what was got.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import pydantic
from pydantic import AfterValidator, ConfigDict, Field, PrivateAttr, Secret, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from crm_client.redact import redact_url
from telefum.health import HealthSettings
from telefum.originate import OriginateSettings
from telephony.phones import to_e164
from telephony.rules import CallRules
from worker.policy import CallPolicy, CrmTarget

CONFIG_ENV = "TELEFUM_CONFIG"  # path of settings.toml when no --config is given
SHIPPED_SECRET = "change-me"  # the shipped example's placeholder: warned about
MIN_TOKEN_LEN = 16


class ConfigError(Exception):
    """A broken configuration: ``str(err)`` is one line naming file, key and expectation."""

    def __init__(self, file: str, key: str | None, problem: str) -> None:
        self.file, self.key, self.problem = file, key, problem
        super().__init__(f"{file}: {key}: {problem}" if key else f"{file}: {problem}")


def split_listen(listen: str) -> tuple[str, int]:
    """``"127.0.0.1:8088"`` / ``"[::1]:8088"`` -> (host, port); port 0: the OS picks one."""
    host, sep, port_s = listen.rpartition(":")
    if not sep or not host or not port_s.isdigit() or not 0 <= int(port_s) < 65536:
        raise ValueError(f'expected "host:port" such as "127.0.0.1:8088", got "{listen}"')
    return host.strip("[]"), int(port_s)


def _name(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", value):
        raise ValueError(f'expected a short name of letters, digits, "_", "-", ".", got "{value}"')
    return value


_Forbid = ConfigDict(extra="forbid")
_Port = Annotated[int, Field(ge=1, le=65535, strict=True)]
_Seconds = Annotated[float, Field(ge=0.1, strict=True)]


@pydantic.dataclasses.dataclass(frozen=True, config=_Forbid)
class AmiSettings:
    """One PBX's manager interface (``[ami]``, or one ``[[ami]]`` entry)."""

    host: Annotated[str, Field(min_length=1)]
    username: str
    secret: SecretStr
    name: Annotated[str, AfterValidator(_name)] = "default"  # in job ids, labels, logs
    port: _Port = 5038
    ping_interval_s: _Seconds = 10.0  # keep-alive ping period
    ping_timeout_s: _Seconds = 5.0  # no reply this long: the link is dead, reconnect
    reconnect_max_s: _Seconds = 60.0  # cap of the exponential reconnect backoff
    crm: CrmTarget | None = None  # this PBX's own CRM, else the global [crm]


class SecretUrl(Secret[str]):
    """A URL that may carry a password: shown with the password masked."""

    def _display(self) -> str:
        return redact_url(self.get_secret_value())


def _redis_url(url: SecretUrl) -> SecretUrl:
    if url.get_secret_value() and not re.match(r"(redis|rediss|unix)://", url.get_secret_value()):
        raise ValueError(
            f'expected empty (a private Redis) or a URL such as "redis://127.0.0.1:6379/0", '
            f'got "{url}"'
        )
    return url


@pydantic.dataclasses.dataclass(frozen=True, config=_Forbid)
class RedisSettings:
    # empty: start a private Redis (``telefum run``, the demo and development)
    url: Annotated[SecretUrl, AfterValidator(_redis_url)] = SecretUrl("")


def _token(token: SecretStr) -> SecretStr:
    if not token.get_secret_value():
        raise ValueError("expected a non-empty token")
    return token


@pydantic.dataclasses.dataclass(frozen=True, config=_Forbid)
class HttpSettings:
    listen: Annotated[str, AfterValidator(lambda v: split_listen(v) and v)] = "127.0.0.1:8088"
    # required for anything that acts (requeue, originate); empty: acting endpoints refuse
    token: SecretStr = SecretStr("")
    # read-only: the /report page and `telefum report` (the admin token works too)
    report_token: SecretStr = SecretStr("")
    # extension -> that agent's own token
    agent_tokens: dict[str, Annotated[SecretStr, AfterValidator(_token)]] = Field(
        default_factory=dict
    )

    @property
    def host(self) -> str:
        return split_listen(self.listen)[0]

    @property
    def port(self) -> int:
        return split_listen(self.listen)[1]

    def local_url(self, port: int | None = None) -> str:
        """Where a client on this machine reaches the service (a wildcard address means
        loopback); ``port``: the one actually bound, when ``listen`` says 0."""
        host = self.host
        host = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{self.port if port is None else port}"


class Settings(BaseSettings):
    """The whole file. ``Settings()`` is the embedded defaults; :func:`load_settings` adds
    the file and the environment."""

    # strict: pydantic-settings then turns TELEFUM_* strings into each key's type before
    # validation, so the file's own values can be held to their types (a boolean is no number)
    model_config = SettingsConfigDict(
        env_prefix="TELEFUM_", env_nested_delimiter="__", extra="forbid", frozen=True, strict=True
    )

    ami: tuple[AmiSettings, ...] = Field(
        default=(AmiSettings(host="127.0.0.1", username="telefum", secret=SecretStr("change-me")),),
        min_length=1,
        strict=False,
    )
    redis: RedisSettings = RedisSettings()
    crm: CrmTarget = CrmTarget(
        url="http://127.0.0.1:8080/rest", login="bridge", password=SecretStr("change-me")
    )
    calls: CallRules = CallRules()
    sources: dict[str, str] = Field(default_factory=dict)  # tracking number (E.164) -> label
    worker: CallPolicy = CallPolicy()
    http: HttpSettings = HttpSettings()
    health: HealthSettings = HealthSettings()
    originate: OriginateSettings = OriginateSettings()
    spool_dir: str = "var/spool"  # where finished calls wait while Redis is unreachable

    # where the values came from, set by the loader (not keys of the file)
    _file: Path | None = PrivateAttr(default=None)
    _env: tuple[str, ...] = PrivateAttr(default=())
    _env_warnings: tuple[str, ...] = PrivateAttr(default=())

    @classmethod
    def settings_customise_sources(cls, settings_cls: Any, *sources: Any, **kw: Any) -> Any:
        """``Settings(...)`` takes its arguments only: the environment is applied by
        :func:`load_settings`, which names a variable in its errors."""
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

    def warnings(self) -> list[str]:
        """What runs but should not stay so: unknown TELEFUM_ variables, the shipped
        placeholder secrets, short tokens, HTTP beyond loopback."""
        out = list(self._env_warnings)
        for key, secret in _secrets(self):
            value = secret.get_secret_value()
            if value == SHIPPED_SECRET:
                out.append(f'{key} is "{SHIPPED_SECRET}", the shipped placeholder: set a real one')
            elif "token" in key and 0 < len(value) < MIN_TOKEN_LEN:
                out.append(f"{key} is {len(value)} characters: use at least {MIN_TOKEN_LEN}")
        if self.http.host not in ("127.0.0.1", "localhost", "::1"):
            exposed = f"[http] listen is {self.http.host}, reachable from the network"
            if self.http.token.get_secret_value():
                out.append(f"{exposed}; acting endpoints need the token")
            else:
                out.append(f"{exposed}; [http] token is empty, so acting endpoints are disabled")
        return out


def _secrets(s: Settings) -> Iterator[tuple[str, SecretStr]]:
    def crm(prefix: str, target: CrmTarget) -> Iterator[tuple[str, SecretStr]]:
        yield f"{prefix} password", target.password
        for ext, creds in target.agents.items():
            yield f'{prefix}.agents."{ext}" password', creds.password

    for ami in s.ami:
        label = "[ami]" if len(s.ami) == 1 else f"[[ami]] {ami.name}:"
        yield f"{label} secret", ami.secret
        if ami.crm is not None:
            yield from crm(f"[{ami.name}'s ami.crm]", ami.crm)
    yield from crm("[crm]", s.crm)
    yield "[http] token", s.http.token
    yield "[http] report_token", s.http.report_token
    for ext, token in s.http.agent_tokens.items():
        yield f'[http.agent_tokens] "{ext}" token', token


def settings_to_toml(settings: Settings, mask_secrets: bool = True) -> str:
    """The effective settings as TOML: what ``telefum config check`` prints (masked)."""
    import tomli_w

    def plain(value: Any) -> Any:
        if isinstance(value, Secret | SecretStr):
            return str(value) if mask_secrets else value.get_secret_value()
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items() if v is not None}
        if isinstance(value, list | tuple):
            return [plain(v) for v in value]
        return value.value if hasattr(value, "value") else value  # enums

    doc = plain(settings.model_dump())
    if len(doc["ami"]) == 1:
        doc["ami"] = doc["ami"][0]  # written as [ami], as the file usually has it
    return tomli_w.dumps(doc)


def load_settings(path: str | Path | None = None) -> Settings:
    """Read, override from the environment, validate (:class:`ConfigError` if broken).

    ``None``: the file named by ``$TELEFUM_CONFIG`` if set, else the embedded defaults (with
    environment overrides still applied).
    """
    import os

    return load_settings_from(path, os.environ)


def load_settings_from(path: str | Path | None, environ: Any) -> Settings:
    """:func:`load_settings` with an explicit environment (a mapping; for tests and tools)."""
    from telefum.settings_load import load

    return load(path, environ)


def log_warnings(settings: Settings) -> None:
    """For the commands that run the bridge: each warning once, at start."""
    import logging

    for warning in settings.warnings():
        logging.getLogger("telefum.config").warning("configuration: %s", warning)


def load_or_exit(path: str | Path | None) -> Settings:
    """For commands: the settings, or one line on stderr and exit status 2."""
    import sys

    try:
        return load_settings(path)
    except ConfigError as err:
        print(f"telefum: configuration error: {err}", file=sys.stderr)
        raise SystemExit(2) from None

