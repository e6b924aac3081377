"""Bounded under abuse: values the server must refuse get a 4xx (and, for commands, a ``***``
notice naming the limit), never a 500, a traceback or silence. Real SIP over UDP on 127.0.0.1.
"""

from __future__ import annotations

import logging

import pytest
import trio

from imc_actors.control.views import find_room
from imc_actors.registrar import MAX_ANSWER
from tests.integration.conftest import DOMAIN, MANAGER, expect

AOR = f"sip:alice@{DOMAIN}"
ROOM = f"sip:chat@{DOMAIN}"


def errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


# --------------------------------------------------------------------------- registrar
@pytest.mark.parametrize("where", ["header", "param"])
async def test_expires_with_thousands_of_digits_is_clamped(ua, server, caplog, where: str):
    """Over 4,300 digits is past Python's int() limit: it used to raise (500 + traceback)."""
    alice = await ua("alice", register=False)
    huge = "9" * 5000
    contact = f"<{alice.contact}>" + (f";expires={huge}" if where == "param" else "")
    headers = [("Contact", contact)] + ([("Expires", huge)] if where == "header" else [])
    with trio.fail_after(5):
        response = await alice.request(
            "REGISTER", f"sip:{DOMAIN}", headers=headers, to_uri=alice.uri
        )
    assert response.code == 200, response
    assert response.header("Contact") == f"<{alice.contact}>;expires=3600"  # max_expires
    assert errors(caplog) == []


@pytest.mark.parametrize("config_overrides", [{"max_contacts": 200}])  # size is the limit here
async def test_register_whose_answer_would_not_fit_is_refused_before_binding(ua, server):
    """The 200 lists every binding; one over a UDP datagram cannot be sent, so the REGISTER
    that would make it so gets a 403 and changes nothing (it used to bind, then go unanswered:
    ``Message too long``)."""
    alice = await ua("alice", register=False)
    long_user = "u" * 470  # a contact of about 500 characters: the bindings table holds 512

    def contacts(first: int, count: int = 25) -> list[tuple[str, str]]:
        return [
            ("Contact", f"<sip:{long_user}{i}@127.0.0.1:{alice.port}>")
            for i in range(first, first + count)
        ]

    for batch in range(3):  # 75 bindings of ~530 bytes each in the 200: about 40 KB
        ok = await alice.request(
            "REGISTER", f"sip:{DOMAIN}", headers=contacts(25 * batch), to_uri=AOR
        )
        assert ok.code == 200
    assert len(ok.header_list("Contact")) == 75
    # One more binding and six long Vias (every Via is copied into the 200): over a datagram
    vias = [("Via", f"SIP/2.0/UDP {'h' * 6000};branch=z9hG4bKpad{i}") for i in range(6)]
    with trio.fail_after(5):  # before: no answer at all
        second = await alice.request(
            "REGISTER", f"sip:{DOMAIN}", headers=[*vias, *contacts(75, 1)], to_uri=AOR
        )
    assert (second.code, second.reason) == (403, "Too Many Contacts")
    assert str(MAX_ANSWER) in (second.header("Warning") or "")
    assert server.registrar is not None
    assert len(server.registrar.lookup("alice@127.0.0.1", trio.current_time())) == 75
    # Removing bindings still works (the answer shrinks).
    remove = [(name, f"{value};expires=0") for name, value in contacts(0)[:20]]
    third = await alice.request("REGISTER", f"sip:{DOMAIN}", headers=remove, to_uri=AOR)
    assert third.code == 200 and len(third.header_list("Contact")) == 55
    too_long = [("Contact", f"<sip:{'u' * 600}@127.0.0.1:{alice.port}>")]
    fourth = await alice.request("REGISTER", f"sip:{DOMAIN}", headers=too_long, to_uri=AOR)
    assert (fourth.code, fourth.reason) == (400, "Contact Too Long")


# --------------------------------------------------------------------------- names the store cannot hold
ROOM_TOO_LONG = "*** Room name too long (sip:<name>@<domain> may have at most 64 characters)"
ADDRESS_TOO_LONG = "*** Address too long (user and host may have at most 64 characters each)"
SENDER_TOO_LONG = "*** Your address is too long (user and host may have at most 64 characters each)"


async def test_names_wider_than_the_columns_get_4xx_and_a_notice(ua, server, caplog):
    """Before: 500, a commit-failed ERROR and no notice. Now refused before any write."""
    alice = await ua("alice")
    long_room = "r" * 60  # sip:<60>@127.0.0.1 is 74 characters
    assert (await alice.message(MANAGER, f"#create {long_room}")).code == 400
    await expect(alice, ROOM_TOO_LONG, sender=MANAGER)
    room_uri = f"sip:{long_room}@{DOMAIN}"
    assert (await alice.message(room_uri, "#join")).code == 414  # the Request-URI's room
    await expect(alice, ROOM_TOO_LONG, sender=room_uri)

    assert (await alice.message(MANAGER, "#create chat")).code == 200
    await expect(alice, "*** Room was created")
    assert (await alice.message(ROOM, "#invite " + "u" * 65)).code == 400
    await expect(alice, ADDRESS_TOO_LONG, sender=ROOM)

    mallory = await ua("m" * 65, register=False)  # a From user wider than the tables' columns
    refused = await mallory.register()
    assert (refused.code, refused.reason) == (400, "Address Too Long")  # nothing is bound
    assert (await mallory.message(ROOM, "#join")).code == 400  # its notice has nowhere to go

    assert [room.uri for room in server.conference.rooms()] == [ROOM]
    assert [m.uri for m in server.conference.room(ROOM).members] == [AOR]
    assert errors(caplog) == []


