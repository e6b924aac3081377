"""Room state: the data a room actor owns. Immutable; ``apply`` returns a new one."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from .effects import INVITED, OWNER, PRIVATE


def member_key(uri: str) -> str:
    """Case-insensitive identity of a ``sip:user@host`` URI: ``user@host`` lower-cased."""
    text = uri.split(":", 1)[1] if uri[:4].lower() in ("sip:", "sips") else uri
    if text.startswith(":"):  # "sips:" leaves one colon
        text = text[1:]
    return text.lower()


@dataclass(frozen=True, slots=True)
class Member:
    """One listed member: ``uri`` is ``sip:user@host`` as first seen; ``flags`` OWNER|ADMIN|INVITED."""

    uri: str
    flags: int = 0

    @property
    def key(self) -> str:
        return member_key(self.uri)

    @property
    def user(self) -> str:
        return self.uri.split(":", 1)[1].split("@", 1)[0]

    @property
    def active(self) -> bool:
        return not self.flags & INVITED

    @property
    def owner(self) -> bool:
        return bool(self.flags & OWNER)


@dataclass(frozen=True, slots=True)
class Ban:
    """One ban of a room: ``pattern`` is ``user@host`` or ``*@host`` (a whole domain), lower
    case, as :func:`member_key` spells it; ``reason`` as given (may be empty)."""

    pattern: str
    reason: str = ""

    def matches(self, key: str) -> bool:
        """Does the ban cover the member key ``key`` (``user@host``, lower case)?"""
        if self.pattern.startswith("*@"):
            return key.rpartition("@")[2] == self.pattern[2:]
        return key == self.pattern


@dataclass(frozen=True, slots=True)
class RoomInfo:
    """What a room has beyond Kamailio's columns (stored in imc-actors' own table).

    ``topic`` (``""``: none), ``topic_by`` the URI of who set it, ``topic_time`` and
    ``created`` epoch seconds (None: unknown, e.g. a room made by Kamailio).
    """

    topic: str = ""
    topic_by: str = ""
    topic_time: int | None = None
    created: int | None = None


@dataclass(frozen=True, slots=True)
class RoomState:
    """A room: ``name``/``domain`` keep the spelling the room was created with.

    ``members`` is in joining order (the order ``#members`` and ``owner`` use).
    ``inviters`` maps an invitee's key to the inviter's URI; it is not persisted (Kamailio's
    tables have no column for it), so after a restart a ``#reject`` tells nobody.
    ``bans`` (in banning order) and ``max_members`` (the room's own ``#limit``, None: the
    server's ``max_members``) live in imc-actors' own tables.
    ``info`` holds the topic and the creation time.
    """

    name: str
    domain: str
    flags: int = 0
    members: tuple[Member, ...] = ()
    inviters: Mapping[str, str] = field(default_factory=dict)
    bans: tuple[Ban, ...] = ()
    max_members: int | None = None
    info: RoomInfo = RoomInfo()

    @property
    def uri(self) -> str:
        return f"sip:{self.name}@{self.domain}"

    @property
    def key(self) -> str:
        return f"{self.name}@{self.domain}".lower()

    @property
    def archive_key(self) -> str:
        """The room in imc-actors' own tables: ``sip:name@domain`` in lower case."""
        return f"sip:{self.key}"

    @property
    def private(self) -> bool:
        return bool(self.flags & PRIVATE)

    def find(self, uri: str) -> Member | None:
        key = member_key(uri)
        for member in self.members:
            if member.key == key:
                return member
        return None

    @property
    def owner(self) -> Member | None:
        """The first OWNER in joining order (what management interfaces report)."""
        for member in self.members:
            if member.flags & OWNER:
                return member
        return None

    def banned(self, uri: str) -> Ban | None:
        """The first ban covering ``uri`` (``sip:user@host``), or None. Cheap when there are
        no bans (the common case: chat never pays for it)."""
        if not self.bans:
            return None
        key = member_key(uri)
        for ban in self.bans:
            if ban.matches(key):
                return ban
        return None
