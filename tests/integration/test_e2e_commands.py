"""Every command of spec §4 and chat (§5) end to end: real SIP over UDP on 127.0.0.1."""

from __future__ import annotations

import pytest
import trio

from tests.integration.conftest import DOMAIN, MANAGER, expect

ROOM = f"sip:chat@{DOMAIN}"
#: The SIP-only tests also run against `serve --workers 2` (see conftest.py).
TWO_WORKERS = True
#: `#rooms` shows one node's rooms until item 3 of issue 13 makes it cluster-wide.
ONE_SERVER_ONLY = {"test_members_rooms_help"}


async def no_more_messages(*agents) -> None:
    """Nothing else is in flight to ``agents`` (every task blocked, inboxes drained)."""
    await trio.testing.wait_all_tasks_blocked(cushion=0.05)
    for agent in agents:
        assert agent.pending_messages() == [], (agent.uri, [m.body for m in agent.pending_messages()])


async def test_create_join_chat_headers(ua):
    alice = await ua("alice")
    bob = await ua("bob")
    response = await alice.message(MANAGER, "#create chat")
    assert response.code == 200
    notice = await expect(alice, "*** Room was created", sender=ROOM)
    # spec §6: headers of outgoing MESSAGEs
    assert notice.header("Supported") == "kamailio/imc"
    assert notice.header("Content-Type") == "text/plain;charset=UTF-8"
    assert notice.header("In-Reply-To") == response.call_id
    assert notice.to_uri == alice.uri
    assert notice.uri == alice.contact  # Request-URI retargeted to the registered contact
    assert notice.header("Max-Forwards") == "70"
    assert notice.from_tag

    assert (await bob.message(ROOM, "#join")).code == 200
    await expect(alice, "*** [bob] has joined the room", sender=ROOM)
    await expect(bob, "*** [bob] has joined the room", sender=ROOM)

    response = await bob.message(ROOM, "hello, room", content_type="text/x-chat")
    assert response.code == 202
    relay = await expect(alice, "[bob]: hello, room", sender=ROOM)
    assert relay.header("Content-Type") == "text/x-chat"
    assert relay.header("In-Reply-To") == response.call_id
    await no_more_messages(alice, bob)  # the sender does not get its own chat back


async def test_members_rooms_help(ua):
    alice = await ua("alice")
    bob = await ua("bob")
    carol = await ua("carol")
    await alice.message(MANAGER, "#create chat")
    await expect(alice, "*** Room was created")
    await alice.message(MANAGER, "#create secret private")
    await expect(alice, "*** Room was created")
    await bob.message(ROOM, "#join")
    await expect(alice, "*** [bob] has joined the room")
    await expect(bob, "*** [bob] has joined the room")
    assert (await alice.message(ROOM, "#modify bob admin")).code == 200
    await expect(alice, "*** [bob] is now admin")
    await expect(bob, "*** [bob] is now admin")

    assert (await bob.message(ROOM, "#list")).code == 200
    await expect(bob, "Members:\n*[alice]\n~[bob]", sender=ROOM)

    assert (await carol.message(MANAGER, "#rooms")).code == 200
    await expect(carol, "Rooms:\n[chat]", sender=MANAGER)
    assert (await alice.message(MANAGER, "#rooms")).code == 200
    await expect(alice, "Rooms:\n[chat]\n[secret]", sender=MANAGER)

    assert (await carol.message(ROOM, "#help")).code == 200
    help_msg = await expect(carol, (await carol_help_text()), sender=ROOM)
    assert help_msg.body.startswith(b"\r\n")
    await no_more_messages(alice, bob, carol)


async def carol_help_text() -> str:
    from imc_actors.imc.room import help_text

    return help_text("#")


async def test_invite_accept_reject_remove_leave_destroy(ua):
    alice = await ua("alice")
    bob = await ua("bob")
    carol = await ua("carol")
    dave = await ua("dave")
    await alice.message(MANAGER, "#create chat private")
    await expect(alice, "*** Room was created")

    # a private room refuses #join and tells the owner
    response = await dave.message(ROOM, "#join")
    assert response.code == 403
    await expect(dave, "*** Private rooms are by invitation only. Room owners have been notified.")
    await expect(alice, "*** [dave] attempted to join the room")

    assert (await alice.message(ROOM, "#invite bob")).code == 200
    await expect(bob, "*** [alice] invites you to join the room (send '#accept' or '#reject')", sender=ROOM)
    assert (await bob.message(ROOM, "#accept")).code == 200
    await expect(alice, "*** [bob] has joined the room")
    await expect(bob, "*** [bob] has joined the room")

    assert (await alice.message(ROOM, f"#invite sip:carol@{DOMAIN}")).code == 200
    await expect(carol, "*** [alice] invites you to join the room (send '#accept' or '#reject')")
    assert (await carol.message(ROOM, "#deny")).code == 200
    await expect(alice, "*** [carol] declined the invitation")
    assert (await carol.message(ROOM, "#accept")).code == 403
    await expect(carol, "*** You have no pending invitation to this room")

    assert (await bob.message(ROOM, "#remove alice")).code == 403
    await expect(bob, "*** You don't have the permission to remove members from this room")
    assert (await alice.message(ROOM, "#add carol")).code == 200
    for agent in (alice, bob, carol):
        await expect(agent, "*** [carol] has joined the room")
    assert (await alice.message(ROOM, "#remove carol")).code == 200
    await expect(carol, "*** You have been removed from the room")
    await expect(alice, "*** [carol] has left the room")
    await expect(bob, "*** [carol] has left the room")

    assert (await bob.message(ROOM, "#exit")).code == 200
    await expect(alice, "*** [bob] has left the room")
    await expect(bob, "*** [bob] has left the room")
    assert (await bob.message(ROOM, "hi")).code == 403
    await expect(bob, "*** You are not a member of this room")

    assert (await alice.message(ROOM, "#destroy")).code == 200
    await expect(alice, "*** Room has been destroyed")
    assert (await alice.message(ROOM, "anyone?")).code == 404
    await expect(alice, "*** Room not found", sender=ROOM)
    await no_more_messages(alice, bob, carol, dave)


