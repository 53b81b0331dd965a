"""The one place that decides what a failure means: retry later, or dead-letter now.

By the exception's type, nothing else:

- transient (:class:`crm_client.errors.Transient`: the CRM's timeouts, refused
  connections, 5xx, 429, and the worker's own "not now"; plus timeouts and Redis
  hiccups) -> retry after the policy's backoff (``telephony.backoff``), or after the
  ``retry_after`` the CRM asked for when that is longer;
- permanent (wrong credentials, a request the CRM rejects, a record we cannot read, a bug)
  -> dead letter at once: retrying cannot help, and ops must look;
- transient but the call has been failing for longer than the retry budget -> dead letter.

``may_have_acted`` says whether a failed request may still have been carried out by the
CRM (a timeout, a dropped connection): a re-sent ``addevent`` is then a possible duplicate,
counted and logged (``steps.py``).

The job turns a "retry" into ``arq.Retry(defer=...)`` (the only exception arq retries).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import LockError
from redis.exceptions import TimeoutError as RedisTimeoutError

from crm_client.errors import Transient
from crm_client.redact import redact_text

from .policy import RetryPolicy

# Failures that may pass. The CRM's and the worker's own say so by deriving from Transient;
# the rest are the libraries' exceptions for a network or a Redis that may come back.
TRANSIENT = (
    Transient,
    TimeoutError,
    ConnectionError,
    RedisConnectionError,
    RedisTimeoutError,
    LockError,
)


@dataclass(frozen=True)
class Decision:
    retry: bool
    delay_s: float  # when retry
    reason: str  # one line, secrets redacted: goes to the ledger and the dead-letter store


def is_transient(err: BaseException) -> bool:
    """Whether the same work may succeed later: by the exception's type."""
    return isinstance(err, TRANSIENT)


def may_have_acted(err: BaseException) -> bool:
    """Whether the CRM may have carried out the request this failure interrupted: the
    error says so itself, and a bare timeout (the run's own deadline cut a request short)
    may have."""
    if isinstance(err, Transient):
        return err.may_have_acted
    return isinstance(err, TimeoutError)


def describe(err: BaseException) -> str:
    """``ErrorClass: message``, one line, secrets masked, bounded length."""
    msg = " ".join(str(err).split()) or repr(err)
    return redact_text(f"{type(err).__name__}: {msg}")[:500]


def decide(
    err: BaseException,
    *,
    attempt: int,
    first_attempt_at: float,
    now: float,
    policy: RetryPolicy,
    rng: random.Random | None = None,
) -> Decision:
    what = describe(err)
    if not is_transient(err):
        return Decision(False, 0.0, f"permanent: {what}")
    delay = policy.backoff(rng).delay(attempt)
    retry_after = err.retry_after if isinstance(err, Transient) else None
    if retry_after is not None and retry_after > delay:  # the CRM's wish, up to our longest
        delay = min(float(retry_after), max(policy.max_delay_s, delay))
    if now + delay - first_attempt_at > policy.total_s:
        spent = now - first_attempt_at
        return Decision(
            False,
            0.0,
            f"gave up after {attempt} attempts over {_human(spent)} "
            f"(retry budget {_human(policy.total_s)}); last error: {what}",
        )
    return Decision(True, delay, f"transient: {what}")


def _human(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.1f} s"
