"""Moderation in the pure room logic (issue 16 items 4-5): ``#ban``, ``#unban``, ``#bans``,
``#kick``, ``#limit``, the member limit and the management actions, exactly as the server
parses, resolves and applies them."""

from __future__ import annotations

import pytest

from imc_actors.imc import (
    ADMIN,
    INVITED,
    OWNER,
    AdminAction,
    Ban,
    BanDelete,
    BanSet,
    CommandError,
    LimitSet,
    Member,
    MemberDelete,
    Outcome,
    Policy,
    RoomDelete,
    RoomRequest,
    RoomState,
    apply,
    help_text,
    parse_command,
    resolve,
    texts,
)

HOST = "example.com"
ROOM = "sip:chat@example.com"
ALICE = "sip:alice@example.com"  # owner
BOB = "sip:bob@example.com"  # admin
CAROL = "sip:carol@example.com"  # member
DAVE = "sip:dave@example.com"  # invited
EVE = "sip:eve@example.com"  # not listed
MALLORY = "sip:mallory@evil.org"  # member from another domain
MAL2 = "sip:trudy@evil.org"  # invited from that domain
DEFAULT = Policy()


def std(**changes: object) -> RoomState:
    members = (
        Member(ALICE, OWNER), Member(BOB, ADMIN), Member(CAROL, 0), Member(DAVE, INVITED),
        Member(MALLORY, 0), Member(MAL2, INVITED),
    )  # fmt: skip
    state = RoomState("chat", HOST, 0, members, {"dave@example.com": BOB})
    return RoomState(**{**{f: getattr(state, f) for f in state.__slots__}, **changes})  # type: ignore[arg-type]


def run(
    state: RoomState, sender: str, body: str, policy: Policy = DEFAULT
) -> tuple[RoomState, Outcome]:
    command = parse_command(body.encode(), "#")
    target = None
    if command is not None:
        target = resolve(command, ruri_user="chat", ruri_host=HOST, manager_user="imc-manager")
    return apply(state, RoomRequest(sender, command, target, body.encode()), policy)


def notices(outcome: Outcome) -> list[tuple[str, str]]:
    return [(n.to, n.body.decode()) for n in outcome.notices]


def uris(state: RoomState) -> list[str]:
    return [m.uri for m in state.members]


# ------------------------------------------------------------------ parsing
def test_ban_reason_is_the_rest_of_the_line() -> None:
    command = parse_command(b"#ban mallory@evil.org  spamming   the room, twice\r\nx", "#")
    assert command is not None and command.name == "ban"
    target = resolve(command, ruri_user="chat", ruri_host=HOST, manager_user="imc-manager")
    assert (target.room_uri, target.user, target.reason) == (
        ROOM, MALLORY, "spamming   the room, twice")


def test_ban_without_user_or_at_the_manager_is_refused() -> None:
    for body, ruri, text in (
        (b"#ban", "chat", texts.missing_argument("#")),
        (b"#ban bob", "imc-manager", texts.MISSING_ROOM_NAME),
        (b"#kick *@evil.org", "chat", texts.invalid_address("*@evil.org")),
        (b"#limit -3", "chat", texts.invalid_limit("#")),
    ):
        command = parse_command(body, "#")
        assert command is not None
        with pytest.raises(CommandError) as caught:
            resolve(command, ruri_user=ruri, ruri_host=HOST, manager_user="imc-manager")
        assert (caught.value.code, caught.value.text) == (400, text)


def test_limit_and_unban_take_an_optional_room() -> None:
    def target(body: bytes):
        command = parse_command(body, "#")
        assert command is not None
        return resolve(command, ruri_user="imc-manager", ruri_host=HOST, manager_user="imc-manager")

    assert (target(b"#limit 20 chat").limit, target(b"#limit 20 chat").room_uri) == (20, ROOM)
    assert (target(b"#limit chat").limit, target(b"#limit chat").room_uri) == (None, ROOM)
    assert target(b"#unban *@Evil.org chat").user == "sip:*@Evil.org"


