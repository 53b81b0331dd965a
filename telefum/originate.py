"""Click-to-call: what may be dialled, how often, and the one AMI ``Originate`` that dials it.

Between an HTTP request and a call that costs money stand, in this order: the token (checked
by the web route, never here), the number's normalisation (``telephony.phones``), the
allow-list of ``[originate] allow`` (toll fraud goes to premium and international numbers,
so both are refused unless configured), and a per-extension rate limit. Only then is one
``Originate`` sent: the agent's phone rings first and, once picked up, the PBX dials out.
"""

from __future__ import annotations

import fnmatch
import logging
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Protocol

import phonenumbers
import pydantic
from pydantic import AfterValidator, ConfigDict, Field

from telephony.listener import AmiNotConnected
from telephony.phones import PhoneFormat, for_crm, to_e164
from telephony.rules import CallRules
from worker.policy import check_template

log = logging.getLogger(__name__)

_PREMIUM_TYPES = frozenset(
    {phonenumbers.PhoneNumberType.PREMIUM_RATE, phonenumbers.PhoneNumberType.SHARED_COST}
)


class DialRefused(Exception):
    """The number may not be dialled (HTTP 403); ``str()`` says why, for the agent."""


class RateLimited(Exception):
    """Too many originates for this extension (HTTP 429)."""

    def __init__(self, retry_after_s: float) -> None:
        self.retry_after_s = retry_after_s
        super().__init__(f"too many calls: try again in {retry_after_s:.0f} s")


class OriginateFailed(Exception):
    """The PBX refused or never answered the Originate (HTTP 502/503)."""

    def __init__(self, reason: str, *, link_down: bool = False) -> None:
        self.link_down = link_down
        super().__init__(reason)


# --- the settings ([originate]) -----------------------------------------------------------

ORIGINATE_CLASSES = ("national", "international", "premium")
NUMBER_FIELDS = ("e164", "digits", "national", "extension")  # see number_fields()


def _allow(value: tuple[str, ...]) -> tuple[str, ...]:
    for v in value:
        if v not in ORIGINATE_CLASSES and not re.fullmatch(r"!?\+[0-9][0-9*]*", v):
            raise ValueError(
                'expected "national", "international", "premium" or an E.164 pattern such as '
                f'"+375*" (with "!" in front to refuse it), got "{v}"'
            )
    return value


def _template(*known: str) -> AfterValidator:
    return AfterValidator(lambda v: check_template(v, known))


@pydantic.dataclasses.dataclass(frozen=True, config=ConfigDict(extra="forbid"))
class OriginateSettings:
    """Click-to-call (``[originate]``): how ``POST /originate`` dials and what it may dial."""

    channel: Annotated[str, _template("extension")] = "PJSIP/{extension}"  # rung first
    context: str = "from-internal"  # the dialplan context the outside number is dialled in
    # the number as the dialplan wants it: {e164} +79161234567, {digits} 79161234567,
    # {national} 89161234567 (a prefix for an outside line goes in front: "9{national}")
    exten: Annotated[str, _template(*NUMBER_FIELDS)] = "{digits}"
    # shown on the agent's phone while it rings first; empty: the PBX's default
    caller_id: Annotated[str, _template(*NUMBER_FIELDS)] = "{digits}"
    # what may be dialled: "national" (the default country's numbers), "international",
    # "premium" (premium-rate and shared-cost numbers: refused unless listed), or E.164
    # patterns with * ("+375*" allows, "!+7495*" refuses; refusals win)
    allow: Annotated[tuple[str, ...], AfterValidator(_allow)] = ("national",)
    rate_limit: int = Field(default=5, ge=1, strict=True)  # originates per extension...
    rate_window_s: float = Field(default=60.0, ge=1, strict=True)  # ...per this window
    timeout_s: float = Field(default=30.0, ge=1, le=300, strict=True)  # agent phone rings
    pbx: str = ""  # the [[ami]] name that dials; empty: the first


# --- the allow-list (pure) ----------------------------------------------------------------


@dataclass(frozen=True)
class Allowed:
    e164: str
    kind: str  # "national" | "international" | "premium" | "pattern"


@dataclass(frozen=True)
class DialPolicy:
    """``[originate] allow`` as a decision: ``check(raw)`` returns the number or raises.

    Entries: ``national`` (numbers of the default country), ``international`` (any other
    country), ``premium`` (premium-rate and shared-cost numbers, e.g. RU 809...: refused
    even when national unless listed), E.164 patterns with ``*`` that allow (``+375*``) and
    ``!``-patterns that refuse (``!+7495*``). A refusal pattern wins over everything.
    """

    default_country: str = "RU"
    allow: tuple[str, ...] = ("national",)

    def check(self, raw: str) -> Allowed:
        e164 = to_e164(raw, self.default_country)
        if e164 is None:
            raise DialRefused(f"not an outside phone number: {raw!r}")
        denies = [p[1:] for p in self.allow if p.startswith("!")]
        grants = [p for p in self.allow if p.startswith("+")]
        if any(fnmatch.fnmatchcase(e164, p) for p in denies):
            raise DialRefused(f"{e164} is refused by the dial allow-list")
        if any(fnmatch.fnmatchcase(e164, p) for p in grants):
            return Allowed(e164, "pattern")
        num = phonenumbers.parse(e164, None)
        if not phonenumbers.is_valid_number(num):
            raise DialRefused(f"{e164} is not a valid phone number")
        if phonenumbers.number_type(num) in _PREMIUM_TYPES:
            if "premium" not in self.allow:
                raise DialRefused(f"{e164} is a premium-rate number; these are not allowed")
            return Allowed(e164, "premium")
        if phonenumbers.region_code_for_number(num) == self.default_country:
            if "national" not in self.allow:
                raise DialRefused(f"{e164}: national numbers are not allowed")
            return Allowed(e164, "national")
        if "international" not in self.allow:
            region = phonenumbers.region_code_for_number(num) or "another country"
            raise DialRefused(
                f"{e164} is an international number ({region}); these are not allowed"
            )
        return Allowed(e164, "international")


