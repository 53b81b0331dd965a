"""Phone numbers: what PBXs and people write -> E.164, and back out for a CRM.

The one place that knows number formats. Parsing is Google's libphonenumber
(``phonenumbers``); the only rule of our own is the one it cannot know: Russia's ``8`` trunk
prefix for national formatting (which the library already handles when parsing). What an
extension looks like is the PBX's business: ``[calls] extension_pattern``
(``telephony.rules.CallRules``); callers that may meet extensions ask it first.
"""

from __future__ import annotations

import re
from enum import StrEnum
from functools import lru_cache

import phonenumbers

_NON_DIALABLE = re.compile(r"[\s\-().]")


class PhoneFormat(StrEnum):
    """How phones are sent to the CRM (``[crm] phone_format``)."""

    E164 = "e164"  # +79161234567
    DIGITS = "digits"  # 79161234567
    NATIONAL = "national"  # 89161234567


@lru_cache(maxsize=8192)
def to_e164(raw: str | None, default_country: str = "RU") -> str | None:
    """E.164 for an outside number, or None when it is empty or not a number. (A short
    number may be a local number in some countries: ask ``CallRules.is_extension`` first.)

    ``8 (916) 123-45-67``, ``+7 916 1234567``, ``79161234567``, ``9161234567`` and
    ``0079161234567`` all give ``+79161234567`` with the default country RU.

    Remembered (the last 8192 answers): parsing costs as much as tracking a dozen AMI
    events, and a PBX repeats its DIDs, its regular callers and each call's own numbers;
    the reference CRM and the workers normalise the same phones again.
    """
    if not raw:
        return None
    s = _NON_DIALABLE.sub("", raw.strip())
    if not s or s in ("<unknown>", "anonymous", "unknown"):
        return None
    if s.startswith("00"):
        s = "+" + s[2:]
    digits = s.lstrip("+")
    # ASCII digits only, here and in every pattern that reads numbers: str.isdigit() also
    # takes Arabic-Indic and other digits (١٠١ would dial PJSIP/١٠١)
    if not (digits.isascii() and digits.isdigit()):
        return None
    candidates = [s] if s.startswith("+") else [s, "+" + s]
    # A bare number of international length (79161234567) is tried as international first:
    # PBX trunks send numbers without '+', and the region parse would mistake them.
    if not s.startswith("+") and len(s) <= 10:
        candidates = [s]
    for cand in candidates:
        try:
            num = phonenumbers.parse(cand, None if cand.startswith("+") else default_country)
        except phonenumbers.NumberParseException:
            continue
        if phonenumbers.is_possible_number(num):
            return phonenumbers.format_number(num, phonenumbers.PhoneNumberFormat.E164)
    return None


def for_crm(e164: str, fmt: PhoneFormat | str = PhoneFormat.E164) -> str:
    """Format an E.164 number as the CRM wants it."""
    fmt = PhoneFormat(fmt)
    if fmt is PhoneFormat.E164:
        return e164
    if fmt is PhoneFormat.DIGITS:
        return e164.lstrip("+")
    num = phonenumbers.parse(e164, None)
    national = phonenumbers.format_number(num, phonenumbers.PhoneNumberFormat.NATIONAL)
    return re.sub(r"\D", "", national)
