"""Plain values that cross the crm_client boundary."""

from __future__ import annotations

from dataclasses import dataclass, field

import pydantic
from pydantic import ConfigDict, SecretStr


@pydantic.dataclasses.dataclass(frozen=True, slots=True, config=ConfigDict(extra="forbid"))
class Credentials:
    """A CRM user's login: the CRM records this user as author of what it creates.

    Also the type of one ``[crm.agents."101"]`` table in settings.toml. The password is a
    ``SecretStr``: shown as ``**********`` wherever the object is printed or dumped; the
    client reads it with ``get_secret_value()`` when it builds a request.
    """

    login: str
    password: SecretStr


@dataclass(frozen=True, slots=True)
class Contact:
    id: str
    typecont: str = "contact"
    name: str = ""
    company: str = ""
    description: str = ""


@dataclass(frozen=True, slots=True)
class FindResult:
    contacts: tuple[Contact, ...] = ()
    total: int = 0  # as the CRM said; may disagree with len(contacts)
    warnings: tuple[str, ...] = field(default=())


@dataclass(frozen=True, slots=True)
class Created:
    """What ``addcont`` / ``addevent`` answer on success: the new record's id."""

    id: str  # contact id for addcont, idev for addevent
    typecont: str | None = None  # addcont echoes it; None when the CRM did not
    description: str = ""  # e.g. "Контакт добавлен"
    warnings: tuple[str, ...] = ()
