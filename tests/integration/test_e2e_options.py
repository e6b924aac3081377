"""Configuration that changes behaviour on the wire, end to end over SIP (spec §1, §4, §6, §9, §11)."""

from __future__ import annotations

import pytest

from tests.integration.conftest import DOMAIN, MANAGER, expect

ROOM = f"sip:chat@{DOMAIN}"
#: The SIP-only tests also run against `serve --workers 2` (see conftest.py).
TWO_WORKERS = True


@pytest.mark.parametrize("config_overrides", [{"extra_hdrs": ["X-Service: imc", "P-Test: one two"]}])
async def test_outgoing_headers_and_their_order(ua, config_overrides):
    alice = await ua("alice")
    response = await alice.message(MANAGER, "#create chat")
    notice = await expect(alice, "*** Room was created", sender=ROOM)
    names = [name for name, _ in notice.headers]
    tail = names[names.index("Supported"):]
    assert tail == ["Supported", "X-Service", "P-Test", "Content-Type", "In-Reply-To", "Content-Length"]
    assert notice.header("X-Service") == "imc" and notice.header("P-Test") == "one two"
    assert notice.header("In-Reply-To") == response.call_id
    assert notice.header("CSeq") == "1 MESSAGE"
    assert notice.header("Via").split(";branch=")[1].startswith("z9hG4bK")


@pytest.mark.parametrize("config_overrides", [{"imc_cmd_start_char": "!"}])
async def test_custom_start_char(ua, config_overrides):
    alice = await ua("alice")
    assert (await alice.message(MANAGER, "!create chat")).code == 200
    await expect(alice, "*** Room was created")
    assert (await alice.message(ROOM, "#create other")).code == 202  # '#' is chat now
    assert (await alice.message(ROOM, "!dance")).code == 400
    await expect(alice, "*** Invalid command 'dance' (send '!help' for help)")


@pytest.mark.parametrize("config_overrides", [{"create_on_join": False, "check_on_create": True}])
async def test_no_create_on_join_and_check_on_create(ua, config_overrides):
    alice = await ua("alice")
    bob = await ua("bob")
    assert (await alice.message(ROOM, "#join")).code == 404
    await expect(alice, "*** Room not found")
    assert (await alice.message(MANAGER, "#create chat")).code == 200
    await expect(alice, "*** Room was created")
    assert (await bob.message(MANAGER, "#create chat")).code == 403
    await expect(bob, "*** Room already exists")


@pytest.mark.parametrize("config_overrides", [{"owner_leave": "refuse"}])
async def test_owner_leave_refuse(ua, config_overrides, server):
    alice = await ua("alice")
    await alice.message(MANAGER, "#create chat")
    await expect(alice, "*** Room was created")
    assert (await alice.message(ROOM, "#leave")).code == 403
    await expect(alice, "*** You are the room's owner and cannot leave. Use #destroy if you wish to destroy the room.")
    assert server.conference.room(ROOM) is not None


@pytest.mark.parametrize(
    "config_overrides",
    [{"trusted_sources": ["127.0.0.0/8"], "identity_header": "P-Asserted-Identity"}],
)
async def test_identity_header_from_a_trusted_source(ua, config_overrides, server):
    proxy = await ua("proxy")
    carol = await ua("carol")
    response = await proxy.request(
        "MESSAGE", MANAGER, body=b"#create chat", content_type="text/plain",
        headers=[("P-Asserted-Identity", f'"Carol" <sip:carol@{DOMAIN}>')],
    )
    assert response.code == 200
    await expect(carol, "*** Room was created")  # the asserted identity owns the room
    room = server.conference.room(ROOM)
    assert room is not None and room.owner is not None and room.owner.uri == f"sip:carol@{DOMAIN}"


@pytest.mark.parametrize("config_overrides", [{"trusted_sources": ["10.9.8.0/24"]}])
async def test_untrusted_source_gets_403_and_nothing_else(ua, config_overrides, server):
    alice = await ua("alice", register=False)
    response = await alice.message(MANAGER, "#create chat")
    assert response.code == 403
    assert server.conference.rooms() == []
    assert alice.pending_messages() == []
