"""Command parsing (spec §2) and argument resolution (spec §1, §4): imc/commands.py."""

from __future__ import annotations

import pytest

from imc_actors.imc import (
    COMMANDS,
    Command,
    CommandError,
    Target,
    complete_argument,
    parse_command,
    resolve,
)

HOST = "example.com"


def parse(body: bytes, start: str = "#") -> Command | None:
    return parse_command(body, start)


# --------------------------------------------------------------------------- chat or command
@pytest.mark.parametrize(
    "body",
    [
        b"hello",
        b"",
        b" #join",  # no trimming
        b"\t#join",
        b"\r\n#join",
        b"x#join",
        b"\xff#join",
        b"!join",  # another start char
    ],
)
def test_chat_is_not_a_command(body: bytes) -> None:
    assert parse(body) is None


@pytest.mark.parametrize(
    ("body", "name", "typed", "args"),
    [
        (b"#join", "join", "join", ()),
        (b"#JOIN", "join", "JOIN", ()),
        (b"#Join Room", "join", "Join", ("Room",)),
        (b"#create", "create", "create", ()),
        (b"#create room private", "create", "create", ("room", "private")),
        (b"#invite bob", "invite", "invite", ("bob",)),
        (b"#accept", "accept", "accept", ()),
        (b"#reject", "reject", "reject", ()),
        (b"#deny", "reject", "deny", ()),
        (b"#DeNy room", "reject", "DeNy", ("room",)),
        (b"#remove bob", "remove", "remove", ("bob",)),
        (b"#leave", "leave", "leave", ()),
        (b"#exit", "leave", "exit", ()),
        (b"#EXIT", "leave", "EXIT", ()),
        (b"#destroy", "destroy", "destroy", ()),
        (b"#members", "members", "members", ()),
        (b"#list", "members", "list", ()),
        (b"#List", "members", "List", ()),
        (b"#rooms", "rooms", "rooms", ()),
        (b"#add bob", "add", "add", ("bob",)),
        (b"#modify bob admin", "modify", "modify", ("bob", "admin")),
        (b"#help", "help", "help", ()),
        (b"#HeLp", "help", "HeLp", ()),
        # only the first line counts: CR, LF and NUL end it
        (b"#invite bob\r\nroom2", "invite", "invite", ("bob",)),
        (b"#invite bob\nroom2", "invite", "invite", ("bob",)),
        (b"#invite bob\rroom2", "invite", "invite", ("bob",)),
        (b"#invite bob\x00 room2", "invite", "invite", ("bob",)),
        (b"#join\x00", "join", "join", ()),
        (b"#join\r\n", "join", "join", ()),
        # spaces and tabs split; runs of them count once; trailing blanks ignored
        (b"#invite\t bob  \t room  \t", "invite", "invite", ("bob", "room")),
        # at most 5 tokens are read
        (b"#modify a b c d e f g", "modify", "modify", ("a", "b", "c", "d")),
        (b"#join a b c d", "join", "join", ("a", "b", "c", "d")),
        # invalid UTF-8 does not crash
        (b"#join \xff", "join", "join", ("\ufffd",)),
        (b"#join caf\xc3\xa9", "join", "join", ("caf\u00e9",)),
    ],
)
def test_parse_command(body: bytes, name: str, typed: str, args: tuple[str, ...]) -> None:
    assert parse(body) == Command(name, typed, args, "#")


@pytest.mark.parametrize("body", [b"#", b"# join", b"#\tjoin", b"#\r\njoin", b"#\njoin", b"#\x00x"])
def test_missing_command(body: bytes) -> None:
    with pytest.raises(CommandError) as info:
        parse(body)
    assert (info.value.code, info.value.text) == (
        400,
        "*** Missing command (send '#help' for help)",
    )


@pytest.mark.parametrize(
    ("body", "typed"),
    [
        (b"#foo", "foo"),
        (b"#Foo bar baz", "Foo"),
        (b"#joinroom", "joinroom"),
        (b"##join", "#join"),
        (b"#join\x0b", "join\\x0b"),  # only space and tab separate tokens; echoed escaped
        (b"#delete", "delete"),
    ],
)
def test_invalid_command(body: bytes, typed: str) -> None:
    with pytest.raises(CommandError) as info:
        parse(body)
    assert info.value.code == 400
    assert info.value.text == f"*** Invalid command '{typed}' (send '#help' for help)"


