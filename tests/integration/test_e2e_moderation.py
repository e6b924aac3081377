"""Moderation end to end (issue 16 items 4-5): ``#ban``, ``#unban``, ``#bans``, ``#kick``,
``#limit``, the member and room limits and the chat budget, over real SIP on 127.0.0.1; and
bans that survive a restart of ``imc-actors serve``."""

from __future__ import annotations

import pytest
import trio.testing

from imc_actors.imc import texts
from tests.integration.conftest import DOMAIN, MANAGER, expect
from tests.integration.test_control_metrics import scrape, value
from tests.support.serve import serve_process
from tests.support.ua import TestUA

ROOM = f"sip:chat@{DOMAIN}"
#: The SIP-only tests also run against `serve --workers 2` (see conftest.py).
TWO_WORKERS = True


@pytest.fixture
def config_overrides() -> dict:
    # chat_rate: one message per 1000 s after a burst of 3, so the limit is hit by count,
    # never by timing
    return {
        "max_members": 4, "max_rooms_per_user": 2, "chat_rate": 0.001, "chat_burst": 3,
        "rpc_listen": "127.0.0.1:0",
    }  # fmt: skip


async def no_more_messages(*agents: TestUA) -> None:
    await trio.testing.wait_all_tasks_blocked(cushion=0.05)
    for agent in agents:
        assert agent.pending_messages() == [], (agent.uri, [m.body for m in agent.pending_messages()])


async def room_with(alice: TestUA, *others: TestUA) -> None:
    assert (await alice.message(MANAGER, "#create chat")).code == 200
    await expect(alice, texts.ROOM_CREATED)
    joined: list[TestUA] = [alice]
    for agent in others:
        assert (await agent.message(ROOM, "#join")).code == 200
        joined.append(agent)
        for member in joined:
            await expect(member, f"*** [{agent.uri.split(':')[1].split('@')[0]}] has joined the room")


async def test_ban_bans_unban_kick(ua) -> None:
    alice, bob, carol, eve = [await ua(u) for u in ("alice", "bob", "carol", "eve")]
    await room_with(alice, bob, carol)
    assert (await alice.message(ROOM, "#modify bob admin")).code == 200
    for agent in (alice, bob, carol):
        await expect(agent, "*** [bob] is now admin")

    # a plain member may not ban; the refusal is a 403 and a notice
    assert (await carol.message(ROOM, "#ban bob")).code == 403
    await expect(carol, texts.NO_PERMISSION_BAN, sender=ROOM)

    # the ban removes carol, with the reason, and the room is told
    assert (await bob.message(ROOM, "#ban carol flooding the room")).code == 200
    await expect(carol, "*** You have been banned from the room: flooding the room", sender=ROOM)
    for agent in (alice, bob):
        await expect(agent, "*** [carol] has been banned from the room: flooding the room")

    # banned: no chat, no join, no invitation, no addition
    response = await carol.message(ROOM, "still here?")
    assert response.code == 403
    await expect(carol, texts.YOU_ARE_BANNED, sender=ROOM)
    assert (await carol.message(ROOM, "#join")).code == 403
    await expect(carol, texts.YOU_ARE_BANNED)
    assert (await bob.message(ROOM, "#invite carol")).code == 403
    await expect(bob, "*** [carol] is banned from this room")
    assert (await alice.message(ROOM, f"#add sip:Carol@{DOMAIN}")).code == 403
    await expect(alice, "*** [Carol] is banned from this room")

    assert (await bob.message(ROOM, f"#ban *@{DOMAIN}")).code == 200  # owners and the banner stay
    for agent in (alice, bob):
        await expect(agent, f"*** *@{DOMAIN} has been banned from the room")
    response = await bob.message(ROOM, "#bans")
    assert (response.code, response.body) == (200, b"")
    await expect(bob, f"Bans:\ncarol@{DOMAIN} - flooding the room\n*@{DOMAIN}", sender=ROOM)

    assert (await bob.message(ROOM, f"#unban *@{DOMAIN}")).code == 200
    for agent in (alice, bob):
        await expect(agent, f"*** *@{DOMAIN} is no longer banned from the room")
    assert (await bob.message(ROOM, "#unban carol")).code == 200
    for agent in (alice, bob):
        await expect(agent, "*** [carol] is no longer banned from the room")
    assert (await bob.message(ROOM, "#unban carol")).code == 404
    await expect(bob, "*** [carol] is not banned from this room")

    # #kick: removed with the reason, and free to come back to a public room
    assert (await eve.message(ROOM, "#join")).code == 200
    for agent in (alice, bob, eve):
        await expect(agent, "*** [eve] has joined the room")
    assert (await bob.message(ROOM, "#kick eve  cool off")).code == 200
    await expect(eve, "*** You have been kicked from the room: cool off")
    for agent in (alice, bob):
        await expect(agent, "*** [eve] has been kicked from the room: cool off")
    assert (await bob.message(ROOM, "#kick alice")).code == 403
    await expect(bob, texts.OWNER_CANNOT_BE_KICKED)
    assert (await eve.message(ROOM, "#join")).code == 200
    for agent in (alice, bob, eve):
        await expect(agent, "*** [eve] has joined the room")
    await no_more_messages(alice, bob, carol, eve)


