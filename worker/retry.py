"""The one place that decides what a failure means: retry later, or dead-letter now.

- transient (the CRM or the network may be fine later: timeouts, refused connections, 5xx,
  429, Redis hiccups) -> retry after the policy's backoff (``telephony.backoff``:
  exponential with jitter, capped);
- permanent (wrong credentials, a request the CRM rejects, a record we cannot read, a bug)
  -> dead letter at once: retrying cannot help, and ops must look;
- transient but the call has been failing for longer than the retry budget -> dead letter.

The job turns a "retry" into ``arq.Retry(defer=...)`` (the only exception arq retries).
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import LockError
from redis.exceptions import TimeoutError as RedisTimeoutError

from crm_client.redact import redact_text

from .policy import RetryPolicy


@dataclass(frozen=True)
class Decision:
    retry: bool
    delay_s: float  # when retry
    reason: str  # one line, secrets redacted: goes to the ledger and the dead-letter store


def is_transient(err: BaseException) -> bool:
    """CRM errors say so themselves (``err.transient``); for the rest, by type."""
    flag = getattr(err, "transient", None)
    if isinstance(flag, bool):
        return flag
    return isinstance(
        err,
        asyncio.TimeoutError | TimeoutError | ConnectionError | RedisConnectionError
        | RedisTimeoutError | LockError,
    )


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
    retry_after = getattr(err, "retry_after", None)  # HTTP 429's Retry-After: the CRM's wish
    if isinstance(retry_after, int | float) and retry_after > delay:
        delay = min(float(retry_after), max(policy.max_delay_s, delay))
    if now + delay - first_attempt_at > policy.total_s:
        spent = now - first_attempt_at
        return Decision(
            False, 0.0,
            f"gave up after {attempt} attempts over {_human(spent)} "
            f"(retry budget {_human(policy.total_s)}); last error: {what}",
        )  # fmt: skip
    return Decision(True, delay, f"transient: {what}")


def _human(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.1f} s"
