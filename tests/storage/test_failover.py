"""Failover (issue 13 item 4): a dead node's rooms are taken over by another node, restored
from the database; a clean shutdown hands them over at once; a node that comes back takes
new rooms only. Two conferences (nodes ``n1`` and ``n2``) share one database on each engine.

The lease times come from an injected wall clock (:class:`FakeClock`) and trio's clock stands
still (``mock_clock``), so the keepers renew only when a test runs a round
(``Conference.lease_round``) and a node "dies" by the clock moving past its leases: no sleep.
"""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio.testing

from imc_actors import IncomingMessage, open_conference
from imc_actors.actors.leases import NodeInUse
from imc_actors.conference import Conference
from imc_actors.imc.effects import OWNER, MemberUpsert, RoomUpsert
from imc_actors.store.instance import DatabaseInUse
from imc_actors.store.records import BindingSet
from imc_actors.store.repository import StoreError
from tests.storage.conftest import Tables
from tests.storage.test_leases import TTL, FakeClock, conference_config, say

CHAT = "chat@example.com"


@asynccontextmanager
async def node(db_url: str, tables: Tables, clock: FakeClock, name: str) -> AsyncIterator[Conference]:
    repository = tables.repository(db_url, node=name, lease_ttl=TTL, clock=clock)
    await trio.to_thread.run_sync(repository.init_schema)
    async with open_conference(conference_config(db_url, tables, name), repository=repository) as conf:
        yield conf


@asynccontextmanager
async def real_clock_node(db_url: str, tables: Tables, name: str, **config: object) -> AsyncIterator[Conference]:
    """A node on the wall clock, with ``config`` overrides."""
    repository = tables.repository(db_url, node=name, lease_ttl=float(config.get("lease_ttl", TTL)))  # type: ignore[arg-type]
    await trio.to_thread.run_sync(repository.init_schema)
    async with open_conference(conference_config(db_url, tables, name).replace(**config),
                               repository=repository) as conf:  # fmt: skip
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


async def test_a_request_during_the_scans_takeover_waits_for_the_rooms_state(
    db_url: str, tables: Tables, mock_clock: trio.testing.MockClock
) -> None:
    # The scan takes the lease (so the room looks served here) and then reads the room. A
    # request in between used to find no room and get 404 (seen behind the dispatcher under
    # load, right after "taking over ... rooms of dead nodes"); it must wait for the read.
    clock = FakeClock()
    async with node(db_url, tables, clock, "n1") as one:
        await make_chat(one)
        async with node(db_url, tables, clock, "n2") as two:
            repository = two.store.repository
            loading, resume = threading.Event(), threading.Event()
            load_room = repository.load_room

            def paused_load(room: str):  # in the store's thread, after the lease was taken
                loading.set()
                resume.wait(30)  # safety net only: the test sets it
                return load_room(room)

            repository.load_room = paused_load  # type: ignore[method-assign]
            clock.now += TTL  # n1 has died: its lease expired, no heartbeat since
            answers = []

            async def members_asked() -> None:
                answers.append(await two.handle(say("chat", "bob", "#members")))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(two.lease_round)
                try:
                    await trio.to_thread.run_sync(loading.wait)
                    assert two.leases is not None and two.leases.serving(CHAT)  # the window
                    nursery.start_soon(members_asked)
                    await trio.testing.wait_all_tasks_blocked()
                    assert [answer.code for answer in answers] == []  # it waits: no 404
                finally:
                    resume.set()
            assert [answer.code for answer in answers] == [200]
            assert answers[0].body is not None and b"alice" in answers[0].body
            assert members(two) == ["sip:alice@example.com", "sip:bob@example.com"]


async def test_a_takeover_that_fails_leaves_the_room_to_be_taken_over_again(
    db_url: str, tables: Tables, mock_clock: trio.testing.MockClock
) -> None:
    # A database outage longer than the lease: the node may not serve its rooms from memory
    # (no renewal), so a request takes its own room over; that stops the room's actor, and
    # the read fails. Once renewals work again the room must be taken over again, not look
    # served with nothing serving it: that gave its members 404 and made a #join create it
    # a second time (two owners), seen under serve --workers 2 with a full disk.
    clock = FakeClock()
    async with node(db_url, tables, clock, "n1") as one:
        await make_chat(one)
        assert one.leases is not None
        mock_clock.jump(TTL)  # no renewal for lease_ttl
        assert not one.leases.serving(CHAT)
        repository = one.store.repository
        take_over = repository.take_over

        def unavailable(room: str) -> object:
            raise StoreError("the database is unavailable")

        repository.take_over = unavailable  # type: ignore[method-assign]
        assert (await one.handle(say("chat", "bob", "hello"))).code == 503
        repository.take_over = take_over  # type: ignore[method-assign]
        await one.lease_round()  # the database is back: renewals work
        assert (await one.handle(say("chat", "bob", "hello"))).code == 202
        listed = await one.handle(say("chat", "alice", "#members"))
        assert listed.code == 200 and listed.body is not None and b"bob" in listed.body
        assert (await one.handle(say("chat", "carol", "#join"))).code == 200
        stored = await trio.to_thread.run_sync(repository.load_room, CHAT)
        assert [m.uri for m in stored.members if m.flags & OWNER] == ["sip:alice@example.com"]
        assert [m.uri for m in stored.members] == members(one)


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


