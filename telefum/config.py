"""``settings.toml``: typed settings, validated at start, secrets overridable by env.

Every key can be overridden by ``TELEFUM_<SECTION>__<KEY>`` (e.g. ``TELEFUM_CRM__PASSWORD``;
nested: ``TELEFUM_CRM__AGENTS__101__PASSWORD``; one PBX of several:
``TELEFUM_AMI__OFFICE__SECRET``). Overrides are applied before validation, so a secret can
live only in the environment. Errors name the file, the dotted key and what was expected,
on one line (``str(ConfigError)``).

The schema is the dataclasses below: a field is a key, its type hint is what the key must
hold, and ``field(metadata=...)`` adds the checks a type cannot say (choices, ranges,
"required when the section is written"). Adding a key is adding a field.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import sys
import tomllib
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit

import phonenumbers

from crm_client.redact import redact_url
from crm_client.types import Credentials
from telephony.phones import PhoneFormat, to_e164
from telephony.rules import DEFAULT_INBOUND_CONTEXTS, DEFAULT_INTERNAL_CONTEXTS, CallRules

ENV_PREFIX = "TELEFUM_"
CONFIG_ENV = "TELEFUM_CONFIG"  # path of settings.toml when no --config is given
DIRECTIONS = ("in", "out", "internal")


class ConfigError(Exception):
    """A broken configuration: ``str(err)`` is one line naming file, key and expectation."""

    def __init__(self, file: str, key: str | None, problem: str) -> None:
        self.file, self.key, self.problem = file, key, problem
        super().__init__(f"{file}: {key}: {problem}" if key else f"{file}: {problem}")


# --- field metadata helpers (the checks a type hint cannot express) ------------------------


def _meta(
    *,
    required: bool = False,
    choices: tuple[str, ...] | None = None,
    min: float | None = None,
    max: float | None = None,
    check: Callable[[Any], str | None] | None = None,
    secret: bool = False,
) -> dict[str, Any]:
    """``required``: must be written when its section is written in the file (env counts).
    ``check``: returns what was expected when the value is wrong, else None."""
    return {
        "required": required,
        "choices": choices,
        "min": min,
        "max": max,
        "check": check,
        "secret": secret,
    }


def _check_http_url(value: str) -> str | None:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f'an http(s) URL such as "https://crm.example.com/rest", got "{redact_url(value)}"'
    return None


def _check_redis_url(value: str) -> str | None:
    if value == "":
        return None
    scheme = urlsplit(value).scheme
    if scheme not in ("redis", "rediss", "unix"):
        return (
            'empty (a private Redis) or a URL such as "redis://127.0.0.1:6379/0", '
            f'got "{redact_url(value)}"'
        )
    return None


def _check_regex(value: str) -> str | None:
    try:
        re.compile(value)
    except re.error as err:
        return f"a regular expression ({err})"
    return None


def _check_country(value: str) -> str | None:
    if value not in phonenumbers.SUPPORTED_REGIONS:
        return f'a two-letter country code such as "RU" or "DE", got "{value}"'
    return None


def _check_listen(value: str) -> str | None:
    try:
        split_listen(value)
    except ValueError:
        return f'"host:port" such as "127.0.0.1:8088", got "{value}"'
    return None


def _check_name(value: str) -> str | None:
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", value):
        return f'a short name of letters, digits, "_", "-" or ".", got "{value}"'
    return None


def _check_directions(value: tuple[str, ...]) -> str | None:
    bad = [v for v in value if v not in DIRECTIONS]
    if bad:
        return f'a list of "in", "out", "internal", got "{bad[0]}"'
    return None


def _check_call_template(value: str) -> str | None:
    """The worker's own rule (its placeholders), so a typo fails here, not at the first call."""
    from worker.policy import check_template

    try:
        check_template(value, "template")
    except ValueError as err:
        return f"a template the worker can fill: {str(err).removeprefix('template: ')}"
    return None


_CALL_TEMPLATE = _meta(check=_check_call_template)


