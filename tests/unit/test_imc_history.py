"""The archive, #history, #topic and #info in the pure room logic (issue 16)."""

from __future__ import annotations

import pytest

from imc_actors.imc import texts
from imc_actors.imc.commands import (
    COMMANDS,
    CommandError,
    Target,
    parse_command,
    resolve,
)
from imc_actors.imc.effects import (
    ADMIN,
    INVITED,
    OWNER,
    PRIVATE,
    HistoryAppend,
    HistoryQuery,
    MemberUpsert,
    Notice,
    RoomInfoSet,
)
from imc_actors.imc.history import PAGE_BYTES, HistoryLine, history_notices, pages, replay
from imc_actors.imc.room import Policy, RoomRequest, apply, new_room, rooms_reply
from imc_actors.imc.state import Member, RoomInfo, RoomState

HOST = "example.com"
ROOM = "sip:Chat@example.com"
KEY = "sip:chat@example.com"
ALICE, BOB, CAROL, DAVE, EVE = (f"sip:{u}@{HOST}" for u in ("alice", "bob", "carol", "dave", "eve"))
ARCHIVE = Policy(history_max=50, history_on_join=5, history_lines_max=30)
T = 1_764_654_500.0  # 2025-12-02 05:48:20 UTC


def state(private: bool = False, topic: str = "", created: int | None = None) -> RoomState:
    members = (Member(ALICE, OWNER), Member(BOB, ADMIN), Member(CAROL, 0), Member(DAVE, INVITED))
    info = RoomInfo(topic, ALICE if topic else "", None, created)
    return RoomState("Chat", HOST, PRIVATE if private else 0, members, {}, info=info)


def request(sender: str, body: str, *, ruri_user: str = "Chat", now: float = T) -> RoomRequest:
    command = parse_command(body.encode(), "#")
    target = None
    if command is not None:
        target = resolve(command, ruri_user=ruri_user, ruri_host=HOST, manager_user="imc-manager")
    return RoomRequest(sender, command, target, body.encode(), "text/plain", "cid", now)


def run(room: RoomState, sender: str, body: str, policy: Policy = ARCHIVE):
    return apply(room, request(sender, body), policy)


def texts_to(outcome, to: str) -> list[str]:
    return [n.body.decode() for n in outcome.notices if n.to == to]


# --------------------------------------------------------------------------- parsing
def test_the_new_commands_parse_and_resolve() -> None:
    def target(body: str, ruri_user: str = "Chat") -> Target:
        command = parse_command(body.encode(), "#")
        assert command is not None
        return resolve(command, ruri_user=ruri_user, ruri_host=HOST, manager_user="imc-manager")

    assert target("#history") == Target("Chat", HOST)
    assert target("#history 5") == Target("Chat", HOST, count=5)
    assert target("#history 5 lobby") == Target("lobby", HOST, count=5)
    assert target("#history lobby") == Target("lobby", HOST)  # not digits: the room
    assert target("#HISTORY 0").count == 0  # the room refuses it (it knows the cap)
    assert target("#info lobby") == Target("lobby", HOST)
    assert target("#topic New plans, see   wiki") == Target("Chat", HOST)  # text is no room
    for body in ("#history", "#info", "#topic x"):
        with pytest.raises(CommandError, match="Missing room name"):
            target(body, ruri_user="imc-manager")


def test_the_topic_text_is_the_line_as_typed() -> None:
    def text(body: bytes, start: str = "#") -> str:
        command = parse_command(body, start)
        assert command is not None
        return command.rest

    assert text(b"#topic  Plans  for\tFriday  \r\nsecond line") == "Plans  for\tFriday"
    assert text(b"#topic") == "" and text(b"#topic   ") == ""
    assert text("!topic café".encode(), "!") == "café"


def test_help_lists_every_command() -> None:
    text = texts.help_text("#")
    for name in COMMANDS:
        assert f"\r\n#{name}" in text, name


# --------------------------------------------------------------------------- the archive
def test_a_relayed_line_is_archived_in_the_same_outcome() -> None:
    _, outcome = run(state(), CAROL, "hello, room")
    assert outcome.code == 202
    assert outcome.writes == (HistoryAppend(KEY, CAROL, T, "text/plain", b"hello, room", 50),)
    assert texts_to(outcome, ALICE) == ["[carol]: hello, room"]


