"""From a finished call to what the CRM should be told: pure, so every rule is unit-tested.

Kinds of call and what happens to them (defaults in brackets):

- inbound answered: logged ("Входящий звонок");
- inbound nobody answered (missed): logged when ``log_missed`` [yes] ("Пропущенный звонок");
- outbound answered: logged ("Исходящий звонок");
- outbound nobody answered: logged when ``log_unanswered_outbound`` [yes];
- internal (between extensions): logged when ``log_internal`` [no] ("Внутренний звонок"),
  on the contact whose phone is the *other* extension (who answered, else the first that
  rang), as the dialling agent: so an agent's calls to a colleague, the warehouse or the
  reception show on that colleague's card, by the caller. The extension is looked up as it
  is written ("102");
- no outside number (anonymous caller): skipped, there is nobody to find.

A contact is created when ``find`` gives nothing and the call's direction is in
``create_contacts_for`` [inbound only], with ``x_pstn`` = the number the caller dialled
first: this call's, or an earlier call's that has not reached the CRM yet (``first_call.py``).
An internal call's contact, with "internal" there, is named by the template, phone the
extension, no x_pstn.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from types import MappingProxyType

from crm_client.types import Credentials
from telephony.phones import for_crm
from telephony.records import GAP, RING_UNKNOWN, CallRecord

from .policy import CallPolicy, CrmTarget

NO_SOURCES: Mapping[str, str] = MappingProxyType({})


@dataclass(frozen=True)
class NewContact:
    name: str
    typecont: str
    x_pstn: str  # the DID formatted for the CRM; "" when the call has none
    did: str  # that DID in E.164 (the ledger keeps it for the report); "" when none


@dataclass(frozen=True)
class CallPlan:
    phone: str  # the outside number as the CRM wants it
    credentials: Credentials  # the author of addcont and addevent: the agent's own, or service
    create: NewContact | None  # None: never create a contact for this call
    subject: str
    description: str
    record: CallRecord  # the call (a contact is finally made from its caller's first call)
    service: Credentials | None = None  # the service account: find, and the fallback author
    agent: str | None = None  # the extension whose own login ``credentials`` is; None: service

    @property
    def lookup(self) -> Credentials:
        """Whose login ``find`` uses: the service account. A lookup records no author, so an
        agent's own login is needed only for writes, and a call whose fate ``find`` decides
        (an outbound call to an unknown number is not logged) never waits on it."""
        return self.service or self.credentials

    def whose(self, creds: Credentials) -> str:
        """``login "ivan" (agent 101's own)``: which login a request used, never the
        password; for dead letters and log lines."""
        if self.agent is not None and creds == self.credentials and creds != self.service:
            return f'login "{creds.login}" (agent {self.agent}\'s own)'
        return f'login "{creds.login}" (the service account)'


@dataclass(frozen=True)
class Skip:
    reason: str


def call_kind(record: CallRecord) -> str:
    """in | missed | out | out-unanswered | internal"""
    if record.direction == "internal":
        return "internal"
    if record.direction == "in":
        return "in" if record.answered else "missed"
    return "out" if record.answered else "out-unanswered"


def plan_call(
    record: CallRecord, calls: CallPolicy, crm: CrmTarget, sources: Mapping[str, str] = NO_SOURCES
) -> CallPlan | Skip:
    """``sources``: tracking number (E.164) -> its ``[sources]`` label."""
    kind = call_kind(record)
    if kind == "missed" and not calls.log_missed:
        return Skip("missed calls are not logged (log_missed = false)")
    if kind == "out-unanswered" and not calls.log_unanswered_outbound:
        return Skip("unanswered outbound calls are not logged (log_unanswered_outbound = false)")
    if kind == "internal":
        if not calls.log_internal:
            return Skip("internal calls are not logged (log_internal = false)")
        if other_extension(record) is None:
            return Skip("internal call with no other extension (nobody was dialled)")
    elif not record.external:
        return Skip("no outside number (anonymous caller)")

    values = template_values(record, calls, crm, sources)
    subject = {
        "in": calls.subject_in,
        "missed": calls.subject_missed,
        "out": calls.subject_out,
        "out-unanswered": calls.subject_out,
        "internal": calls.subject_internal,
    }[kind]
    description = render(calls.description, values)
    if values["recording_url"] and "{recording_url}" not in calls.description:
        description = "; ".join(p for p in (description, f"запись {values['recording_url']}") if p)
    agent = record.extension if record.extension in crm.agents else None
    return CallPlan(
        phone=values["phone"],
        credentials=crm.credentials_for(record.extension),
        create=_new_contact(record, values, calls, crm),
        subject=render(subject, values),
        description=description,
        record=record,
        service=crm.service,
        agent=agent,
    )


def new_contact(record: CallRecord, calls: CallPolicy, crm: CrmTarget) -> NewContact | None:
    """The contact ``record`` creates when ``find`` knows nobody; None: its direction is not
    in ``create_contacts_for``."""
    return _new_contact(record, template_values(record, calls, crm), calls, crm)


def _new_contact(
    record: CallRecord, values: dict[str, str], calls: CallPolicy, crm: CrmTarget
) -> NewContact | None:
    if record.direction not in calls.create_contacts_for:
        return None
    return NewContact(
        name=render(calls.contact_name, values) or values["phone"],
        typecont=calls.contact_type,
        x_pstn=for_crm(record.did, crm.phone_format) if record.did else "",
        did=record.did or "",
    )


def other_extension(record: CallRecord) -> str | None:
    """The extension an internal call was with: who had it last, else the first that rang;
    never the caller's own."""
    me = record.extension
    if record.answered and record.final_extension and record.final_extension != me:
        return record.final_extension
    return next((ext for ext in record.rang if ext != me), None)


def format_duration(seconds: float) -> str:
    """3:54, 1:02:03 (rounded to the second)."""
    total = round(seconds)
    h, rest = divmod(total, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def duration_text(record: CallRecord) -> str:
    """The talk time as the event text gives it: exact ("3:54"), or, when the bridge could
    not see the whole call and no CDR gave its times, the bound it knows, saying why:
    "≥0:13 (разрыв связи с АТС)" (it ended while the AMI link was down: its end is the
    last moment the bridge knew it up) or "≤0:07 (...)" (found already answered after a
    restart: its answer is not known, so talk counts from when that phone began ringing).
    Empty when nobody answered."""
    if not record.answered:
        return ""
    text = format_duration(record.talk_s)
    if GAP in record.flags:
        return f"≥{text} (разрыв связи с АТС)"
    if RING_UNKNOWN in record.flags:
        return f"≤{text} (разговор начался до перезапуска моста)"
    return text


def template_values(
    record: CallRecord, calls: CallPolicy, crm: CrmTarget, sources: Mapping[str, str] = NO_SOURCES
) -> dict[str, str]:
    if record.direction == "internal":
        phone = other_extension(record) or ""  # an extension is looked up as written
    else:
        phone = for_crm(record.external, crm.phone_format) if record.external else ""
    values = {
        "duration": duration_text(record),
        "ring": "" if record.ring_s is None else format_duration(record.ring_s),
        "extension": record.extension or "",
        "did": record.did or "",
        "source": sources.get(record.did, "") if record.did else "",
        "phone": phone,
        "direction": record.direction,
        "disposition": record.disposition,
        "call_id": record.call_id,
        "pbx": record.pbx,
        "date": datetime.fromtimestamp(record.started_at, UTC).strftime("%Y-%m-%d %H:%M"),
        "recording_url": "",
    }
    if calls.recording_url:
        values["recording_url"] = calls.recording_url.format_map(values)
    return values


_PAREN = re.compile(r"\s*\(([^()]*)\)")


def _names(text: str) -> list[str]:
    return [n for _, n, _, _ in string.Formatter().parse(text) if n]


def render(template: str, values: dict[str, str]) -> str:
    """Fill a template, leaving out what has no value.

    The template is read as ``;``-separated parts: a part whose placeholders are all empty
    is dropped, and so is a ``(...)`` group whose placeholders are all empty. So the default
    description reads "Длительность 3:54; добавочный 101; номер +74951234567 (Yandex
    Direct)" for an answered inbound call and just "номер +74951234567" for a missed call
    on a number with no [sources] label.
    """
    parts = []
    for part in template.split(";"):
        names = _names(part)
        if names and not any(values.get(n) for n in names):
            continue

        def drop_empty_group(m: re.Match[str]) -> str:
            inner = _names(m.group(1))
            return "" if inner and not any(values.get(n) for n in inner) else m.group(0)

        part = _PAREN.sub(drop_empty_group, part)
        text = part.format_map(values).strip()
        if text:
            parts.append(text)
    return "; ".join(parts)