def test_counts_are_ascii_digits_and_never_overflow() -> None:
    # '²' is a digit to str.isdigit, and int() of 5,000 digits raises: both used to escape
    # resolve() as ValueError instead of an answer
    def target(body: bytes):
        command = parse_command(body, "#")
        assert command is not None
        return resolve(command, ruri_user="chat", ruri_host=HOST, manager_user="imc-manager")

    for digits in ("²", "٣", "１２"):  # digits to str.isdigit: meant as counts, refused as such
        with pytest.raises(CommandError) as refused:
            target(f"#limit {digits}".encode())
        assert (refused.value.code, refused.value.text) == (400, texts.invalid_limit("#"))
        assert target(f"#history {digits}".encode()).count == 0  # the room's "from 1 to N"
        assert target(f"#history {digits} chat".encode()).room_uri == ROOM
    assert target(b"#limit " + b"9" * 5000).limit == 10**9  # too large: refused by the room
    assert target(b"#history " + b"9" * 5000).count == 10**9


def test_help_lists_every_command() -> None:
    from imc_actors.imc import COMMANDS

    text = help_text("#")
    for name in COMMANDS:
        assert f"\r\n#{name} " in text or text.endswith(f"#{name} - show this help"), name


# ------------------------------------------------------------------ #ban
def test_ban_removes_the_user_and_tells_everyone() -> None:
    new, outcome = run(std(), BOB, "#ban mallory@evil.org spam")
    assert outcome.code == 200
    assert MALLORY not in uris(new)
    assert new.bans == (Ban("mallory@evil.org", "spam"),)
    assert outcome.writes == (
        BanSet(ROOM, "mallory@evil.org", "spam", BOB), MemberDelete(ROOM, MALLORY))
    said = texts.was_banned("mallory@evil.org", "spam")
    assert notices(outcome) == [
        (MALLORY, "*** You have been banned from the room: spam"),
        (ALICE, said), (BOB, said), (CAROL, said),
    ]
    assert said == "*** [mallory] has been banned from the room: spam"


def test_domain_ban_removes_every_match_but_owners_and_the_banner() -> None:
    state = std(members=(*std().members, Member("sip:boss@evil.org", OWNER)))
    new, outcome = run(state, BOB, "#ban *@EVIL.org")
    assert outcome.code == 200
    assert uris(new) == [ALICE, BOB, CAROL, DAVE, "sip:boss@evil.org"]
    assert new.bans == (Ban("*@evil.org"),)
    assert {w for w in outcome.writes if isinstance(w, MemberDelete)} == {
        MemberDelete(ROOM, MALLORY), MemberDelete(ROOM, MAL2)}
    assert texts.was_banned("*@evil.org", "") == "*** *@evil.org has been banned from the room"


def test_banned_user_cannot_join_be_invited_added_or_chat() -> None:
    state, _ = run(std(), ALICE, "#ban eve")
    for sender, body, text in (
        (EVE, "#join", texts.YOU_ARE_BANNED),
        (EVE, "#create", texts.YOU_ARE_BANNED),
        (EVE, "hello", texts.YOU_ARE_BANNED),
        (BOB, "#invite eve", texts.is_banned(EVE)),
        (BOB, "#add Eve", texts.is_banned("sip:Eve@example.com")),
    ):
        after, outcome = run(state, sender, body)
        assert (outcome.code, notices(outcome)) == (403, [(sender, text)]), body
        assert after is state and not outcome.writes
    _, outcome = run(state, "sip:other@example.com", "hello")
    assert notices(outcome) == [("sip:other@example.com", texts.NOT_A_MEMBER)]


def test_domain_ban_blocks_the_whole_domain_case_insensitively() -> None:
    state, _ = run(std(), ALICE, "#ban *@evil.org")
    _, outcome = run(state, "sip:Someone@EVIL.ORG", "#join")
    assert (outcome.code, notices(outcome)[0][1]) == (403, texts.YOU_ARE_BANNED)
    _, outcome = run(state, "sip:someone@evil.org.example.com", "#join")
    assert outcome.code == 200