def test_no_archive_means_chat_writes_nothing() -> None:
    _, outcome = run(state(), CAROL, "hello", Policy())
    assert outcome.code == 202 and outcome.writes == () and outcome.history is None


def test_a_refused_line_is_not_archived() -> None:
    _, outcome = run(state(), EVE, "let me in")
    assert outcome.code == 403 and outcome.writes == ()


@pytest.mark.parametrize(
    ("room", "sender", "body", "joiner"),
    [
        (state(), EVE, "#join", EVE),
        (state(), EVE, "#create", EVE),  # #create of an existing public room joins it
        (state(), DAVE, "#accept", DAVE),
        (state(), DAVE, "#join", DAVE),  # an invitee's #join accepts
        (state(), BOB, "#add eve", EVE),
    ],
)
def test_a_joiner_gets_the_topic_and_a_replay(room, sender, body, joiner) -> None:
    room = RoomState(room.name, room.domain, room.flags, room.members, room.inviters, info=RoomInfo("Plans"))
    new, outcome = run(room, sender, body)
    assert outcome.code == 200 and new.find(joiner).active
    assert texts_to(outcome, joiner) == [texts.has_joined(joiner), "*** Topic: Plans"]
    assert outcome.history == HistoryQuery(KEY, joiner, 5, replay=True)


def test_replay_is_off_without_an_archive_or_with_history_on_join_0() -> None:
    for policy in (Policy(history_on_join=20), Policy(history_max=50, history_on_join=0)):
        _, outcome = run(state(), EVE, "#join", policy)
        assert outcome.code == 200 and outcome.history is None
        assert texts_to(outcome, EVE) == [texts.has_joined(EVE)]  # no topic: no topic line
    _, outcome = run(state(), EVE, "#join", Policy(history_max=3, history_on_join=20))
    assert outcome.history is not None and outcome.history.limit == 3  # never more than kept


# --------------------------------------------------------------------------- #history
def test_history_asks_for_pages() -> None:
    room = state()
    new, outcome = run(room, CAROL, "#history")
    assert new is room and outcome.code == 200 and outcome.notices == ()
    assert outcome.history == HistoryQuery(KEY, CAROL, 20, replay=False)
    assert run(room, CAROL, "#history 30")[1].history.limit == 30
    capped = run(room, CAROL, "#history", Policy(history_max=50, history_lines_max=7))[1]
    assert capped.history.limit == 7


@pytest.mark.parametrize(
    ("sender", "body", "policy", "code", "text"),
    [
        (EVE, "#history", ARCHIVE, 403, texts.NOT_A_MEMBER),
        (DAVE, "#history", ARCHIVE, 403, texts.NOT_A_MEMBER),  # invited, not in yet
        (CAROL, "#history", Policy(), 403, texts.HISTORY_OFF),
        (CAROL, "#history 0", ARCHIVE, 400, texts.history_count(30)),
        (CAROL, "#history 31", ARCHIVE, 400, texts.history_count(30)),
        (CAROL, "#history 99999999999999999999", ARCHIVE, 400, texts.history_count(30)),
    ],
)
def test_history_refusals(sender, body, policy, code, text) -> None:
    room = state()
    new, outcome = run(room, sender, body, policy)
    assert new is room and outcome.code == code and outcome.history is None
    assert outcome.notices == (Notice(sender, text.encode(), ROOM),)


LINES = [
    HistoryLine(1, ALICE, T, None, b"first"),
    HistoryLine(2, CAROL, T + 61, "text/html", "<b>caf\u00e9</b>".encode()),
]


def test_pages_show_time_sender_and_text() -> None:
    assert pages(LINES) == [
        b"History:\n2025-12-02 05:48:20 UTC [alice]: first\n"
        + "2025-12-02 05:49:21 UTC [carol]: <b>caf\u00e9</b>".encode()
    ]
    assert pages([]) == [texts.HISTORY_EMPTY.encode()]


