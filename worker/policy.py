"""What the worker does with a finished call, as plain values the shell fills in.

``worker/`` never reads ``settings.toml``: the service shell does, and two of its sections
are the classes here (pydantic validates them there): ``[worker]`` is :class:`CallPolicy`,
``[crm]`` (and a PBX's own ``[ami.crm]``) is :class:`CrmTarget`. A worker can also be started
from a JSON file (``python -m worker --config-json F``), and tests build them directly.
"""

from __future__ import annotations

import hashlib
import json
import random
import string
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, replace
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import pydantic
from pydantic import AfterValidator, ConfigDict, Field, SecretStr

from crm_client.redact import redact_url
from crm_client.types import Credentials
from telephony.backoff import Backoff
from telephony.phones import PhoneFormat

# Placeholders the subject, description, contact name and recording URL templates may use.
PLACEHOLDERS = frozenset(
    {
        "duration",  # talk time, "3:54" (empty when nobody answered; a bound after a gap
        #              in the AMI link: "≥0:13 (разрыв связи с АТС)", see plan.duration_text)
        "ring",  # time until answer (or until the end, unanswered), "0:12"; empty: unknown
        "extension",  # who answered (in) / who dialled (out)
        "did",  # the number an inbound caller dialled, E.164
        "source",  # the [sources] label of that number
        "phone",  # the outside number, formatted for the CRM
        "direction",  # in | out | internal
        "disposition",  # answered | no-answer | busy | failed
        "call_id",
        "pbx",
        "date",  # start, "2026-11-26 12:00" UTC
        "recording_url",  # the rendered [worker] recording_url, when configured
    }
)

RETRY_BUDGET_S = 24 * 3600.0  # [worker] retry_total_s: how long a call may keep failing


def check_template(template: str, known: Collection[str]) -> str:
    """``template`` when ``str.format`` can fill it from ``known`` names, else ValueError
    naming what is wrong (a typo fails at start, not at the first call). The one template
    check: the worker's texts here, the click-to-call templates in ``telefum.originate``."""
    try:
        names = [n for _, n, _, _ in string.Formatter().parse(template) if n is not None]
    except ValueError as err:
        raise ValueError(f'expected a template, got "{template}" ({err})') from None
    for name in names:
        if name not in known:
            listed = ", ".join("{" + n + "}" for n in sorted(known))
            raise ValueError(f"unknown placeholder {{{name}}} (known: {listed})")
    return template


CallTemplate = Annotated[str, AfterValidator(lambda v: check_template(v, PLACEHOLDERS))]


def _crm_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(
            f'expected an http(s) URL such as "https://crm.example.com/rest", '
            f'got "{redact_url(value)}"'
        )
    if "#" in value:  # everything after it would never reach the CRM: empty queries
        raise ValueError(f'expected a URL without a "#fragment", got "{redact_url(value)}"')
    return value


@pydantic.dataclasses.dataclass(frozen=True, config=ConfigDict(extra="forbid"))
class CrmTarget:
    """One CRM endpoint and whose credentials to use there (``[crm]``, or ``[ami.crm]``)."""

    url: Annotated[str, AfterValidator(_crm_url)]  # the TelefUM /rest endpoint
    login: str  # the service account: calls without an agent of their own
    password: SecretStr
    phone_format: PhoneFormat = PhoneFormat.E164  # how phones are sent to the CRM
    timeout_s: float = Field(default=10.0, ge=0.1, strict=True)  # one request's time limit
    agents: dict[str, Credentials] = field(default_factory=dict)  # extension -> own creds

    @property
    def service(self) -> Credentials:
        return Credentials(self.login, self.password)

    def credentials_for(self, extension: str | None) -> Credentials:
        """The agent's own credentials when we have them, else the service account."""
        if extension and extension in self.agents:
            return self.agents[extension]
        return self.service

    @property
    def lock_scope(self) -> str:
        """Short stable id of this CRM for per-phone lock keys (two CRMs never share locks)."""
        return hashlib.sha1(self.url.encode()).hexdigest()[:12]


Direction = Literal["in", "out", "internal"]
_Bool = Annotated[bool, Field(strict=True)]  # a file's 1 or "yes" is not taken for true


