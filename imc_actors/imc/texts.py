"""Every text imc-actors sends to users: notices, command replies and the help text.

One module so that the wording (spec §2, §4, §5, exact bytes) can be read and reviewed in one
place. Texts are ``str``; callers encode them as UTF-8. ``[x]`` in the spec is :func:`tag`:
``[`` + the user part of the URI x + ``]``. Texts that show ``#`` in the spec take the
configured command start character ``start_char`` (only its first character is used, since only
that character makes a body a command, spec §2).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence

from .effects import ADMIN, OWNER
from .state import Ban, Member

__all__ = [
    "ALREADY_IN_ROOM",
    "BODY_TOO_LARGE",
    "NOT_THE_AUTHENTICATED_USER",
    "INVALID_ROLE",
    "LAST_OWNER_CANNOT_BE_DEMOTED",
    "MISSING_ROOM_NAME",
    "NOT_A_MEMBER",
    "NO_PENDING_INVITATION",
    "NO_PERMISSION_ADD",
    "NO_PERMISSION_INVITE",
    "NO_PERMISSION_MODIFY",
    "NO_PERMISSION_REMOVE",
    "ONLY_OWNER_CAN_DESTROY",
    "OWNER_CANNOT_BE_REMOVED",
    "PRIVATE_ROOM_BY_INVITATION",
    "PRIVATE_ROOM_EXISTS",
    "REMOVED_FROM_ROOM",
    "ROOM_CREATED",
    "ROOM_DESTROYED",
    "ROOM_EXISTS",
    "ROOM_EXISTS_AND_MEMBER",
    "ROOM_NOT_FOUND",
    "ROOM_HELD_ELSEWHERE",
    "ROOMS_THIS_NODE_ONLY",
    "ROOM_HELD_BY",
    "SECOND_ARGUMENT_PRIVATE",
    "address_too_long",
    "room_name_too_long",
    "sender_too_long",
    "already_member",
    "attempted_join",
    "declined",
    "has_joined",
    "has_left",
    "help_text",
    "invalid_address",
    "manager_is_no_room",
    "room_name_is_a_user",
    "address_is_no_user",
    "invalid_command",
    "invalid_room_name",
    "invitation",
    "invitation_failed",
    "is_now",
    "members_list",
    "members_lines",
    "missing_argument",
    "missing_command",
    "not_member",
    "owner_cannot_leave",
    "rooms_list",
    "tag",
    "user_part",
    # moderation (issue 16 items 4-5)
    "CANNOT_BAN_YOURSELF",
    "NO_PERMISSION_BAN",
    "NO_PERMISSION_KICK",
    "NO_PERMISSION_LIMIT",
    "OWNER_CANNOT_BE_BANNED",
    "OWNER_CANNOT_BE_KICKED",
    "YOU_ARE_BANNED",
    "already_banned",
    "ban_name",
    "bans_lines",
    "invalid_limit",
    "is_banned",
    "limit_is",
    "limit_out_of_range",
    "not_banned",
    "room_full",
    "sending_too_fast",
    "too_many_bans",
    "too_many_rooms",
    "server_full",
    "unbanned",
    "was_banned",
    "was_kicked",
    "you_were_banned",
    "you_were_kicked",
    # history, topic and info (issue 16)
    "HISTORY_EMPTY",
    "HISTORY_OFF",
    "HISTORY_UNAVAILABLE",
    "NO_PERMISSION_TOPIC",
    "NO_TOPIC",
    "TOPIC_UNPRINTABLE",
    "history_count",
    "history_line",
    "paged",
    "rooms_not_listed",
    "info_text",
    "room_entry",
    "topic_cleared",
    "topic_is",
    "topic_set",
    "topic_too_long",
    "utc",
]


# --------------------------------------------------------------------------- helpers
def user_part(uri: str) -> str:
    """The user part of ``sip:user@host`` (or of ``user@host``), as spelled."""
    _, colon, rest = uri.partition(":")
    text = rest if colon else uri
    return text.split("@", 1)[0]


def tag(uri: str) -> str:
    """``[x]`` of the spec: ``[`` + user part of ``uri`` + ``]``."""
    return f"[{user_part(uri)}]"


def _s(start_char: str) -> str:
    return start_char[:1] or "#"


def shown(typed: str) -> str:
    """``typed`` (the sender's own text, echoed in a refusal) with every character that is not
    printable written as its Python escape (``a\\x01b``): a control character, a CR or LF
    would otherwise reach the sender's screen or terminal as itself."""
    if typed.isprintable():
        return typed
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in typed)


