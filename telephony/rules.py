"""How a PBX's dialplan maps onto directions, DIDs and extensions (``[calls]``).

Defaults fit FreePBX and a plain Asterisk with PJSIP trunks; admins change them in
``settings.toml``, whose ``[calls]`` section is this class (validated by pydantic). The
tracker only reads this; it never guesses from hard-coded names.
"""

from __future__ import annotations

import re
from functools import cached_property
from typing import Annotated

import phonenumbers
from pydantic import AfterValidator, ConfigDict, Field
from pydantic.dataclasses import dataclass

CHANNELS_PER_CALL = 8  # on average (most calls have 2 to 4; a ring group via Local ones, ~10)


def _regex(value: str) -> str:
    try:
        re.compile(value)
    except re.error as err:
        raise ValueError(f"expected a regular expression ({err})") from None
    return value


def _country(value: str) -> str:
    if value not in phonenumbers.SUPPORTED_REGIONS:
        raise ValueError(f'expected a two-letter country code such as "RU" or "DE", got "{value}"')
    return value


Regex = Annotated[str, AfterValidator(_regex)]


@dataclass(frozen=True, config=ConfigDict(extra="forbid"))
class CallRules:
    # country of numbers written without one
    default_country: Annotated[str, AfterValidator(_country)] = "RU"
    inbound_contexts: tuple[str, ...] = ("from-trunk", "from-pstn", "from-did-direct", "ext-did")
    internal_contexts: tuple[str, ...] = ("from-internal",)
    # A channel is a trunk (outside line) when its name matches; e.g. PJSIP/trunk-00000000,
    # SIP/provider-0001, DAHDI/i1/... . Endpoints named like an extension are phones.
    trunk_channel_pattern: Regex = r"^(?:PJSIP|SIP|IAX2)/(?!\d{2,5}-)[^/]+-[0-9a-f]+$|^DAHDI/"
    # An extension: 2 to 5 digits.
    extension_pattern: Regex = r"^\d{2,5}$"
    # A call with no hangup for this long is closed and reported, flagged "stale".
    max_call_age_s: float = Field(default=12 * 3600.0, ge=1, strict=True)
    # Calls tracked at once (and CHANNELS_PER_CALL channels each, on average): a new call
    # beyond is refused (a CallRefused update), so lost hangups cannot eat the memory.
    max_active_calls: int = Field(default=10_000, ge=1, strict=True)

    # Compiled forms, built once (on first use: the instance is frozen).
    @cached_property
    def trunk_re(self) -> re.Pattern[str]:
        # re.ASCII: \d in an admin's pattern means 0-9, not every script's digits
        return re.compile(self.trunk_channel_pattern, re.ASCII)

    @cached_property
    def extension_re(self) -> re.Pattern[str]:
        return re.compile(self.extension_pattern, re.ASCII)

    @property
    def max_channels(self) -> int:
        return self.max_active_calls * CHANNELS_PER_CALL

    def is_trunk_channel(self, channel: str) -> bool:
        return bool(self.trunk_re.search(channel))

    def is_extension(self, number: str | None) -> bool:
        return bool(number) and bool(self.extension_re.match(number or ""))