# -- the repository's part --------------------------------------------------------------------


def test_orphans_lists_expired_leases_of_silent_nodes_only(db_url: str, tables: Tables) -> None:
    clock = FakeClock()
    one = tables.repository(db_url, node="n1", lease_ttl=TTL, clock=clock)
    two = tables.repository(db_url, node="n2", lease_ttl=TTL, clock=clock)
    one.init_schema()
    with one, two:
        assert one.acquire("a@example.com") == 1 and one.acquire("b@example.com") == 1
        one.heartbeat(["udp:127.0.0.2:5060"])
        assert two.acquire("c@example.com") == 1  # a node that never heartbeat
        assert two.orphans() == [] and one.orphans() == []  # every lease still runs
        clock.now += TTL
        assert two.orphans() == ["a@example.com", "b@example.com"]  # n1 silent for lease_ttl
        assert one.orphans() == ["c@example.com"]  # n2 has no heartbeat row at all
        one.heartbeat(["udp:127.0.0.2:5060"])  # alive again, leases still expired
        assert two.orphans() == []
        assert two.orphans(limit=1) == []
        clock.now += TTL
        assert two.orphans(limit=1) == ["a@example.com"]


def test_take_over_reads_the_room_after_the_lease_and_lost_finds_what_moved(
    db_url: str, tables: Tables
) -> None:
    clock = FakeClock()
    one = tables.repository(db_url, node="n1", lease_ttl=TTL, clock=clock)
    two = tables.repository(db_url, node="n2", lease_ttl=TTL, clock=clock)
    one.init_schema()
    with one, two:
        one.apply_batch([
            RoomUpsert("Chat", "Example.com", 0),
            MemberUpsert("sip:Chat@Example.com", "sip:alice@example.com", OWNER),
        ])  # fmt: skip
        assert two.take_over(CHAT) == (None, None)  # n1's lease runs
        assert not two.holds(CHAT)
        clock.now += TTL
        epoch, state = two.take_over(CHAT)
        assert epoch == 2 and state is not None and two.holds(CHAT)
        assert (state.name, state.domain, [m.uri for m in state.members]) == (
            "Chat", "Example.com", ["sip:alice@example.com"],
        )  # fmt: skip
        assert one.renew() == 0 and one.lost() == [CHAT] and not one.holds(CHAT)
        assert one.lost() == []
        epoch, state = two.take_over("nothing@example.com")  # not stored: no lease kept
        assert state is None and not two.holds("nothing@example.com")
        assert two.owner_of("nothing@example.com") is None


def test_load_bindings_since_reads_what_other_nodes_wrote_lately(db_url: str, tables: Tables) -> None:
    with tables.repository(db_url) as repository:
        repository.init_schema()
        now = time.time()
        repository.apply_batch([BindingSet("dave@example.com", "sip:dave@127.0.0.1:5070", now + 600, "c1", 1)])
        assert [b.aor for b in repository.load_bindings(now, since=now - 5)] == ["dave@example.com"]
        assert repository.load_bindings(now, since=now + 60) == []  # nothing written since
        assert repository.load_bindings(now + 601, since=now - 5) == []  # expired


async def test_requests_for_rooms_not_served_here_are_bounded_by_max_claims(
    db_url: str, tables: Tables
) -> None:
    # 30 requests at once for made-up rooms: each would take a lease (a transaction on the
    # store's thread) to find the room is not there. At most max_claims run; the rest get
    # 503 + Retry-After at once. Real rooms are still served afterwards.
    async with real_clock_node(db_url, tables, "n1", max_claims=2) as conf:
        assert (await conf.handle(say("imc-manager", "alice", "#create real"))).code == 200
        answers = []

        async def made_up(index: int) -> None:
            answers.append(await conf.handle(say(f"nosuch{index}", "mallory", "hello")))

        async with trio.open_nursery() as nursery:
            for index in range(30):
                nursery.start_soon(made_up, index)
        codes = sorted(answer.code for answer in answers)
        assert set(codes) == {404, 503} and codes.count(404) >= 2, codes
        assert all(a.retry_after == 1 for a in answers if a.code == 503)
        assert conf.claims_refused == codes.count(503)
        assert (await conf.handle(say("real", "alice", "hello"))).code == 202