def test_custom_start_char() -> None:
    assert parse(b"!join room", "!") == Command("join", "join", ("room",), "!")
    assert parse(b"#join room", "!") is None
    assert parse(b" !join", "!") is None
    with pytest.raises(CommandError) as info:
        parse(b"!", "!")
    assert info.value.text == "*** Missing command (send '!help' for help)"
    with pytest.raises(CommandError) as info:
        parse(b"!bogus", "!")
    assert info.value.text == "*** Invalid command 'bogus' (send '!help' for help)"


def test_only_first_char_of_start_string_counts() -> None:
    assert parse(b"!join", "!!") == Command("join", "join", (), "!")
    with pytest.raises(CommandError) as info:
        parse(b"!!join", "!!")
    assert info.value.text == "*** Invalid command '!join' (send '!help' for help)"


def test_non_ascii_start_char() -> None:
    assert parse("§join".encode(), "§") == Command("join", "join", (), "§")
    assert parse(b"\xc2join", "§") is None  # first byte alone is not the character


def test_empty_start_char_is_a_programming_error() -> None:
    with pytest.raises(ValueError):
        parse(b"#join", "")


def test_command_error_fields() -> None:
    err = CommandError(403, "*** x")
    assert (err.code, err.text, str(err)) == (403, "*** x", "403 *** x")
    assert isinstance(err, Exception)


def test_every_canonical_name_parses_to_itself() -> None:
    for name in COMMANDS:
        command = parse(b"#" + name.encode())
        assert command is not None and command.name == name


# --------------------------------------------------------------------------- argument completion
@pytest.mark.parametrize(
    ("arg", "uri"),
    [
        ("bob", "sip:bob@example.com"),
        ("Bob", "sip:Bob@example.com"),
        ("bob@other.org", "sip:bob@other.org"),
        ("sip:bob", "sip:bob@example.com"),
        ("sip:bob@other.org", "sip:bob@other.org"),
        ("SIP:Bob@Other.ORG", "sip:Bob@Other.ORG"),
        ("sips:bob@other.org", "sip:bob@other.org"),
        ("sip:bob@other.org:5070", "sip:bob@other.org"),
        ("sip:bob@other.org;transport=tcp", "sip:bob@other.org"),
        ("sip:bob@other.org:5070;transport=tcp?x=y", "sip:bob@other.org"),
        ("bob@10.0.0.1", "sip:bob@10.0.0.1"),
        ("sip:bob@[2001:db8::1]:5060", "sip:bob@[2001:db8::1]"),
        ("b.o-b_+1!~*'()&=$,", "sip:b.o-b_+1!~*'()&=$,@example.com"),
        ("a%41b", "sip:aAb@example.com"),  # canonical: escapes decoded where they may be
        ("a%20b", "sip:a%20b@example.com"),
        ("a%2fb%3B", "sip:a%2Fb%3B@example.com"),
        ("%63hat", "sip:chat@example.com"),
        ("+4930123", "sip:+4930123@example.com"),
    ],
)
def test_complete_argument(arg: str, uri: str) -> None:
    assert complete_argument(arg, HOST) == uri


@pytest.mark.parametrize(
    "arg",
    [
        "tel:+4930123",
        "mailto:bob@example.com",
        "bob@",
        "@example.com",
        "sip:",
        "sip:@example.com",
        "sip:bob@",
        "<sip:bob@example.com>",
        "bob@example.com:5060",  # has ':' so no 'sip:' prefix: not a SIP URI
        "bob@-bad.com",
        "bob@bad-.com",
        "bob@a..b",
        "bob@host@host",
        "a%4",
        "a%zz",
        "b\u00f6b",
        "bob;x=1@example.com",
        "sip:bob:secret@example.com",
    ],
)
def test_complete_argument_rejects(arg: str) -> None:
    with pytest.raises(ValueError):
        complete_argument(arg, HOST)


def test_complete_argument_uses_default_host_as_spelled() -> None:
    assert complete_argument("bob", "[::1]") == "sip:bob@[::1]"
    assert complete_argument("bob", "Example.COM") == "sip:bob@Example.COM"


