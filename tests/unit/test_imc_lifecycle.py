"""new_room, #rooms, #help, room-less refusals, texts, and a whole room lifecycle."""

from __future__ import annotations

import pytest

from imc_actors.imc import (
    COMMANDS,
    INVITED,
    OWNER,
    PRIVATE,
    CommandError,
    Member,
    MemberUpsert,
    Notice,
    Outcome,
    Policy,
    RoomRequest,
    RoomState,
    RoomUpsert,
    apply,
    help_text,
    new_room,
    notice_error,
    parse_command,
    resolve,
    rooms_reply,
    texts,
)

DEFAULT = Policy()
ALICE = "sip:alice@example.com"
BOB = "sip:bob@example.com"
CAROL = "sip:carol@example.com"


# --------------------------------------------------------------------------- new_room
@pytest.mark.parametrize(("private", "flags"), [(False, 0), (True, PRIVATE)])
def test_new_room(private: bool, flags: int) -> None:
    state, outcome = new_room("Chat", "Example.com", ALICE, private)
    assert state == RoomState("Chat", "Example.com", flags, (Member(ALICE, OWNER),), {})
    assert state.private is private
    assert outcome == Outcome(
        200,
        "OK",
        (Notice(ALICE, b"*** Room was created", "sip:Chat@Example.com"),),
        (
            RoomUpsert("Chat", "Example.com", flags),
            MemberUpsert("sip:Chat@Example.com", ALICE, OWNER),
        ),
        created=True,
    )


# --------------------------------------------------------------------------- #rooms
def _room(name: str, private: bool = False, *members: tuple[str, int]) -> RoomState:
    return RoomState(
        name,
        "example.com",
        PRIVATE if private else 0,
        tuple(Member(u, f) for u, f in members),
    )


ROOMS = [
    _room("zeta"),
    _room("alpha"),
    _room("secret", True, (BOB, OWNER)),
    _room("hidden", True, (CAROL, OWNER), (ALICE, INVITED)),
    _room("Beta", False, (BOB, OWNER)),
]


@pytest.mark.parametrize(
    ("sender", "body"),
    [
        (ALICE, b"Rooms:\n[alpha]\n[Beta]\n[hidden]\n[zeta]"),
        ("sip:BOB@EXAMPLE.COM", b"Rooms:\n[alpha]\n[Beta]\n[secret]\n[zeta]"),
        ("sip:eve@example.com", b"Rooms:\n[alpha]\n[Beta]\n[zeta]"),
    ],
)
def test_rooms_reply(sender: str, body: bytes) -> None:
    assert rooms_reply(iter(ROOMS), sender) == body


def test_rooms_reply_empty() -> None:
    assert rooms_reply([], ALICE) == b"Rooms:"
    assert rooms_reply([_room("p", True)], ALICE) == b"Rooms:"


# --------------------------------------------------------------------------- #help
def test_help_text_shape() -> None:
    text = help_text("#")
    lines = text.split("\r\n")
    assert lines[0] == ""
    assert not text.endswith("\r\n")
    assert "\n" not in text.replace("\r\n", "")
    for name in COMMANDS:
        assert any(line.startswith(f"#{name} ") for line in lines[1:]), name
    for alias in ("#deny", "#exit", "#list"):
        assert alias in text
    assert len(lines) == 1 + len(COMMANDS)
    assert all(" - " in line for line in lines[1:])


def test_help_text_uses_start_char() -> None:
    text = help_text("!")
    assert "#" not in text
    assert "\r\n!create [<room_name>] [private] - " in text
    assert "\r\n!modify <user_name> <role> [<room_name>] - " in text
    assert text == help_text("#").replace("#", "!")


def test_help_text_exact_first_lines() -> None:
    assert help_text("#").startswith(
        "\r\n#create [<room_name>] [private] - create a new conference room\r\n"
        "#join [<room_name>] - join a conference room\r\n"
    )


# --------------------------------------------------------------------------- room-less refusals
def test_notice_error() -> None:
    outcome = notice_error(404, "*** Room not found", ALICE, "sip:nope@example.com")
    assert outcome == Outcome(
        404,
        "Not Found",
        (Notice(ALICE, b"*** Room not found", "sip:nope@example.com"),),
    )
    assert outcome.writes == () and not outcome.destroyed


def test_notice_error_from_command_error() -> None:
    with pytest.raises(CommandError) as info:
        parse_command(b"#nope", "#")
    outcome = notice_error(info.value.code, info.value.text, ALICE, "sip:chat@example.com")
    assert (outcome.code, outcome.reason) == (400, "Bad Request")
    assert outcome.notices[0].body == b"*** Invalid command 'nope' (send '#help' for help)"


def test_texts_tag_and_user_part() -> None:
    assert texts.tag("sip:Bob@example.com") == "[Bob]"
    assert texts.tag("bob@example.com") == "[bob]"
    assert texts.user_part("sips:x@y") == "x"
    assert texts.ROOM_NOT_FOUND == "*** Room not found"
    assert texts.is_now(ALICE, "ADMIN") == "*** [alice] is now admin"
    assert texts.BODY_TOO_LARGE.format(limit=32768) == (
        "*** Message body too large (maximum 32768 bytes)"
    )


# --------------------------------------------------------------------------- a whole lifecycle
def _send(state: RoomState, sender: str, body: bytes, policy: Policy = DEFAULT):
    command = parse_command(body, policy.start_char)
    target = (
        resolve(command, ruri_user="chat", ruri_host="example.com", manager_user="imc-manager")
        if command
        else None
    )
    return apply(state, RoomRequest(sender, command, target, b"" if command else body), policy)


def test_lifecycle() -> None:
    state, outcome = new_room("chat", "example.com", ALICE, private=True)
    assert outcome.created

    state, outcome = _send(state, BOB, b"#join")
    assert outcome.code == 403
    assert [x.to for x in outcome.notices] == [BOB, ALICE]

    state, outcome = _send(state, ALICE, b"#invite bob")
    assert outcome.code == 200 and state.find(BOB) == Member(BOB, INVITED)

    state, outcome = _send(state, BOB, b"#accept")
    assert outcome.code == 200 and state.find(BOB) == Member(BOB, 0)

    state, outcome = _send(state, ALICE, b"#add carol")
    assert outcome.code == 200

    state, outcome = _send(state, BOB, b"hi all")
    assert outcome.code == 202
    assert [(x.to, x.body) for x in outcome.notices] == [
        (ALICE, b"[bob]: hi all"),
        (CAROL, b"[bob]: hi all"),
    ]

    state, outcome = _send(state, ALICE, b"#modify bob owner")
    state, outcome = _send(state, ALICE, b"#leave")
    assert outcome.code == 200 and not outcome.destroyed
    assert [m.uri for m in state.members] == [BOB, CAROL]

    state, outcome = _send(state, CAROL, b"#members")
    assert outcome.body == b"Members:\n*[bob]\n[carol]"

    state, outcome = _send(state, BOB, b"#leave")
    assert outcome.destroyed
    assert [x.to for x in outcome.notices] == [BOB, CAROL]
    assert state.members == ()
