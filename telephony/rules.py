"""How a PBX's dialplan maps onto directions, DIDs and extensions (``[calls]``).

Defaults fit FreePBX and a plain Asterisk with PJSIP trunks; admins change them in
``settings.toml``. The tracker only reads this; it never guesses from hard-coded names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

DEFAULT_INBOUND_CONTEXTS = ("from-trunk", "from-pstn", "from-did-direct", "ext-did")
DEFAULT_INTERNAL_CONTEXTS = ("from-internal",)
CHANNELS_PER_CALL = 8  # on average (most calls have 2 to 4; a ring group via Local ones, ~10)


@dataclass(frozen=True, slots=True)
class CallRules:
    default_country: str = "RU"
    inbound_contexts: tuple[str, ...] = DEFAULT_INBOUND_CONTEXTS
    internal_contexts: tuple[str, ...] = DEFAULT_INTERNAL_CONTEXTS
    # A channel is a trunk (outside line) when its name matches; e.g. PJSIP/trunk-00000000,
    # SIP/provider-0001, DAHDI/i1/... . Endpoints named like an extension are phones.
    trunk_channel_pattern: str = r"^(?:PJSIP|SIP|IAX2)/(?!\d{2,5}-)[^/]+-[0-9a-f]+$|^DAHDI/"
    # An extension: 2 to 5 digits.
    extension_pattern: str = r"^\d{2,5}$"
    # A call with no hangup for this long is closed and reported, flagged "stale".
    max_call_age_s: float = 12 * 3600.0
    # Calls tracked at once (and CHANNELS_PER_CALL channels each, on average): a new call
    # beyond is refused (a CallRefused update), so lost hangups cannot eat the memory.
    max_active_calls: int = 10_000
    pbx: str = "default"

    # Compiled forms, built once.
    trunk_re: re.Pattern[str] = field(init=False, repr=False, compare=False)
    extension_re: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # re.ASCII: \d in an admin's pattern means 0-9, not every script's digits
        object.__setattr__(self, "trunk_re", re.compile(self.trunk_channel_pattern, re.ASCII))
        object.__setattr__(self, "extension_re", re.compile(self.extension_pattern, re.ASCII))

    @property
    def max_channels(self) -> int:
        return self.max_active_calls * CHANNELS_PER_CALL

    def is_trunk_channel(self, channel: str) -> bool:
        return bool(self.trunk_re.search(channel))

    def is_extension(self, number: str | None) -> bool:
        return bool(number) and bool(self.extension_re.match(number or ""))