def test_ban_refusals() -> None:
    state, _ = run(std(), ALICE, "#ban eve")
    for sender, body, code, text in (
        (CAROL, "#ban eve", 403, texts.NO_PERMISSION_BAN),
        (DAVE, "#ban eve", 403, texts.NO_PERMISSION_BAN),
        (BOB, "#ban alice", 403, texts.OWNER_CANNOT_BE_BANNED),
        (BOB, "#ban bob", 403, texts.CANNOT_BAN_YOURSELF),
        (BOB, "#ban EVE", 403, texts.already_banned("eve@example.com")),
        (CAROL, "#unban eve", 403, texts.NO_PERMISSION_BAN),
        (CAROL, "#bans", 403, texts.NO_PERMISSION_BAN),
        (BOB, "#unban carol", 404, texts.not_banned("carol@example.com")),
    ):
        after, outcome = run(state, sender, body)
        assert (outcome.code, notices(outcome)) == (code, [(sender, text)]), body
        assert after is state
    for sender, body, code, text in (
        (BOB, "#ban carol", 403, texts.too_many_bans(1)),
    ):
        after, outcome = run(state, sender, body, Policy(max_bans=1))
        assert (outcome.code, notices(outcome)) == (code, [(sender, text)]), body
        assert after is state


def test_a_long_ban_list_comes_in_pages_that_fit_a_datagram() -> None:
    # was: one reply of the whole list (250 bans with long reasons: 80 KB), which UDP could
    # not carry ("Message too long"): the owner got nothing
    state = std()
    reason = "r" * 200
    for i in range(250):
        state, outcome = run(state, ALICE, f"#ban user{i:04d} {reason}", Policy(max_bans=1000))
        assert outcome.code == 200
    _, outcome = run(state, BOB, "#bans")
    bodies = [text for _, text in notices(outcome)]
    assert outcome.code == 200 and len(bodies) > 1
    assert all(len(body.encode()) <= 1300 for body in bodies)
    assert bodies[0].startswith(f"Bans (1/{len(bodies)}):\nuser0000@example.com - {reason}")
    listed = [line for body in bodies for line in body.splitlines()[1:]]
    assert listed == [f"user{i:04d}@example.com - {reason}" for i in range(250)]


def test_unban_and_bans() -> None:
    state, _ = run(std(), ALICE, "#ban eve too loud")
    state, _ = run(state, ALICE, "#ban *@evil.org")
    _, outcome = run(state, BOB, "#bans")
    assert outcome.body == b"Bans:\neve@example.com - too loud\n*@evil.org"
    assert notices(outcome) == [(BOB, "Bans:\neve@example.com - too loud\n*@evil.org")]
    new, outcome = run(state, BOB, "#unban Eve")
    assert outcome.code == 200 and new.bans == (Ban("*@evil.org"),)
    assert outcome.writes == (BanDelete(ROOM, "eve@example.com"),)
    assert notices(outcome)[0] == (ALICE, "*** [eve] is no longer banned from the room")
    _, outcome = run(new, EVE, "#join")
    assert outcome.code == 200


# ------------------------------------------------------------------ #kick
def test_kick_removes_with_the_reason_and_the_user_may_rejoin() -> None:
    new, outcome = run(std(), BOB, "#kick carol calm down")
    assert outcome.code == 200 and CAROL not in uris(new) and not new.bans
    assert outcome.writes == (MemberDelete(ROOM, CAROL),)
    assert notices(outcome) == [
        (CAROL, "*** You have been kicked from the room: calm down"),
        *[(to, "*** [carol] has been kicked from the room: calm down") for to in (ALICE, BOB, MALLORY)],
    ]
    _, outcome = run(new, CAROL, "#join")
    assert outcome.code == 200


def test_kick_refusals() -> None:
    for sender, body, code, text in (
        (CAROL, "#kick bob", 403, texts.NO_PERMISSION_KICK),
        (BOB, "#kick alice", 403, texts.OWNER_CANNOT_BE_KICKED),
        (BOB, "#kick eve", 404, texts.not_member(EVE)),
    ):
        state = std()
        after, outcome = run(state, sender, body)
        assert (outcome.code, notices(outcome)) == (code, [(sender, text)]), body
        assert after is state


# ------------------------------------------------------------------ limits
def test_max_members_refuses_join_invite_and_add() -> None:
    policy = Policy(max_members=6)  # std() lists 6 entries, invitations included
    for sender, body in ((EVE, "#join"), (BOB, "#invite eve"), (BOB, "#add eve")):
        after, outcome = run(std(), sender, body, policy)
        assert (outcome.code, notices(outcome)) == (403, [(sender, texts.room_full(6))]), body
    _, outcome = run(std(), EVE, "#join", Policy(max_members=7))
    assert outcome.code == 200