async def test_member_limit_and_limit_command(ua) -> None:
    alice, bob, carol, dave, eve = [await ua(u) for u in ("alice", "bob", "carol", "dave", "eve")]
    await room_with(alice, bob, carol, dave)  # max_members = 4
    assert (await eve.message(ROOM, "#join")).code == 403
    await expect(eve, texts.room_full(4), sender=ROOM)

    assert (await bob.message(ROOM, "#limit 2")).code == 403
    await expect(bob, texts.NO_PERMISSION_LIMIT)
    assert (await alice.message(ROOM, "#limit 5")).code == 400
    await expect(alice, "*** The limit must be from 1 to 4")
    assert (await alice.message(ROOM, "#limit 3")).code == 200
    await expect(alice, "*** The room takes at most 3 members")
    assert (await dave.message(ROOM, "#leave")).code == 200
    for agent in (alice, bob, carol, dave):
        await expect(agent, "*** [dave] has left the room")
    assert (await dave.message(ROOM, "#join")).code == 403  # 3 listed, the room's limit
    await expect(dave, texts.room_full(3))
    assert (await carol.message(ROOM, "#limit")).code == 200
    await expect(carol, "*** The room takes at most 3 members")
    await no_more_messages(alice, bob, carol, dave, eve)


async def test_rooms_per_user_and_chat_budget(server, ua) -> None:
    alice, bob = await ua("alice"), await ua("bob")
    await room_with(alice, bob)
    assert (await alice.message(MANAGER, "#create second")).code == 200
    await expect(alice, texts.ROOM_CREATED)
    response = await alice.message(MANAGER, "#create third")  # max_rooms_per_user = 2
    assert response.code == 403
    await expect(alice, texts.too_many_rooms(2))
    assert (await bob.message(MANAGER, "#create third")).code == 200  # bob owns none yet
    await expect(bob, texts.ROOM_CREATED)

    for n in range(3):  # chat_burst = 3
        assert (await bob.message(ROOM, f"line {n}")).code == 202
        await expect(alice, f"[bob]: line {n}")
    response = await bob.message(ROOM, "one too many")
    assert response.code == 503
    assert response.header("Retry-After") == "1000"
    await expect(bob, "*** You are sending too fast; wait 1000 s", sender=ROOM)
    assert (await alice.message(ROOM, "alice has her own budget")).code == 202
    await expect(bob, "[alice]: alice has her own budget")
    assert (await bob.message(ROOM, "#members")).code == 200  # commands are not limited
    await expect(bob, "Members:\n*[alice]\n[bob]")
    await no_more_messages(alice, bob)
    samples = await scrape(server)
    assert value(samples, "imc_chat_throttled_total") == 1
    assert value(samples, "imc_chat_budgets") == 2  # (chat, bob), (chat, alice)


async def test_bans_and_limits_survive_a_restart(tmp_path, nursery) -> None:
    db_url = f"sqlite:///{tmp_path}/imc.db"

    async def agents(server, *users: str) -> list[TestUA]:
        made = []
        for user in users:
            agent = await TestUA.open(nursery, user, DOMAIN, server.udp)
            assert (await agent.register()).code == 200
            made.append(agent)
        return made

    async with serve_process(db_url) as server:
        alice, bob = await agents(server, "alice", "bob")
        assert (await alice.message(MANAGER, "#create chat")).code == 200
        assert (await bob.message(ROOM, "#join")).code == 200
        assert (await alice.message(ROOM, "#ban bob rude")).code == 200
        assert (await alice.message(ROOM, "#ban *@evil.example")).code == 200
        assert (await alice.message(ROOM, "#limit 7")).code == 200
        assert await server.terminate() == 0
        for agent in (alice, bob):
            agent.close()

    async with serve_process(db_url) as server:
        alice, bob = await agents(server, "alice", "bob")
        assert (await bob.message(ROOM, "#join")).code == 403
        await expect(bob, texts.YOU_ARE_BANNED)
        assert (await alice.message(ROOM, "#bans")).code == 200
        await expect(alice, f"Bans:\nbob@{DOMAIN} - rude\n*@evil.example")
        assert (await alice.message(ROOM, "#limit")).code == 200
        await expect(alice, "*** The room takes at most 7 members")
        assert await server.terminate() == 0
