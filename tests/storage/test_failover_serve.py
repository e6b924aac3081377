"""Failover between two real ``imc-actors serve`` processes (issue 13 item 4): nodes ``a``
(127.0.0.2) and ``b`` (127.0.0.3) share one database; after ``kill -9`` of ``a`` its room is
served by ``b``, restored from the database with every acknowledged member, and what ``a``
stored for a member who was away is delivered by ``b`` when he registers there. While both
run, ``b`` forwards the MESSAGEs for ``a``'s room to ``a`` (issue 13 item 2).

The only wait is for ``b``'s own log line saying it took the room over (its scan runs every
``lease_ttl / 3``; a safety net bounds it), not a sleep.
"""

from __future__ import annotations

import trio

from tests.integration.conftest import DOMAIN, MANAGER, expect
from tests.storage.conftest import Tables
from tests.storage.test_cluster_views import until
from tests.support.serve import serve_process
from tests.support.ua import TestUA

CHAT = f"sip:chat@{DOMAIN}"
TTL = "1.5"


async def test_kill_9_of_a_node_moves_its_room_to_the_other_node(
    db_url: str, tables: Tables, nursery: trio.Nursery
) -> None:
    flags = [*tables.flags(), "--lease-ttl", TTL]
    async with (
        serve_process(db_url, *flags, "--node", "a", host="127.0.0.2") as a,
        serve_process(db_url, *flags, "--node", "b", host="127.0.0.3") as b,
    ):
        alice = await TestUA.open(nursery, "alice", DOMAIN, a.udp)
        bob = await TestUA.open(nursery, "bob", DOMAIN, a.udp)
        for agent in (alice, bob):
            assert (await agent.register()).code == 200
        assert (await alice.message(MANAGER, "#create chat")).code == 200
        await expect(alice, "*** Room was created", sender=CHAT)
        assert (await bob.message(CHAT, "#join")).code == 200  # acknowledged: durable
        for agent in (alice, bob):
            await expect(agent, "*** [bob] has joined the room", sender=CHAT)
        carol = await TestUA.open(nursery, "carol", DOMAIN, b.udp)
        assert (await carol.register()).code == 200
        assert (await carol.message(CHAT, "#join")).code == 200  # a holds the room: forwarded
        for agent in (alice, bob):
            await expect(agent, "*** [carol] has joined the room", sender=CHAT)
        await expect(carol, "*** [carol] has joined the room", sender=CHAT)
        # dave's phone is off when alice writes: a stores the line for him
        dave = await TestUA.open(nursery, "dave", DOMAIN, a.udp)
        assert (await dave.register()).code == 200
        assert (await dave.message(CHAT, "#join")).code == 200
        for agent in (alice, bob, carol, dave):
            await expect(agent, "*** [dave] has joined the room", sender=CHAT)
        dave.answer = 480
        assert (await alice.message(CHAT, "while you were away")).code == 202
        await expect(dave, "[alice]: while you were away", sender=CHAT)  # answered 480
        for agent in (bob, carol):
            await expect(agent, "[alice]: while you were away", sender=CHAT)

        async def stored() -> int | None:
            with tables.repository(db_url) as repository:
                count = await trio.to_thread.run_sync(repository.pending_count, "dave@127.0.0.1")
            return count or None

        assert await until(stored) == 1

        assert await a.kill() != 0  # no release, no cleanup
        with trio.fail_after(30):  # safety net: the scan takes it within about lease_ttl
            line = await b.logged(b"taking over 1 rooms of dead nodes")
        assert b"chat@127.0.0.1" in line
        bob.server = b.udp
        assert (await bob.register()).code == 200  # bob's phone now talks to b
        assert (await bob.message(CHAT, "#members")).code == 200
        await expect(bob, "Members:\n*[alice]\n[bob]\n[carol]\n[dave]", sender=CHAT)
        # dave's phone is back and registers with b, which keeps nothing for him itself: b
        # delivers what dead a stored for him (was: nothing, until a node was restarted)
        dave.answer, dave.server = 200, b.udp
        assert (await dave.register()).code == 200
        late = await expect(dave, "[alice]: while you were away", sender=CHAT)
        assert late.header("Date") is not None  # of its original time
        assert (await carol.message(CHAT, "#leave")).code == 200  # b serves it itself now
        for agent in (alice, bob, dave):
            await expect(agent, "*** [carol] has left the room", sender=CHAT)
        assert await until(lambda: _none_left(tables, db_url)) is True
        assert await b.terminate() == 0


async def _none_left(tables: Tables, db_url: str) -> bool | None:
    with tables.repository(db_url) as repository:
        count = await trio.to_thread.run_sync(repository.pending_count, "dave@127.0.0.1")
    return True if count == 0 else None