def test_limit_lowers_the_rooms_own_limit() -> None:
    policy = Policy(max_members=10)
    new, outcome = run(std(), ALICE, "#limit 6", policy)
    assert outcome.code == 200 and new.max_members == 6
    assert outcome.writes == (LimitSet(ROOM, 6),)
    assert notices(outcome) == [(ALICE, "*** The room takes at most 6 members")]
    _, outcome = run(new, EVE, "#join", policy)
    assert notices(outcome) == [(EVE, texts.room_full(6))]
    _, outcome = run(new, CAROL, "#limit", policy)
    assert (outcome.code, outcome.body) == (200, b"*** The room takes at most 6 members")
    # the server's limit lowered below the room's: the lower one counts
    _, outcome = run(new, CAROL, "#limit", Policy(max_members=3))
    assert outcome.body == texts.limit_is(3).encode()


def test_a_room_full_at_one_says_member() -> None:
    # was "at most 1 members", where #limit itself says "1 member"
    assert texts.room_full(1) == "*** The room is full (at most 1 member)"
    assert texts.room_full(2) == "*** The room is full (at most 2 members)"


def test_limit_refusals() -> None:
    policy = Policy(max_members=10)
    for sender, body, code, text in (
        (BOB, "#limit 5", 403, texts.NO_PERMISSION_LIMIT),
        (EVE, "#limit", 403, texts.NOT_A_MEMBER),
        (ALICE, "#limit 11", 400, texts.limit_out_of_range(10)),
        (ALICE, "#limit 0", 400, texts.limit_out_of_range(10)),
        (ALICE, "#limit 99999999999999", 400, texts.limit_out_of_range(10)),
    ):
        state = std()
        after, outcome = run(state, sender, body, policy)
        assert (outcome.code, notices(outcome)) == (code, [(sender, text)]), body
        assert after is state


# ------------------------------------------------------------------ management actions
def test_admin_actions() -> None:
    new, outcome = apply(std(), AdminAction("kick", CAROL, "bye"), Policy())
    assert outcome.code == 200 and CAROL not in uris(new)
    new, outcome = apply(std(), AdminAction("ban", "sip:*@evil.org", "spam"), Policy())
    assert outcome.writes[0] == BanSet(ROOM, "*@evil.org", "spam", "admin")
    assert MALLORY not in uris(new) and new.bans == (Ban("*@evil.org", "spam"),)
    new, outcome = apply(std(), AdminAction("destroy"), Policy())
    assert outcome.destroyed and outcome.writes == (RoomDelete("chat", HOST),)
    state = std()
    for op, code, text in (
        (AdminAction("kick", ALICE), 403, texts.OWNER_CANNOT_BE_KICKED),
        (AdminAction("ban", ALICE), 403, texts.OWNER_CANNOT_BE_BANNED),
        (AdminAction("kick", EVE), 404, texts.not_member(EVE)),
    ):
        after, outcome = apply(state, op, Policy())
        assert (outcome.code, outcome.body, outcome.notices) == (code, text.encode(), ())
        assert after is state


# ------------------------------------------------------------------ the chat budget's table
def test_chat_budgets_are_bounded_and_peeking_spends_nothing() -> None:
    """The conference's chat budget is the transport's token-bucket table with no block time:
    ``chat_burst`` at once, then one per ``1 / chat_rate`` seconds; at most
    ``chat_rate_senders`` buckets, idle ones dropped first."""
    from imc_actors.transport.limits import FloodLimiter

    budget = FloodLimiter(0.5, 2, 0.0, max_sources=2)
    key = "chat@example.com sip:bob@example.com"
    assert budget.would_allow(key, 0.0)
    assert [budget.allow(key, 0.0) for _ in range(3)] == [0.0, 0.0, 2.0]  # Retry-After 2 s
    assert not budget.would_allow(key, 1.0) and budget.throttled == 1  # peeking counts nothing
    assert budget.would_allow(key, 2.0) and budget.allow(key, 2.0) == 0.0  # one more per 2 s
    budget.allow("other a", 2.0)
    budget.allow("other b", 100.0)  # full: the idle buckets go first
    assert len(budget) <= 2


def test_a_limit_of_one_is_one_member() -> None:
    assert texts.limit_is(1) == "*** The room takes at most 1 member"  # "1 members" before
    assert texts.limit_is(2) == "*** The room takes at most 2 members"