# --------------------------------------------------------------------------- one canonical form
INVALID_NAME = "(letters, digits and - _ . ! ~ * ' ( ) & = + $ , only)"


async def test_escaped_arguments_name_what_the_request_uri_names(ua, server):
    """``#create %63hat`` is ``#create chat`` (RFC 3261 §19.1.4), not a second room that
    displays alike; ``imc%2Dmanager`` is the manager, not a room; a name that needs escapes
    is refused."""
    alice = await ua("alice")
    bob = await ua("bob")
    assert (await alice.message(MANAGER, "#create chat")).code == 200
    await expect(alice, "*** Room was created", sender=ROOM)
    assert (await bob.message(MANAGER, "#create %63hat")).code == 200  # joins chat
    await expect(alice, "*** [bob] has joined the room", sender=ROOM)
    await expect(bob, "*** [bob] has joined the room", sender=ROOM)

    assert (await bob.message(MANAGER, "#create imc%2Dmanager")).code == 400
    await expect(bob, "*** 'imc%2Dmanager' is the manager's address, not a room", sender=MANAGER)
    assert (await bob.message(MANAGER, "#create a%20b")).code == 400
    await expect(bob, f"*** Invalid room name 'a%20b' {INVALID_NAME}", sender=MANAGER)
    assert (await bob.message(f"sip:a%40b@{DOMAIN}", "#create")).code == 400
    await expect(bob, f"*** Invalid room name 'a%40b' {INVALID_NAME}")

    # The Request-URI, user arguments and the sender all meet in the same spelling.
    assert (await bob.message(f"sip:%63hat@{DOMAIN}", "hello")).code == 202
    await expect(alice, "[bob]: hello", sender=ROOM)
    assert (await alice.message(ROOM, "#add %62ob")).code == 403
    await expect(alice, "*** [bob] is already a member of the room")
    assert [room.uri for room in server.conference.rooms()] == [ROOM]
    assert [m.uri for m in server.conference.room(f"sip:%63hat@{DOMAIN}").members] == [
        AOR,
        f"sip:bob@{DOMAIN}",
    ]
    # Management reads the same spelling (imc.list_members, the MI FIFO, the status page).
    assert find_room(server.conference, f"sip:%63hat@{DOMAIN}").uri == ROOM


async def test_rooms_and_users_cannot_take_each_others_address(ua, server):
    # a tour: mallory's "#create victim" made every later MESSAGE from the user victim a 482
    # Loop Detected (From one of our rooms), with no notice: a lock-out of any user
    victim = await ua("victim")
    mallory = await ua("mallory")
    assert (await mallory.message(MANAGER, "#create victim")).code == 403
    await expect(mallory, "*** 'victim' is a user's address here; choose another room name", sender=MANAGER)
    assert (await victim.message(MANAGER, "#create own")).code == 200  # victim still works
    await expect(victim, "*** Room was created", sender=f"sip:own@{DOMAIN}")
    # and the other way round: no user registers a room's address, or the manager's
    squatter = await ua("own", register=False)
    reply = await squatter.register()
    assert (reply.code, reply.reason) == (403, "Address Is A Room")
    manager = await ua("imc-manager", register=False)
    assert (await manager.register()).code == 403
    assert (await victim.message(f"sip:own@{DOMAIN}", "still the room")).code == 202


async def test_a_room_or_the_manager_cannot_be_made_a_member(ua, server):
    # a tour: "#add r12" in r12 and "#add imc-manager" were 200, "#modify r12 owner" made the
    # room its own owner, and once the real owner left nobody could manage it
    alice = await ua("alice")
    assert (await alice.message(MANAGER, "#create r12")).code == 200
    await expect(alice, "*** Room was created", sender=f"sip:r12@{DOMAIN}")
    assert (await alice.message(MANAGER, "#create other")).code == 200
    await expect(alice, "*** Room was created", sender=f"sip:other@{DOMAIN}")
    room = f"sip:r12@{DOMAIN}"
    for command, name in (("#add r12", "r12"), ("#add imc-manager", "imc-manager"),
                          ("#invite other", "other"), ("#add OTHER", "OTHER")):  # fmt: skip
        assert (await alice.message(room, command)).code == 400, command
        await expect(alice, f"*** [{name}] is a room's address here, not a user's", sender=room)
    state = server.conference.room(room)
    assert state is not None and [m.uri for m in state.members] == [f"sip:alice@{DOMAIN}"]