async def test_a_node_forwards_a_message_for_another_nodes_room_and_relays_the_answer(
    db_url: str, tables: Tables, nursery: trio.Nursery
) -> None:
    # a's host is a served domain too: forwarding must not look it up in the registrar
    flags = [*tables.flags(), "--lease-ttl", "5", "--domain", "127.0.0.2"]
    async with (
        serve_process(db_url, *flags, "--node", "a", host="127.0.0.2") as a,
        serve_process(db_url, *flags, "--node", "b", host="127.0.0.3") as b,
    ):
        alice, bob, carol = [await TestUA.open(nursery, user, DOMAIN, a.udp) for user in ("alice", "bob", "carol")]
        for agent in (alice, bob, carol):
            assert (await agent.register()).code == 200
        assert (await alice.message(MANAGER, "#create chat")).code == 200
        await expect(alice, "*** Room was created", sender=CHAT)
        bob.server = carol.server = b.udp  # they talk to b; a holds the room
        assert (await bob.message(CHAT, "#join")).code == 200  # forwarded to a, a's 200 relayed
        for agent in (alice, bob):  # a did the fan-out
            await expect(agent, "*** [bob] has joined the room", sender=CHAT)
        assert (await bob.message(CHAT, "hello")).code == 202
        await expect(alice, "[bob]: hello", sender=CHAT)
        # a line too large for UDP is forwarded over TCP: from b's own address, not the
        # kernel's pick for a loopback destination (127.0.0.1), or a refuses it
        long = "x" * 3000
        assert (await bob.message(CHAT, long)).code == 202
        await expect(alice, f"[bob]: {long}", sender=CHAT)
        refused = await bob.request(  # a's refusal, relayed
            "MESSAGE", CHAT, body=b"#destroy", content_type="text/plain", call_id="destroy-1@bob"
        )
        assert refused.code == 403
        told = await expect(bob, "*** Only the room's owner can destroy the room", sender=CHAT)
        assert told.header("In-Reply-To") == "destroy-1@bob"  # the original Call-ID went along
        stored = tables.repository(db_url).load_room("chat@127.0.0.1")
        assert [m.uri for m in stored.members] == [f"sip:alice@{DOMAIN}", f"sip:bob@{DOMAIN}"]

        # only a listed node may forward: a client posing as node b from its own address
        carol.server = a.udp
        posing = await carol.request(
            "MESSAGE", CHAT, body=b"#join",
            headers=[("X-IMC-Forwarded-By", "b"), ("X-IMC-Request-URI", CHAT)],
            content_type="text/plain",
        )
        assert posing.code == 403
        assert len(tables.repository(db_url).load_room("chat@127.0.0.1").members) == 2

        # dave registers with b only, after a started: a, the owner, still reaches him
        dave = await TestUA.open(nursery, "dave", DOMAIN, b.udp)
        assert (await dave.register()).code == 200
        assert (await dave.message(CHAT, "#join")).code == 200  # forwarded to a
        await expect(dave, "*** [dave] has joined the room", sender=CHAT)  # a read his binding
        await expect(dave, "[bob]: hello", sender=CHAT)  # the archive's replay on join, from a
        await expect(dave, f"[bob]: {long}", sender=CHAT)
        assert (await alice.message(CHAT, "hi all")).code == 202
        await expect(dave, "[alice]: hi all", sender=CHAT)


async def test_under_auth_the_forwarding_node_authenticates_and_the_owner_trusts_the_node(
    db_url: str, tables: Tables, nursery: trio.Nursery
) -> None:
    repository = tables.repository(db_url)
    repository.init_schema()
    for user in ("alice", "bob"):
        repository.set_user(user, DOMAIN, f"{user}-pw", create=True)
    flags = [*tables.flags(), "--auth", "all"]
    async with (
        serve_process(db_url, *flags, "--node", "a", host="127.0.0.2") as a,
        serve_process(db_url, *flags, "--node", "b", host="127.0.0.3") as b,
    ):
        alice = await TestUA.open(nursery, "alice", DOMAIN, a.udp)
        bob = await TestUA.open(nursery, "bob", DOMAIN, a.udp)
        for agent in (alice, bob):
            agent.password = f"{agent.user}-pw"
            assert (await agent.register()).code == 200
        assert (await alice.message(MANAGER, "#create chat")).code == 200
        await expect(alice, "*** Room was created", sender=CHAT)
        bob.server = b.udp
        bob.password = None  # b challenges bob itself: without his password, nothing goes on
        assert (await bob.message(CHAT, "#join")).code == 401
        bob.password = "bob-pw"
        assert (await bob.message(CHAT, "#join")).code == 200  # b authenticated him, a trusts b
        await expect(alice, "*** [bob] has joined the room", sender=CHAT)