# --------------------------------------------------------------------------- resolve
def res(body: bytes, ruri_user: str = "chat", start: str = "#") -> Target:
    command = parse(body, start)
    assert command is not None
    return resolve(command, ruri_user=ruri_user, ruri_host=HOST, manager_user="imc-manager")


def res_error(body: bytes, ruri_user: str = "chat", start: str = "#") -> tuple[int, str]:
    with pytest.raises(CommandError) as info:
        res(body, ruri_user, start)
    return info.value.code, info.value.text


@pytest.mark.parametrize(
    ("body", "target"),
    [
        # room from the Request-URI
        (b"#join", Target("chat", HOST)),
        (b"#accept", Target("chat", HOST)),
        (b"#reject", Target("chat", HOST)),
        (b"#deny", Target("chat", HOST)),
        (b"#leave", Target("chat", HOST)),
        (b"#exit", Target("chat", HOST)),
        (b"#destroy", Target("chat", HOST)),
        (b"#members", Target("chat", HOST)),
        (b"#list", Target("chat", HOST)),
        (b"#create", Target("chat", HOST)),
        # room from the argument, completed with the R-URI host, spelling kept
        (b"#join Other", Target("Other", HOST)),
        (b"#join other@conf.example.org", Target("other", "conf.example.org")),
        (b"#join sip:other@conf.example.org;transport=tcp", Target("other", "conf.example.org")),
        (b"#leave other", Target("other", HOST)),
        (b"#destroy other", Target("other", HOST)),
        (b"#members other", Target("other", HOST)),
        (b"#accept other", Target("other", HOST)),
        (b"#reject other", Target("other", HOST)),
        # create ... private
        (b"#create private", Target("chat", HOST, private=True)),
        (b"#create Private", Target("chat", HOST, private=True)),
        (b"#create other private", Target("other", HOST, private=True)),
        (b"#create other PRIVATE extra", Target("other", HOST, private=True)),
        (b"#create private private", Target("private", HOST, private=True)),
        (b"#create other", Target("other", HOST)),
        # user commands
        (b"#invite bob", Target("chat", HOST, "sip:bob@example.com")),
        (b"#invite Bob@Other.org room2", Target("room2", HOST, "sip:Bob@Other.org")),
        (b"#add bob", Target("chat", HOST, "sip:bob@example.com")),
        (b"#add sip:bob@x.org r@y.org", Target("r", "y.org", "sip:bob@x.org")),
        (b"#remove bob", Target("chat", HOST, "sip:bob@example.com")),
        (b"#remove bob room2 extra", Target("room2", HOST, "sip:bob@example.com")),
        # modify: role lower-cased, room from the 3rd token (not the 4th)
        (b"#modify bob admin", Target("chat", HOST, "sip:bob@example.com", "admin")),
        (b"#modify bob OWNER", Target("chat", HOST, "sip:bob@example.com", "owner")),
        (b"#modify bob Member r2", Target("r2", HOST, "sip:bob@example.com", "member")),
        (b"#modify bob admin r2 r3", Target("r2", HOST, "sip:bob@example.com", "admin")),
        # no room at all
        (b"#rooms", Target(None, None)),
        (b"#rooms whatever", Target(None, None)),
        (b"#help", Target(None, None)),
    ],
)
def test_resolve(body: bytes, target: Target) -> None:
    assert res(body) == target


def test_target_room_uri() -> None:
    assert res(b"#join Other").room_uri == "sip:Other@example.com"
    assert res(b"#help").room_uri is None