# --------------------------------------------------------------------------- §2 parsing
def missing_command(start_char: str) -> str:
    """``#`` alone or followed by whitespace."""
    s = _s(start_char)
    return f"*** Missing command (send '{s}help' for help)"


def invalid_command(typed: str, start_char: str) -> str:
    """Unknown command name, quoted as typed."""
    s = _s(start_char)
    return f"*** Invalid command '{shown(typed)}' (send '{s}help' for help)"


def missing_argument(start_char: str) -> str:
    """``#invite``, ``#add``, ``#remove``, ``#modify`` without their required arguments."""
    s = _s(start_char)
    return f"*** Missing argument (send '{s}help' for help)"


# --------------------------------------------------------------------------- §1 addresses
MISSING_ROOM_NAME = "*** Missing room name"
ROOM_NOT_FOUND = "*** Room not found"
# Issue 13: a write for a room whose lease another node holds (503); ``.format(seconds=…)``.
ROOM_HELD_ELSEWHERE = "*** Room is held by another node now; try again in {seconds} seconds"
#: After a ``#rooms`` list in a cluster while the database cannot be read: the list is short.
ROOMS_THIS_NODE_ONLY = "*** The other nodes' rooms cannot be read now: this lists this node's only"
# Issue 13: a management action (JSON-RPC) for a room another node holds; ``.format(node=…)``.
ROOM_HELD_BY = "*** Room is held by node {node}; send the request to that node"
# §3 gives no text for 413; ``.format(limit=<max_body_size>)``.
BODY_TOO_LARGE = "*** Message body too large (maximum {limit} bytes)"
# Digest authentication (README "Users and passwords"): a From naming another user than the
# authenticated one; ``.format(user=<authenticated URI>, sender=<From URI>)``.
NOT_THE_AUTHENTICATED_USER = "*** You are signed in as {user}: you cannot send as {sender}"


def invalid_address(arg: str) -> str:
    """An argument that does not parse as a SIP URI."""
    return f"*** Invalid address '{shown(arg)}'"


def address_is_no_user(uri: str) -> str:
    """``#invite``/``#add`` of a room's address (this room's own too) or the manager's."""
    return f"*** {tag(uri)} is a room's address here, not a user's"


def room_name_is_a_user(name: str) -> str:
    """``#create <name>`` where ``<name>@<domain>`` is a registered user's address: a room
    there would take it over (rooms and users share the domain's addresses)."""
    return f"*** '{shown(name)}' is a user's address here; choose another room name"


def manager_is_no_room(arg: str) -> str:
    """A room argument that names the manager (``#create imc-manager``): a valid address, but
    the manager's own, which no room can have."""
    return f"*** '{shown(arg)}' is the manager's address, not a room"


def invalid_room_name(name: str) -> str:
    """A room name (argument or Request-URI user, unescaped) with a character a room name may
    not hold (``%20``, ``%40``, ``;``, non-ASCII, …); ``name`` is its canonical form."""
    return f"*** Invalid room name '{shown(name)}' (letters, digits and - _ . ! ~ * ' ( ) & = + $ , only)"


# Not in the spec (Kamailio's columns would cut or refuse them): names wider than the store's
# columns, ``limit`` = MAX_STORED_LENGTH. The long value itself is not echoed.
def room_name_too_long(limit: int) -> str:
    """The room URI ``sip:name@domain`` is over ``limit`` characters."""
    return f"*** Room name too long (sip:<name>@<domain> may have at most {limit} characters)"