def split_listen(listen: str) -> tuple[str, int]:
    """``"127.0.0.1:8088"`` / ``"[::1]:8088"`` -> (host, port); port 0: the OS picks one."""
    host, sep, port_s = listen.rpartition(":")
    if not sep or not host or not re.fullmatch("[0-9]+", port_s) or int(port_s) > 65535:
        raise ValueError(listen)
    return host.strip("[]"), int(port_s)


# --- the schema ---------------------------------------------------------------------------


@dataclass(frozen=True)
class CrmSettings:
    url: str = field(
        default="http://127.0.0.1:8080/rest", metadata=_meta(required=True, check=_check_http_url)
    )
    login: str = field(default="bridge", metadata=_meta(required=True))
    password: str = field(
        default="change-me", repr=False, metadata=_meta(required=True, secret=True)
    )
    phone_format: str = field(
        default="e164", metadata=_meta(choices=tuple(f.value for f in PhoneFormat))
    )
    timeout_s: float = field(default=10.0, metadata=_meta(min=0.1))
    agents: dict[str, Credentials] = field(default_factory=dict)  # extension -> own creds

    @property
    def service(self) -> Credentials:
        return Credentials(self.login, self.password)

    def credentials_for(self, extension: str | None) -> Credentials:
        """The agent's own credentials when we have them, else the service account."""
        if extension and extension in self.agents:
            return self.agents[extension]
        return self.service


@dataclass(frozen=True)
class AmiSettings:
    name: str = field(default="default", metadata=_meta(check=_check_name))  # job ids, labels
    host: str = field(default="127.0.0.1", metadata=_meta(required=True))
    port: int = field(default=5038, metadata=_meta(min=1, max=65535))
    username: str = field(default="telefum", metadata=_meta(required=True))
    secret: str = field(default="change-me", repr=False, metadata=_meta(required=True, secret=True))
    ping_interval_s: float = field(default=10.0, metadata=_meta(min=0.1))
    ping_timeout_s: float = field(default=5.0, metadata=_meta(min=0.1))
    reconnect_max_s: float = field(default=60.0, metadata=_meta(min=0.1))
    crm: CrmSettings | None = None  # this PBX's own CRM, else the global [crm]


@dataclass(frozen=True)
class RedisSettings:
    # empty: start a private, throwaway Redis (demo and development only)
    url: str = field(default="", metadata=_meta(check=_check_redis_url))

    def __repr__(self) -> str:  # a Redis URL may carry a password
        return f"RedisSettings(url={redact_url(self.url)!r})"


# CallRules has slots: its class attributes are descriptors, so defaults come from an instance.
_DEFAULT_RULES = CallRules()


@dataclass(frozen=True)
class CallsSettings:
    default_country: str = field(default="RU", metadata=_meta(check=_check_country))
    inbound_contexts: tuple[str, ...] = DEFAULT_INBOUND_CONTEXTS
    internal_contexts: tuple[str, ...] = DEFAULT_INTERNAL_CONTEXTS
    trunk_channel_pattern: str = field(
        default=_DEFAULT_RULES.trunk_channel_pattern, metadata=_meta(check=_check_regex)
    )
    extension_pattern: str = field(
        default=_DEFAULT_RULES.extension_pattern, metadata=_meta(check=_check_regex)
    )
    max_call_age_s: float = field(default=12 * 3600.0, metadata=_meta(min=1))
    max_active_calls: int = field(default=_DEFAULT_RULES.max_active_calls, metadata=_meta(min=1))

    def rules(self, pbx: str = "default") -> CallRules:
        return CallRules(
            default_country=self.default_country,
            inbound_contexts=self.inbound_contexts,
            internal_contexts=self.internal_contexts,
            trunk_channel_pattern=self.trunk_channel_pattern,
            extension_pattern=self.extension_pattern,
            max_call_age_s=self.max_call_age_s,
            max_active_calls=self.max_active_calls,
            pbx=pbx,
        )


