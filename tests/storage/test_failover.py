"""Failover (issue 13 item 4): a dead node's rooms are taken over by another node, restored
from the database; a clean shutdown hands them over at once; a node that comes back takes
new rooms only. Two conferences (nodes ``n1`` and ``n2``) share one database on each engine.

The lease times come from an injected wall clock (:class:`FakeClock`) and trio's clock stands
still (``mock_clock``), so the keepers renew only when a test runs a round
(``Conference.lease_round``) and a node "dies" by the clock moving past its leases: no sleep.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio.testing

from imc_actors import IncomingMessage, open_conference
from imc_actors.conference import Conference
from tests.storage.conftest import Tables
from tests.storage.test_leases import TTL, FakeClock, conference_config, say

CHAT = "chat@example.com"


@asynccontextmanager
async def node(db_url: str, tables: Tables, clock: FakeClock, name: str) -> AsyncIterator[Conference]:
    repository = tables.repository(db_url, node=name, lease_ttl=TTL, clock=clock)
    await trio.to_thread.run_sync(repository.init_schema)
    async with open_conference(conference_config(db_url, tables, name), repository=repository) as conf:
        yield conf


def members(conf: Conference) -> list[str] | None:
    state = conf.room(f"sip:{CHAT}")
    return None if state is None else [member.uri for member in state.members]


async def make_chat(conf: Conference) -> None:
    assert (await conf.handle(say("imc-manager", "alice", "#create chat"))).code == 200
    assert (await conf.handle(say("chat", "bob", "#join"))).code == 200


async def test_a_request_takes_a_dead_nodes_room_over_with_its_acknowledged_members(
    db_url: str, tables: Tables, mock_clock: trio.testing.MockClock
) -> None:
    clock = FakeClock()
    async with node(db_url, tables, clock, "n1") as one:
        await make_chat(one)
        async with node(db_url, tables, clock, "n2") as two:
            refused = await two.handle(say("chat", "carol", "#join"))  # n1 is alive
            assert (refused.code, refused.retry_after) == (503, 5)
            clock.now += TTL  # n1 renews no more: its lease has expired on n2's clock
            listed = await two.handle(say("chat", "bob", "#members"))
            assert listed.code == 200 and listed.body is not None
            assert b"alice" in listed.body and b"bob" in listed.body  # restored from the database
            assert (await two.handle(say("chat", "carol", "#join"))).code == 200
            assert members(two) == ["sip:alice@example.com", "sip:bob@example.com", "sip:carol@example.com"]
            # n1 still believes it holds the room: its write is fenced, it stops serving the
            # room, and the command is routed again: to n2, the new owner, when n1 forwards
            assert members(one) is not None
            forwarded: list[str] = []

            async def forward(request_uri, sender, body, content_type, call_id, location):
                forwarded.append(location.node)
                return await two.handle(IncomingMessage(request_uri, sender, body, content_type, call_id, "n1"))

            one.forward = forward
            assert (await one.handle(say("chat", "erin", "#join"))).code == 200
            assert forwarded == ["n2"] and "sip:erin@example.com" in members(two)
            assert members(one) is None
            one.forward = None  # without forwarding: 503, also for chat (no stale reads)
            assert (await one.handle(say("chat", "dave", "#join"))).code == 503
            assert (await one.handle(say("chat", "bob", "hello"))).code == 503
            lease = await trio.to_thread.run_sync(two.store.repository.owner_of, CHAT)
            assert (lease.node, lease.epoch) == ("n2", 2)
            stored = await trio.to_thread.run_sync(two.store.repository.load_room, CHAT)
            assert [m.uri for m in stored.members] == members(two)
            assert "sip:dave@example.com" not in members(two)


async def test_the_scan_takes_a_dead_nodes_rooms_over_before_anyone_writes(
    db_url: str, tables: Tables, mock_clock: trio.testing.MockClock
) -> None:
    clock = FakeClock()
    async with node(db_url, tables, clock, "n1") as one:
        await make_chat(one)
        async with node(db_url, tables, clock, "n2") as two:
            await two.lease_round()  # n1 is alive: nothing to take
            assert two.leases is not None and two.leases.statistics().held == 0
            clock.now += TTL / 2
            await two.lease_round()  # n1's lease still runs
            assert two.leases.statistics().held == 0
            clock.now += TTL / 2  # n1's lease expired and it has not heartbeat for lease_ttl
            await two.lease_round()
            assert two.leases.statistics().held == 1
            assert two.leases.statistics().taken_over == 1
            assert members(two) == ["sip:alice@example.com", "sip:bob@example.com"]
            # n1 wakes up: its renewal finds the room gone and stops it (no writes, no reads)
            assert members(one) is not None
            await one.lease_round()
            assert members(one) is None and one.leases is not None
            assert one.leases.statistics().held == 0 and one.leases.statistics().lost == 1
            assert (await two.handle(say("chat", "bob", "hello"))).code == 202


async def test_a_clean_shutdown_hands_over_at_once_and_a_node_that_comes_back_takes_new_rooms(
    db_url: str, tables: Tables, mock_clock: trio.testing.MockClock
) -> None:
    clock = FakeClock()
    async with node(db_url, tables, clock, "n2") as two:
        async with node(db_url, tables, clock, "n1") as one:
            await make_chat(one)
        await two.lease_round()  # released, and n1 marked gone: no wait for lease_ttl
        assert members(two) == ["sip:alice@example.com", "sip:bob@example.com"]
        async with node(db_url, tables, clock, "n1") as back:
            assert back.leases is not None and back.leases.statistics().not_acquired == 1
            refused = await back.handle(say("chat", "bob", "hello"))
            assert (refused.code, refused.retry_after) == (503, 5)  # moved rooms stay moved
            assert (await back.handle(say("imc-manager", "erin", "#create fresh"))).code == 200
            assert back.leases.statistics().held == 1
        assert (await two.handle(say("chat", "bob", "hello"))).code == 202


async def test_a_forwarded_message_is_never_forwarded_again(
    db_url: str, tables: Tables, mock_clock: trio.testing.MockClock
) -> None:
    clock = FakeClock()
    async with node(db_url, tables, clock, "n1") as one, node(db_url, tables, clock, "n2") as two:
        await make_chat(one)
        calls: list[str] = []

        async def forward(request_uri, sender, body, content_type, call_id, location):
            calls.append(location.node)
            forwarded = IncomingMessage(request_uri, sender, body, content_type, call_id, "n2")
            return await one.handle(forwarded)

        two.forward = forward
        assert (await two.handle(say("chat", "carol", "#join"))).code == 200  # via n1
        assert calls == ["n1"] and "sip:carol@example.com" in members(one)
        # a forwarded MESSAGE reaching a node that does not hold the room (a race: the room
        # moved meanwhile) is refused there, never forwarded on
        again = IncomingMessage(f"sip:{CHAT}", "sip:dave@example.com", b"#join", forwarded_by="n1")
        assert (await two.handle(again)).code == 503
        assert calls == ["n1"]