# --- the rate limit (pure, with a clock) --------------------------------------------------


class RateLimiter:
    """At most ``limit`` events per key within any ``window_s`` seconds (a sliding window)."""

    def __init__(
        self, limit: int, window_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limit = limit
        self.window_s = window_s
        self._clock = clock
        self._events: dict[str, deque[float]] = {}

    def take(self, key: str) -> None:
        """Count one event for ``key``, or raise :class:`RateLimited` without counting it."""
        now = self._clock()
        events = self._events.setdefault(key, deque())
        while events and events[0] <= now - self.window_s:
            events.popleft()
        if len(events) >= self.limit:
            raise RateLimited(max(0.0, events[0] + self.window_s - now))
        events.append(now)


# --- the originator -----------------------------------------------------------------------


class OriginateFn(Protocol):
    """``telephony.listener.AmiListener.originate``: sends exactly one Originate."""

    def __call__(
        self,
        channel: str,
        exten: str,
        context: str,
        caller_id: str | None = None,
        variables: Mapping[str, str] | None = None,
        timeout: float = 30.0,
    ) -> Awaitable[Any]: ...


@dataclass(frozen=True)
class Dialled:
    extension: str
    e164: str
    channel: str
    exten: str
    context: str
    kind: str

    def to_json(self) -> dict[str, str]:
        return {
            "status": "dialling",
            "extension": self.extension,
            "number": self.e164,
            "channel": self.channel,
            "exten": self.exten,
            "context": self.context,
        }


class Originator:
    """Checks a click-to-call and sends it. Authentication is the caller's job."""

    def __init__(
        self,
        send: OriginateFn,
        settings: OriginateSettings,
        *,
        default_country: str = "RU",
        extension_pattern: str = CallRules.extension_pattern,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._send = send
        self.settings = settings
        self.policy = DialPolicy(default_country, settings.allow)
        self.limiter = RateLimiter(settings.rate_limit, settings.rate_window_s, clock)
        self._extension_re = re.compile(extension_pattern, re.ASCII)  # \d: 0-9 only

    def prepare(self, extension: str, number: str) -> Dialled:
        """Everything but the sending: raises :class:`DialRefused` or :class:`RateLimited`."""
        if not self._extension_re.fullmatch(extension or ""):  # not "101\n" either
            raise DialRefused(f"not an extension: {extension!r}")
        allowed = self.policy.check(number)
        fields = number_fields(allowed.e164, extension)
        s = self.settings
        dialled = Dialled(
            extension=extension,
            e164=allowed.e164,
            channel=s.channel.format(extension=extension),
            exten=s.exten.format(**fields),
            context=s.context,
            kind=allowed.kind,
        )
        self.limiter.take(extension)  # last: a refused number does not use up the budget
        return dialled

    async def dial(self, extension: str, number: str) -> Dialled:
        """Check, then send one Originate; raises on refusal, rate limit or PBX failure."""
        d = self.prepare(extension, number)
        caller_id = self.settings.caller_id.format(**number_fields(d.e164, extension)) or None
        try:
            answer = await self._send(
                channel=d.channel,
                exten=d.exten,
                context=d.context,
                caller_id=caller_id,
                variables={"TELEFUM_CLICK_TO_CALL": "1"},
                timeout=self.settings.timeout_s,
            )
        except Exception as err:  # AmiNotConnected, AmiActionLost, AmiActionTimeout...
            down = isinstance(err, AmiNotConnected)
            log.warning("originate %s -> %s failed: %s", extension, d.e164, err)
            raise OriginateFailed(f"the PBX did not take the call: {err}", link_down=down) from err
        if answer is not None and getattr(answer, "success", True) is False:
            reason = _answer_message(answer)
            log.warning("originate %s -> %s refused by the PBX: %s", extension, d.e164, reason)
            raise OriginateFailed(f"the PBX refused the call: {reason}")
        log.info("originate %s -> %s (%s)", extension, d.e164, d.kind)
        return d


def number_fields(e164: str, extension: str) -> dict[str, str]:
    """The fields ``[originate]`` templates may use."""
    return {
        "e164": e164,
        "digits": for_crm(e164, PhoneFormat.DIGITS),
        "national": for_crm(e164, PhoneFormat.NATIONAL),
        "extension": extension,
    }


def _answer_message(answer: Any) -> str:
    try:
        return str(answer["Message"])
    except (KeyError, TypeError):
        return "no reason given"


_SCHEMES = ("telf:", "tel:", "callto:")


def parse_dial_target(raw: str) -> str:
    """The number in what a click hands over: ``telf:+79161234567``, ``tel:8%20916...``,
    ``telf://89161234567``, or a bare number. Percent-escapes are decoded, ``;``/``?``
    parameters dropped; the normalisation and the allow-list come after."""
    from urllib.parse import unquote

    s = raw.strip()
    low = s.lower()
    for scheme in _SCHEMES:
        if low.startswith(scheme):
            s = s[len(scheme) :].lstrip("/")
            break
    s = unquote(s)
    for sep in ("?", ";"):
        s = s.split(sep, 1)[0]
    return s.strip()