def test_lines_are_shown_in_the_charset_they_came_in() -> None:
    # was: every body decoded as UTF-8, so a Latin-1 "caf\xe9" read "caf\ufffd"
    lines = [
        HistoryLine(1, ALICE, T, "text/plain; charset=iso-8859-1", b"caf\xe9"),
        HistoryLine(2, ALICE, T, 'text/plain;Charset="UTF-8"', "caf\u00e9".encode()),
        HistoryLine(3, ALICE, T, "text/plain; charset=no-such-codec", b"caf\xc3\xa9"),
        HistoryLine(4, ALICE, T, None, b"caf\xff"),
    ]
    assert [line.text for line in lines] == ["caf\u00e9", "caf\u00e9", "caf\u00e9", "caf\ufffd"]
    (page,) = pages(lines)
    assert page.decode().count("caf\u00e9") == 3


def test_pages_fit_a_datagram_and_keep_every_line_in_order() -> None:
    lines = [HistoryLine(i, CAROL, T, None, f"line {i} ".encode() * 8) for i in range(40)]
    lines.append(HistoryLine(40, CAROL, T, None, b"x" * 3000))  # longer than a page: alone
    out = pages(lines)
    assert len(out) > 2
    for index, page in enumerate(out[:-1], 1):
        assert page.startswith(f"History ({index}/{len(out)}):\n".encode())
        assert len(page) <= PAGE_BYTES + 20
    assert out[-1].endswith(b"x" * 3000) and out[-1].count(b"\n") == 1
    said = [line for page in out for line in page.decode().split("\n")[1:]]
    assert said == [texts.history_line(CAROL, T, e.body.decode()) for e in lines]


def test_replay_is_one_dated_relay_per_line() -> None:
    notices = replay(HistoryQuery(KEY, EVE, 5, True), LINES, ROOM)
    assert notices == [
        Notice(EVE, b"[alice]: first", ROOM, "relay", None, date=T),
        Notice(EVE, "[carol]: <b>caf\u00e9</b>".encode(), ROOM, "relay", "text/html", date=T + 61),
    ]
    assert not any(n.keep for n in notices)
    replies = history_notices(HistoryQuery(KEY, EVE, 5, False), LINES, ROOM)
    assert [(n.kind, n.date) for n in replies] == [("reply", None)]


# --------------------------------------------------------------------------- #topic
def test_topic_set_by_an_admin_is_broadcast_and_stored() -> None:
    new, outcome = run(state(created=5), BOB, "#topic  Friday:  pizza  ")
    assert outcome.code == 200
    assert new.info == RoomInfo("Friday:  pizza", BOB, int(T), 5)
    assert outcome.writes == (RoomInfoSet(KEY, "Friday:  pizza", BOB, int(T), 5),)
    for member in (ALICE, BOB, CAROL):
        assert texts_to(outcome, member) == ["*** [bob] set the topic: Friday:  pizza"]
    assert texts_to(outcome, DAVE) == []  # invited only


def test_topic_minus_clears_it() -> None:
    new, outcome = run(state(topic="old"), ALICE, "#topic -")
    assert new.info.topic == "" and outcome.writes == (RoomInfoSet(KEY, "", "", int(T), None),)
    assert texts_to(outcome, CAROL) == ["*** [alice] cleared the topic"]


def test_topic_without_text_shows_it() -> None:
    _, outcome = run(state(topic="Plans"), CAROL, "#topic")
    assert outcome.code == 200 and outcome.writes == () and outcome.body == b"*** Topic: Plans"
    assert outcome.notices == (Notice(CAROL, b"*** Topic: Plans", ROOM, kind="reply"),)
    _, outcome = run(state(), EVE, "#topic")  # public: anyone may look
    assert outcome.body == texts.NO_TOPIC.encode()


@pytest.mark.parametrize(
    ("room", "sender", "body", "code", "text"),
    [
        (state(), CAROL, "#topic mine now", 403, texts.NO_PERMISSION_TOPIC),
        (state(), DAVE, "#topic mine now", 403, texts.NO_PERMISSION_TOPIC),
        (state(), EVE, "#topic mine now", 403, texts.NO_PERMISSION_TOPIC),
        (state(), ALICE, "#topic " + "x" * 256, 400, texts.topic_too_long(255)),
        # was: stored, then shown raw to every joiner and in #rooms (a tour cleared terminals)
        (state(), ALICE, "#topic \x1b[2J\x1b[31mFAKE\x07", 400, texts.TOPIC_UNPRINTABLE),
        (state(), ALICE, "#topic tab\there", 400, texts.TOPIC_UNPRINTABLE),
        (state(private=True), EVE, "#topic", 403, texts.NOT_A_MEMBER),
        (state(private=True), DAVE, "#topic", 403, texts.NOT_A_MEMBER),
    ],
)
def test_topic_refusals(room, sender, body, code, text) -> None:
    new, outcome = run(room, sender, body)
    assert new is room and outcome.code == code and outcome.writes == ()
    assert outcome.notices == (Notice(sender, text.encode(), ROOM),)


