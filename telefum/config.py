"""``settings.toml``: typed settings, validated at start, secrets overridable by env.

Every key can be overridden by ``TELEFUM_<SECTION>__<KEY>`` (e.g. ``TELEFUM_CRM__PASSWORD``).
Errors name the file, the key and what was expected.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from crm_client.types import Credentials
from telephony.rules import DEFAULT_INBOUND_CONTEXTS, DEFAULT_INTERNAL_CONTEXTS, CallRules


class ConfigError(Exception):
    """A broken configuration: ``str(err)`` is one line naming file, key and expectation."""


@dataclass(frozen=True)
class CrmSettings:
    url: str = "http://127.0.0.1:8080/rest"
    login: str = "bridge"
    password: str = "change-me"
    phone_format: str = "e164"  # e164 | digits | national
    timeout_s: float = 10.0
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
    name: str = "default"  # the PBX's name: part of job ids and metrics labels
    host: str = "127.0.0.1"
    port: int = 5038
    username: str = "telefum"
    secret: str = "change-me"
    ping_interval_s: float = 10.0
    ping_timeout_s: float = 5.0
    reconnect_max_s: float = 60.0
    crm: CrmSettings | None = None  # this PBX's own CRM, else the global [crm]


@dataclass(frozen=True)
class RedisSettings:
    url: str = ""  # empty: start a private, throwaway Redis (demo and development only)


@dataclass(frozen=True)
class CallsSettings:
    default_country: str = "RU"
    inbound_contexts: tuple[str, ...] = DEFAULT_INBOUND_CONTEXTS
    internal_contexts: tuple[str, ...] = DEFAULT_INTERNAL_CONTEXTS
    trunk_channel_pattern: str = CallRules.trunk_channel_pattern
    extension_pattern: str = CallRules.extension_pattern
    max_call_age_s: float = 12 * 3600.0

    def rules(self, pbx: str = "default") -> CallRules:
        return CallRules(
            default_country=self.default_country,
            inbound_contexts=self.inbound_contexts,
            internal_contexts=self.internal_contexts,
            trunk_channel_pattern=self.trunk_channel_pattern,
            extension_pattern=self.extension_pattern,
            max_call_age_s=self.max_call_age_s,
            pbx=pbx,
        )


@dataclass(frozen=True)
class WorkerSettings:
    """What is logged and how (``[worker]``)."""

    log_missed: bool = True
    log_internal: bool = False
    log_unanswered_outbound: bool = True
    create_contacts_for: tuple[str, ...] = ("in",)  # directions that auto-create contacts
    contact_name: str = "Новый контакт {phone}"
    contact_type: str = "contact"
    subject_in: str = "Входящий звонок"
    subject_out: str = "Исходящий звонок"
    subject_missed: str = "Пропущенный звонок"
    description: str = (
        "Длительность {duration}; добавочный {extension}; номер {did} ({source})"
    )
    retry_total_s: float = 24 * 3600.0
    job_timeout_s: float = 30.0
    max_jobs: int = 50
    recording_url: str = ""  # e.g. "https://pbx.example.com/rec/{call_id}.wav"


@dataclass(frozen=True)
class HttpSettings:
    listen: str = "127.0.0.1:8088"
    token: str = ""  # required for anything that acts (requeue, originate)
    agent_tokens: dict[str, str] = field(default_factory=dict)  # extension -> token


@dataclass(frozen=True)
class Settings:
    ami: tuple[AmiSettings, ...] = (AmiSettings(),)
    redis: RedisSettings = RedisSettings()
    crm: CrmSettings = CrmSettings()
    calls: CallsSettings = CallsSettings()
    sources: dict[str, str] = field(default_factory=dict)  # tracking number (E.164) -> label
    worker: WorkerSettings = WorkerSettings()
    http: HttpSettings = HttpSettings()
    spool_dir: str = "var/spool"
    source_file: Path | None = None  # where these settings came from


def load_settings(path: str | Path | None = None) -> Settings:
    """Read, override from the environment, validate. ``None``: embedded defaults."""
    if path is None:
        return Settings()
    raise NotImplementedError("settings loader: see issue 5")