@pydantic.dataclasses.dataclass(frozen=True, config=ConfigDict(extra="forbid"))
class CallPolicy:
    """``[worker]``: which calls are logged, what the CRM is told, how long delivery may take."""

    log_missed: _Bool = True  # inbound nobody answered
    log_internal: _Bool = False  # between extensions: on the other extension's contact (plan.py)
    log_unanswered_outbound: _Bool = True
    create_contacts_for: tuple[Direction, ...] = ("in",)  # directions that auto-create a contact
    contact_name: CallTemplate = "Новый контакт {phone}"
    contact_type: str = "contact"
    subject_in: CallTemplate = "Входящий звонок"
    subject_out: CallTemplate = "Исходящий звонок"
    subject_missed: CallTemplate = "Пропущенный звонок"
    subject_internal: CallTemplate = "Внутренний звонок"
    description: CallTemplate = (
        "Длительность {duration}; добавочный {extension}; номер {did} ({source})"
    )
    recording_url: CallTemplate = ""  # e.g. "https://pbx.example.com/rec/{call_id}.wav"
    # transient failures are retried (backoff + jitter) this long, then dead-lettered
    retry_total_s: float = Field(default=RETRY_BUDGET_S, ge=0, strict=True)
    # Short on purpose: a SIGKILLed worker's job is re-run only when arq's in-progress lock
    # expires, job_timeout_s + in_progress_grace_s after it started.
    job_timeout_s: float = Field(default=30.0, ge=1, strict=True)
    # jobs in flight per worker process: they overlap CRM round trips
    max_jobs: int = Field(default=50, ge=1, strict=True)


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff for transient failures, and the total time a call may keep failing.

    The budget runs from the call's first attempt (kept in the ledger), not from the arq job,
    which is re-created on requeue and expires on its own clock.
    """

    first_delay_s: float = 5.0
    factor: float = 2.0
    max_delay_s: float = 600.0
    jitter: float = 0.25  # each delay is scaled by a random factor in [1 - j, 1 + j]
    total_s: float = RETRY_BUDGET_S

    def __post_init__(self) -> None:
        self.backoff()  # ValueError on delays that make no backoff
        if self.total_s < 0:
            raise ValueError("retry: need total_s >= 0")

    def backoff(self, rng: random.Random | None = None) -> Backoff:
        """The delays between a call's attempts (``Backoff.delay(attempt)``)."""
        return Backoff(
            self.first_delay_s, self.max_delay_s, factor=self.factor, jitter=self.jitter, rng=rng
        )


DEFAULT_QUEUE = "telefum:queue"

# Time kept free at the end of a job: our own deadline fires this long before arq's timeout,
# so a slow CRM ends in our Retry, never in arq's TimeoutError (which fails a job for good).
JOB_MARGIN_S = 1.0


@dataclass(frozen=True)
class WorkerConfig:
    """Everything a worker process needs besides the Redis URL."""

    crm: CrmTarget
    crm_by_pbx: Mapping[str, CrmTarget] = field(default_factory=dict)  # a PBX's own CRM
    calls: CallPolicy = field(default_factory=CallPolicy)
    sources: Mapping[str, str] = field(default_factory=dict)  # tracking number E.164 -> label
    retry: RetryPolicy = RetryPolicy()
    queue_name: str = DEFAULT_QUEUE
    in_progress_grace_s: float = 10.0  # arq's own margin is 10 s
    # how often an idle worker looks at the queue: a finished call waits for the next look
    # (arq's 0.5 s default was most of a call's hangup-to-CRM time); ~20 cheap reads/s
    poll_delay_s: float = 0.05
    heartbeat_s: float = 5.0
    reconcile_s: float = 30.0  # how often lost jobs are looked for (see worker/reconcile.py)
    # a CRM whose requests all failed for this long, then answers: its waiting calls run at
    # once (worker/crm_health.py); the service sets it to [health] crm_failing_s
    crm_failing_s: float = 60.0
    ledger_ttl_s: float = 30 * 86400.0  # how long "this call was delivered" is remembered
    # where CRM answers wait for Redis on disk (worker/outbox.py); "": a temporary folder,
    # which does not outlive the process
    outbox_dir: str = ""

    def __post_init__(self) -> None:
        slowest = max([self.crm.timeout_s, *(t.timeout_s for t in self.crm_by_pbx.values())])
        if self.job_timeout_s < slowest + 2 * JOB_MARGIN_S:
            raise ValueError(
                f"job_timeout_s ({self.job_timeout_s:g}) must exceed the CRM timeout "
                f"({slowest:g}) by at least {2 * JOB_MARGIN_S:g} s, or no CRM write could start"
            )

    @property
    def job_timeout_s(self) -> float:
        return self.calls.job_timeout_s

    @property
    def max_jobs(self) -> int:
        return self.calls.max_jobs

    def crm_for(self, pbx: str) -> CrmTarget:
        return self.crm_by_pbx.get(pbx, self.crm)

    def secret_values(self) -> list[str]:
        """The CRM passwords (service accounts and agents): masked by value in logs."""
        targets = [self.crm, *self.crm_by_pbx.values()]
        creds = [c for t in targets for c in (t.service, *t.agents.values())]
        return [c.password.get_secret_value() for c in creds]

    @property
    def job_expires_s(self) -> float:
        """arq's job key TTL: outlives the retry budget (arq's default is one day)."""
        return self.retry.total_s + 86400.0

    # --- a JSON form, for ``python -m worker --config-json`` and subprocess tests ---------

    def to_json(self) -> dict[str, Any]:
        """Plain JSON values, passwords in clear: the worker's own config file."""
        plain: dict[str, Any] = json.loads(json.dumps(_JSON.dump_python(self), default=_reveal))
        return plain

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> WorkerConfig:
        """ValueError (pydantic's, naming the key) when ``d`` is not a WorkerConfig."""
        return _JSON.validate_python(d)

    def dumps(self) -> str:
        return json.dumps(self.to_json(), ensure_ascii=False, indent=2)

    def with_(self, **changes: Any) -> WorkerConfig:
        return replace(self, **changes)


_JSON: pydantic.TypeAdapter[WorkerConfig] = pydantic.TypeAdapter(WorkerConfig)


def _reveal(value: Any) -> str:
    return value.get_secret_value() if isinstance(value, SecretStr) else str(value)