@pytest.mark.parametrize(
    ("body", "code", "text"),
    [
        (b"#invite", 400, "*** Missing argument (send '#help' for help)"),
        (b"#add", 400, "*** Missing argument (send '#help' for help)"),
        (b"#remove", 400, "*** Missing argument (send '#help' for help)"),
        (b"#modify", 400, "*** Missing argument (send '#help' for help)"),
        (b"#modify bob", 400, "*** Missing argument (send '#help' for help)"),
        (b"#modify bob boss", 400, "*** Role must be owner, admin or member"),
        (b"#modify bob owners room", 400, "*** Role must be owner, admin or member"),
        (b"#create room public", 400, "*** Second argument must be 'private'"),
        (b"#create room privat", 400, "*** Second argument must be 'private'"),
        (b"#invite tel:123", 400, "*** Invalid address 'tel:123'"),
        (b"#invite bob@", 400, "*** Invalid address 'bob@'"),
        (b"#add <sip:bob@x.org>", 400, "*** Invalid address '<sip:bob@x.org>'"),
        (b"#remove @x.org", 400, "*** Invalid address '@x.org'"),
        (b"#modify bob@ admin", 400, "*** Invalid address 'bob@'"),
        (b"#join bad@-host", 400, "*** Invalid address 'bad@-host'"),
        (b"#invite bob r@", 400, "*** Invalid address 'r@'"),
        (b"#modify bob admin room@", 400, "*** Invalid address 'room@'"),
        (b"#create tel:1", 400, "*** Invalid address 'tel:1'"),
        # the manager is not a room, even when named as an argument
        (b"#join imc-manager", 400, "*** 'imc-manager' is the manager's address, not a room"),
        (b"#create IMC-Manager", 400, "*** 'IMC-Manager' is the manager's address, not a room"),
        (b"#create IMC-Manager@example.com", 400, "*** 'IMC-Manager@example.com' is the manager's address, not a room"),
        # the sender's own control characters are echoed escaped, never as themselves
        (b"#create a\x01b", 400, "*** Invalid address 'a\\x01b'"),
        (b"#invite bob\x1b[2J", 400, "*** Invalid address 'bob\\x1b[2J'"),
    ],
)
def test_resolve_errors(body: bytes, code: int, text: str) -> None:
    assert res_error(body) == (code, text)


def test_missing_argument_uses_start_char() -> None:
    assert res_error(b"!invite", start="!") == (
        400,
        "*** Missing argument (send '!help' for help)",
    )


@pytest.mark.parametrize(
    "body",
    [
        b"#create",
        b"#create private",
        b"#join",
        b"#invite bob",
        b"#add bob",
        b"#accept",
        b"#reject",
        b"#deny",
        b"#remove bob",
        b"#leave",
        b"#exit",
        b"#destroy",
        b"#members",
        b"#list",
        b"#modify bob admin",
    ],
)
@pytest.mark.parametrize("manager", ["imc-manager", "IMC-Manager"])
def test_manager_uri_needs_room_name(body: bytes, manager: str) -> None:
    assert res_error(body, ruri_user=manager) == (400, "*** Missing room name")


@pytest.mark.parametrize(
    ("body", "target"),
    [
        (b"#create room", Target("room", HOST)),
        (b"#create room private", Target("room", HOST, private=True)),
        (b"#join room", Target("room", HOST)),
        (b"#invite bob room", Target("room", HOST, "sip:bob@example.com")),
        (b"#modify bob admin room", Target("room", HOST, "sip:bob@example.com", "admin")),
        (b"#rooms", Target(None, None)),
        (b"#help", Target(None, None)),
    ],
)
def test_manager_uri_with_room_name(body: bytes, target: Target) -> None:
    assert res(body, ruri_user="imc-manager") == target


def test_manager_missing_argument_comes_first() -> None:
    assert res_error(b"#invite", ruri_user="imc-manager") == (
        400,
        "*** Missing argument (send '#help' for help)",
    )


# --------------------------------------------------------------------------- one canonical form
@pytest.mark.parametrize(
    ("body", "target"),
    [
        (b"#create %63hat", Target("chat", HOST)),
        (b"#join %43hat@example.com", Target("Chat", HOST)),
        (b"#invite %62ob room%2D2", Target("room-2", HOST, "sip:bob@example.com")),
        (b"#add a%20b", Target("chat", HOST, "sip:a%20b@example.com")),
    ],
)
def test_arguments_are_unescaped_like_the_request_uri(body: bytes, target: Target) -> None:
    """An argument names what the same Request-URI would (RFC 3261 §19.1.4: ``%63hat`` is
    ``chat``), so no room or member has two spellings that display alike."""
    assert res(body) == target


