"""``imc-actors serve`` as a subprocess: restart recovery (SIGTERM) and crash safety (SIGKILL)."""

from __future__ import annotations

import random

import trio
import trio.testing

from imc_actors.store.repository import Repository
from imc_actors.testing import members_of
from tests.integration.conftest import DOMAIN, MANAGER, expect
from tests.support.serve import serve_process
from tests.support.ua import TestUA

CHAT = f"sip:chat@{DOMAIN}"
SECRET = f"sip:secret@{DOMAIN}"


async def open_uas(nursery, server, *users):
    """Fresh UAs, registered. Each first removes the bindings its user left in an earlier run
    (``Contact: *``): they survive restarts, and the OS may have given their old port to another
    agent of this run, which would then get that user's notices too."""
    agents = []
    for user in users:
        agent = await TestUA.open(nursery, user, DOMAIN, server.udp)
        clear = await agent.request(
            "REGISTER", f"sip:{DOMAIN}", headers=[("Contact", "*"), ("Expires", "0")], to_uri=agent.uri
        )
        assert clear.code == 200
        assert (await agent.register()).code == 200
        agents.append(agent)
    return agents


async def test_sigterm_then_restart_recovers_every_room(tmp_path, nursery):
    db_url = f"sqlite:///{tmp_path}/imc.db"
    async with serve_process(db_url) as server:
        alice, bob, carol = await open_uas(nursery, server, "alice", "bob", "carol")
        assert (await alice.message(MANAGER, "#create chat")).code == 200
        assert (await bob.message(CHAT, "#join")).code == 200
        assert (await alice.message(CHAT, "#modify bob admin")).code == 200
        assert (await alice.message(MANAGER, "#create secret private")).code == 200
        assert (await alice.message(SECRET, "#invite carol")).code == 200
        await expect(carol, "*** [alice] invites you to join the room (send '#accept' or '#reject')")
        assert await server.terminate() == 0
        for agent in (alice, bob, carol):
            agent.close()

    async with serve_process(db_url) as server:
        alice, bob, carol = await open_uas(nursery, server, "alice", "bob", "carol")
        assert (await bob.message(CHAT, "#members")).code == 200
        await expect(bob, "Members:\n*[alice]\n~[bob]", sender=CHAT)
        assert (await alice.message(MANAGER, "#rooms")).code == 200
        await expect(alice, "Rooms:\n[chat]\n[secret]")
        assert (await bob.message(MANAGER, "#rooms")).code == 200
        await expect(bob, "Rooms:\n[chat]")  # the private flag survived the restart
        assert (await carol.message(SECRET, "#accept")).code == 200  # so did the invitation
        await expect(carol, "*** [carol] has joined the room")
        assert await server.terminate() == 0


async def test_sigkill_during_churn_loses_no_acknowledged_change(tmp_path, nursery):
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    db_url = f"sqlite:///{tmp_path}/imc.db"
    users = [f"u{i}" for i in range(6)]
    kill_after = rng.randrange(20, 80)
    # per user: the membership acknowledged last, and the one asked for but not yet answered
    acked: dict[str, bool] = dict.fromkeys(users, False)
    asked: dict[str, bool | None] = dict.fromkeys(users)
    total_acks = 0

    async with serve_process(db_url) as server:
        boss, *agents = await open_uas(nursery, server, "boss", *users)
        assert (await boss.message(MANAGER, "#create chat")).code == 200
        killed = trio.Event()

        async def churn(agent: TestUA) -> None:
            nonlocal total_acks
            user = agent.uri.split(":")[1].split("@")[0]
            while True:
                want = not acked[user]
                asked[user] = want
                response = await agent.message(CHAT, "#join" if want else "#leave")
                if killed.is_set():
                    return
                assert response.code == 200, (user, response.code)
                acked[user] = want
                asked[user] = None
                total_acks += 1
                if total_acks == kill_after:
                    await server.kill()  # no cleanup at all, other requests in flight
                    killed.set()
                    return

        async with trio.open_nursery() as churners:
            for agent in agents:
                churners.start_soon(churn, agent)
            await killed.wait()
            churners.cancel_scope.cancel()

    stored = members_of(next(r for r in Repository(db_url).load_rooms() if r.name == "chat"))
    assert stored.pop(f"boss@{DOMAIN}") == 1, seed
    for user in users:
        present = f"{user}@{DOMAIN}" in stored
        allowed = {acked[user]} | ({asked[user]} if asked[user] is not None else set())
        assert present in allowed, (seed, user, acked[user], asked[user])
        if present:
            assert stored[f"{user}@{DOMAIN}"] == 0, seed  # never half-applied (no stray flags)


async def test_registrations_survive_a_kill(tmp_path, nursery):
    """Bindings are written before the 200: after kill -9 and a restart, a member is reached
    without registering again."""
    db_url = f"sqlite:///{tmp_path}/imc.db"
    async with serve_process(db_url) as server:
        (bob,) = await open_uas(nursery, server, "bob")
        assert await server.kill() != 0
    async with serve_process(db_url) as server:
        (alice,) = await open_uas(nursery, server, "alice")
        assert (await alice.message(MANAGER, "#create chat")).code == 200
        assert (await alice.message(CHAT, "#add bob")).code == 200
        await expect(bob, "*** [bob] has joined the room", sender=CHAT)  # bob never re-registered
        assert await server.terminate() == 0


async def test_history_and_topic_survive_a_restart(tmp_path, nursery):
    """The archive and the topic are in the database, written before the 202/200: after a
    SIGTERM and, for the last line, a kill -9, both come back."""
    db_url = f"sqlite:///{tmp_path}/imc.db"
    async with serve_process(db_url) as server:
        alice, bob = await open_uas(nursery, server, "alice", "bob")
        assert (await alice.message(MANAGER, "#create chat")).code == 200
        assert (await bob.message(CHAT, "#join")).code == 200
        assert (await alice.message(CHAT, "#topic Kept across restarts")).code == 200
        assert (await bob.message(CHAT, "before the restart")).code == 202
        assert await server.terminate() == 0
        for agent in (alice, bob):
            agent.close()

    async with serve_process(db_url) as server:
        (bob,) = await open_uas(nursery, server, "bob")
        assert (await bob.message(CHAT, "after the restart")).code == 202
        assert await server.kill() != 0  # the 202 came after the commit: nothing is lost
        bob.close()

    async with serve_process(db_url) as server:
        bob, carol = await open_uas(nursery, server, "bob", "carol")
        assert (await bob.message(CHAT, "#history")).code == 200
        page = await bob.next_message()
        lines = page.body.decode().split("\n")
        assert lines[0] == "History:" and len(lines) == 3, lines
        assert lines[1].endswith("[bob]: before the restart")
        assert lines[2].endswith("[bob]: after the restart")
        assert (await carol.message(CHAT, "#join")).code == 200
        await expect(carol, "*** [carol] has joined the room")
        await expect(carol, "*** Topic: Kept across restarts")
        await expect(carol, "[bob]: before the restart")
        await expect(carol, "[bob]: after the restart")
        assert (await carol.message(CHAT, "#info")).code == 200
        info = await carol.next_message()
        assert b"Topic: Kept across restarts" in info.body and b"Created: 20" in info.body
        assert await server.terminate() == 0