@dataclass(frozen=True)
class WorkerSettings:
    """What is logged and how (``[worker]``)."""

    log_missed: bool = True
    log_internal: bool = False
    log_unanswered_outbound: bool = True
    # directions that auto-create contacts
    create_contacts_for: tuple[str, ...] = field(
        default=("in",), metadata=_meta(check=_check_directions)
    )
    contact_name: str = field(default="Новый контакт {phone}", metadata=_CALL_TEMPLATE)
    contact_type: str = "contact"
    subject_in: str = field(default="Входящий звонок", metadata=_CALL_TEMPLATE)
    subject_out: str = field(default="Исходящий звонок", metadata=_CALL_TEMPLATE)
    subject_missed: str = field(default="Пропущенный звонок", metadata=_CALL_TEMPLATE)
    description: str = field(
        default="Длительность {duration}; добавочный {extension}; номер {did} ({source})",
        metadata=_CALL_TEMPLATE,
    )
    retry_total_s: float = field(default=24 * 3600.0, metadata=_meta(min=0))
    job_timeout_s: float = field(default=30.0, metadata=_meta(min=1))
    max_jobs: int = field(default=50, metadata=_meta(min=1))
    # e.g. "https://pbx.example.com/rec/{call_id}.wav"
    recording_url: str = field(default="", metadata=_CALL_TEMPLATE)


@dataclass(frozen=True)
class HttpSettings:
    listen: str = field(default="127.0.0.1:8088", metadata=_meta(check=_check_listen))
    # required for anything that acts (requeue, originate); empty: acting endpoints refuse
    token: str = field(default="", repr=False, metadata=_meta(secret=True))
    # read-only: the /report page and `telefum report` (the admin token works too)
    report_token: str = field(default="", repr=False, metadata=_meta(secret=True))
    agent_tokens: dict[str, str] = field(default_factory=dict, repr=False)  # extension -> token
    # names (besides localhost, loopback and the listen address) this service answers to
    allowed_hosts: tuple[str, ...] = ()
    max_connections: int = field(default=512, metadata=_meta(min=1))  # open at once
    max_streams_per_extension: int = field(default=8, metadata=_meta(min=1))  # agent live feeds
    max_lookups: int = field(default=32, metadata=_meta(min=1))  # screen-pop CRM finds at once

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


ORIGINATE_CLASSES = ("national", "international", "premium")


def _check_allow(value: tuple[str, ...]) -> str | None:
    for v in value:
        if v not in ORIGINATE_CLASSES and not re.fullmatch(r"!?\+[0-9][0-9*]*", v):
            return (
                '"national", "international", "premium" or an E.164 pattern such as "+375*" '
                f'(with "!" in front to refuse it), got "{v}"'
            )
    return None


def _check_template(*names: str) -> Callable[[str], str | None]:
    def check(value: str) -> str | None:
        try:
            value.format(**{n: "x" for n in names})
        except (KeyError, IndexError, ValueError):
            known = ", ".join("{" + n + "}" for n in names)
            return f'a template using only {known}, got "{value}"'
        return None

    return check


_NUMBER_FIELDS = ("e164", "digits", "national", "extension")


@dataclass(frozen=True)
class OriginateSettings:
    """Click-to-call (``[originate]``): how ``POST /originate`` dials and what it may dial."""

    channel: str = field(  # the agent's phone, rung first
        default="PJSIP/{extension}", metadata=_meta(check=_check_template("extension"))
    )
    context: str = "from-internal"  # the dialplan context the outside number is dialled in
    # the number as the dialplan wants it: {e164} +79161234567, {digits} 79161234567,
    # {national} 89161234567 (a prefix for an outside line goes in front: "9{national}")
    exten: str = field(default="{digits}", metadata=_meta(check=_check_template(*_NUMBER_FIELDS)))
    # shown on the agent's phone while it rings first; empty: the PBX's default
    caller_id: str = field(
        default="{digits}", metadata=_meta(check=_check_template(*_NUMBER_FIELDS))
    )
    # what may be dialled: "national" (the default country's numbers), "international",
    # "premium" (premium-rate and shared-cost numbers: refused unless listed), or E.164
    # patterns with * ("+375*" allows, "!+7495*" refuses; refusals win)
    allow: tuple[str, ...] = field(default=("national",), metadata=_meta(check=_check_allow))
    rate_limit: int = field(default=5, metadata=_meta(min=1))  # originates per extension...
    rate_window_s: float = field(default=60.0, metadata=_meta(min=1))  # ...per this window
    timeout_s: float = field(default=30.0, metadata=_meta(min=1, max=300))  # agent phone rings
    pbx: str = ""  # the [[ami]] name that dials; empty: the first


