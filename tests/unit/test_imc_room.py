"""Room logic (spec §3, §4, §5): every branch of every command, table-driven.

Each row: initial room, sender, body (parsed and resolved exactly as the server does), the
expected SIP code, notices ``(to, body, sender, kind)``, writes and resulting members.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from imc_actors.imc import (
    ADMIN,
    INVITED,
    OWNER,
    PRIVATE,
    Command,
    InviteFailed,
    Member,
    MemberDelete,
    MemberUpsert,
    Outcome,
    Policy,
    RoomDelete,
    RoomRequest,
    RoomState,
    Target,
    Write,
    apply,
    parse_command,
    resolve,
)

HOST = "example.com"
ROOM = "sip:chat@example.com"
DEFAULT = Policy()
ALICE = "sip:alice@example.com"  # owner
BOB = "sip:bob@example.com"  # admin
CAROL = "sip:carol@example.com"  # member
DAVE = "sip:dave@example.com"  # invited by bob
EVE = "sip:eve@example.com"  # not listed
FRED = "sip:fred@example.com"

Members = tuple[tuple[str, int], ...]


def room(*members: tuple[str, int], private: bool = False, inviters=None) -> RoomState:
    return RoomState(
        "chat",
        HOST,
        PRIVATE if private else 0,
        tuple(Member(uri, flags) for uri, flags in members),
        dict(inviters or {}),
    )


STD: Members = ((ALICE, OWNER), (BOB, ADMIN), (CAROL, 0), (DAVE, INVITED))
STD_INVITERS = {"dave@example.com": BOB}
ACTIVE = (ALICE, BOB, CAROL)


def std(private: bool = False) -> RoomState:
    return room(*STD, private=private, inviters=STD_INVITERS)


def n(to: str, text: str, sender: str = ROOM, kind: str = "notice") -> tuple:
    return (to, text.encode(), sender, kind)


def to_all(text: str, recipients=ACTIVE) -> list[tuple]:
    return [n(to, text) for to in recipients]


def without(members: Members, uri: str) -> Members:
    return tuple(m for m in members if m[0] != uri)


def reflag(members: Members, uri: str, flags: int) -> Members:
    return tuple((u, flags if u == uri else f) for u, f in members)


@dataclass
class Case:
    id: str
    state: RoomState
    sender: str
    body: bytes
    code: int
    notices: list[tuple]
    writes: list[Write] = field(default_factory=list)
    members: Members | None = None  # None: unchanged
    policy: Policy = Policy()
    destroyed: bool = False
    inviters: dict[str, str] | None = None  # None: unchanged


def run(state: RoomState, sender: str, body: bytes, policy: Policy = DEFAULT):
    command = parse_command(body, policy.start_char)
    target = None
    if command is not None:
        target = resolve(command, ruri_user="chat", ruri_host=HOST, manager_user="imc-manager")
    request = RoomRequest(
        sender,
        command,
        target,
        body=body if command is None else b"",
        content_type="text/plain" if command is None else None,
        call_id="c1",
    )
    return apply(state, request, policy)


def shape(outcome: Outcome) -> list[tuple]:
    return [(x.to, x.body, x.sender, x.kind) for x in outcome.notices]


def members_of(state: RoomState) -> Members:
    return tuple((m.uri, m.flags) for m in state.members)


REASON = {200: "OK", 202: "Accepted", 400: "Bad Request", 403: "Forbidden", 404: "Not Found"}

NOT_A_MEMBER = "*** You are not a member of this room"
NO_PENDING = "*** You have no pending invitation to this room"
PERM_INVITE = "*** You don't have the permission to invite members to this room"
PERM_ADD = "*** You don't have the permission to add members to this room"
PERM_REMOVE = "*** You don't have the permission to remove members from this room"
PERM_MODIFY = "*** You don't have the permission to modify members in this room"
ONLY_OWNER = "*** Only the room's owner can destroy the room"
DESTROYED = "*** Room has been destroyed"
INVITE_TEXT = "*** [{}] invites you to join the room (send '#accept' or '#reject')"
OWNER_LEAVE = (
    "*** You are the room's owner and cannot leave. Use #destroy if you wish to destroy the room."
)

CASES = [
    # ------------------------------------------------------------------ #create, room exists
    Case(
        "create/public/outsider joins",
        std(),
        EVE,
        b"#create",
        200,
        to_all("*** [eve] has joined the room", (*ACTIVE, EVE)),
        [MemberUpsert(ROOM, EVE, 0)],
        (*STD, (EVE, 0)),
    ),
    Case(
        "create/named room, private ignored for an existing public room",
        std(),
        EVE,
        b"#CREATE chat private",
        200,
        to_all("*** [eve] has joined the room", (*ACTIVE, EVE)),
        [MemberUpsert(ROOM, EVE, 0)],
        (*STD, (EVE, 0)),
    ),
    Case(
        "create/check_on_create",
        std(),
        EVE,
        b"#create",
        403,
        [n(EVE, "*** Room already exists")],
        policy=Policy(check_on_create=True),
    ),
    Case(
        "create/check_on_create wins over member",
        std(),
        ALICE,
        b"#create",
        403,
        [n(ALICE, "*** Room already exists")],
        policy=Policy(check_on_create=True),
    ),
    Case(
        "create/active member",
        std(),
        CAROL,
        b"#create",
        403,
        [n(CAROL, "*** Room already exists and you are a member")],
    ),
    Case(
        "create/invited counts as listed",
        std(),
        DAVE,
        b"#create",
        403,
        [n(DAVE, "*** Room already exists and you are a member")],
    ),
    Case(
        "create/private, listed",
        std(private=True),
        "sip:CAROL@Example.COM",
        b"#create",
        403,
        [n("sip:CAROL@Example.COM", "*** Room already exists and you are a member")],
    ),
    Case(
        "create/private, not listed",
        std(private=True),
        EVE,
        b"#create private",
        403,
        [n(EVE, "*** A private room with the same name already exists")],
    ),
    # ------------------------------------------------------------------ #join, room exists
    Case(
        "join/public",
        std(),
        EVE,
        b"#join",
        200,
        to_all("*** [eve] has joined the room", (*ACTIVE, EVE)),
        [MemberUpsert(ROOM, EVE, 0)],
        (*STD, (EVE, 0)),
    ),
    Case(
        "join/public named room, case-insensitive name",
        std(),
        EVE,
        b"#Join CHAT",
        200,
        to_all("*** [eve] has joined the room", (*ACTIVE, EVE)),
        [MemberUpsert(ROOM, EVE, 0)],
        (*STD, (EVE, 0)),
    ),
    Case(
        "join/already active",
        std(),
        CAROL,
        b"#join",
        403,
        [n(CAROL, "*** You are in the room already")],
    ),
    Case(
        "join/already active, other spelling",
        std(),
        "sip:Alice@EXAMPLE.com",
        b"#join",
        403,
        [n("sip:Alice@EXAMPLE.com", "*** You are in the room already")],
    ),
    Case(
        "join/invited accepts",
        std(),
        DAVE,
        b"#join",
        200,
        to_all("*** [dave] has joined the room", (*ACTIVE, DAVE)),
        [MemberUpsert(ROOM, DAVE, 0)],
        reflag(STD, DAVE, 0),
        inviters={},
    ),
    Case(
        "join/invited to a private room accepts",
        std(private=True),
        DAVE,
        b"#join",
        200,
        to_all("*** [dave] has joined the room", (*ACTIVE, DAVE)),
        [MemberUpsert(ROOM, DAVE, 0)],
        reflag(STD, DAVE, 0),
        inviters={},
    ),
    Case(
        "join/private: owners and admins notified, not members nor invitees",
        room((ALICE, OWNER), (BOB, ADMIN), (CAROL, 0), (DAVE, INVITED | ADMIN), private=True),
        EVE,
        b"#join",
        403,
        [
            n(EVE, "*** Private rooms are by invitation only. Room owners have been notified."),
            n(ALICE, "*** [eve] attempted to join the room"),
            n(BOB, "*** [eve] attempted to join the room"),
        ],
    ),
    # ------------------------------------------------------------------ #invite
    Case(
        "invite/by owner",
        std(),
        ALICE,
        b"#invite eve",
        200,
        [(EVE, INVITE_TEXT.format("alice").encode(), ROOM, "notice")],
        [MemberUpsert(ROOM, EVE, INVITED)],
        (*STD, (EVE, INVITED)),
        inviters={**STD_INVITERS, "eve@example.com": ALICE},
    ),
    Case(
        "invite/by admin, full URI, other domain",
        std(),
        BOB,
        b"#invite sip:Eve@other.org",
        200,
        [("sip:Eve@other.org", INVITE_TEXT.format("bob").encode(), ROOM, "notice")],
        [MemberUpsert(ROOM, "sip:Eve@other.org", INVITED)],
        (*STD, ("sip:Eve@other.org", INVITED)),
        inviters={**STD_INVITERS, "eve@other.org": BOB},
    ),
    Case(
        "invite/custom start char in the invitation",
        std(),
        ALICE,
        b"!invite eve",
        200,
        [
            n(
                EVE,
                "*** [alice] invites you to join the room (send '!accept' or '!reject')",
            )
        ],
        [MemberUpsert(ROOM, EVE, INVITED)],
        (*STD, (EVE, INVITED)),
        policy=Policy(start_char="!"),
        inviters={**STD_INVITERS, "eve@example.com": ALICE},
    ),
    Case("invite/by member", std(), CAROL, b"#invite eve", 403, [n(CAROL, PERM_INVITE)]),
    Case("invite/by outsider", std(), EVE, b"#invite fred", 403, [n(EVE, PERM_INVITE)]),
    Case(
        "invite/by invited admin (roles of invitees do not count)",
        room((ALICE, OWNER), (BOB, ADMIN | INVITED)),
        BOB,
        b"#invite eve",
        403,
        [n(BOB, PERM_INVITE)],
    ),
    Case(
        "invite/target active, other spelling",
        std(),
        ALICE,
        b"#invite CAROL@example.COM",
        403,
        [n(ALICE, "*** [carol] is already a member of the room")],
    ),
    Case(
        "invite/target already invited",
        std(),
        ALICE,
        b"#invite dave",
        403,
        [n(ALICE, "*** [dave] is already a member of the room")],
    ),
    Case(
        "invite/self",
        std(),
        ALICE,
        b"#invite alice",
        403,
        [n(ALICE, "*** [alice] is already a member of the room")],
    ),
    # ------------------------------------------------------------------ #add
    Case(
        "add/by owner",
        std(),
        ALICE,
        b"#add eve",
        200,
        to_all("*** [eve] has joined the room", (*ACTIVE, EVE)),
        [MemberUpsert(ROOM, EVE, 0)],
        (*STD, (EVE, 0)),
    ),
    Case(
        "add/by admin",
        std(),
        BOB,
        b"#ADD eve",
        200,
        to_all("*** [eve] has joined the room", (*ACTIVE, EVE)),
        [MemberUpsert(ROOM, EVE, 0)],
        (*STD, (EVE, 0)),
    ),
    Case("add/by member", std(), CAROL, b"#add eve", 403, [n(CAROL, PERM_ADD)]),
    Case("add/by invitee", std(), DAVE, b"#add eve", 403, [n(DAVE, PERM_ADD)]),
    Case(
        "add/target listed",
        std(),
        ALICE,
        b"#add Bob",
        403,
        [n(ALICE, "*** [bob] is already a member of the room")],
    ),
    Case(
        "add/target invited",
        std(),
        BOB,
        b"#add dave",
        403,
        [n(BOB, "*** [dave] is already a member of the room")],
    ),
    # ------------------------------------------------------------------ #accept
    Case(
        "accept/invited",
        std(),
        DAVE,
        b"#accept",
        200,
        to_all("*** [dave] has joined the room", (*ACTIVE, DAVE)),
        [MemberUpsert(ROOM, DAVE, 0)],
        reflag(STD, DAVE, 0),
        inviters={},
    ),
    Case(
        "accept/invited with role keeps the role",
        room((ALICE, OWNER), (DAVE, INVITED | ADMIN)),
        "sip:DAVE@example.com",
        b"#accept chat",
        200,
        to_all("*** [dave] has joined the room", (ALICE, DAVE)),
        [MemberUpsert(ROOM, DAVE, ADMIN)],
        ((ALICE, OWNER), (DAVE, ADMIN)),
    ),
    Case("accept/active member", std(), CAROL, b"#accept", 403, [n(CAROL, NO_PENDING)]),
    Case("accept/outsider", std(), EVE, b"#accept", 403, [n(EVE, NO_PENDING)]),
    # ------------------------------------------------------------------ #reject / #deny
    Case(
        "reject/inviter told",
        std(),
        DAVE,
        b"#reject",
        200,
        [n(BOB, "*** [dave] declined the invitation")],
        [MemberDelete(ROOM, DAVE)],
        without(STD, DAVE),
        inviters={},
    ),
    Case(
        "deny/inviter unknown (after a restart): nobody told",
        room(*STD),
        "sip:Dave@Example.com",
        b"#deny",
        200,
        [],
        [MemberDelete(ROOM, DAVE)],
        without(STD, DAVE),
    ),
    Case("reject/active member", std(), CAROL, b"#reject", 403, [n(CAROL, NO_PENDING)]),
    Case("deny/outsider", std(), EVE, b"#DENY", 403, [n(EVE, NO_PENDING)]),
    # ------------------------------------------------------------------ #remove
    Case(
        "remove/by owner",
        std(),
        ALICE,
        b"#remove carol",
        200,
        [n(CAROL, "*** You have been removed from the room")]
        + to_all("*** [carol] has left the room", (ALICE, BOB)),
        [MemberDelete(ROOM, CAROL)],
        without(STD, CAROL),
    ),
    Case(
        "remove/by admin, other spelling: rows named as listed",
        std(),
        BOB,
        b"#remove CAROL@EXAMPLE.COM",
        200,
        [n(CAROL, "*** You have been removed from the room")]
        + to_all("*** [carol] has left the room", (ALICE, BOB)),
        [MemberDelete(ROOM, CAROL)],
        without(STD, CAROL),
    ),
    Case(
        "remove/admin removes an admin",
        room((ALICE, OWNER), (BOB, ADMIN), (FRED, ADMIN)),
        BOB,
        b"#remove fred",
        200,
        [n(FRED, "*** You have been removed from the room")]
        + to_all("*** [fred] has left the room", (ALICE, BOB)),
        [MemberDelete(ROOM, FRED)],
        ((ALICE, OWNER), (BOB, ADMIN)),
    ),
    Case(
        "remove/invitee: invitation withdrawn",
        std(),
        ALICE,
        b"#remove dave",
        200,
        [n(DAVE, "*** You have been removed from the room")]
        + to_all("*** [dave] has left the room"),
        [MemberDelete(ROOM, DAVE)],
        without(STD, DAVE),
        inviters={},
    ),
    Case("remove/by member", std(), CAROL, b"#remove bob", 403, [n(CAROL, PERM_REMOVE)]),
    Case("remove/by outsider", std(), EVE, b"#remove carol", 403, [n(EVE, PERM_REMOVE)]),
    Case(
        "remove/target not listed",
        std(),
        ALICE,
        b"#remove eve",
        404,
        [n(ALICE, "*** [eve] is not a member of the room")],
    ),
    Case(
        "remove/target owner",
        std(),
        BOB,
        b"#remove alice",
        403,
        [n(BOB, "*** The room's owner cannot be removed")],
    ),
    Case(
        "remove/owner removes self",
        std(),
        ALICE,
        b"#remove alice",
        403,
        [n(ALICE, "*** The room's owner cannot be removed")],
    ),
    Case(
        "remove/owner removes another owner",
        room((ALICE, OWNER), (FRED, OWNER)),
        ALICE,
        b"#remove fred",
        403,
        [n(ALICE, "*** The room's owner cannot be removed")],
    ),
    # ------------------------------------------------------------------ #leave / #exit
    Case(
        "leave/member: told before removal (U included)",
        std(),
        CAROL,
        b"#leave",
        200,
        to_all("*** [carol] has left the room"),
        [MemberDelete(ROOM, CAROL)],
        without(STD, CAROL),
    ),
    Case(
        "exit/admin, other spelling",
        std(),
        "sip:BOB@example.com",
        b"#exit",
        200,
        to_all("*** [bob] has left the room"),
        [MemberDelete(ROOM, BOB)],
        without(STD, BOB),
    ),
    Case("leave/not listed", std(), EVE, b"#leave", 403, [n(EVE, NOT_A_MEMBER)]),
    Case(
        "leave/invitee declines",
        std(),
        DAVE,
        b"#leave",
        200,
        [n(BOB, "*** [dave] declined the invitation")],
        [MemberDelete(ROOM, DAVE)],
        without(STD, DAVE),
        inviters={},
    ),
    Case(
        "leave/owner with another owner",
        room((ALICE, OWNER), (FRED, OWNER), (CAROL, 0)),
        ALICE,
        b"#leave",
        200,
        to_all("*** [alice] has left the room", (ALICE, FRED, CAROL)),
        [MemberDelete(ROOM, ALICE)],
        ((FRED, OWNER), (CAROL, 0)),
    ),
    Case(
        "leave/last owner destroys the room",
        std(),
        ALICE,
        b"#leave",
        200,
        to_all(DESTROYED),
        [RoomDelete("chat", HOST)],
        (),
        destroyed=True,
        inviters={},
    ),
    Case(
        "leave/last active owner (other owner only invited) destroys",
        room((ALICE, OWNER), (FRED, OWNER | INVITED), (CAROL, 0)),
        ALICE,
        b"#exit",
        200,
        to_all(DESTROYED, (ALICE, CAROL)),
        [RoomDelete("chat", HOST)],
        (),
        destroyed=True,
    ),
    Case(
        "leave/last owner refused",
        std(),
        ALICE,
        b"#leave",
        403,
        [n(ALICE, OWNER_LEAVE)],
        policy=Policy(owner_leave="refuse"),
    ),
    Case(
        "leave/last owner refused, custom start char",
        std(),
        ALICE,
        b"!leave",
        403,
        [n(ALICE, OWNER_LEAVE.replace("#destroy", "!destroy"))],
        policy=Policy(start_char="!", owner_leave="refuse"),
    ),
    Case(
        "leave/owner with another owner under refuse policy",
        room((ALICE, OWNER), (FRED, OWNER)),
        ALICE,
        b"#leave",
        200,
        to_all("*** [alice] has left the room", (ALICE, FRED)),
        [MemberDelete(ROOM, ALICE)],
        ((FRED, OWNER),),
        policy=Policy(owner_leave="refuse"),
    ),
    # ------------------------------------------------------------------ #destroy
    Case(
        "destroy/by owner: active members told, invitees not",
        std(),
        ALICE,
        b"#destroy",
        200,
        to_all(DESTROYED),
        [RoomDelete("chat", HOST)],
        (),
        destroyed=True,
        inviters={},
    ),
    Case(
        "destroy/by second owner",
        room((ALICE, OWNER), (FRED, OWNER)),
        "sip:fred@EXAMPLE.COM",
        b"#DESTROY chat",
        200,
        to_all(DESTROYED, (ALICE, FRED)),
        [RoomDelete("chat", HOST)],
        (),
        destroyed=True,
    ),
    Case("destroy/by admin", std(), BOB, b"#destroy", 403, [n(BOB, ONLY_OWNER)]),
    Case("destroy/by member", std(), CAROL, b"#destroy", 403, [n(CAROL, ONLY_OWNER)]),
    Case("destroy/by outsider", std(), EVE, b"#destroy", 403, [n(EVE, ONLY_OWNER)]),
    Case(
        "destroy/by invited owner",
        room((ALICE, OWNER), (FRED, OWNER | INVITED)),
        FRED,
        b"#destroy",
        403,
        [n(FRED, ONLY_OWNER)],
    ),
    # ------------------------------------------------------------------ #members / #list
    Case(
        "members/by member",
        std(),
        CAROL,
        b"#members",
        200,
        [n(CAROL, "Members:\n*[alice]\n~[bob]\n[carol]", kind="reply")],
    ),
    Case(
        "list/order: owners, admins, members, each by joining order; active only",
        room(
            (CAROL, 0),
            (ALICE, OWNER),
            (BOB, ADMIN),
            (DAVE, INVITED),
            (FRED, OWNER | ADMIN),
            (EVE, 0),
            ("sip:gina@example.com", ADMIN),
            ("sip:hal@example.com", OWNER | INVITED),
        ),
        EVE,
        b"#list",
        200,
        [
            n(
                EVE,
                "Members:\n*[alice]\n*[fred]\n~[bob]\n~[gina]\n[carol]\n[eve]",
                kind="reply",
            )
        ],
    ),
    Case("members/invitee", std(), DAVE, b"#members", 403, [n(DAVE, NOT_A_MEMBER)]),
    Case("members/outsider", std(), EVE, b"#LIST", 403, [n(EVE, NOT_A_MEMBER)]),
    # ------------------------------------------------------------------ #modify
    Case(
        "modify/owner makes member admin",
        std(),
        ALICE,
        b"#modify carol admin",
        200,
        to_all("*** [carol] is now admin"),
        [MemberUpsert(ROOM, CAROL, ADMIN)],
        reflag(STD, CAROL, ADMIN),
    ),
    Case(
        "modify/role and user case-insensitive; room from 3rd token",
        std(),
        ALICE,
        b"#MODIFY Carol@Example.Com ADMIN chat",
        200,
        to_all("*** [carol] is now admin"),
        [MemberUpsert(ROOM, CAROL, ADMIN)],
        reflag(STD, CAROL, ADMIN),
    ),
    Case(
        "modify/owner makes admin owner",
        std(),
        ALICE,
        b"#modify bob owner",
        200,
        to_all("*** [bob] is now owner"),
        [MemberUpsert(ROOM, BOB, OWNER)],
        reflag(STD, BOB, OWNER),
    ),
    Case(
        "modify/owner demotes another owner",
        room((ALICE, OWNER), (FRED, OWNER)),
        ALICE,
        b"#modify fred member",
        200,
        to_all("*** [fred] is now member", (ALICE, FRED)),
        [MemberUpsert(ROOM, FRED, 0)],
        ((ALICE, OWNER), (FRED, 0)),
    ),
    Case(
        "modify/owner demotes self while another owner remains",
        room((ALICE, OWNER), (FRED, OWNER)),
        ALICE,
        b"#modify alice admin",
        200,
        to_all("*** [alice] is now admin", (ALICE, FRED)),
        [MemberUpsert(ROOM, ALICE, ADMIN)],
        ((ALICE, ADMIN), (FRED, OWNER)),
    ),
    Case(
        "modify/last owner cannot demote self",
        std(),
        ALICE,
        b"#modify alice member",
        403,
        [n(ALICE, "*** The room's last owner cannot be demoted")],
    ),
    Case(
        "modify/admin makes member admin",
        std(),
        BOB,
        b"#modify carol admin",
        200,
        to_all("*** [carol] is now admin"),
        [MemberUpsert(ROOM, CAROL, ADMIN)],
        reflag(STD, CAROL, ADMIN),
    ),
    Case(
        "modify/admin demotes self",
        std(),
        BOB,
        b"#modify bob member",
        200,
        to_all("*** [bob] is now member"),
        [MemberUpsert(ROOM, BOB, 0)],
        reflag(STD, BOB, 0),
    ),
    Case(
        "modify/admin cannot grant owner",
        std(),
        BOB,
        b"#modify carol owner",
        403,
        [n(BOB, PERM_MODIFY)],
    ),
    Case(
        "modify/admin cannot grant owner to self",
        std(),
        BOB,
        b"#modify bob owner",
        403,
        [n(BOB, PERM_MODIFY)],
    ),
    Case(
        "modify/admin cannot take owner away",
        std(),
        BOB,
        b"#modify alice admin",
        403,
        [n(BOB, PERM_MODIFY)],
    ),
    Case("modify/by member", std(), CAROL, b"#modify carol admin", 403, [n(CAROL, PERM_MODIFY)]),
    Case("modify/by outsider", std(), EVE, b"#modify carol admin", 403, [n(EVE, PERM_MODIFY)]),
    Case(
        "modify/by invited owner",
        room((ALICE, OWNER), (FRED, OWNER | INVITED), (CAROL, 0)),
        FRED,
        b"#modify carol admin",
        403,
        [n(FRED, PERM_MODIFY)],
    ),
    Case(
        "modify/target not listed",
        std(),
        ALICE,
        b"#modify eve admin",
        404,
        [n(ALICE, "*** [eve] is not a member of the room")],
    ),
    Case(
        "modify/permission checked before the target",
        std(),
        CAROL,
        b"#modify eve admin",
        403,
        [n(CAROL, PERM_MODIFY)],
    ),
    Case(
        "modify/invitee stays pending; told to active members only",
        std(),
        ALICE,
        b"#modify dave admin",
        200,
        to_all("*** [dave] is now admin"),
        [MemberUpsert(ROOM, DAVE, INVITED | ADMIN)],
        reflag(STD, DAVE, INVITED | ADMIN),
    ),
    Case(
        "modify/no change: no write, still told",
        std(),
        ALICE,
        b"#modify carol member",
        200,
        to_all("*** [carol] is now member"),
        [],
    ),
    # ------------------------------------------------------------------ chat (spec §5)
    Case(
        "chat/relayed to active members but U",
        std(),
        CAROL,
        b"hello",
        202,
        [
            (ALICE, b"[carol]: hello", ROOM, "relay"),
            (BOB, b"[carol]: hello", ROOM, "relay"),
        ],
    ),
    Case(
        "chat/leading space before # is chat",
        std(),
        ALICE,
        b" #join",
        202,
        [(BOB, b"[alice]:  #join", ROOM, "relay"), (CAROL, b"[alice]:  #join", ROOM, "relay")],
    ),
    Case(
        "chat/bytes unchanged, other sender spelling uses the listed one",
        std(),
        "sip:Bob@EXAMPLE.com",
        b"l1\r\nl2\x00\xff\xfe",
        202,
        [
            (ALICE, b"[bob]: l1\r\nl2\x00\xff\xfe", ROOM, "relay"),
            (CAROL, b"[bob]: l1\r\nl2\x00\xff\xfe", ROOM, "relay"),
        ],
    ),
    Case(
        "chat/'#' is chat under another start char",
        std(),
        CAROL,
        b"#1 topic",
        202,
        [
            (ALICE, b"[carol]: #1 topic", ROOM, "relay"),
            (BOB, b"[carol]: #1 topic", ROOM, "relay"),
        ],
        policy=Policy(start_char="!"),
    ),
    Case("chat/alone in the room", room((ALICE, OWNER), (DAVE, INVITED)), ALICE, b"hi", 202, []),
    Case("chat/outsider", std(), EVE, b"hello", 403, [n(EVE, NOT_A_MEMBER)]),
    Case("chat/invitee", std(), DAVE, b"hello", 403, [n(DAVE, NOT_A_MEMBER)]),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_apply(case: Case) -> None:
    state = case.state
    members_before = members_of(state)
    inviters_before = dict(state.inviters)

    new, outcome = run(state, case.sender, case.body, case.policy)

    assert (outcome.code, outcome.reason) == (case.code, REASON[case.code])
    assert shape(outcome) == case.notices
    assert list(outcome.writes) == case.writes
    assert members_of(new) == (members_before if case.members is None else case.members)
    expected_inviters = inviters_before if case.inviters is None else case.inviters
    assert dict(new.inviters) == expected_inviters
    assert outcome.destroyed is case.destroyed
    assert outcome.created is False
    # never mutates its input
    assert members_of(state) == members_before
    assert dict(state.inviters) == inviters_before
    # the room keeps its identity and spelling
    assert (new.name, new.domain, new.flags) == (state.name, state.domain, state.flags)
    # refusals change nothing and write nothing
    if case.code >= 400:
        assert new is state and outcome.writes == ()
    # content type: relays copy it, notices leave it to the caller
    for notice in outcome.notices:
        assert notice.content_type == ("text/plain" if notice.kind == "relay" else None)
        assert notice.invite_of == (notice.to if b"invites you" in notice.body else None)


def test_every_error_outcome_is_also_a_notice_to_the_sender() -> None:
    for case in CASES:
        if case.code >= 400:
            new, outcome = run(case.state, case.sender, case.body, case.policy)
            assert outcome.notices[0].to == case.sender, case.id
            assert outcome.notices[0].sender == ROOM, case.id


def test_members_reply_body_is_also_in_outcome() -> None:
    _, outcome = run(std(), CAROL, b"#members")
    assert outcome.body == b"Members:\n*[alice]\n~[bob]\n[carol]"
    assert outcome.notices[0].body is outcome.body or outcome.notices[0].body == outcome.body


def test_other_commands_have_no_body() -> None:
    _, outcome = run(std(), ALICE, b"#invite eve")
    assert outcome.body is None


def test_chat_reuses_state_and_members() -> None:
    state = std()
    new, outcome = run(state, CAROL, b"x")
    assert new is state
    assert new.members is state.members
    assert outcome.code == 202 and outcome.writes == ()


def test_invitee_with_role_becomes_that_role_on_accept() -> None:
    state = std()
    state, _ = run(state, ALICE, b"#invite eve")
    state, _ = run(state, ALICE, b"#modify eve owner")
    assert state.find(EVE) == Member(EVE, INVITED | OWNER)
    state, outcome = run(state, EVE, b"#accept")
    assert state.find(EVE) == Member(EVE, OWNER)
    assert outcome.writes == (MemberUpsert(ROOM, EVE, OWNER),)


def test_accept_keeps_joining_order_of_the_invitation() -> None:
    state, _ = run(std(), DAVE, b"#accept")
    assert [m.uri for m in state.members] == [ALICE, BOB, CAROL, DAVE]


@pytest.mark.parametrize("body", [b"#rooms", b"#help"])
def test_roomless_commands_are_not_applied_to_a_room(body: bytes) -> None:
    command = parse_command(body, "#")
    request = RoomRequest(ALICE, command, Target(None, None))
    with pytest.raises(ValueError):
        apply(std(), request, Policy())


def test_user_command_without_target_is_a_programming_error() -> None:
    request = RoomRequest(ALICE, Command("invite", "invite", ()), Target("chat", HOST))
    with pytest.raises(ValueError):
        apply(std(), request, Policy())


# --------------------------------------------------------------------------- InviteFailed
@pytest.mark.parametrize(
    ("state", "op", "notices", "writes", "members"),
    [
        pytest.param(
            std(),
            InviteFailed(DAVE, 486, "Busy Here"),
            [n(BOB, "*** Invitation to [dave] failed: 486 Busy Here")],
            [MemberDelete(ROOM, DAVE)],
            without(STD, DAVE),
            id="inviter told, invitee removed",
        ),
        pytest.param(
            std(),
            InviteFailed("sip:DAVE@example.com", 408, "Request Timeout"),
            [n(BOB, "*** Invitation to [dave] failed: 408 Request Timeout")],
            [MemberDelete(ROOM, DAVE)],
            without(STD, DAVE),
            id="timeout, other spelling",
        ),
        pytest.param(
            room(*STD),
            InviteFailed(DAVE, 404, "Not Found"),
            [],
            [MemberDelete(ROOM, DAVE)],
            without(STD, DAVE),
            id="inviter unknown",
        ),
        pytest.param(
            room(*reflag(STD, DAVE, 0), inviters=STD_INVITERS),
            InviteFailed(DAVE, 480, "Temporarily Unavailable"),
            [],
            [],
            reflag(STD, DAVE, 0),
            id="accepted meanwhile: nothing",
        ),
        pytest.param(
            room(*without(STD, DAVE)),
            InviteFailed(DAVE, 480, "Temporarily Unavailable"),
            [],
            [],
            without(STD, DAVE),
            id="gone meanwhile: nothing",
        ),
    ],
)
def test_invite_failed(state, op, notices, writes, members) -> None:
    new, outcome = apply(state, op, Policy())
    assert (outcome.code, outcome.reason) == (200, "OK")
    assert shape(outcome) == notices
    assert list(outcome.writes) == writes
    assert members_of(new) == members
    assert "dave@example.com" not in new.inviters or not writes
    if not writes:
        assert new is state


def test_invitation_failure_round_trip() -> None:
    state, outcome = run(std(), ALICE, b"#invite eve")
    invitation = outcome.notices[0]
    assert invitation.invite_of == EVE
    state, outcome = apply(state, InviteFailed(invitation.invite_of, 603, "Decline"), Policy())
    assert shape(outcome) == [n(ALICE, "*** Invitation to [eve] failed: 603 Decline")]
    assert state.find(EVE) is None
    assert "eve@example.com" not in state.inviters