@pytest.mark.parametrize(
    ("body", "ruri_user", "text"),
    [
        (b"#create imc%2Dmanager", "chat", "*** 'imc%2Dmanager' is the manager's address, not a room"),
        (b"#join IMC%2dmanager@example.com", "chat", "*** 'IMC%2dmanager@example.com' is the manager's address, not a room"),
        (b"#create a%20b", "chat", "*** Invalid room name 'a%20b' (letters, digits and - _ . ! ~ * ' ( ) & = + $ , only)"),
        (b"#create a%40b", "chat", "*** Invalid room name 'a%40b' (letters, digits and - _ . ! ~ * ' ( ) & = + $ , only)"),
        (b"#join r%3Bx", "chat", "*** Invalid room name 'r%3Bx' (letters, digits and - _ . ! ~ * ' ( ) & = + $ , only)"),
        (b"#create", "a%20b", "*** Invalid room name 'a%20b' (letters, digits and - _ . ! ~ * ' ( ) & = + $ , only)"),
        (b"#join", "caf%C3%A9", "*** Invalid room name 'caf%C3%A9' (letters, digits and - _ . ! ~ * ' ( ) & = + $ , only)"),
    ],
)  # fmt: skip
def test_names_that_need_escapes_or_name_the_manager_are_refused(
    body: bytes, ruri_user: str, text: str
) -> None:
    assert res_error(body, ruri_user) == (400, text)


# --------------------------------------------------------------------------- what the store holds
ROOM_TOO_LONG = "*** Room name too long (sip:<name>@<domain> may have at most 64 characters)"
ADDRESS_TOO_LONG = "*** Address too long (user and host may have at most 64 characters each)"
SENDER_TOO_LONG = "*** Your address is too long (user and host may have at most 64 characters each)"


def test_the_limit_is_the_store_column_width() -> None:
    from imc_actors.imc.effects import MAX_STORED_LENGTH
    from imc_actors.store.models import MAX_LENGTH

    assert MAX_STORED_LENGTH == MAX_LENGTH == 64


def test_room_uri_up_to_64_characters_is_accepted() -> None:
    name = "r" * (64 - len(f"sip:@{HOST}"))
    assert res(f"#create {name}".encode()).room_uri == f"sip:{name}@{HOST}"
    assert len(f"sip:{name}@{HOST}") == 64


@pytest.mark.parametrize(
    ("body", "ruri_user", "code", "text"),
    [
        ("#create " + "r" * 53, "chat", 400, ROOM_TOO_LONG),  # sip:<53>@example.com = 65
        ("#join " + "r" * 70, "chat", 400, ROOM_TOO_LONG),
        ("#join r@" + "d" * 60 + ".org", "chat", 400, ROOM_TOO_LONG),
        ("#create %72" + "r" * 52, "chat", 400, ROOM_TOO_LONG),  # counted unescaped
        ("#join", "r" * 53, 414, ROOM_TOO_LONG),  # the Request-URI's room: 414
        ("#invite " + "u" * 65, "chat", 400, ADDRESS_TOO_LONG),
        ("#add u@" + "h" * 65, "chat", 400, ADDRESS_TOO_LONG),
        ("#modify " + "u" * 65 + " admin", "chat", 400, ADDRESS_TOO_LONG),
        ("#invite a%20" + "u" * 61, "chat", 400, ADDRESS_TOO_LONG),  # counted as stored: a%20uuu…
    ],
)
def test_names_wider_than_the_store_are_refused(
    body: str, ruri_user: str, code: int, text: str
) -> None:
    assert res_error(body.encode(), ruri_user) == (code, text)


def test_user_of_64_characters_fits() -> None:
    user = "u" * 64
    assert res(f"#invite {user}".encode()).user == f"sip:{user}@{HOST}"


@pytest.mark.parametrize("sender", ["sip:" + "s" * 65 + "@example.com", "sip:s@" + "h" * 65])
def test_sender_wider_than_the_store_is_refused(sender: str) -> None:
    command = parse(b"#join")
    assert command is not None
    with pytest.raises(CommandError) as info:
        resolve(
            command, ruri_user="chat", ruri_host=HOST, manager_user="imc-manager", sender=sender
        )
    assert (info.value.code, info.value.text) == (400, SENDER_TOO_LONG)
    ok = "sip:" + "s" * 64 + "@example.com"
    assert resolve(command, ruri_user="chat", ruri_host=HOST, manager_user="imc-manager", sender=ok)