def address_too_long(limit: int) -> str:
    """A user argument whose user or host part is over ``limit`` characters."""
    return f"*** Address too long (user and host may have at most {limit} characters each)"


def sender_too_long(limit: int) -> str:
    """The sender's own user or host part is over ``limit`` characters."""
    return f"*** Your address is too long (user and host may have at most {limit} characters each)"


# --------------------------------------------------------------------------- §4 commands
ROOM_CREATED = "*** Room was created"
SECOND_ARGUMENT_PRIVATE = "*** Second argument must be 'private'"
ROOM_EXISTS = "*** Room already exists"
PRIVATE_ROOM_EXISTS = "*** A private room with the same name already exists"
ROOM_EXISTS_AND_MEMBER = "*** Room already exists and you are a member"
ALREADY_IN_ROOM = "*** You are in the room already"
PRIVATE_ROOM_BY_INVITATION = (
    "*** Private rooms are by invitation only. Room owners have been notified."
)
NO_PERMISSION_INVITE = "*** You don't have the permission to invite members to this room"
NO_PERMISSION_ADD = "*** You don't have the permission to add members to this room"
NO_PERMISSION_REMOVE = "*** You don't have the permission to remove members from this room"
NO_PERMISSION_MODIFY = "*** You don't have the permission to modify members in this room"
NO_PENDING_INVITATION = "*** You have no pending invitation to this room"
OWNER_CANNOT_BE_REMOVED = "*** The room's owner cannot be removed"
REMOVED_FROM_ROOM = "*** You have been removed from the room"
NOT_A_MEMBER = "*** You are not a member of this room"
ONLY_OWNER_CAN_DESTROY = "*** Only the room's owner can destroy the room"
ROOM_DESTROYED = "*** Room has been destroyed"
INVALID_ROLE = "*** Role must be owner, admin or member"
# Not in the spec (silent there): the last active owner may not demote themselves, since a
# room without an owner could never be destroyed nor get an owner again.
LAST_OWNER_CANNOT_BE_DEMOTED = "*** The room's last owner cannot be demoted"


def has_joined(uri: str) -> str:
    return f"*** {tag(uri)} has joined the room"


def has_left(uri: str) -> str:
    return f"*** {tag(uri)} has left the room"


def attempted_join(uri: str) -> str:
    return f"*** {tag(uri)} attempted to join the room"


def already_member(uri: str) -> str:
    return f"*** {tag(uri)} is already a member of the room"


def not_member(uri: str) -> str:
    return f"*** {tag(uri)} is not a member of the room"


def invitation(inviter: str, start_char: str) -> str:
    """The invitation sent to the invitee (both ``#`` are the start character)."""
    s = _s(start_char)
    return f"*** {tag(inviter)} invites you to join the room (send '{s}accept' or '{s}reject')"


def invitation_failed(invitee: str, code: int, reason: str) -> str:
    return f"*** Invitation to {tag(invitee)} failed: {code} {reason}"


def declined(uri: str) -> str:
    return f"*** {tag(uri)} declined the invitation"


def is_now(uri: str, role: str) -> str:
    return f"*** {tag(uri)} is now {role.lower()}"


def owner_cannot_leave(start_char: str) -> str:
    s = _s(start_char)
    return (
        "*** You are the room's owner and cannot leave. "
        f"Use {s}destroy if you wish to destroy the room."
    )


# --------------------------------------------------------------------------- listings
def members_list(members: Iterable[Member]) -> str:
    """``Members:`` then :func:`members_lines`, joined by ``\\n`` with no trailing newline."""
    return "\n".join(["Members:", *members_lines(members)])