def test_a_topic_stored_with_control_characters_is_shown_escaped() -> None:
    # one set before they were refused (or written to the table by hand)
    _, outcome = run(state(topic="\x1b[2Jhi"), CAROL, "#topic")
    assert outcome.body == b"*** Topic: \\x1b[2Jhi"
    assert rooms_reply([state(topic="\x1b[2Jhi")], EVE) == b"Rooms:\n[Chat] - \\x1b[2Jhi"


def test_a_topic_of_255_characters_fits() -> None:
    new, outcome = run(state(), ALICE, "#topic " + "é" * 255)
    assert outcome.code == 200 and new.info.topic == "é" * 255


def test_rooms_lists_topics() -> None:
    rooms = [state(topic="Plans"), RoomState("lobby", HOST), state(private=True, topic="x")]
    rooms[2] = RoomState("secret", HOST, PRIVATE, (), {}, RoomInfo("hidden"))
    assert rooms_reply(rooms, EVE) == b"Rooms:\n[Chat] - Plans\n[lobby]"


# --------------------------------------------------------------------------- #info
def test_info_for_a_member() -> None:
    _, outcome = run(state(topic="Plans", created=int(T)), CAROL, "#info")
    assert outcome.code == 200 and outcome.writes == ()
    assert outcome.body == (
        b"Info:\nRoom: sip:Chat@example.com\nTopic: Plans\nType: public\nOwners: [alice]\n"
        b"Members: 3 (1 invited)\nCreated: 2025-12-02 05:48:20 UTC"
    )
    assert outcome.notices == (Notice(CAROL, outcome.body, ROOM, kind="reply"),)


def test_info_of_a_room_with_many_owners_fits_a_datagram() -> None:
    # was: every owner on the Owners line, so a room of 1,000 owners had no #info reply that
    # UDP could carry
    owners = tuple(Member(f"sip:owner{i:04d}-{'x' * 40}@example.com", OWNER) for i in range(1000))
    room = RoomState("big", HOST, 0, owners)
    _, outcome = apply(room, request("sip:owner0000-" + "x" * 40 + "@example.com", "#info",
                                     ruri_user="big"), ARCHIVE)  # fmt: skip
    assert outcome.code == 200 and len(outcome.body) < 1000
    line = outcome.body.decode().splitlines()[4]
    assert line.startswith("Owners: [owner0000-") and line.endswith(" more (#members lists them)")
    shown = line.count("[owner")
    assert line.endswith(f" and {1000 - shown} more (#members lists them)") and shown > 1


def test_info_of_an_old_room_and_of_a_private_one() -> None:
    room = RoomState("old", HOST, PRIVATE, (Member(ALICE, OWNER),))
    _, outcome = apply(room, request(ALICE, "#info", ruri_user="old"), ARCHIVE)
    assert outcome.body.decode().splitlines()[2:] == [
        "Topic: (none)", "Type: private", "Owners: [alice]", "Members: 1", "Created: unknown",
    ]  # fmt: skip
    _, outcome = apply(room, request(EVE, "#info", ruri_user="old"), ARCHIVE)
    assert outcome.code == 403
    assert outcome.notices == (Notice(EVE, texts.NOT_A_MEMBER.encode(), "sip:old@example.com"),)


def test_new_room_records_its_creation_time() -> None:
    new, outcome = new_room("Chat", HOST, ALICE, False, now=T + 0.9)
    assert new.info == RoomInfo(created=int(T))
    assert outcome.writes[-1] == RoomInfoSet(KEY, "", "", None, int(T))
    assert MemberUpsert(ROOM, ALICE, OWNER) in outcome.writes
