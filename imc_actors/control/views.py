"""Read-only views of the conference shared by every management interface.

The MI FIFO, JSON-RPC and the web status page answer the same two questions (which rooms,
who is in a room) from the same committed snapshots (:meth:`Conference.rooms`,
:meth:`Conference.room`); only the wire format differs. Nothing here mutates, and only
:func:`snapshot_of` awaits: with ``node`` set each interface first takes the cluster's
snapshot (:meth:`Conference.snapshot`: every room of every node, see
:mod:`imc_actors.cluster`) and answers from it, so it is consistent per room.

Counts follow spec §10: ``members`` counts every listed entry, INVITED ones included; ``owner``
is the first OWNER in joining order (empty when a room has none).
"""

from __future__ import annotations

from typing import Literal, Protocol

from ..imc.effects import ADMIN, INVITED, OWNER
from ..imc.history import HistoryLine
from ..imc.state import Member, RoomState
from ..sip.uri import canonical

__all__ = [
    "RoomLookupError",
    "RoomSource",
    "find_room",
    "history_lines",
    "member_role",
    "owner_uri",
    "room_detail",
    "room_info",
    "room_row",
    "room_summary",
    "in_cluster",
    "node_rows",
    "room_node",
    "snapshot_of",
]


class RoomSource(Protocol):
    """What the views need of a :class:`~imc_actors.conference.Conference`."""

    def rooms(self) -> list[RoomState]: ...

    def room(self, uri: str) -> RoomState | None: ...


async def snapshot_of(source: RoomSource) -> RoomSource:
    """What the views read: ``source.snapshot()`` when it has one (the conference: the whole
    cluster), else ``source`` itself. Checkpoints when it reads the database; raises
    :class:`~imc_actors.store.repository.StoreError` when that fails."""
    take = getattr(source, "snapshot", None)
    if take is None:
        return source
    view: RoomSource = await take()
    return view


def room_node(view: RoomSource, state: RoomState) -> str | None:
    """The node holding ``state``'s room in ``view`` (a cluster snapshot), or None (no live
    lease, or no cluster)."""
    owner = getattr(view, "owner", None)
    return owner(state) if owner is not None else None


def node_rows(view: RoomSource) -> list[dict[str, object]]:
    """``imc.nodes``: each node of ``view`` (a cluster snapshot) as a dict (none without one)."""
    return [node.as_dict() for node in getattr(view, "nodes", ())]


def in_cluster(view: RoomSource) -> bool:
    """True when ``view`` is a cluster's snapshot (``node`` set): rows then name room nodes."""
    return getattr(view, "node", None) is not None


class HistorySource(RoomSource, Protocol):
    """A :class:`RoomSource` that can also read the archive (the conference)."""

    @property
    def history_limit(self) -> int: ...

    async def history(
        self, uri: str, limit: int, before: int | None = None
    ) -> list[HistoryLine] | None: ...


LookupKind = Literal["missing", "empty", "invalid", "not_found"]


class RoomLookupError(Exception):
    """A room argument that names no room.

    ``kind`` is ``missing`` (no argument), ``empty`` (empty, or ``.`` as kamcmd sends for an
    empty string), ``invalid`` (not a SIP URI with a user part) or ``not_found``;
    ``argument`` is the text as given (None when missing).
    """

    def __init__(self, kind: LookupKind, argument: str | None = None) -> None:
        super().__init__(f"{kind}: {argument!r}")
        self.kind: LookupKind = kind
        self.argument = argument


def find_room(source: RoomSource, argument: str | None) -> RoomState:
    """The committed state of the room ``argument`` names (``sip:name@domain``; port and
    parameters are ignored, names compare case-insensitively). Raises :class:`RoomLookupError`."""
    if argument is None:
        raise RoomLookupError("missing")
    text = argument.strip()
    if text in ("", ".") or text.startswith("\0"):
        raise RoomLookupError("empty", argument)
    try:
        uri = canonical(text)
    except ValueError:
        raise RoomLookupError("invalid", argument) from None
    state = source.room(uri)
    if state is None:
        raise RoomLookupError("not_found", argument)
    return state


def owner_uri(state: RoomState) -> str:
    """The first OWNER by joining order, or ``""`` when the room has none."""
    owner = state.owner
    return owner.uri if owner is not None else ""


def room_summary(state: RoomState) -> dict[str, object]:
    """``{"room": uri, "members": n, "owner": uri}`` (the ``imc.list_rooms`` entry)."""
    return {"room": state.uri, "members": len(state.members), "owner": owner_uri(state)}


def member_role(member: Member) -> str:
    """``owner``, ``admin`` or ``member`` (the strongest role among the member's flags)."""
    if member.flags & OWNER:
        return "owner"
    if member.flags & ADMIN:
        return "admin"
    return "member"


def room_detail(state: RoomState) -> dict[str, object]:
    """Everything the status page shows about one room: members in joining order with roles,
    its bans in banning order and its own member limit (``#limit``; None: the server's)."""
    members = [
        {
            "uri": m.uri,
            "role": member_role(m),
            "invited": bool(m.flags & INVITED),
            "flags": m.flags,
        }
        for m in state.members
    ]
    return {
        "room": state.uri,
        "name": state.name,
        "domain": state.domain,
        "private": state.private,
        "owner": owner_uri(state),
        "count": len(members),
        "members": members,
        "bans": [{"pattern": ban.pattern, "reason": ban.reason} for ban in state.bans],
        "max_members": state.max_members,
    }


def room_row(state: RoomState) -> dict[str, object]:
    """One row of the status page's room table."""
    invited = sum(1 for m in state.members if m.flags & INVITED)
    return {
        "room": state.uri,
        "name": state.name,
        "domain": state.domain,
        "private": state.private,
        "members": len(state.members),
        "active": len(state.members) - invited,
        "invited": invited,
        "owner": owner_uri(state),
    }


def room_info(state: RoomState) -> dict[str, object]:
    """``imc.room_info``: what ``#info`` says, as data (times in epoch seconds or None)."""
    active = [m for m in state.members if m.active]
    return {
        "room": state.uri,
        "name": state.name,
        "domain": state.domain,
        "topic": state.info.topic,
        "topic_by": state.info.topic_by or None,
        "topic_time": state.info.topic_time,
        "private": state.private,
        "owners": [m.uri for m in active if m.owner],
        "members": len(active),
        "invited": len(state.members) - len(active),
        "created": state.info.created,
    }


def history_lines(lines: list[HistoryLine]) -> list[dict[str, object]]:
    """Archived lines as ``{"seq", "sender", "time", "content_type", "body"}`` (body as text in
    its declared charset, undecodable bytes replaced: :attr:`HistoryLine.text`)."""
    return [
        {
            "seq": line.seq,
            "sender": line.sender,
            "time": line.time,
            "content_type": line.content_type,
            "body": line.text,
        }
        for line in lines
    ]