async def test_last_owner_leaving_destroys_the_room(ua, server):
    alice = await ua("alice")
    bob = await ua("bob")
    await alice.message(MANAGER, "#create chat")
    await expect(alice, "*** Room was created")
    await bob.message(ROOM, "#join")
    await expect(alice, "*** [bob] has joined the room")
    await expect(bob, "*** [bob] has joined the room")
    assert (await alice.message(ROOM, "#leave")).code == 200
    await expect(alice, "*** Room has been destroyed")
    await expect(bob, "*** Room has been destroyed")
    assert server.conference.room(ROOM) is None


@pytest.mark.parametrize(
    ("body", "code", "notice"),
    [
        ("#", 400, "*** Missing command (send '#help' for help)"),
        ("#dance", 400, "*** Invalid command 'dance' (send '#help' for help)"),
        ("#invite", 400, "*** Missing argument (send '#help' for help)"),
        ("#join", 400, "*** Missing room name"),
        ("hello manager", 404, "*** Room not found"),
    ],
)
async def test_refusals_at_the_manager_uri(ua, body, code, notice):
    alice = await ua("alice")
    response = await alice.message(MANAGER, body)
    assert response.code == code
    await expect(alice, notice, sender=MANAGER)


async def test_unreachable_invitee_is_removed_and_inviter_told(ua, server):
    alice = await ua("alice")
    await ua("ghost", answer=480)
    await alice.message(MANAGER, "#create chat")
    await expect(alice, "*** Room was created")
    assert (await alice.message(ROOM, "#invite ghost")).code == 200
    await expect(alice, "*** Invitation to [ghost] failed: 480 Temporarily Unavailable")
    await trio.testing.wait_all_tasks_blocked(cushion=0.05)
    room = server.conference.room(ROOM)
    assert room is not None and room.find(f"sip:ghost@{DOMAIN}") is None


async def test_other_domain_is_not_served(ua):
    alice = await ua("alice")
    response = await alice.message(MANAGER, "#create chat@elsewhere.example")
    assert response.code == 404
    await expect(alice, "*** Room not found")


@pytest.mark.parametrize("config_overrides", [{"max_body_size": 64}])
async def test_oversized_body_gets_413(ua, config_overrides):
    alice = await ua("alice")
    await alice.message(MANAGER, "#create chat")
    await expect(alice, "*** Room was created")
    response = await alice.message(ROOM, "x" * 65)
    assert response.code == 413
    notice = await expect(alice, "*** Message body too large (maximum 64 bytes)")
    assert notice.from_uri == ROOM


async def test_retransmitted_chat_is_answered_again_and_relayed_once(ua):
    alice = await ua("alice")
    bob = await ua("bob")
    await alice.message(MANAGER, "#create chat")
    await expect(alice, "*** Room was created")
    await bob.message(ROOM, "#join")
    await expect(alice, "*** [bob] has joined the room")
    await expect(bob, "*** [bob] has joined the room")

    data = bob.build("MESSAGE", ROOM, body=b"only once", content_type="text/plain")
    await bob.send_raw(data)
    first = await bob.recv_raw()
    await bob.send_raw(data)  # the same request again: a retransmission
    second = await bob.recv_raw()
    assert first == second and first.startswith(b"SIP/2.0 202 ")
    await expect(alice, "[bob]: only once")
    await no_more_messages(alice, bob)


async def test_join_is_answered_over_tcp_too(nursery, server):
    from tests.integration.conftest import DOMAIN as D
    from tests.support.ua import TestUA

    tcp = next(a for a in server.addresses if a.transport == "tcp")
    carol = await TestUA.open(nursery, "carol", D, (tcp.host, tcp.port), transport="tcp")
    assert (await carol.register()).code == 200
    assert (await carol.message(MANAGER, "#create tcproom")).code == 200
    await expect(carol, "*** Room was created", sender=f"sip:tcproom@{D}")