async def test_lines_pipelined_through_another_node_are_forwarded_in_order(
    db_url: str, tables: Tables, mock_clock: trio.testing.MockClock
) -> None:
    # 40 lines offered at once to n2 (as its transport does, each read from the wire in
    # turn) for a room n1 holds: forwarded one at a time, in the order they came (tasks of
    # one batch would run in either order)
    clock = FakeClock()
    async with node(db_url, tables, clock, "n1") as one, node(db_url, tables, clock, "n2") as two:
        await make_chat(one)
        forwarded: list[bytes] = []

        async def forward(request_uri, sender, body, content_type, call_id, location):
            forwarded.append(body)
            return await one.handle(IncomingMessage(request_uri, sender, body, content_type, call_id, "n2"))

        two.forward = forward
        answers: list[int] = []
        all_in = trio.Event()

        def answered(code: int) -> None:
            answers.append(code)
            if len(answers) == 40:
                all_in.set()

        async def in_a_task(msg: IncomingMessage) -> None:  # what the transport does on False
            answered((await two.handle(msg)).code)

        async with trio.open_nursery() as nursery:
            for index in range(40):
                msg = say("chat", "bob", f"line {index}")
                if not two.start(msg, lambda answer: answered(answer.code)):
                    nursery.start_soon(in_a_task, msg)
            with trio.fail_after(30):  # safety net only
                await all_in.wait()
        assert answers == [202] * 40
        assert forwarded == [f"line {index}".encode() for index in range(40)]
        assert two._turns == {}  # nothing left queued


async def test_joins_at_once_to_a_room_not_there_yet_create_it_once(db_url: str, tables: Tables) -> None:
    # four #join at once for a room that does not exist yet, on a node (serve --workers N):
    # one creates it; the others wait for that and join it. Before, each request that came
    # while the creation was being committed took the lease over (epoch 2) and replaced the
    # room with what was stored, or created the room a second time: a 200 #join then 403 chat
    async with real_clock_node(db_url, tables, "n1") as conf:
        for round_ in range(5):
            room = f"race{round_}"
            codes: dict[str, int] = {}

            async def join(user: str, room: str = room, codes: dict[str, int] = codes) -> None:
                codes[user] = (await conf.handle(say(room, user, "#join"))).code

            async with trio.open_nursery() as nursery:
                for index in range(4):
                    nursery.start_soon(join, f"u{index}")
            assert sorted(codes.values()) == [200] * 4, codes
            state = conf.room(f"sip:{room}@example.com")
            assert state is not None
            assert sorted(m.uri for m in state.members) == [f"sip:u{i}@example.com" for i in range(4)]
            assert sum(1 for m in state.members if m.flags & OWNER) == 1
            for index in range(4):  # every member may chat
                assert (await conf.handle(say(room, f"u{index}", "hello"))).code == 202
        assert conf.leases is not None and conf.leases.statistics().taken_over == 0
        stored = await trio.to_thread.run_sync(conf.store.repository.load_rooms)
        owners = {s.name: sum(1 for m in s.members if m.flags & OWNER) for s in stored}
        assert owners == {f"race{i}": 1 for i in range(5)}


async def test_a_process_refused_as_a_running_node_leaves_that_node_its_rooms(
    db_url: str, tables: Tables
) -> None:
    # was: the refused process expired the running node's leases and retired its name on its
    # way out, so another node took the running node's rooms over (a tour, serve --workers 2
    # started twice on one database). The real clock: the refusal waits half a lease_ttl to
    # see the running node heartbeat, 0.5 s here.
    async with real_clock_node(db_url, tables, "n1", lease_ttl=1.0) as one:
        await make_chat(one)
        try:
            async with real_clock_node(db_url, tables, "n1", lease_ttl=1.0):
                raise AssertionError("a second n1 started beside the running one")
        except BaseException as exc:  # noqa: BLE001 - NodeInUse, maybe inside nurseries' groups
            refused = exc
        while isinstance(refused, BaseExceptionGroup) and len(refused.exceptions) == 1:
            refused = refused.exceptions[0]
        # (MySQL's named lock per node refuses it earlier, before any lease is looked at)
        assert isinstance(refused, NodeInUse | DatabaseInUse), repr(refused)
        assert one.store is not None
        read = await one.store.read(lambda repository: repository.cluster())
        assert read.owners == {CHAT: "n1"}  # its lease is still n1's, unexpired
        assert [node.name for node in read.nodes if node.live(read.now, 1.0)] == ["n1"]
        assert (await one.handle(say("chat", "carol", "#join"))).code == 200