def members_lines(members: Iterable[Member]) -> list[str]:
    """``*[owner]``, ``~[admin]``, ``[member]`` lines (active members only).

    Owners first, then admins, then plain members, each group in joining order. A member
    flagged both OWNER and ADMIN counts as owner.
    """
    owners: list[str] = []
    admins: list[str] = []
    plain: list[str] = []
    for member in members:
        if not member.active:
            continue
        if member.flags & OWNER:
            owners.append("*" + tag(member.uri))
        elif member.flags & ADMIN:
            admins.append("~" + tag(member.uri))
        else:
            plain.append(tag(member.uri))
    return [*owners, *admins, *plain]


def rooms_list(names: Iterable[str], topics: Mapping[str, str] | None = None) -> str:
    """``Rooms:`` then ``\\n[name]`` per name, in the order given; a name with a topic in
    ``topics`` gets it after `` - `` (:func:`room_entry`)."""
    topics = topics or {}
    return "Rooms:" + "".join("\n" + room_entry(name, topics.get(name, "")) for name in names)


def help_text(start_char: str) -> str:
    """The ``#help`` text: first line empty, one line per command, joined by ``\\r\\n``.

    Follows Kamailio's wording and ``<room_name>``/``<user_name>`` notation; every command of
    spec §4 is listed, with its aliases.
    """
    s = _s(start_char)
    lines = [
        "",
        f"{s}create [<room_name>] [private] - create a new conference room",
        f"{s}join [<room_name>] - join a conference room",
        f"{s}invite <user_name> [<room_name>] - invite a user to join a conference room",
        f"{s}add <user_name> [<room_name>] - add a user to a conference room",
        f"{s}modify <user_name> <role> [<room_name>] - set a member's role: owner, admin or member",
        f"{s}accept [<room_name>] - accept an invitation to join a conference room",
        f"{s}reject [<room_name>] - reject an invitation to join a conference room (or {s}deny)",
        f"{s}remove <user_name> [<room_name>] - remove a user from a conference room",
        f"{s}members [<room_name>] - list the members of a conference room (or {s}list)",
        f"{s}rooms - list the conference rooms",
        f"{s}leave [<room_name>] - leave a conference room (or {s}exit)",
        f"{s}destroy [<room_name>] - destroy a conference room",
        # moderation (issue 16 items 4-5)
        f"{s}kick <user_name> [<reason>] - remove a user from this room, telling them why",
        f"{s}ban <user_name|*@domain> [<reason>] - ban a user (or a domain) from this room",
        f"{s}unban <user_name|*@domain> [<room_name>] - lift a ban",
        f"{s}bans [<room_name>] - list the bans of a conference room",
        f"{s}limit [<number>] [<room_name>] - show or set the room's member limit (owner)",
        *_help_history_topic_info(s),
        f"{s}help - show this help",
    ]
    return "\r\n".join(lines)


# --------------------------------------------------------------------------- moderation
# Not in the spec (issue 16 items 4-5): #ban, #unban, #bans, #kick, #limit and the limits.
NO_PERMISSION_BAN = "*** You don't have the permission to ban members from this room"
NO_PERMISSION_KICK = "*** You don't have the permission to kick members from this room"
NO_PERMISSION_LIMIT = "*** Only the room's owner can change its member limit"
OWNER_CANNOT_BE_BANNED = "*** The room's owner cannot be banned"
OWNER_CANNOT_BE_KICKED = "*** The room's owner cannot be kicked"
CANNOT_BAN_YOURSELF = "*** You cannot ban yourself"
YOU_ARE_BANNED = "*** You are banned from this room"


def _because(reason: str) -> str:
    return f": {reason}" if reason else ""


def ban_name(pattern: str) -> str:
    """How notices name a ban: ``[user]`` for ``user@host``, ``*@host`` for a domain."""
    return pattern if pattern.startswith("*@") else tag(pattern)


def is_banned(uri: str) -> str:
    """``#invite``/``#add`` of a banned user."""
    return f"*** {tag(uri)} is banned from this room"


def already_banned(pattern: str) -> str:
    return f"*** {ban_name(pattern)} is banned from this room already"


