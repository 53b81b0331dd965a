"""How a PBX's dialplan maps onto directions, DIDs and extensions (``[calls]``).

Defaults fit FreePBX and a plain Asterisk with PJSIP or chan_sip trunks and phones named by
extension; admins change them in ``settings.toml``, whose ``[calls]`` section is this class
(validated by pydantic). The tracker only reads this; it never guesses from hard-coded names.
``extension_pattern`` is the one place that says what an extension looks like.

What a channel is, in this order (``phone_of`` and ``is_trunk_channel``):

1. ``Local/...``: half of a Local pair (its extension is the ``exten`` of ``exten@context``);
2. a phone by configuration: its endpoint (``SIP/<endpoint>-0000001a``) is a key of ``phones``
   (extension = the value), or its name matches ``phone_channel_pattern`` (extension = the
   pattern's ``ext`` group or first group; with no group, the channel's caller ID);
3. a phone named by its extension: the endpoint matches ``extension_pattern``;
4. a trunk: the name matches ``trunk_channel_pattern`` and the channel was not created in
   one of ``internal_contexts``;
5. else a phone if its caller ID is an extension, else something else (a conference, a
   recorder...: part of the call, never an agent).
"""

from __future__ import annotations

import re
from functools import cached_property
from typing import Annotated

import phonenumbers
from pydantic import AfterValidator, ConfigDict, Field, model_validator
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
    # A call whose first channel was created in one of these contexts came from outside.
    inbound_contexts: tuple[str, ...] = ("from-trunk", "from-pstn", "from-did-direct", "ext-did")
    # Channels created in these contexts are never trunks (the contexts phones dial from).
    internal_contexts: tuple[str, ...] = ("from-internal",)
    # A channel is a trunk (outside line) when its name matches; e.g. PJSIP/trunk-00000000,
    # SIP/provider-0000001a, IAX2/carrier-1234, DAHDI/i1/... . Phones (rules above) come first.
    trunk_channel_pattern: Regex = r"^(?:PJSIP|SIP|IAX2)/[^/]+-[0-9a-f]+$|^DAHDI/"
    # What an extension looks like: 2 to 5 digits. The only definition of it in the bridge.
    extension_pattern: Regex = r"^\d{2,5}$"
    # Phones whose channels are named by account, not by extension: endpoint -> extension,
    # e.g. {"150010001" = "201"} for SIP/150010001-0000001a.
    phones: dict[str, str] = Field(default_factory=dict)
    # Or a pattern: a channel whose name matches is a phone; its extension is the pattern's
    # group "ext" (or its first group), else the channel's caller ID. E.g. '^SIP/15001\d{4}-'.
    phone_channel_pattern: Regex = ""
    # Dialplan variables that carry the number an inbound caller dialled (FreePBX: FROM_DID),
    # read when Asterisk sets them (VarSet); before that, the DID is the first channel's Exten.
    did_variables: tuple[str, ...] = ("FROM_DID", "__FROM_DID")
    # A call with no hangup for this long (on the PBX's clock) is closed and reported,
    # flagged "stale".
    max_call_age_s: float = Field(default=12 * 3600.0, ge=1, strict=True)
    # Calls tracked at once (and CHANNELS_PER_CALL channels each, on average): a new call
    # beyond is refused (a CallRefused update), so lost hangups cannot eat the memory.
    max_active_calls: int = Field(default=10_000, ge=1, strict=True)

    @model_validator(mode="after")
    def _phones_are_extensions(self) -> CallRules:
        bad = [f"{k} = {v}" for k, v in self.phones.items() if not self.is_extension(v)]
        if bad:
            raise ValueError(
                f"phones: {', '.join(bad)}: each value must be an extension "
                f"(match extension_pattern {self.extension_pattern!r})"
            )
        return self

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

    @cached_property
    def phone_re(self) -> re.Pattern[str] | None:
        return re.compile(self.phone_channel_pattern) if self.phone_channel_pattern else None

    def is_trunk_channel(self, channel: str) -> bool:
        return bool(self.trunk_re.search(channel))

    def is_extension(self, number: str | None) -> bool:
        return bool(number) and bool(self.extension_re.match(number or ""))

    def configured_phone(
        self, name: str, endpoint: str, callerid: str
    ) -> tuple[bool, str | None, str]:
        """``(is a phone, its extension, the rule)`` by ``phones`` or ``phone_channel_pattern``
        (rule 2 above); ``(False, None, "")`` when neither says so."""
        if endpoint in self.phones:
            return True, self.phones[endpoint], f"[calls] phones maps {endpoint} to it"
        pattern = self.phone_re
        if pattern is None:
            return False, None, ""
        m = pattern.search(name)
        if m is None:
            return False, None, ""
        groups = m.groupdict()
        if "ext" in groups:
            ext = groups["ext"]
        elif m.re.groups:
            ext = m.group(1)
        else:
            ext = callerid if self.is_extension(callerid) else None
            return True, ext, "it matches phone_channel_pattern; extension from its caller ID"
        return True, ext, "it matches phone_channel_pattern"
