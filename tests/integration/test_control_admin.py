"""The JSON-RPC admin actions (issue 16 item 7): ``imc.destroy_room``, ``imc.kick``,
``imc.ban`` over HTTP, against rooms made over SIP, with the notices the members get."""

from __future__ import annotations

import pytest

from imc_actors.store.repository import Repository
from tests.integration.test_control_rpc import error, result
from tests.support.control import CHAT, MANAGER, command, next_message, populate

SECRET = "sip:secret@127.0.0.1"


@pytest.fixture
def config_overrides() -> dict:
    return {"rpc_listen": "127.0.0.1:0"}


async def test_kick_ban_destroy(server, ua, tmp_path):
    agents = await populate(ua)
    alice, bob, carol = agents["alice"], agents["bob"], agents["carol"]
    url = server.rpc_url
    methods = await result(url, "system.listMethods")
    assert {"imc.destroy_room", "imc.kick", "imc.ban"} <= set(methods)

    assert await result(url, "imc.kick", [CHAT, "bob", "off topic"]) == {
        "room": CHAT, "user": "bob", "kicked": True}
    assert await next_message(bob) == b"*** You have been kicked from the room: off topic"
    assert await next_message(alice) == b"*** [bob] has been kicked from the room: off topic"
    await command(bob, CHAT, "#join")  # a kick keeps nobody out
    await next_message(alice)
    await next_message(bob)

    assert await result(url, "imc.ban", {"room": CHAT, "user": "sip:bob@127.0.0.1"}) == {
        "room": CHAT, "user": "sip:bob@127.0.0.1", "banned": True}
    assert await next_message(bob) == b"*** You have been banned from the room"
    assert await next_message(alice) == b"*** [bob] has been banned from the room"
    await command(bob, CHAT, "#join", 403)
    assert await next_message(bob) == b"*** You are banned from this room"
    with Repository(f"sqlite:///{tmp_path}/imc.db") as repository:  # durable before the answer
        (chat,) = [room for room in repository.load_rooms() if room.name == "chat"]
        assert [ban.pattern for ban in chat.bans] == ["bob@127.0.0.1"]

    # refusals: the room's own codes and texts; unknown rooms as imc.list_members says them
    assert await error(url, "imc.kick", [CHAT, "alice"]) == {
        "code": 403, "message": "The room's owner cannot be kicked"}
    assert await error(url, "imc.kick", [CHAT, "nobody"]) == {
        "code": 404, "message": "[nobody] is not a member of the room"}
    assert await error(url, "imc.ban", [CHAT, "bob"]) == {
        "code": 403, "message": "[bob] is banned from this room already"}
    assert await error(url, "imc.ban", [CHAT, "not a user"]) == {
        "code": 400, "message": "Invalid address 'not a user'"}
    assert await error(url, "imc.ban", [CHAT, "u" * 100]) == {  # as #ban over SIP, not a 500
        "code": 400, "message": "Address too long (user and host may have at most 64 characters each)"}
    assert await error(url, "imc.kick", ["sip:none@127.0.0.1", "bob"]) == {
        "code": 500, "message": "Room not found"}
    assert (await error(url, "imc.kick", [CHAT]))["code"] == -32602
    assert (await error(url, "imc.ban", [CHAT, "bob", "x", "y"]))["code"] == -32602
    assert (await error(url, "imc.destroy_room", {"room": CHAT, "user": "x"}))["code"] == -32602

    assert await result(url, "imc.destroy_room", [SECRET]) == {"room": SECRET, "destroyed": True}
    assert await next_message(bob) == b"*** Room has been destroyed"
    assert [room["room"] for room in await result(url, "imc.list_rooms")] == [CHAT]
    await command(carol, MANAGER, "#rooms")
    assert await next_message(carol) == b"Rooms:\n[chat]"
