"""Click-to-call policy: the allow-list, the rate limit and what the Originate carries.

Pure logic; ``test_originate_http.py`` drives the same through HTTP to a simulated PBX.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from telefum.config import OriginateSettings
from telefum.originate import (
    DialPolicy,
    DialRefused,
    OriginateFailed,
    Originator,
    RateLimited,
    RateLimiter,
    parse_dial_target,
)
from telephony.listener import AmiNotConnected


@pytest.mark.parametrize(
    "raw, e164",
    [
        ("+79161234567", "+79161234567"),
        ("8 (916) 123-45-67", "+79161234567"),
        ("79161234567", "+79161234567"),
        ("+7 495 123-45-67", "+74951234567"),
        ("88001234567", "+78001234567"),  # toll-free for the caller: fine
    ],
)
def test_national_numbers_are_allowed_by_default(raw: str, e164: str) -> None:
    assert DialPolicy("RU").check(raw).e164 == e164


@pytest.mark.parametrize(
    "raw, why",
    [
        ("88091234567", "premium"),  # RU 809: premium rate
        ("+78031234567", "premium"),  # RU 803: shared cost
        ("+375291234567", "international"),  # Belarus
        ("+77012345678", "international"),  # Kazakhstan shares +7 but is abroad
        ("+442071234567", "international"),
        ("101", "not an outside phone number"),
        ("call me", "not an outside phone number"),
        ("+70001234567", "not a valid"),
    ],
)
def test_premium_international_and_garbage_are_refused_with_the_reason(raw: str, why: str) -> None:
    with pytest.raises(DialRefused, match=why):
        DialPolicy("RU").check(raw)


def test_configured_classes_and_patterns_open_what_the_admin_lists() -> None:
    policy = DialPolicy("RU", ("national", "+375*", "premium"))
    assert policy.check("+375291234567").kind == "pattern"
    assert policy.check("88091234567").kind == "premium"
    with pytest.raises(DialRefused):
        policy.check("+442071234567")
    assert DialPolicy("RU", ("national", "international")).check("+442071234567").kind == (
        "international"
    )


def test_a_refusal_pattern_wins_over_every_allowance() -> None:
    policy = DialPolicy("RU", ("national", "international", "!+7916*"))
    with pytest.raises(DialRefused, match="refused by the dial allow-list"):
        policy.check("89161234567")
    assert policy.check("+74951234567").kind == "national"


def test_default_country_decides_what_is_national() -> None:
    assert DialPolicy("DE").check("030 1234567").e164 == "+49301234567"
    with pytest.raises(DialRefused, match="international"):
        DialPolicy("DE").check("+79161234567")


@pytest.mark.parametrize(
    "href, number",
    [
        ("telf:+79161234567", "+79161234567"),
        ("telf://89161234567", "89161234567"),
        ("TEL:+7%20916%20123-45-67", "+7 916 123-45-67"),
        ("tel:+79161234567;ext=12", "+79161234567"),
        (" 8 916 123 45 67 ", "8 916 123 45 67"),
    ],
)
def test_link_targets_are_unwrapped_to_the_number(href: str, number: str) -> None:
    assert parse_dial_target(href) == number


def test_rate_limit_is_a_sliding_window_per_extension() -> None:
    now = [0.0]
    limiter = RateLimiter(2, 60.0, clock=lambda: now[0])
    limiter.take("101")
    now[0] = 10.0
    limiter.take("101")
    limiter.take("102")  # another extension has its own budget
    with pytest.raises(RateLimited) as err:
        limiter.take("101")
    assert err.value.retry_after_s == pytest.approx(50.0)
    now[0] = 60.0  # the first call left the window
    limiter.take("101")
    with pytest.raises(RateLimited):
        limiter.take("101")


class Pbx:
    """Records what would be sent as AMI Originate; can refuse like Asterisk does."""

    def __init__(self, success: bool = True, raises: Exception | None = None) -> None:
        self.sent: list[dict[str, Any]] = []
        self.success = success
        self.raises = raises

    async def __call__(
        self,
        channel: str,
        exten: str,
        context: str,
        caller_id: str | None = None,
        variables: Mapping[str, str] | None = None,
        timeout: float = 30.0,
    ) -> Any:
        self.sent.append(
            {
                "channel": channel,
                "exten": exten,
                "context": context,
                "caller_id": caller_id,
                "timeout": timeout,
            }
        )
        if self.raises:
            raise self.raises
        success = self.success

        class Answer(dict):  # type: ignore[type-arg]
            pass

        answer = Answer(Message="Originate failed")
        answer.success = success  # type: ignore[attr-defined]
        return answer


async def test_originate_carries_the_configured_channel_context_number_and_caller_id() -> None:
    pbx = Pbx()
    settings = OriginateSettings(
        channel="SIP/{extension}",
        context="click2call",
        exten="9{national}",
        caller_id="CRM <{digits}>",
        timeout_s=20,
    )
    d = await Originator(pbx, settings).dial("101", "+7 916 123-45-67")
    assert d.e164 == "+79161234567"
    assert pbx.sent == [
        {
            "channel": "SIP/101",
            "exten": "989161234567",
            "context": "click2call",
            "caller_id": "CRM <79161234567>",
            "timeout": 20,
        }
    ]


async def test_refused_numbers_and_bad_extensions_send_nothing_and_spend_no_budget() -> None:
    pbx = Pbx()
    orig = Originator(pbx, OriginateSettings(rate_limit=1))
    for ext, number in [("101", "88091234567"), ("101&PJSIP/evil", "+79161234567"), ("", "1")]:
        with pytest.raises(DialRefused):
            await orig.dial(ext, number)
    assert pbx.sent == []
    await orig.dial("101", "+79161234567")  # the one allowed call is still there
    with pytest.raises(RateLimited):
        await orig.dial("101", "+79161234567")
    assert len(pbx.sent) == 1


async def test_a_pbx_refusal_or_a_lost_link_is_reported_not_hidden() -> None:
    with pytest.raises(OriginateFailed, match="refused"):
        await Originator(Pbx(success=False), OriginateSettings()).dial("101", "+79161234567")

    with pytest.raises(OriginateFailed) as err:
        await Originator(Pbx(raises=AmiNotConnected("down")), OriginateSettings()).dial(
            "101", "+79161234567"
        )
    assert err.value.link_down