def not_banned(pattern: str) -> str:
    return f"*** {ban_name(pattern)} is not banned from this room"


def you_were_banned(reason: str) -> str:
    """To a member the ban removed."""
    return f"*** You have been banned from the room{_because(reason)}"


def was_banned(pattern: str, reason: str) -> str:
    """To the room's active members after a ban."""
    return f"*** {ban_name(pattern)} has been banned from the room{_because(reason)}"


def you_were_kicked(reason: str) -> str:
    return f"*** You have been kicked from the room{_because(reason)}"


def was_kicked(uri: str, reason: str) -> str:
    return f"*** {tag(uri)} has been kicked from the room{_because(reason)}"


def unbanned(pattern: str) -> str:
    return f"*** {ban_name(pattern)} is no longer banned from the room"


def bans_lines(bans: Iterable[Ban]) -> list[str]:
    """The ``#bans`` lines (under ``Bans:``, in pages as :func:`paged` makes them), in banning
    order: ``user@host`` or ``*@host``, then `` - reason`` when there is one."""
    return [ban.pattern + (f" - {ban.reason}" if ban.reason else "") for ban in bans]


def too_many_bans(limit: int) -> str:
    """A ``#ban`` in a room that has ``max_bans`` bans already."""
    return f"*** The room has too many bans (at most {limit}); lift one first"


def room_full(limit: int) -> str:
    """A join, invitation or addition beyond the room's member limit (every listed entry,
    pending invitations included, counts)."""
    return f"*** The room is full (at most {limit} member{'' if limit == 1 else 's'})"


def too_many_rooms(limit: int) -> str:
    """A room creation by a user who owns ``max_rooms_per_user`` rooms already."""
    return f"*** You own too many rooms (at most {limit})"


def server_members_full(limit: int) -> str:
    """A ``#join``, ``#invite``, ``#add`` or room creation on a server whose rooms list
    ``max_members_total`` members and invitations already."""
    return f"*** This server holds too many members (at most {limit} in all its rooms)"


def server_full(limit: int) -> str:
    """A room creation on a server that holds ``max_rooms`` rooms already."""
    return f"*** This server holds too many rooms (at most {limit})"


def limit_is(limit: int) -> str:
    """The answer to ``#limit``, and to ``#limit <n>`` once set."""
    return f"*** The room takes at most {limit} member{'' if limit == 1 else 's'}"


def invalid_limit(start_char: str) -> str:
    """``#limit`` with an argument that is a number but not a whole positive one."""
    s = _s(start_char)
    return f"*** The limit must be a whole number (send '{s}help' for help)"


def limit_out_of_range(maximum: int) -> str:
    """``#limit <n>`` outside 1..max_members (owners may only lower the server's limit)."""
    return f"*** The limit must be from 1 to {maximum}"


def sending_too_fast(retry_after: int) -> str:
    """Chat beyond ``chat_rate``/``chat_burst`` (answered 503 with Retry-After)."""
    return f"*** You are sending too fast; wait {retry_after} s"
# --------------------------------------------------------------------------- history, topic, info
# Not in the spec (issue 16): the archive (#history, replay on join), #topic and #info.
HISTORY_EMPTY = "*** The room's history is empty"
HISTORY_OFF = "*** This server keeps no history (history_max = 0)"
HISTORY_UNAVAILABLE = "*** The history cannot be read right now; try again later"
NO_PERMISSION_TOPIC = "*** You don't have the permission to change the topic of this room"
NO_TOPIC = "*** No topic is set"