@dataclass(frozen=True)
class HealthSettings:
    """When ``GET /health`` says 503 (``[health]``)."""

    # 0: report the age of the last AMI event but never fail on it (a quiet PBX is fine)
    max_event_age_s: float = field(default=0.0, metadata=_meta(min=0))
    # a worker whose last heartbeat is older than this is gone
    worker_heartbeat_max_age_s: float = field(default=30.0, metadata=_meta(min=1))
    # a spool that holds calls and has not shrunk for this long is stuck
    spool_stall_s: float = field(default=60.0, metadata=_meta(min=1))
    redis_timeout_s: float = field(default=2.0, metadata=_meta(min=0.1))


@dataclass(frozen=True)
class Settings:
    ami: tuple[AmiSettings, ...] = (AmiSettings(),)
    redis: RedisSettings = RedisSettings()
    crm: CrmSettings = CrmSettings()
    calls: CallsSettings = CallsSettings()
    sources: dict[str, str] = field(default_factory=dict)  # tracking number (E.164) -> label
    worker: WorkerSettings = WorkerSettings()
    http: HttpSettings = HttpSettings()
    health: HealthSettings = HealthSettings()
    originate: OriginateSettings = OriginateSettings()
    spool_dir: str = "var/spool"
    source_file: Path | None = field(default=None, metadata={"internal": True})
    # env variables that changed something, for `telefum config check`
    env_overrides: tuple[str, ...] = field(default=(), metadata={"internal": True})

    def pbx(self, name: str) -> AmiSettings:
        for ami in self.ami:
            if ami.name == name:
                return ami
        raise KeyError(name)

    def crm_for(self, pbx: str) -> CrmSettings:
        """The CRM a PBX's calls go to: its own ``[ami.crm]``, else the global ``[crm]``."""
        for ami in self.ami:
            if ami.name == pbx and ami.crm is not None:
                return ami.crm
        return self.crm


# --- loading ------------------------------------------------------------------------------


def load_settings(path: str | Path | None = None) -> Settings:
    """Read, override from the environment, validate.

    ``None``: the file named by ``$TELEFUM_CONFIG`` if set, else the embedded defaults (with
    environment overrides still applied).
    """
    return load_settings_from(path, os.environ)


def load_settings_from(path: str | Path | None, environ: Mapping[str, str]) -> Settings:
    """:func:`load_settings` with an explicit environment (for tests and tools)."""
    if path is None and environ.get(CONFIG_ENV):
        path = environ[CONFIG_ENV]
    if path is None:
        doc: dict[str, Any] = {}
        file = "(embedded defaults)"
    else:
        file = str(path)
        doc = _read_toml(Path(path), file)
    ctx = _Ctx(file=file, in_file=_table_paths(doc))
    _apply_env(doc, environ, ctx)
    settings = _build_settings(doc, ctx)
    return dataclasses.replace(
        settings,
        source_file=Path(path) if path is not None else None,
        env_overrides=tuple(sorted(set(ctx.env_origin.values()))),
    )


