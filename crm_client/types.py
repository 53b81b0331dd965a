"""Plain values that cross the crm_client boundary."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Credentials:
    """A CRM user's login: the CRM records this user as author of what it creates."""

    login: str
    password: str

    def __repr__(self) -> str:  # never show the password
        return f"Credentials(login={self.login!r}, password='***')"


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