def utc(epoch: float | None) -> str:
    """``2026-12-02 05:48:20 UTC`` for an epoch time; ``unknown`` for None."""
    if epoch is None:
        return "unknown"
    moment = dt.datetime.fromtimestamp(int(epoch), dt.UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def history_count(limit: int) -> str:
    """``#history`` with a first argument of digits that is 0 or over ``limit``."""
    return f"*** The number of lines must be from 1 to {limit}"


#: ``#topic`` with a control character (an escape sequence, a bell, a line break).
TOPIC_UNPRINTABLE = "*** A topic may not hold control characters"


def topic_too_long(limit: int) -> str:
    return f"*** Topic too long (at most {limit} characters)"


def topic_is(topic: str) -> str:
    """``#topic`` without text, and what a joiner is told when the room has a topic (its
    unprintable characters escaped, as everywhere a topic is shown: one stored before they
    were refused cannot reach a terminal as itself)."""
    return f"*** Topic: {shown(topic)}"


def topic_set(uri: str, topic: str) -> str:
    return f"*** {tag(uri)} set the topic: {shown(topic)}"


def topic_cleared(uri: str) -> str:
    return f"*** {tag(uri)} cleared the topic"


def history_line(sender: str, time: float, body: str) -> str:
    """One line of a ``#history`` page: ``2026-12-02 05:48:20 UTC [alice]: hello``."""
    return f"{utc(time)} {tag(sender)}: {body}"


def _page(title: str, lines: Iterable[str], page: int, pages: int) -> str:
    head = f"{title}:" if pages == 1 else f"{title} ({page}/{pages}):"
    return "\n".join([head, *lines])


def paged(title: str, lines: Sequence[str], limit: int) -> list[str]:
    """``lines`` under ``title:`` in as many pages as it takes to keep each page's lines
    within ``limit`` bytes (a longer line is a page of its own); several pages are headed
    ``title (1/3):`` and so on. No lines: the one page ``title:``."""
    groups: list[list[str]] = [[]]
    size = 0
    for line in lines:
        cost = len(line.encode()) + 1
        if groups[-1] and size + cost > limit:
            groups.append([])
            size = 0
        groups[-1].append(line)
        size += cost
    return [_page(title, group, i, len(groups)) for i, group in enumerate(groups, 1)]


def rooms_not_listed(count: int) -> str:
    """The last ``#rooms`` line when ``rooms_list_max`` left rooms out."""
    return f"*** {count} more rooms not listed"


def room_entry(name: str, topic: str) -> str:
    """One ``#rooms`` line: ``[name]`` (spec §4), with `` - topic`` when the room has one."""
    return f"[{name}] - {shown(topic)}" if topic else f"[{name}]"


#: Bytes of tagged owners the ``#info`` Owners line lists before it says how many more there
#: are (the whole reply must fit one UDP datagram; ``#members`` lists them all, in pages).
OWNERS_LINE_BYTES = 400


def _owners(owners: list[str]) -> str:
    shown: list[str] = []
    size = 0
    for owner in owners:
        size += len(tag(owner).encode()) + 2
        if shown and size > OWNERS_LINE_BYTES:
            break
        shown.append(tag(owner))
    if not shown:
        return "(none)"
    more = len(owners) - len(shown)
    return ", ".join(shown) + (f" and {more} more (#members lists them)" if more else "")


def info_text(
    uri: str, topic: str, private: bool, owners: Iterable[str], active: int, invited: int,
    created: int | None,
) -> str:  # fmt: skip
    """The ``#info`` reply: one ``Name: value`` line each, joined by ``\n``."""
    members = f"{active} ({invited} invited)" if invited else str(active)
    return "\n".join([
        "Info:",
        f"Room: {uri}",
        f"Topic: {shown(topic)}" if topic else "Topic: (none)",
        f"Type: {'private' if private else 'public'}",
        "Owners: " + _owners(list(owners)),
        f"Members: {members}",
        f"Created: {utc(created)}",
    ])  # fmt: skip


def _help_history_topic_info(s: str) -> list[str]:
    return [
        f"{s}history [<number>] [<room_name>] - show the last lines said in a conference room",
        f"{s}topic [<text>] - show the room's topic, or set it (owner, admin; '{s}topic -' clears it)",
        f"{s}info [<room_name>] - show a conference room's topic, type, owners, members and age",
    ]
