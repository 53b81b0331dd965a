"""Every way a TelefUM request can fail, and the one exception taxonomy of the bridge.

:class:`Transient` is the base of every failure that may pass (the worker retries it with
backoff); anything else is permanent (dead-letter, tell ops). A transient failure carries

- ``retry_after``: the seconds the other side asked us to wait (HTTP Retry-After), or None;
- ``may_have_acted``: True when the request may have reached the CRM and been acted on
  although no answer we could use came back, so that sending it again may write twice;
  False when it surely was not acted on.

The worker's own transient failures (``worker.steps``) derive from :class:`Transient` too.

Transient (:class:`TransientCrmError`), by ``kind``, with ``may_have_acted``:
  ``network``      refused, DNS, TLS, unreachable: the request was never sent (False);
                   the connection reset or closed after the request was sent, or the
                   answer cut off mid-body (True)
  ``timeout``      no complete answer within the client's timeout (True: we cannot tell
                   whether the CRM got the request)
  ``http``         HTTP 503 and 408: the server turned the request away unprocessed
                   (False); 500, a gateway's 502/504, other 5xx: the CRM, or the server
                   behind the gateway, may have acted before failing (True)
  ``rate_limited`` HTTP 429 (False)
                   (429 and 5xx keep the server's Retry-After in ``retry_after``, seconds)
  ``bad_response`` an answer we cannot read: empty body, an HTML page, truncated or
                   garbled XML, an ``ok`` without the id it must carry (True: it answered,
                   so it had the request).

  Why unreadable answers are transient: in practice they come from what stands in front
  of a CRM, not from the request: a proxy's "502 Bad Gateway" page served with status 200,
  a PHP fatal error cut into the output, a deploy restarting the app, a connection closed
  mid-answer. A retry usually works. If it never does, the worker's retry budget ends it
  as a dead letter all the same, so nothing loops for ever and nothing is lost, whereas
  calling them permanent would dead-letter calls on a blip. After a write (``addcont``)
  an unreadable answer also means "we do not know whether the CRM created it": the
  worker's ``find`` before a retried ``addcont`` covers that.

Permanent (:class:`PermanentCrmError`):
  ``auth``      wrong login or password (the protocol's error answer, or HTTP 401/403)
  ``rejected``  ``<result>error</result>`` for any other reason (missing field, no such
                contact), the CRM's description kept
  ``http``      other 4xx, and redirects (we never follow them: a POST would silently turn
                into a GET; the message names the target so crm.url can be fixed)
  ``config``    a request we cannot even build (malformed crm.url)

Secrets: the URL is kept only redacted (``crm_client.redact``), the CRM's description is
passed through ``redact_text``, and ``args``/``str``/``repr`` are built from those alone,
so logging an exception (with its traceback: causes are cut with ``from None``) cannot leak
a password that travelled in a query string.
"""

from __future__ import annotations

from typing import Any, Literal

from .redact import redact_text, redact_url

Kind = Literal[
    "network", "timeout", "http", "rate_limited", "bad_response", "auth", "rejected", "config"
]


class Transient(Exception):
    """A failure that may pass: retry later. Subclasses set ``may_have_acted`` (see above);
    left unset it is True, the safe side: a possible duplicate is counted, never hidden."""

    retry_after: float | None = None
    may_have_acted: bool = True


class CrmError(Exception):
    """Base of every crm_client failure. Whether it is :class:`Transient` is what a caller
    decides on; ``kind`` and the rest are for people."""

    def __init__(
        self,
        message: str,
        *,
        kind: Kind,
        description: str | None = None,
        url: str | None = None,
        op: str | None = None,
        status: int | None = None,
    ) -> None:
        self.message = redact_text(message)
        self.kind: Kind = kind
        # The CRM's own words (e.g. "Неправильный логин или пароль"), when it gave any.
        self.description = redact_text(description) if description else None
        self.url = redact_url(url) if url else None
        self.op = op
        self.status = status
        super().__init__(self.message)

    def at(self, op: str, url: str) -> CrmError:
        """Attach the request this error came from (parsing does not know it)."""
        self.op = op
        self.url = redact_url(url)
        self.args = (str(self),)
        return self

    def __str__(self) -> str:
        where = " ".join(p for p in (self.op, self.url) if p)
        return f"{where}: {self.message}" if where else self.message

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(kind={self.kind!r}, message={self.message!r}, "
            f"description={self.description!r}, status={self.status!r}, url={self.url!r})"
        )

    def __reduce__(self) -> tuple[Any, ...]:  # keyword-only __init__: pickle by state
        return (_rebuild, (type(self), dict(self.__dict__)))


def _rebuild(cls: type[CrmError], state: dict[str, Any]) -> CrmError:
    err = cls.__new__(cls)
    err.__dict__.update(state)
    err.args = (str(err),)
    return err


class TransientCrmError(CrmError, Transient):
    """The CRM or the path to it may be fine later: retry with backoff. Every raise says
    whether the CRM may have acted on the request (``may_have_acted``)."""

    def __init__(
        self,
        message: str,
        *,
        kind: Kind,
        may_have_acted: bool,
        retry_after: float | None = None,
        description: str | None = None,
        url: str | None = None,
        op: str | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(message, kind=kind, description=description, url=url, op=op, status=status)
        self.may_have_acted = may_have_acted
        self.retry_after = retry_after


class PermanentCrmError(CrmError):
    """Retrying the same request cannot help: credentials, the request, or configuration."""


# Descriptions that mean "wrong credentials" in the wild (the protocol's is the first).
_AUTH_WORDS = ("логин", "парол", "login", "password", "auth", "авториз")


def rejected(description: str | None, status: int | None = None) -> PermanentCrmError:
    """The error for a ``<result>error</result>`` answer."""
    text = (description or "").strip()
    kind: Kind = "auth" if any(w in text.lower() for w in _AUTH_WORDS) else "rejected"
    what = "wrong login or password" if kind == "auth" else "request rejected"
    shown = text or "no description given"
    return PermanentCrmError(
        f"CRM answered error ({what}): {shown}", kind=kind, description=text or None, status=status
    )
