"""Room logic: apply one command, chat or invitation failure to a room's state (spec §4, §5).

:func:`apply` is pure: it never mutates the :class:`~imc_actors.imc.state.RoomState` it is
given and returns the new state with an :class:`~imc_actors.imc.effects.Outcome` (SIP answer,
notices, writes). The room actor commits the writes, sends the notices, then answers.

Conventions (where the spec says "broadcast"):

- A broadcast goes to every *active* member of the room as it is after the change (so the
  sender is included when active); ``#remove`` tells the removed member separately and
  broadcasts to the rest; ``#leave`` broadcasts before removing, so the leaver is included.
- Notices to the sender (errors, the ``#members`` reply) go to the sender URI as it came in;
  broadcasts go to each member URI as listed. Writes name a listed member by its listed
  spelling, so the store finds the row even on a case-sensitive database.
- ``[x]`` in texts uses the listed spelling of x when x is listed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Literal

from ..sip import reason_phrase
from . import texts
from .commands import Command, Target
from .effects import (
    ADMIN,
    INVITED,
    MAX_TOPIC_LENGTH,
    OWNER,
    PRIVATE,
    BanDelete,
    BanSet,
    HistoryAppend,
    HistoryQuery,
    LimitSet,
    MemberDelete,
    MemberUpsert,
    Notice,
    Outcome,
    RoomDelete,
    RoomInfoSet,
    RoomUpsert,
    Write,
)
from .history import PAGE_BYTES
from .state import Ban, Member, RoomInfo, RoomState, member_key
from .texts import help_text

__all__ = [
    "AdminAction",
    "InviteFailed",
    "Policy",
    "RoomRequest",
    "apply",
    "help_text",
    "new_room",
    "notice_error",
    "rooms_pages",
    "rooms_reply",
]

_ROLE_FLAGS = {"owner": OWNER, "admin": ADMIN, "member": 0}


@dataclass(frozen=True, slots=True)
class Policy:
    """Room behaviour settings (spec §11): ``imc_cmd_start_char``, ``check_on_create``,
    ``owner_leave`` (``destroy``: the last owner leaving destroys the room; ``refuse``: 403).
    ``create_on_join`` is the caller's business (it decides whether to call :func:`new_room`).
    ``max_members``: the most entries (members and pending invitations) a room may list; an
    owner's ``#limit`` may only lower it for one room. ``max_bans``: the most bans a room keeps.
    The archive (issue 16): ``history_max`` lines kept per room (0: no archive, chat writes
    nothing), ``history_on_join`` lines replayed to a joiner (0: none), ``history_lines_max``
    the most lines one ``#history`` sends (and its default is ``min(20, history_lines_max)``).
    """

    start_char: str = "#"
    check_on_create: bool = False
    owner_leave: str = "destroy"
    max_members: int = 1000
    max_bans: int = 1000
    history_max: int = 0
    history_on_join: int = 0
    history_lines_max: int = 100


@dataclass(frozen=True, slots=True)
class RoomRequest:
    """One MESSAGE for a room.

    ``sender`` is the canonical ``sip:user@host`` of the sender U. ``command`` is ``None``
    for chat, whose bytes are ``body`` and whose Content-Type is ``content_type`` (copied to
    the relays). ``target`` is the resolved command target (``None`` for chat). ``call_id``
    is the incoming Call-ID (for the caller's ``In-Reply-To``; unused here).
    """

    sender: str
    command: Command | None
    target: Target | None
    body: bytes = b""
    content_type: str | None = None
    call_id: str = ""
    time: float = 0.0


@dataclass(frozen=True, slots=True)
class InviteFailed:
    """The invitation MESSAGE to ``invitee`` got a final ``code`` ≥ 300 or timed out."""

    invitee: str
    code: int
    reason: str


# --------------------------------------------------------------------------- helpers
def _outcome(
    code: int,
    notices: Iterable[Notice] = (),
    writes: Iterable[Write] = (),
    *,
    destroyed: bool = False,
    created: bool = False,
    body: bytes | None = None,
    history: HistoryQuery | None = None,
) -> Outcome:
    return Outcome(
        code, reason_phrase(code), tuple(notices), tuple(writes), destroyed, created, body, history
    )


def _refuse(state: RoomState, req: RoomRequest, code: int, text: str) -> tuple[RoomState, Outcome]:
    """A 4xx: the state is unchanged and the sender gets the text From the room."""
    return state, _outcome(code, (Notice(req.sender, text.encode(), state.uri),))


def _reply(
    state: RoomState, req: RoomRequest, text: str, writes: Iterable[Write] = ()
) -> tuple[RoomState, Outcome]:
    """A 200 whose ``text`` goes back to the sender as the reply notice and the body."""
    body = text.encode()
    return state, _outcome(200, (Notice(req.sender, body, state.uri, kind="reply"),), writes, body=body)


def _broadcast(state: RoomState, text: str) -> list[Notice]:
    """The notice ``text`` to every active member of ``state``, in joining order."""
    body = text.encode()
    uri = state.uri
    return [Notice(m.uri, body, uri, keep=True) for m in state.members if m.active]


def _index(state: RoomState, key: str) -> int:
    for i, member in enumerate(state.members):
        if member.key == key:
            return i
    return -1


def _manages(member: Member | None) -> bool:
    """OWNER or ADMIN, and active (roles of pending invitees count for nothing)."""
    return member is not None and member.active and bool(member.flags & (OWNER | ADMIN))


def _active_owner(member: Member | None) -> bool:
    return member is not None and member.active and bool(member.flags & OWNER)


def _other_active_owner(state: RoomState, key: str) -> bool:
    return any(_active_owner(m) and m.key != key for m in state.members)


def _without(state: RoomState, key: str) -> RoomState:
    """``state`` without the member ``key`` (and without its inviter entry)."""
    members = tuple(m for m in state.members if m.key != key)
    inviters = state.inviters
    if key in inviters:
        inviters = {k: v for k, v in inviters.items() if k != key}
    return replace(state, members=members, inviters=inviters)


def _with_flags(state: RoomState, key: str, flags: int) -> RoomState:
    """``state`` with member ``key``'s flags replaced (same place in joining order)."""
    members = tuple(Member(m.uri, flags) if m.key == key else m for m in state.members)
    inviters = state.inviters
    if not flags & INVITED and key in inviters:
        inviters = {k: v for k, v in inviters.items() if k != key}
    return replace(state, members=members, inviters=inviters)


def _target(req: RoomRequest) -> Target:
    if req.target is None or req.target.user is None:
        raise ValueError(f"#{req.command.name if req.command else '?'} needs a target user")
    return req.target


# --------------------------------------------------------------------------- membership
def _joined(
    new: RoomState, joiner: str, writes: Iterable[Write], policy: Policy
) -> tuple[RoomState, Outcome]:
    """``joiner`` is an active member of ``new`` now: everyone active is told, then the joiner
    gets the topic (when there is one) and the last ``history_on_join`` lines (issue 16)."""
    notices = _broadcast(new, texts.has_joined(joiner))
    if new.info.topic:
        notices.append(Notice(joiner, texts.topic_is(new.info.topic).encode(), new.uri))
    history = None
    if policy.history_max > 0 and policy.history_on_join > 0:
        limit = min(policy.history_on_join, policy.history_max)
        history = HistoryQuery(new.archive_key, joiner, limit, replay=True)
    return new, _outcome(200, notices, writes, history=history)


def _join(state: RoomState, req: RoomRequest, policy: Policy) -> tuple[RoomState, Outcome]:
    """U (not listed) joins as a plain member; everyone active, U included, is told."""
    refusal = _admits(state, req.sender, policy, texts.YOU_ARE_BANNED)
    if refusal is not None:
        return _refuse(state, req, refusal.code, refusal.text)
    new = replace(state, members=(*state.members, Member(req.sender, 0)))
    writes = (MemberUpsert(state.uri, req.sender, 0),)
    return _joined(new, req.sender, writes, policy)


def _create(state: RoomState, req: RoomRequest, policy: Policy) -> tuple[RoomState, Outcome]:
    """``#create`` on an existing room (a missing room goes through :func:`new_room`)."""
    if policy.check_on_create:
        return _refuse(state, req, 403, texts.ROOM_EXISTS)
    if state.find(req.sender) is not None:
        return _refuse(state, req, 403, texts.ROOM_EXISTS_AND_MEMBER)
    if state.private:
        return _refuse(state, req, 403, texts.PRIVATE_ROOM_EXISTS)
    return _join(state, req, policy)


def _join_cmd(state: RoomState, req: RoomRequest, policy: Policy) -> tuple[RoomState, Outcome]:
    """``#join`` on an existing room (a missing room goes through :func:`new_room`)."""
    me = state.find(req.sender)
    if me is not None:
        if me.active:
            return _refuse(state, req, 403, texts.ALREADY_IN_ROOM)
        return _accept(state, req, policy)
    if state.banned(req.sender) is not None:
        return _refuse(state, req, 403, texts.YOU_ARE_BANNED)
    if state.private:
        uri = state.uri
        notices = [Notice(req.sender, texts.PRIVATE_ROOM_BY_INVITATION.encode(), uri)]
        body = texts.attempted_join(req.sender).encode()
        notices += [Notice(m.uri, body, uri, keep=True) for m in state.members if _manages(m)]
        return state, _outcome(403, notices)
    return _join(state, req, policy)


def _accept(state: RoomState, req: RoomRequest, policy: Policy) -> tuple[RoomState, Outcome]:
    me = state.find(req.sender)
    if me is None or me.active:
        return _refuse(state, req, 403, texts.NO_PENDING_INVITATION)
    flags = me.flags & ~INVITED
    new = _with_flags(state, me.key, flags)
    writes = (MemberUpsert(state.uri, me.uri, flags),)
    return _joined(new, me.uri, writes, policy)


def _decline(state: RoomState, me: Member) -> tuple[RoomState, Outcome]:
    """The invitee ``me`` goes away; the inviter, when known, is told."""
    new = _without(state, me.key)
    inviter = state.inviters.get(me.key)
    notices = ()
    if inviter is not None:
        notices = (Notice(inviter, texts.declined(me.uri).encode(), state.uri, keep=True),)
    return new, _outcome(200, notices, (MemberDelete(state.uri, me.uri),))


def _reject(state: RoomState, req: RoomRequest, policy: Policy) -> tuple[RoomState, Outcome]:
    me = state.find(req.sender)
    if me is None or me.active:
        return _refuse(state, req, 403, texts.NO_PENDING_INVITATION)
    return _decline(state, me)


def _invite(state: RoomState, req: RoomRequest, policy: Policy) -> tuple[RoomState, Outcome]:
    me = state.find(req.sender)
    if not _manages(me):
        return _refuse(state, req, 403, texts.NO_PERMISSION_INVITE)
    assert me is not None
    invitee = _target(req).user
    assert invitee is not None
    listed = state.find(invitee)
    if listed is not None:
        return _refuse(state, req, 403, texts.already_member(listed.uri))
    refusal = _admits(state, invitee, policy, texts.is_banned(invitee))
    if refusal is not None:
        return _refuse(state, req, refusal.code, refusal.text)
    key = member_key(invitee)
    new = replace(
        state,
        members=(*state.members, Member(invitee, INVITED)),
        inviters={**state.inviters, key: me.uri},
    )
    text = texts.invitation(me.uri, policy.start_char).encode()
    notice = Notice(invitee, text, state.uri, invite_of=invitee)
    return new, _outcome(200, (notice,), (MemberUpsert(state.uri, invitee, INVITED),))


def _add(state: RoomState, req: RoomRequest, policy: Policy) -> tuple[RoomState, Outcome]:
    if not _manages(state.find(req.sender)):
        return _refuse(state, req, 403, texts.NO_PERMISSION_ADD)
    user = _target(req).user
    assert user is not None
    listed = state.find(user)
    if listed is not None:
        return _refuse(state, req, 403, texts.already_member(listed.uri))
    refusal = _admits(state, user, policy, texts.is_banned(user))
    if refusal is not None:
        return _refuse(state, req, refusal.code, refusal.text)
    new = replace(state, members=(*state.members, Member(user, 0)))
    writes = (MemberUpsert(state.uri, user, 0),)
    return _joined(new, user, writes, policy)


def _remove(state: RoomState, req: RoomRequest, policy: Policy) -> tuple[RoomState, Outcome]:
    if not _manages(state.find(req.sender)):
        return _refuse(state, req, 403, texts.NO_PERMISSION_REMOVE)
    user = _target(req).user
    assert user is not None
    them = state.find(user)
    if them is None:
        return _refuse(state, req, 404, texts.not_member(user))
    if _active_owner(them):
        return _refuse(state, req, 403, texts.OWNER_CANNOT_BE_REMOVED)
    return _take_out(state, them, texts.REMOVED_FROM_ROOM, texts.has_left(them.uri))


def _take_out(state: RoomState, them: Member, own: str, others: str) -> tuple[RoomState, Outcome]:
    """Remove ``them``: they are told ``own``, the active members left are told ``others``."""
    new = _without(state, them.key)
    notices = [Notice(them.uri, own.encode(), state.uri, keep=True)]
    notices += _broadcast(new, others)
    return new, _outcome(200, notices, (MemberDelete(state.uri, them.uri),))


def _destroy_room(state: RoomState) -> tuple[RoomState, Outcome]:
    """Tell every active member, delete the room; the actor ends after this."""
    notices = _broadcast(state, texts.ROOM_DESTROYED)
    new = replace(state, members=(), inviters={})
    return new, _outcome(200, notices, (RoomDelete(state.name, state.domain),), destroyed=True)


def _leave(state: RoomState, req: RoomRequest, policy: Policy) -> tuple[RoomState, Outcome]:
    me = state.find(req.sender)
    if me is None:
        return _refuse(state, req, 403, texts.NOT_A_MEMBER)
    if not me.active:
        # Interpretation: a pending invitee leaving declines the invitation (nobody saw
        # them join, so "has left" would mislead the room).
        return _decline(state, me)
    if me.owner and not _other_active_owner(state, me.key):
        if policy.owner_leave == "refuse":
            return _refuse(state, req, 403, texts.owner_cannot_leave(policy.start_char))
        return _destroy_room(state)
    notices = _broadcast(state, texts.has_left(me.uri))
    new = _without(state, me.key)
    return new, _outcome(200, notices, (MemberDelete(state.uri, me.uri),))


def _destroy(state: RoomState, req: RoomRequest, policy: Policy) -> tuple[RoomState, Outcome]:
    if not _active_owner(state.find(req.sender)):
        return _refuse(state, req, 403, texts.ONLY_OWNER_CAN_DESTROY)
    return _destroy_room(state)


def _members(state: RoomState, req: RoomRequest, policy: Policy) -> tuple[RoomState, Outcome]:
    me = state.find(req.sender)
    if me is None or not me.active:
        return _refuse(state, req, 403, texts.NOT_A_MEMBER)
    return _paged_reply(state, req, "Members", texts.members_lines(state.members))


def _paged_reply(state: RoomState, req: RoomRequest, title: str, lines: list[str]) -> tuple[RoomState, Outcome]:
    """``lines`` under ``title:`` to the sender: one reply, or, for a list too long for one
    UDP datagram, one reply per page (``Members (1/3):`` …, as #rooms)."""
    pages = texts.paged(title, lines, PAGE_BYTES)
    if len(pages) == 1:
        return _reply(state, req, pages[0])
    bodies = [page.encode() for page in pages]
    notices = tuple(Notice(req.sender, body, state.uri, kind="reply") for body in bodies)
    return state, _outcome(200, notices, body=b"\n".join(bodies))


def _modify(state: RoomState, req: RoomRequest, policy: Policy) -> tuple[RoomState, Outcome]:
    me = state.find(req.sender)
    if not _manages(me):
        return _refuse(state, req, 403, texts.NO_PERMISSION_MODIFY)
    target = _target(req)
    assert target.user is not None and target.role is not None
    them = state.find(target.user)
    if them is None:
        return _refuse(state, req, 404, texts.not_member(target.user))
    role = target.role.lower()
    if not _active_owner(me) and (role == "owner" or them.owner):
        return _refuse(state, req, 403, texts.NO_PERMISSION_MODIFY)
    if role != "owner" and _active_owner(them) and not _other_active_owner(state, them.key):
        return _refuse(state, req, 403, texts.LAST_OWNER_CANNOT_BE_DEMOTED)
    # Flags replaced; a pending invitee stays pending (the role applies once accepted).
    flags = (them.flags & INVITED) | _ROLE_FLAGS[role]
    if flags == them.flags:
        new, writes = state, ()
    else:
        new = _with_flags(state, them.key, flags)
        writes = (MemberUpsert(state.uri, them.uri, flags),)
    return new, _outcome(200, _broadcast(new, texts.is_now(them.uri, role)), writes)


# --------------------------------------------------------------------------- history, topic, info
def _history(state: RoomState, req: RoomRequest, policy: Policy) -> tuple[RoomState, Outcome]:
    """``#history [n]``: the last ``n`` lines (default 20, at most ``history_lines_max``) as
    pages, for active members; read by the actor once this outcome is handled."""
    me = state.find(req.sender)
    if me is None or not me.active:
        return _refuse(state, req, 403, texts.NOT_A_MEMBER)
    if policy.history_max <= 0:
        return _refuse(state, req, 403, texts.HISTORY_OFF)
    cap = max(1, min(policy.history_lines_max, policy.history_max))
    count = req.target.count if req.target is not None else None
    if count is None:
        count = min(20, cap)
    elif not 1 <= count <= cap:
        return _refuse(state, req, 400, texts.history_count(cap))
    return state, _outcome(200, history=HistoryQuery(state.archive_key, req.sender, count, False))


def _sees(state: RoomState, member: Member | None) -> bool:
    """May see the room's topic and card: anyone for a public room, active members else."""
    return not state.private or (member is not None and member.active)


def _topic(state: RoomState, req: RoomRequest, policy: Policy) -> tuple[RoomState, Outcome]:
    """``#topic``: show the topic; ``#topic <text>`` (owner, admin) sets it, ``#topic -``
    clears it; everyone active is told."""
    me = state.find(req.sender)
    assert req.command is not None
    text = req.command.rest
    if not text:
        if not _sees(state, me):
            return _refuse(state, req, 403, texts.NOT_A_MEMBER)
        shown = texts.topic_is(state.info.topic) if state.info.topic else texts.NO_TOPIC
        return _reply(state, req, shown)
    if not _manages(me):
        return _refuse(state, req, 403, texts.NO_PERMISSION_TOPIC)
    assert me is not None
    topic = "" if text == "-" else text
    if len(topic) > MAX_TOPIC_LENGTH:
        return _refuse(state, req, 400, texts.topic_too_long(MAX_TOPIC_LENGTH))
    if not topic.isprintable():  # it is shown to every joiner and in #rooms: no ESC, no BEL
        return _refuse(state, req, 400, texts.TOPIC_UNPRINTABLE)
    when = int(req.time) if req.time else None
    info = replace(state.info, topic=topic, topic_by=me.uri if topic else "", topic_time=when)
    new = replace(state, info=info)
    write = RoomInfoSet(state.archive_key, topic, info.topic_by, info.topic_time, info.created)
    said = texts.topic_set(me.uri, topic) if topic else texts.topic_cleared(me.uri)
    return new, _outcome(200, _broadcast(new, said), (write,))


def _info(state: RoomState, req: RoomRequest, policy: Policy) -> tuple[RoomState, Outcome]:
    """``#info``: name, topic, private or public, owners, member count, creation time."""
    if not _sees(state, state.find(req.sender)):
        return _refuse(state, req, 403, texts.NOT_A_MEMBER)
    active = [m for m in state.members if m.active]
    owners = [m.uri for m in active if m.owner]
    text = texts.info_text(
        state.uri, state.info.topic, state.private, owners, len(active),
        len(state.members) - len(active), state.info.created,
    )  # fmt: skip
    return _reply(state, req, text)


_HANDLERS = {
    "create": _create,
    "join": _join_cmd,
    "invite": _invite,
    "accept": _accept,
    "reject": _reject,
    "remove": _remove,
    "leave": _leave,
    "destroy": _destroy,
    "members": _members,
    "add": _add,
    "modify": _modify,
    "history": _history,
    "topic": _topic,
    "info": _info,
}  # the moderation handlers are added below


# --------------------------------------------------------------------------- moderation
@dataclass(frozen=True, slots=True)
class AdminAction:
    """A management action on a room (JSON-RPC ``imc.destroy_room``, ``imc.kick``,
    ``imc.ban``), taken with the server's authority rather than a member's.

    ``user`` is the ``sip:user@host`` to kick or ban (``sip:*@host``: ban a whole domain);
    ``reason`` goes into the notices. A refusal comes back as an :class:`Outcome` with its
    code and the ``***`` text as ``body`` (nobody is sent a notice).
    """

    action: Literal["destroy", "kick", "ban"]
    user: str | None = None
    reason: str = ""


#: Who banned, in the ban row, when the management interface did.
ADMIN_BY = "admin"

@dataclass(frozen=True, slots=True)
class _Refusal:
    """Why a moderation step cannot be taken: the SIP ``code`` and the notice ``text``."""

    code: int
    text: str


def member_limit(state: RoomState, policy: Policy) -> int:
    """The room's member limit: its own ``#limit``, never above the server's ``max_members``."""
    if state.max_members is None:
        return policy.max_members
    return min(state.max_members, policy.max_members)


def _admits(state: RoomState, uri: str, policy: Policy, banned_text: str) -> _Refusal | None:
    """Why ``uri`` (not listed yet) may not be listed in the room: banned, or the room full."""
    if state.banned(uri) is not None:
        return _Refusal(403, banned_text)
    limit = member_limit(state, policy)
    if len(state.members) >= limit:
        return _Refusal(403, texts.room_full(limit))
    return None


def _kick_member(state: RoomState, user: str, reason: str) -> _Refusal | tuple[RoomState, Outcome]:
    them = state.find(user)
    if them is None:
        return _Refusal(404, texts.not_member(user))
    if _active_owner(them):
        return _Refusal(403, texts.OWNER_CANNOT_BE_KICKED)
    return _take_out(state, them, texts.you_were_kicked(reason), texts.was_kicked(them.uri, reason))


def _add_ban(
    state: RoomState, user: str, reason: str, by: str, exempt: str | None, max_bans: int
) -> _Refusal | tuple[RoomState, Outcome]:
    """Ban ``user`` (``sip:*@host``: the domain) and remove every listed entry it covers but
    the active owners and ``exempt`` (the banning member's key)."""
    pattern = member_key(user)
    if any(ban.pattern == pattern for ban in state.bans):
        return _Refusal(403, texts.already_banned(pattern))
    if pattern == exempt:
        return _Refusal(403, texts.CANNOT_BAN_YOURSELF)
    if not pattern.startswith("*@") and _active_owner(state.find(user)):
        return _Refusal(403, texts.OWNER_CANNOT_BE_BANNED)
    if len(state.bans) >= max_bans:
        return _Refusal(403, texts.too_many_bans(max_bans))
    ban = Ban(pattern, reason)
    out = [
        m for m in state.members
        if ban.matches(m.key) and not _active_owner(m) and m.key != exempt
    ]  # fmt: skip
    new = state
    for them in out:
        new = _without(new, them.key)
    new = replace(new, bans=(*state.bans, ban))
    own = texts.you_were_banned(reason).encode()
    notices = [Notice(m.uri, own, state.uri, keep=True) for m in out]
    notices += _broadcast(new, texts.was_banned(pattern, reason))
    writes: list[Write] = [BanSet(state.uri, pattern, reason, by)]
    writes += [MemberDelete(state.uri, m.uri) for m in out]
    return new, _outcome(200, notices, writes)


def _answer(
    state: RoomState, req: RoomRequest, result: _Refusal | tuple[RoomState, Outcome]
) -> tuple[RoomState, Outcome]:
    if isinstance(result, _Refusal):
        return _refuse(state, req, result.code, result.text)
    return result


def _kick(state: RoomState, req: RoomRequest, policy: Policy) -> tuple[RoomState, Outcome]:
    if not _manages(state.find(req.sender)):
        return _refuse(state, req, 403, texts.NO_PERMISSION_KICK)
    target = _target(req)
    assert target.user is not None
    return _answer(state, req, _kick_member(state, target.user, target.reason))


def _ban(state: RoomState, req: RoomRequest, policy: Policy) -> tuple[RoomState, Outcome]:
    me = state.find(req.sender)
    if not _manages(me):
        return _refuse(state, req, 403, texts.NO_PERMISSION_BAN)
    assert me is not None
    target = _target(req)
    assert target.user is not None
    return _answer(state, req, _add_ban(state, target.user, target.reason, me.uri, me.key, policy.max_bans))


def _unban(state: RoomState, req: RoomRequest, policy: Policy) -> tuple[RoomState, Outcome]:
    if not _manages(state.find(req.sender)):
        return _refuse(state, req, 403, texts.NO_PERMISSION_BAN)
    target = _target(req)
    assert target.user is not None
    pattern = member_key(target.user)
    if not any(ban.pattern == pattern for ban in state.bans):
        return _refuse(state, req, 404, texts.not_banned(pattern))
    new = replace(state, bans=tuple(ban for ban in state.bans if ban.pattern != pattern))
    notices = _broadcast(new, texts.unbanned(pattern))
    return new, _outcome(200, notices, (BanDelete(state.uri, pattern),))


def _bans(state: RoomState, req: RoomRequest, policy: Policy) -> tuple[RoomState, Outcome]:
    if not _manages(state.find(req.sender)):
        return _refuse(state, req, 403, texts.NO_PERMISSION_BAN)
    return _paged_reply(state, req, "Bans", texts.bans_lines(state.bans))


def _limit(state: RoomState, req: RoomRequest, policy: Policy) -> tuple[RoomState, Outcome]:
    me = state.find(req.sender)
    if me is None or not me.active:
        return _refuse(state, req, 403, texts.NOT_A_MEMBER)
    number = req.target.limit if req.target is not None else None
    if number is None:
        return _reply(state, req, texts.limit_is(member_limit(state, policy)))
    if not _active_owner(me):
        return _refuse(state, req, 403, texts.NO_PERMISSION_LIMIT)
    if not 1 <= number <= policy.max_members:
        return _refuse(state, req, 400, texts.limit_out_of_range(policy.max_members))
    new = replace(state, max_members=number)
    writes = (LimitSet(state.uri, number),) if number != state.max_members else ()
    return _reply(new, req, texts.limit_is(number), writes)


def _administer(state: RoomState, op: AdminAction, policy: Policy) -> tuple[RoomState, Outcome]:
    """Carry out a management action; a refusal is its code with the text as body."""
    if op.action == "destroy":
        return _destroy_room(state)
    if op.user is None:
        raise ValueError(f"{op.action} needs a user")
    if op.action == "kick":
        result = _kick_member(state, op.user, op.reason)
    else:
        result = _add_ban(state, op.user, op.reason, ADMIN_BY, None, policy.max_bans)
    if isinstance(result, _Refusal):
        return state, _outcome(result.code, body=result.text.encode())
    return result


_HANDLERS.update(
    {"kick": _kick, "ban": _ban, "unban": _unban, "bans": _bans, "limit": _limit}
)


# --------------------------------------------------------------------------- chat
def _chat(state: RoomState, req: RoomRequest, policy: Policy) -> tuple[RoomState, Outcome]:
    """Relay ``[U]: body`` to every active member but U; one pass, the state is reused.
    With an archive (``history_max`` > 0) the line is appended to it in the same commit."""
    key = member_key(req.sender)
    me: Member | None = None
    others: list[str] = []
    for member in state.members:
        mkey = member.key
        if mkey == key:
            me = member
        elif member.active:
            others.append(member.uri)
    if me is None or not me.active:
        if me is None and state.banned(req.sender) is not None:
            return _refuse(state, req, 403, texts.YOU_ARE_BANNED)
        return _refuse(state, req, 403, texts.NOT_A_MEMBER)
    body = b"[" + me.user.encode() + b"]: " + req.body
    uri, ctype = state.uri, req.content_type
    notices = tuple(Notice(to, body, uri, "relay", ctype, keep=True) for to in others)
    if policy.history_max <= 0:
        return state, Outcome(202, "Accepted", notices)
    line = HistoryAppend(state.archive_key, me.uri, req.time, ctype, req.body, policy.history_max)
    return state, Outcome(202, "Accepted", notices, (line,))


def _invite_failed(state: RoomState, op: InviteFailed) -> tuple[RoomState, Outcome]:
    key = member_key(op.invitee)
    index = _index(state, key)
    if index < 0 or state.members[index].active:
        return state, _outcome(200)  # accepted or gone meanwhile: nothing to undo
    them = state.members[index]
    inviter = state.inviters.get(key)
    new = _without(state, key)
    notices = ()
    if inviter is not None:
        text = texts.invitation_failed(them.uri, op.code, op.reason).encode()
        notices = (Notice(inviter, text, state.uri, keep=True),)
    return new, _outcome(200, notices, (MemberDelete(state.uri, them.uri),))


# --------------------------------------------------------------------------- public API
def apply(
    state: RoomState, op: RoomRequest | InviteFailed | AdminAction, policy: Policy
) -> tuple[RoomState, Outcome]:
    """Apply one request (command or chat) or invitation failure to a room.

    Never mutates ``state``; for chat and refusals the very same ``state`` object is
    returned. ``#create``/``#join`` here handle an *existing* room; for a missing room the
    caller uses :func:`new_room` (or answers 404). ``#rooms`` and ``#help`` are not
    room-scoped (see :func:`rooms_reply`, :func:`help_text`) and raise ``ValueError``.
    """
    if isinstance(op, InviteFailed):
        return _invite_failed(state, op)
    if isinstance(op, AdminAction):
        return _administer(state, op, policy)
    if op.command is None:
        return _chat(state, op, policy)
    handler = _HANDLERS.get(op.command.name)
    if handler is None:
        raise ValueError(f"command {op.command.name!r} is not applied to a room")
    return handler(state, op, policy)


def new_room(
    name: str, domain: str, owner: str, private: bool, now: float | None = None
) -> tuple[RoomState, Outcome]:
    """A new room with ``owner`` as its OWNER; tells the owner ``*** Room was created``.
    ``now`` (epoch seconds) is recorded as its creation time (``#info``), when given."""
    flags = PRIVATE if private else 0
    info = RoomInfo(created=int(now)) if now is not None else RoomInfo()
    state = RoomState(name, domain, flags, (Member(owner, OWNER),), {}, info=info)
    notice = Notice(owner, texts.ROOM_CREATED.encode(), state.uri)
    writes: tuple[Write, ...] = (RoomUpsert(name, domain, flags), MemberUpsert(state.uri, owner, OWNER))
    if now is not None:
        writes += (RoomInfoSet(state.archive_key, "", "", None, info.created),)
    return state, _outcome(200, (notice,), writes, created=True)


def rooms_reply(rooms: Iterable[RoomState], sender: str) -> bytes:
    """The ``#rooms`` body: public rooms and private rooms ``sender`` is listed in
    (pending invitations included), sorted by name (case-insensitively, then as spelled);
    a room with a topic shows it (``[name] - topic``)."""
    names, topics = _listed(rooms, sender)
    return texts.rooms_list(names, topics).encode()


def rooms_pages(rooms: Iterable[RoomState], sender: str, *, most: int) -> list[bytes]:
    """:func:`rooms_reply` as notices that fit a UDP datagram (``Rooms:``, or ``Rooms (1/3):``
    and so on, :data:`~.history.PAGE_BYTES` of lines each), listing the first ``most`` rooms;
    then a last line says how many more there are."""
    names, topics = _listed(rooms, sender)
    entries = [texts.room_entry(name, topics.get(name, "")) for name in names[:most]]
    if len(names) > most:
        entries.append(texts.rooms_not_listed(len(names) - most))
    return [page.encode() for page in texts.paged("Rooms", entries, PAGE_BYTES)]


def _listed(rooms: Iterable[RoomState], sender: str) -> tuple[list[str], dict[str, str]]:
    shown = [room for room in rooms if not room.private or room.find(sender) is not None]
    names = sorted((room.name for room in shown), key=lambda n: (n.lower(), n))
    return names, {room.name: room.info.topic for room in shown if room.info.topic}


def notice_error(code: int, text: str, to: str, sender_uri: str) -> Outcome:
    """A refusal not tied to a room (parse/resolve errors, room not found): the SIP answer
    and the same text as a notice to ``to`` From ``sender_uri`` (the incoming Request-URI)."""
    return Outcome(code, reason_phrase(code), (Notice(to, text.encode(), sender_uri),))