def load_or_exit(path: str | Path | None) -> Settings:
    """For commands: the settings, or one line on stderr and exit status 2."""
    try:
        return load_settings(path)
    except ConfigError as err:
        print(f"telefum: configuration error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


def _read_toml(path: Path, file: str) -> dict[str, Any]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(file, None, "cannot read the file: it does not exist") from None
    except IsADirectoryError:
        raise ConfigError(file, None, "cannot read the file: it is a directory") from None
    except OSError as err:
        raise ConfigError(file, None, f"cannot read the file: {err.strerror or err}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise ConfigError(file, None, f"invalid TOML: not UTF-8 (at line {line})") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(file, None, f"invalid TOML: {err}") from None


@dataclass
class _Ctx:
    file: str
    in_file: set[tuple[str, ...]]  # tables written in the file (for "required")
    env_origin: dict[tuple[str, ...], str] = field(default_factory=dict)

    def fail(self, key: tuple[str, ...], problem: str) -> NoReturn:
        dotted = _dotted(key)
        env = self.env_origin.get(key)
        if env:
            dotted = f"{dotted} (from {env})"
        raise ConfigError(self.file, dotted, problem)


def _dotted(key: tuple[str, ...]) -> str:
    parts: list[str] = []
    for k in key:
        if k.startswith("["):
            parts[-1] += k
        elif re.fullmatch(r"[A-Za-z0-9_-]+", k) and not k.isdigit():
            parts.append(k)
        else:
            parts.append(f'"{k}"')
    return ".".join(parts)


def _table_paths(doc: dict[str, Any], prefix: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    out = {prefix}
    for k, v in doc.items():
        if isinstance(v, dict):
            out |= _table_paths(v, (*prefix, k))
        elif k == "ami" and not prefix and isinstance(v, list):
            for i, entry in enumerate(v):
                if isinstance(entry, dict):
                    out |= _table_paths(entry, ("ami", _ami_label(entry, i)))
    return out


def _ami_label(entry: Any, i: int) -> str:
    """How errors name one ``[[ami]]`` entry: by its name, else by its position."""
    name = entry.get("name") if isinstance(entry, dict) else None
    return f"[{name}]" if isinstance(name, str) and name else f"[{i}]"


# --- environment overrides ----------------------------------------------------------------


def _apply_env(doc: dict[str, Any], environ: Mapping[str, str], ctx: _Ctx) -> None:
    """Write every ``TELEFUM_A__B__C`` into ``doc`` as a string at a.b.c (typed later)."""
    top_scalars = {
        f.name for f in dataclasses.fields(Settings)
        if not f.metadata.get("internal") and _type_of(Settings, f.name) in (str, int, float, bool)
    }
    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX) or name == CONFIG_ENV:
            continue
        parts = [p.lower() for p in name[len(ENV_PREFIX):].split("__")]
        if len(parts) == 1:
            if parts[0] in top_scalars:  # TELEFUM_SPOOL_DIR; other one-word names are not ours
                doc[parts[0]] = environ[name]
                ctx.env_origin[(parts[0],)] = name
            continue
        if any(not p for p in parts):
            raise ConfigError(ctx.file, None, f"environment variable {name}: empty key part")
        key = _set_env_value(doc, parts, environ[name], name, ctx)
        ctx.env_origin[key] = name


def _set_env_value(
    doc: dict[str, Any], parts: list[str], value: str, env: str, ctx: _Ctx
) -> tuple[str, ...]:
    """Place one override; returns the key path as errors will name it."""
    table: dict[str, Any] = doc
    key: tuple[str, ...] = ()
    rest = parts
    if parts[0] == "ami" and isinstance(doc.get("ami"), list):
        entries: list[Any] = doc["ami"]
        names = [str(e.get("name", "")).lower() if isinstance(e, dict) else "" for e in entries]
        if parts[1] in names and len(parts) > 2:
            i = names.index(parts[1])
            rest = parts[2:]
        elif len(entries) == 1:
            i, rest = 0, parts[1:]
        else:
            raise ConfigError(
                ctx.file, "ami",
                f"{env} is ambiguous with several [[ami]] entries: "
                f"use TELEFUM_AMI__<NAME>__{'__'.join(p.upper() for p in parts[1:])}",
            )
        table, key = entries[i], ("ami", _ami_label(entries[i], i))
        if not isinstance(table, dict):
            return key
    for i, part in enumerate(rest):
        key = (*key, part)
        if i == len(rest) - 1:
            table[part] = value
        else:
            nxt = table.setdefault(part, {})
            if not isinstance(nxt, dict):
                raise ConfigError(
                    ctx.file, _dotted(key), f"{env} needs a table here, the file has a value"
                )
            table = nxt
    return key


def _coerce_env(value: str, tp: Any, key: tuple[str, ...], ctx: _Ctx) -> Any:
    """An environment string -> the type the key needs."""
    if tp is str:
        return value
    if tp is bool:
        low = value.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        ctx.fail(key, f'expected true or false, got "{value}"')
    if tp is int:
        try:
            return int(value.strip())
        except ValueError:
            ctx.fail(key, f'expected an integer, got "{value}"')
    if tp is float:
        try:
            return float(value.strip())
        except ValueError:
            ctx.fail(key, f'expected a number, got "{value}"')
    if typing.get_origin(tp) is tuple:
        s = value.strip()
        if s.startswith("["):
            try:
                return tomllib.loads(f"v = {s}")["v"]
            except tomllib.TOMLDecodeError:
                ctx.fail(key, f'expected a list such as ["a", "b"] or a,b, got "{value}"')
        return [p.strip() for p in s.split(",") if p.strip()]
    return value


# --- building typed settings --------------------------------------------------------------

_HINTS: dict[type, dict[str, Any]] = {}


def _type_of(cls: type, name: str) -> Any:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls][name]


def _keys_of(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if not f.metadata.get("internal")]


def _type_name(tp: Any) -> str:
    if tp is str:
        return "a string"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is bool:
        return "true or false"
    if typing.get_origin(tp) is tuple:
        return "a list of strings"
    return "a table"


def _got(value: Any) -> str:
    if isinstance(value, bool):
        return f"{str(value).lower()} (true/false)"
    if isinstance(value, str):
        return f'"{value}" (a string)'
    if isinstance(value, int | float):
        return f"{value} (a number)"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a table"
    return type(value).__name__


def _unknown(key: tuple[str, ...], known: list[str], ctx: _Ctx, what: str = "key") -> NoReturn:
    guess = difflib.get_close_matches(key[-1], known, n=1, cutoff=0.6)
    hint = f' (did you mean "{guess[0]}"?)' if guess else f" (known: {', '.join(known)})"
    ctx.fail(key, f"unknown {what}{hint}")


def _table(value: Any, key: tuple[str, ...], ctx: _Ctx) -> dict[str, Any]:
    if not isinstance(value, dict):
        ctx.fail(key, f"expected a table [{_dotted(key)}], got {_got(value)}")
    return value


def _value(tp: Any, value: Any, key: tuple[str, ...], meta: Mapping[str, Any], ctx: _Ctx) -> Any:
    """Check (and, for env strings, coerce) one scalar or list value."""
    if key in ctx.env_origin and isinstance(value, str):
        value = _coerce_env(value, tp, key, ctx)
    expected = _type_name(tp)
    if tp is str:
        ok = isinstance(value, str)
    elif tp is bool:
        ok = isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif tp is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif typing.get_origin(tp) is tuple:
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
        value = tuple(value) if ok else value
    else:  # pragma: no cover - a schema type this loader does not know
        raise TypeError(f"settings type {tp} for {_dotted(key)}")
    if not ok:
        ctx.fail(key, f"expected {expected}, got {_got(value)}")
    choices = meta.get("choices")
    if choices and value not in choices:
        listed = ", ".join(f'"{c}"' for c in choices)
        ctx.fail(key, f'expected one of {listed}, got "{value}"')
    lo, hi = meta.get("min"), meta.get("max")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        rng = f"at least {lo:g}" if hi is None else f"from {lo:g} to {hi:g}"
        ctx.fail(key, f"expected a number {rng}, got {value}")
    check = meta.get("check")
    if check is not None:
        problem = check(value)
        if problem:
            ctx.fail(key, f"expected {problem}")
    return value


def _build(
    cls: type, raw: dict[str, Any], key: tuple[str, ...], ctx: _Ctx,
    special: Mapping[str, Callable[[Any, tuple[str, ...]], Any]] | None = None,
) -> Any:
    """A dataclass from a raw table: unknown keys refused, required keys enforced.

    ``special`` builds the fields plain types cannot (nested tables with rules of their own).
    """
    known = _keys_of(cls)
    for k in raw:
        if k not in known:
            _unknown((*key, k), known, ctx)
    written = key in ctx.in_file
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.metadata.get("internal"):
            continue
        fkey = (*key, f.name)
        if f.name not in raw:
            if f.metadata.get("required") and written:
                env = ENV_PREFIX + "__".join(p.upper() for p in fkey if not p.startswith("["))
                ctx.fail(
                    fkey,
                    f"missing: expected {_type_name(_type_of(cls, f.name))} "
                    f"(write it in the file, or set {env})",
                )
            continue
        if special and f.name in special:
            kwargs[f.name] = special[f.name](raw[f.name], fkey)
            continue
        tp = _type_of(cls, f.name)
        if dataclasses.is_dataclass(tp):
            kwargs[f.name] = _build(tp, _table(raw[f.name], fkey, ctx), fkey, ctx)  # type: ignore[arg-type]
        elif typing.get_origin(tp) is dict:
            table = _table(raw[f.name], fkey, ctx)
            kwargs[f.name] = {
                str(k): _value(str, v, (*fkey, str(k)), {}, ctx) for k, v in table.items()
            }
        else:
            kwargs[f.name] = _value(tp, raw[f.name], fkey, f.metadata, ctx)
    return cls(**kwargs)


def _section(
    cls: type, name: str, doc: dict[str, Any], ctx: _Ctx,
    special: Mapping[str, Callable[[Any, tuple[str, ...]], Any]] | None = None,
) -> Any:
    return _build(cls, _table(doc.get(name, {}), (name,), ctx), (name,), ctx, special)


def _build_settings(doc: dict[str, Any], ctx: _Ctx) -> Settings:
    known = _keys_of(Settings)
    for k in doc:
        if k not in known:
            _unknown((k,), known, ctx, "section" if isinstance(doc[k], dict) else "key")
    calls = _section(CallsSettings, "calls", doc, ctx)
    ext_re = re.compile(calls.extension_pattern)

    def agents(value: Any, key: tuple[str, ...]) -> dict[str, Credentials]:
        out: dict[str, Credentials] = {}
        for ext, creds in _table(value, key, ctx).items():
            akey = (*key, ext)
            if not ext_re.fullmatch(ext):
                ctx.fail(akey, f"expected an extension matching {calls.extension_pattern}")
            table = _table(creds, akey, ctx)
            for k in table:
                if k not in ("login", "password"):
                    _unknown((*akey, k), ["login", "password"], ctx)
            for k in ("login", "password"):
                if k not in table:
                    ctx.fail((*akey, k), "missing: expected a string")
            out[ext] = Credentials(
                _value(str, table["login"], (*akey, "login"), {}, ctx),
                _value(str, table["password"], (*akey, "password"), {}, ctx),
            )
        return out

    def agent_tokens(value: Any, key: tuple[str, ...]) -> dict[str, str]:
        out: dict[str, str] = {}
        for ext, tok in _table(value, key, ctx).items():
            if not ext_re.fullmatch(ext):
                ctx.fail((*key, ext), f"expected an extension matching {calls.extension_pattern}")
            out[ext] = _value(str, tok, (*key, ext), {}, ctx)
            if not out[ext]:
                ctx.fail((*key, ext), "expected a non-empty token")
        return out

    crm_raw = _table(doc.get("crm", {}), ("crm",), ctx)
    crm = _build(CrmSettings, crm_raw, ("crm",), ctx, {"agents": agents})

    def ami_crm(value: Any, key: tuple[str, ...]) -> CrmSettings:
        # A PBX's own CRM inherits what it does not say from [crm], except the agents:
        # extension 101 on one PBX is not the same person as 101 on another.
        own = _table(value, key, ctx)
        merged = {k: v for k, v in crm_raw.items() if k != "agents"} | own
        for k in merged:
            if k not in own and ("crm", k) in ctx.env_origin:
                ctx.env_origin.setdefault((*key, k), ctx.env_origin[("crm", k)])
        return _build(CrmSettings, merged, key, ctx, {"agents": agents})

    amis: list[AmiSettings] = []
    raw_ami = doc.get("ami", {})
    if isinstance(raw_ami, list):
        if not raw_ami:
            ctx.fail(("ami",), "expected at least one [[ami]] entry")
        for i, entry in enumerate(raw_ami):
            pos = ("ami", _ami_label(entry, i))
            table = _table(entry, pos, ctx)
            if "name" not in table and len(raw_ami) > 1:
                ctx.fail((*pos, "name"), "missing: expected a string (every [[ami]] needs a name)")
            amis.append(_build(AmiSettings, table, pos, ctx, {"crm": ami_crm}))
    else:
        table = _table(raw_ami, ("ami",), ctx)
        amis.append(_build(AmiSettings, table, ("ami",), ctx, {"crm": ami_crm}))
    seen: set[str] = set()
    for i, ami in enumerate(amis):
        if ami.name in seen:
            ctx.fail(("ami", f"[{i}]", "name"), f'expected a unique name, "{ami.name}" is twice')
        seen.add(ami.name)

    sources: dict[str, str] = {}
    for number, label in _table(doc.get("sources", {}), ("sources",), ctx).items():
        skey = ("sources", number)
        label = _value(str, label, skey, {}, ctx)
        e164 = to_e164(number, calls.default_country)
        if e164 is None:
            ctx.fail(skey, f"expected a phone number (the tracking number), got \"{number}\"")
        if e164 in sources and sources[e164] != label:
            ctx.fail(skey, f'is {e164}, already labelled "{sources[e164]}"')
        sources[e164] = label

    originate = _section(OriginateSettings, "originate", doc, ctx)
    if originate.pbx and originate.pbx not in seen:
        ctx.fail(
            ("originate", "pbx"),
            f"expected empty or the name of an [[ami]] entry ({', '.join(sorted(seen))}), "
            f'got "{originate.pbx}"',
        )

    return Settings(
        ami=tuple(amis),
        redis=_section(RedisSettings, "redis", doc, ctx),
        crm=crm,
        calls=calls,
        sources=sources,
        worker=_section(WorkerSettings, "worker", doc, ctx),
        http=_section(HttpSettings, "http", doc, ctx, {"agent_tokens": agent_tokens}),
        health=_section(HealthSettings, "health", doc, ctx),
        originate=originate,
        spool_dir=_value(str, doc.get("spool_dir", Settings.spool_dir), ("spool_dir",), {}, ctx),
    )


# --- showing settings ---------------------------------------------------------------------

MASK = "***"
_SECRET_NAMES = ("password", "secret", "token")


def _mask(name: str, value: Any) -> Any:
    if isinstance(value, str) and value and any(s in name for s in _SECRET_NAMES):
        return MASK
    if isinstance(value, str) and "://" in value:
        return redact_url(value)
    return value


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    s = str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{s}"'


def _toml_key(k: str) -> str:
    return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else _toml_value(k)


def settings_to_toml(settings: Settings, mask_secrets: bool = True) -> str:
    """The effective settings as TOML (secrets masked): what ``telefum config check`` prints."""
    lines: list[str] = []

    def scalars(obj: Any) -> list[tuple[str, Any]]:
        out = []
        for f in dataclasses.fields(obj):
            v = getattr(obj, f.name)
            if f.metadata.get("internal") or dataclasses.is_dataclass(v) or isinstance(v, dict):
                continue
            if v is None:
                continue
            out.append((f.name, _mask(f.name, v) if mask_secrets else v))
        return out

    def table(header: str, pairs: list[tuple[str, Any]]) -> None:
        lines.append("")
        lines.append(header)
        lines.extend(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in pairs)

    def crm_tables(prefix: str, crm: CrmSettings) -> None:
        table(f"[{prefix}]", scalars(crm))
        for ext, creds in crm.agents.items():
            pw = MASK if mask_secrets and creds.password else creds.password
            table(f'[{prefix}.agents."{ext}"]', [("login", creds.login), ("password", pw)])

    lines.append(f"spool_dir = {_toml_value(settings.spool_dir)}")
    multi = len(settings.ami) > 1
    for ami in settings.ami:
        table("[[ami]]" if multi else "[ami]", scalars(ami))
        if ami.crm is not None:
            crm_tables("ami.crm", ami.crm)
    table("[redis]", scalars(settings.redis))
    crm_tables("crm", settings.crm)
    table("[calls]", scalars(settings.calls))
    table("[sources]", list(settings.sources.items()))
    table("[worker]", scalars(settings.worker))
    table("[http]", scalars(settings.http))
    if settings.http.agent_tokens:
        table(
            "[http.agent_tokens]",
            [(k, MASK if mask_secrets else v) for k, v in settings.http.agent_tokens.items()],
        )
    table("[health]", scalars(settings.health))
    table("[originate]", scalars(settings.originate))
    return "\n".join(lines).lstrip("\n") + "\n"
