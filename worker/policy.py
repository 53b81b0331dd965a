"""What the worker does with a finished call, as plain values the shell fills in.

``worker/`` never reads ``settings.toml`` (the service shell does and builds these), so a
worker can also be started from a JSON file (``python -m worker --config-json F``), and
tests build them directly.
"""

from __future__ import annotations

import hashlib
import json
import random
import string
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from crm_client.types import Credentials
from telephony.backoff import Backoff
from telephony.phones import PhoneFormat

# Placeholders the subject, description, contact name and recording URL templates may use.
PLACEHOLDERS = frozenset(
    {
        "duration",  # talk time, "3:54" (empty when nobody answered)
        "ring",  # time until answer (or until the end, unanswered), "0:12"
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

DEFAULT_DESCRIPTION = "Длительность {duration}; добавочный {extension}; номер {did} ({source})"


def check_template(template: str, what: str) -> None:
    """ValueError naming the template and the placeholder when a template cannot render."""
    try:
        names = [n for _, n, _, _ in string.Formatter().parse(template) if n is not None]
    except ValueError as err:
        raise ValueError(f"{what}: malformed template {template!r}: {err}") from None
    for name in names:
        if name not in PLACEHOLDERS:
            known = ", ".join(sorted(PLACEHOLDERS))
            raise ValueError(f"{what}: unknown placeholder {{{name}}} (known: {known})")


@dataclass(frozen=True)
class CrmTarget:
    """One CRM endpoint and whose credentials to use there."""

    url: str
    service: Credentials  # the service account: calls without an agent of their own
    agents: Mapping[str, Credentials] = field(default_factory=dict)  # extension -> own creds
    phone_format: str = PhoneFormat.E164.value
    timeout_s: float = 10.0

    def __post_init__(self) -> None:
        PhoneFormat(self.phone_format)  # ValueError on an unknown format

    def credentials_for(self, extension: str | None) -> Credentials:
        """The agent's own credentials when we have them, else the service account."""
        if extension and extension in self.agents:
            return self.agents[extension]
        return self.service

    @property
    def lock_scope(self) -> str:
        """Short stable id of this CRM for per-phone lock keys (two CRMs never share locks)."""
        return hashlib.sha1(self.url.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class CallPolicy:
    """Which calls are logged and what the CRM is told (``[worker]`` + ``[sources]``)."""

    log_missed: bool = True  # inbound nobody answered
    log_internal: bool = False  # needs an outside number: internal calls usually have none
    log_unanswered_outbound: bool = True
    create_contacts_for: tuple[str, ...] = ("in",)  # directions that auto-create a contact
    contact_name: str = "Новый контакт {phone}"
    contact_type: str = "contact"
    subject_in: str = "Входящий звонок"
    subject_out: str = "Исходящий звонок"
    subject_missed: str = "Пропущенный звонок"
    subject_internal: str = "Внутренний звонок"
    description: str = DEFAULT_DESCRIPTION
    recording_url: str = ""  # e.g. "https://pbx.example.com/rec/{call_id}.wav"
    sources: Mapping[str, str] = field(default_factory=dict)  # tracking number E.164 -> label

    def __post_init__(self) -> None:
        for f in ("contact_name", "subject_in", "subject_out", "subject_missed",
                  "subject_internal", "description", "recording_url"):  # fmt: skip
            check_template(getattr(self, f), f)
        bad = [d for d in self.create_contacts_for if d not in ("in", "out", "internal")]
        if bad:
            raise ValueError(f"create_contacts_for: unknown direction {bad[0]!r}")


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
    total_s: float = 24 * 3600.0

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
    calls: CallPolicy = CallPolicy()
    retry: RetryPolicy = RetryPolicy()
    queue_name: str = DEFAULT_QUEUE
    max_jobs: int = 50  # jobs in flight per worker process: they overlap CRM round trips
    # Short on purpose: a SIGKILLed worker's job is re-run only when arq's in-progress lock
    # expires, job_timeout_s + in_progress_grace_s after it started.
    job_timeout_s: float = 30.0
    in_progress_grace_s: float = 10.0  # arq's own margin is 10 s
    # how often an idle worker looks at the queue: a finished call waits for the next look
    # (arq's 0.5 s default was most of a call's hangup-to-CRM time); ~20 cheap reads/s
    poll_delay_s: float = 0.05
    heartbeat_s: float = 5.0
    reconcile_s: float = 30.0  # how often lost jobs are looked for (see worker/reconcile.py)
    ledger_ttl_s: float = 30 * 86400.0  # how long "this call was delivered" is remembered

    def __post_init__(self) -> None:
        slowest = max([self.crm.timeout_s, *(t.timeout_s for t in self.crm_by_pbx.values())])
        if self.job_timeout_s < slowest + 2 * JOB_MARGIN_S:
            raise ValueError(
                f"job_timeout_s ({self.job_timeout_s:g}) must exceed the CRM timeout "
                f"({slowest:g}) by at least {2 * JOB_MARGIN_S:g} s, or no CRM write could start"
            )
        if self.max_jobs < 1:
            raise ValueError("max_jobs must be at least 1")

    def crm_for(self, pbx: str) -> CrmTarget:
        return self.crm_by_pbx.get(pbx, self.crm)

    @property
    def job_expires_s(self) -> float:
        """arq's job key TTL: outlives the retry budget (arq's default is one day)."""
        return self.retry.total_s + 86400.0

    # --- a JSON form, for ``python -m worker --config-json`` and subprocess tests ---------

    def to_json(self) -> dict[str, Any]:
        def target(t: CrmTarget) -> dict[str, Any]:
            d = asdict(t)
            d["service"] = _creds_json(t.service)
            d["agents"] = {k: _creds_json(v) for k, v in t.agents.items()}
            return d

        out: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self)}
        out["crm"] = target(self.crm)
        out["crm_by_pbx"] = {k: target(v) for k, v in self.crm_by_pbx.items()}
        out["calls"] = asdict(self.calls) | {"sources": dict(self.calls.sources)}
        out["retry"] = asdict(self.retry)
        return out

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> WorkerConfig:
        def target(t: Mapping[str, Any]) -> CrmTarget:
            return CrmTarget(
                url=t["url"],
                service=_creds(t["service"]),
                agents={k: _creds(v) for k, v in t.get("agents", {}).items()},
                phone_format=t.get("phone_format", "e164"),
                timeout_s=float(t.get("timeout_s", 10.0)),
            )

        calls = dict(d.get("calls", {}))
        if "create_contacts_for" in calls:
            calls["create_contacts_for"] = tuple(calls["create_contacts_for"])
        scalars = {
            f.name: d[f.name]
            for f in fields(cls)
            if f.name not in ("crm", "crm_by_pbx", "calls", "retry") and f.name in d
        }
        return cls(
            crm=target(d["crm"]),
            crm_by_pbx={k: target(v) for k, v in d.get("crm_by_pbx", {}).items()},
            calls=CallPolicy(**calls),
            retry=RetryPolicy(**d.get("retry", {})),
            **scalars,
        )

    def dumps(self) -> str:
        return json.dumps(self.to_json(), ensure_ascii=False, indent=2)

    def with_(self, **changes: Any) -> WorkerConfig:
        return replace(self, **changes)


def _creds(d: Mapping[str, str]) -> Credentials:
    return Credentials(d["login"], d["password"])


def _creds_json(c: Credentials) -> dict[str, str]:
    return {"login": c.login, "password": c.password}
