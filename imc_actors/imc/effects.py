"""Effects: what applying a command to a room asks the outside world to do.

``apply()`` in :mod:`imc_actors.imc.room` never sends or writes anything; it returns
these small immutable records. The room actor hands :class:`Write` records to the store
(durable first) and :class:`Notice` records to delivery, then answers with the
:class:`Outcome`'s code. Tests can drop, delay or fail any effect at that boundary.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

# Member flags (Kamailio's imc_members.flag) and room flags (imc_rooms.flag).
OWNER = 1
ADMIN = 2
INVITED = 4
PRIVATE = 1

#: Widest value the store's columns hold (Kamailio's ``varchar(64)``): a room's name and
#: domain, a member's user and host, and the room URI ``sip:name@domain`` of its member rows.
#: Commands that would write a longer one are refused before anything is written
#: (:func:`imc_actors.imc.commands.resolve`).
MAX_STORED_LENGTH = 64
#: Widest ban or kick reason kept (longer ones are cut; the column is ``varchar(255)``).
MAX_REASON_LENGTH = 255


@dataclass(frozen=True, slots=True)
class RoomUpsert:
    """Create the room row ``(name, domain)`` or update its flag."""

    name: str
    domain: str
    flags: int


@dataclass(frozen=True, slots=True)
class RoomDelete:
    """Delete the room row and every member row of the room."""

    name: str
    domain: str


@dataclass(frozen=True, slots=True)
class MemberUpsert:
    """Insert the member row, or update its flag when the member is listed already.

    ``room`` is the room URI ``sip:name@domain``; ``member`` is ``sip:user@host``.
    """

    room: str
    member: str
    flags: int


@dataclass(frozen=True, slots=True)
class MemberDelete:
    """Delete one member row."""

    room: str
    member: str


# --------------------------------------------------------------------------- moderation
# Kept in imc-actors' own tables (``bans_table``, ``limits_table``), beside Kamailio's.
@dataclass(frozen=True, slots=True)
class BanSet:
    """Ban ``pattern`` from the room ``room`` (``sip:name@domain``).

    ``pattern`` is a ban key (:func:`imc_actors.imc.state.member_key` of the user, or
    ``*@host``), lower case. ``reason`` may be empty; ``by`` is who banned (a member URI, or
    ``admin`` for the management interface). The store adds the time of the write.
    """

    room: str
    pattern: str
    reason: str = ""
    by: str = ""


@dataclass(frozen=True, slots=True)
class BanDelete:
    """Lift the ban of ``pattern`` (a ban key) in ``room`` (``sip:name@domain``)."""

    room: str
    pattern: str


@dataclass(frozen=True, slots=True)
class LimitSet:
    """Set the room's own member limit (``#limit``); ``max_members`` None drops it."""

    room: str
    max_members: int | None


# ---------------------------------------------------------------------- history and topic
#: Most characters a room topic may have (``#topic``; the ``topic`` column's width).
MAX_TOPIC_LENGTH = 255


@dataclass(frozen=True, slots=True)
class HistoryAppend:
    """Append one relayed chat line to the room's archive (imc-actors' own table).

    ``room`` is the room URI ``sip:name@domain``; ``sender`` the member URI as listed;
    ``time`` seconds since the epoch when the line arrived; ``content_type`` the incoming
    Content-Type (None: none given); ``body`` the bytes as sent (without the ``[user]: ``
    prefix). ``keep`` is ``history_max``: the store keeps about that many lines of the room
    (the oldest go, see :mod:`imc_actors.store.own_tables`).
    """

    room: str
    sender: str
    time: float
    content_type: str | None
    body: bytes
    keep: int


@dataclass(frozen=True, slots=True)
class RoomInfoSet:
    """Create or replace the room's own row of what Kamailio's tables cannot hold: the topic
    (``""``: none), who set it and when, and when the room was created (epoch seconds, None
    when unknown: a room from before imc-actors kept it)."""

    room: str
    topic: str
    topic_by: str
    topic_time: int | None
    created: int | None


Write = (
    RoomUpsert | RoomDelete | MemberUpsert | MemberDelete | BanSet | BanDelete | LimitSet
    | HistoryAppend | RoomInfoSet
)


@dataclass(frozen=True, slots=True)
class Notice:
    """One outgoing MESSAGE.

    ``to`` is the recipient's URI (``sip:user@host``), used as To and, unless the registrar
    retargets it, as Request-URI. ``sender`` is the From URI: the room URI for room-scoped
    messages, the incoming Request-URI for ``#help``, ``#rooms`` and errors that have no room.
    ``content_type`` is None for notices (``text/plain;charset=UTF-8``) and the incoming
    Content-Type for relayed chat. ``kind`` says which counter it feeds.
    ``invite_of`` is set on an invitation: the invitee's URI, so a failed delivery can be
    reported back to the room as :class:`InviteFailed`. ``keep`` marks what a room sends its
    members (relayed chat, membership notices): when the member cannot be reached it is
    stored and delivered once the member is back (refusals, replies and invitations are not).
    ``date`` is the time (seconds since the epoch) the notice was first sent, set only on a
    stored notice delivered later (it goes out with a ``Date:`` header).
    """

    to: str
    body: bytes
    sender: str
    kind: Literal["notice", "relay", "reply"] = "notice"
    content_type: str | None = None
    invite_of: str | None = None
    keep: bool = False
    date: float | None = None


@dataclass(frozen=True, slots=True)
class HistoryQuery:
    """Read the room's archive once this outcome is durable and send it to ``to``.

    ``limit`` is how many of the newest lines. ``replay`` True: one MESSAGE per line, as it
    was relayed (``[user]: body``, its Content-Type, a ``Date:`` of its time), for a member
    who just joined; False: the ``#history`` reply, lines packed into pages.
    """

    room: str
    to: str
    limit: int
    replay: bool


@dataclass(frozen=True, slots=True)
class Outcome:
    """The result of one command or chat: the SIP answer and the effects behind it.

    ``code``/``reason`` are the SIP final response. ``writes`` must be committed before
    the answer and the notices go out. ``destroyed`` means the room is gone and its actor
    ends after this outcome. ``created`` means a new room was made by this command.
    ``history``: the archive read this outcome asks for (sent after its notices).
    """

    code: int
    reason: str
    notices: tuple[Notice, ...] = ()
    writes: tuple[Write, ...] = ()
    destroyed: bool = False
    created: bool = False
    body: bytes | None = field(default=None)
    history: HistoryQuery | None = None
