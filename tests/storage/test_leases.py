"""Room leases and fencing (issue 13) on SQLite, PostgreSQL and MySQL/MariaDB.

Every lease time comes from an injected clock (:class:`FakeClock`), so expiry needs no sleep:
the tests move the clock past a lease's end instead.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from functools import partial

import peewee
import pytest
import trio
import trio.testing

from imc_actors import Config, IncomingMessage, open_conference, open_server
from imc_actors.actors.leases import LeaseKeeper, NodeInUse
from imc_actors.imc.effects import (
    OWNER,
    BanDelete,
    BanSet,
    HistoryAppend,
    LimitSet,
    MemberUpsert,
    RoomDelete,
    RoomInfoSet,
    RoomUpsert,
)
from imc_actors.imc.state import Member, RoomState
from imc_actors.store.leases import Lease, room_of
from imc_actors.store.models import MAX_METRICS_BODY
from imc_actors.store.nodes import NodeInfo, RoomLocation
from imc_actors.store.repository import Fenced, Repository, StoreError, guarded
from imc_actors.store.writer import Store
from tests.storage.conftest import Tables

T0 = 1_800_000_000.0
TTL = 5.0


class FakeClock:
    """A wall clock the test moves by hand."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def nodes(db_url: str, tables: Tables, clock: FakeClock) -> Iterator[tuple[Repository, Repository]]:
    """Two nodes, ``n1`` and ``n2``, each with its own connection, sharing ``clock``."""
    one = tables.repository(db_url, node="n1", lease_ttl=TTL, clock=clock)
    two = tables.repository(db_url, node="n2", lease_ttl=TTL, clock=clock)
    one.init_schema()
    yield one, two
    one.close()
    two.close()


def archive_line(room: str, clock: FakeClock, text: str) -> HistoryAppend:
    """Alice's chat line ``text`` in ``room``'s archive, at the clock's time."""
    return HistoryAppend(room, "sip:alice@example.com", clock.now, "text/plain", text.encode(), 100)


def room_writes(name: str, owner: str = "sip:alice@example.com") -> list[object]:
    return [RoomUpsert(name, "example.com", 0), MemberUpsert(f"sip:{name}@example.com", owner, OWNER)]


# -- acquire, renew, expiry, takeover ------------------------------------------------------------


def test_acquire_renew_expiry_and_takeover_with_epochs(
    nodes: tuple[Repository, Repository], clock: FakeClock
) -> None:
    one, two = nodes
    assert one.acquire("Chat@Example.com") == 1  # keys compare in lower case
    assert one.owner_of("chat@example.com") == Lease("chat@example.com", "n1", 1, T0 + TTL)
    assert two.acquire("chat@example.com") is None  # held and not expired
    clock.now = T0 + 4
    assert one.renew() == 1
    clock.now = T0 + 8  # past the first expiry, not past the renewed one (T0 + 9)
    assert two.acquire("chat@example.com") is None
    assert one.owner_of("chat@example.com").live(clock.now)
    clock.now = T0 + 9  # expired now: taken over with the next epoch
    assert two.acquire("chat@example.com") == 2
    assert two.owner_of("chat@example.com") == Lease("chat@example.com", "n2", 2, T0 + 9 + TTL)
    assert one.acquire("chat@example.com") is None
    assert one.held == {} and two.held == {"chat@example.com": 2}
    assert two.acquire("chat@example.com") == 3  # its own owner may acquire again: a new epoch
    assert one.renew() == 0  # n1 holds nothing any more


def test_release_hands_the_leases_over_at_once(
    nodes: tuple[Repository, Repository], clock: FakeClock
) -> None:
    one, two = nodes
    assert [one.acquire(room) for room in ("a@x", "b@x")] == [1, 1]
    assert two.acquire("a@x") is None
    assert one.release() == 2
    assert one.held == {}
    assert not one.owner_of("a@x").live(clock.now)
    assert two.acquire("a@x") == 2  # no waiting for the TTL
    assert one.owner_of("nosuch@x") is None


def test_a_racing_pair_of_acquirers_has_exactly_one_winner(
    db_url: str, tables: Tables, nodes: tuple[Repository, Repository], clock: FakeClock
) -> None:
    """Two connections acquire the same rooms at the same moment, fresh and expired ones."""
    one, two = nodes
    rooms = [f"race{i}@x" for i in range(15)]
    with tables.repository(db_url, node="n0", lease_ttl=TTL, clock=clock) as stale:
        for room in rooms[::2]:  # every other room: held by a node that died, expired now
            assert stale.acquire(room) == 1
    clock.now = T0 + TTL
    results: dict[str, list[int | None]] = {"n1": [], "n2": []}
    barrier = threading.Barrier(2, timeout=60)

    def race(repository: Repository) -> None:
        for room in rooms:
            barrier.wait()
            results[repository.node or ""].append(repository.acquire(room))

    threads = [threading.Thread(target=race, args=(repo,)) for repo in (one, two)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    for index, room in enumerate(rooms):
        got = (results["n1"][index], results["n2"][index])
        winners = [epoch for epoch in got if epoch is not None]
        assert len(winners) == 1, (room, got)
        assert winners[0] == (2 if index % 2 == 0 else 1), (room, got)
        lease = one.owner_of(room)
        assert lease is not None and lease.epoch == winners[0]
        assert lease.node == ("n1" if got[0] is not None else "n2")


# -- fencing --------------------------------------------------------------------------------------


def test_a_write_for_a_room_taken_over_is_not_applied(
    nodes: tuple[Repository, Repository], clock: FakeClock
) -> None:
    one, two = nodes
    one.apply_batch(room_writes("lobby"))  # a new room: its first lease is taken by the write
    assert one.held == {"lobby@example.com": 1}
    before = one.load_rooms()
    clock.now = T0 + TTL  # n1 stopped renewing; n2 takes the room over
    assert two.acquire("lobby@example.com") == 2
    with pytest.raises(Fenced) as raised:
        one.apply_batch([MemberUpsert("sip:lobby@example.com", "sip:bob@example.com", 0)])
    assert raised.value.rooms == frozenset({"lobby@example.com"})
    assert "n1" in str(raised.value) and "lobby@example.com" in str(raised.value)
    assert raised.value.retry_after == 5
    assert one.load_rooms() == before  # nothing of it was written
    two.apply_batch([MemberUpsert("sip:lobby@example.com", "sip:bob@example.com", 0)])  # the owner may
    assert [m.uri for m in one.load_rooms()[0].members] == [
        "sip:alice@example.com", "sip:bob@example.com",
    ]  # fmt: skip


def test_a_room_taken_back_numbers_its_archive_after_the_other_nodes_lines(
    nodes: tuple[Repository, Repository], clock: FakeClock
) -> None:
    # n1 archives lines 1-3, n2 takes the room over and archives 4-5, n1 takes it back: its
    # next line is 6 (it read the archive again), not 4 again (a duplicate key: a 500).
    one, two = nodes
    room = "sip:back@example.com"
    line = partial(archive_line, room, clock)

    one.apply_batch([*room_writes("back"), line("1"), line("2"), line("3")])
    clock.now = T0 + TTL
    assert two.acquire("back@example.com") == 2
    two.apply_batch([line("4"), line("5")])
    clock.now = T0 + 2 * TTL
    assert one.lost() == ["back@example.com"]
    assert one.acquire("back@example.com") == 3
    one.apply_batch([line("6")])
    assert [(h.seq, h.body) for h in one.load_history(room, 10)] == [
        (n, str(n).encode()) for n in range(1, 7)
    ]
    # the same when n1 never noticed the loss before taking the room back
    clock.now = T0 + 3 * TTL
    assert two.acquire("back@example.com") == 4
    two.apply_batch([line("7")])
    clock.now = T0 + 4 * TTL
    assert one.acquire("back@example.com") == 5
    one.apply_batch([line("8")])
    assert [h.seq for h in one.load_history(room, 10)] == list(range(1, 9))


def test_a_stale_owners_archive_line_that_meets_the_new_owners_is_fenced_not_a_500(
    nodes: tuple[Repository, Repository], clock: FakeClock
) -> None:
    # a tour: an owner SIGSTOPped past its lease came back and archived a line under the seq
    # the new owner had used meanwhile: the unique key broke before the fence was checked,
    # an IntegrityError (ERROR logged, 500 to the client) instead of Fenced (forwarded, 503)
    one, two = nodes
    room = "sip:flap@example.com"
    line = partial(archive_line, room, clock)

    one.apply_batch([*room_writes("flap"), line("1")])
    clock.now = T0 + TTL  # n1 paused: n2 takes the room and archives line 2
    assert two.acquire("flap@example.com") == 2
    two.apply_batch([line("2")])
    with pytest.raises(Fenced) as raised:  # n1 resumes, its next seq is 2 as well
        one.apply_batch([line("late")])
    assert raised.value.rooms == frozenset({"flap@example.com"})
    assert [(h.seq, h.body) for h in two.load_history(room, 10)] == [(1, b"1"), (2, b"2")]


class DirectStore:
    """What LeaseKeeper reads through, run in the test's own thread (no writer thread, so an
    autojump clock moves only when the test's tasks wait)."""

    def __init__(self, repository: Repository) -> None:
        self.repository = repository

    async def read(self, fn):  # type: ignore[no-untyped-def]
        await trio.lowlevel.checkpoint()
        return fn(self.repository)


async def test_a_second_process_with_a_running_nodes_name_is_refused(
    db_url: str, tables: Tables, clock: FakeClock, autojump_clock: trio.testing.MockClock
) -> None:
    running = tables.repository(db_url, node="n1", lease_ttl=TTL, clock=clock)
    starting = tables.repository(db_url, node="n1", lease_ttl=TTL, clock=clock)
    running.init_schema()
    keeper = LeaseKeeper(DirectStore(starting), TTL)
    try:
        await keeper.ensure_alone()  # never heartbeat: nothing to wait for
        running.heartbeat(["udp:127.0.0.2:5060"])
        clock.now += 1.0

        async def renewing() -> None:  # the running process's next round, within one period
            await trio.sleep(TTL / 4)
            clock.now += TTL / 4
            running.heartbeat(["udp:127.0.0.2:5060"])

        async with trio.open_nursery() as nursery:
            nursery.start_soon(renewing)
            with pytest.raises(NodeInUse) as refused:
                await keeper.ensure_alone()
        assert "'n1' is already running" in str(refused.value) and "udp:127.0.0.2:5060" in str(refused.value)
        assert starting.held == {}  # it took none of the running node's leases
        # killed (no more heartbeats): a restart waits half a lease_ttl, then goes on
        started = trio.current_time()
        await keeper.ensure_alone()
        assert trio.current_time() - started == pytest.approx(TTL / 2)
        clock.now += TTL  # a heartbeat older than lease_ttl: no wait at all
        started = trio.current_time()
        await keeper.ensure_alone()
        assert trio.current_time() == started
        running.release()  # a clean shutdown retires the node: no wait either
        clock.now -= TTL
        await keeper.ensure_alone()
        assert trio.current_time() == started
    finally:
        running.close()
        starting.close()


def test_a_room_whose_lease_another_node_holds_cannot_be_written_at_all(
    nodes: tuple[Repository, Repository],
) -> None:
    one, two = nodes
    assert two.acquire("taken@example.com") == 1
    with pytest.raises(Fenced):
        one.apply_batch(room_writes("taken"))  # no lease of its own, and the row is n2's
    assert one.load_rooms() == []
    one.apply_batch([RoomUpsert("free", "example.com", 0)])  # writes without a room are free
    assert one.held == {"free@example.com": 1}


def test_a_destroyed_room_forgets_its_lease(nodes: tuple[Repository, Repository]) -> None:
    one, two = nodes
    one.apply_batch(room_writes("gone"))
    one.apply_batch([RoomDelete("gone", "example.com")])
    assert one.held == {} and one.owner_of("gone@example.com") is None
    two.apply_batch(room_writes("gone", "sip:bob@example.com"))  # a new room of that name
    assert two.owner_of("gone@example.com").node == "n2"


def test_without_a_node_nothing_is_fenced_and_no_lease_is_written(
    db_url: str, tables: Tables, raw_db: peewee.Database
) -> None:
    with tables.repository(db_url) as repository:
        repository.init_schema()
        repository.apply_batch(room_writes("plain"))
        assert [room.key for room in repository.load_rooms()] == ["plain@example.com"]
    left, right = raw_db.quote[0], raw_db.quote[-1]
    count = raw_db.execute_sql(f"SELECT COUNT(*) FROM {left}{tables.leases}{right}").fetchone()
    assert int(count[0]) == 0


def test_db_check_names_a_lease_table_without_its_epoch(
    nodes: tuple[Repository, Repository], raw_db: peewee.Database, tables: Tables
) -> None:
    one, _ = nodes
    left, right = raw_db.quote[0], raw_db.quote[-1]
    raw_db.execute_sql(f"DROP TABLE {left}{tables.nodes}{right}")
    raw_db.execute_sql(f"ALTER TABLE {left}{tables.leases}{right} DROP COLUMN epoch")
    assert one.check_schema() == [
        f"table {tables.leases} has no column epoch",
        f"table {tables.nodes} is missing (imc-actors db init creates it)",
    ]
    # and serve does not start on it (a tour: it listened, then answered every room 503 with
    # a WARNING per request); init_schema makes the missing table, not the missing column
    from imc_actors.conference import open_repository

    with pytest.raises(StoreError) as refused:
        open_repository(conference_config(one.url, tables, "n1"))
    assert str(refused.value) == (
        f"the database's tables do not fit: table {tables.leases} has no column epoch"
    )


async def test_a_fenced_room_does_not_fail_the_other_rooms_of_its_batch(
    nodes: tuple[Repository, Repository], clock: FakeClock
) -> None:
    one, two = nodes
    for name in ("a", "b", "c"):
        one.apply_batch(room_writes(name))
    clock.now = T0 + TTL
    assert two.acquire("b@example.com") == 2
    store = Store(one)
    outcomes: dict[str, BaseException | None] = {}

    async def join(name: str) -> None:
        try:
            await store.commit([MemberUpsert(f"sip:{name}@example.com", "sip:bob@example.com", 0)])
        except Exception as exc:  # noqa: BLE001 - recorded and checked below
            outcomes[name] = exc
        else:
            outcomes[name] = None

    async with trio.open_nursery() as writer:
        async with trio.open_nursery() as joins:
            for name in ("a", "b", "c"):  # queued before the writer runs: one batch
                joins.start_soon(join, name)
            await trio.testing.wait_all_tasks_blocked()
            await writer.start(store.run)
        writer.cancel_scope.cancel()
    assert outcomes["a"] is None and outcomes["c"] is None
    assert isinstance(outcomes["b"], Fenced) and outcomes["b"].rooms == {"b@example.com"}
    assert store.statistics().batches == 1 and store.statistics().available
    members = {room.key: [m.uri for m in room.members] for room in one.load_rooms()}
    assert members == {
        "a@example.com": ["sip:alice@example.com", "sip:bob@example.com"],
        "b@example.com": ["sip:alice@example.com"],
        "c@example.com": ["sip:alice@example.com", "sip:bob@example.com"],
    }


def test_room_of_names_the_room_of_each_room_write() -> None:
    assert room_of(RoomUpsert("Chat", "Example.com", 0)) == "chat@example.com"
    assert room_of(MemberUpsert("sip:Chat@example.com", "sip:a@b", 0)) == "chat@example.com"
    # a room's bans and member limit are fenced with it
    assert room_of(BanSet("sip:Chat@example.com", "a@b")) == "chat@example.com"
    assert room_of(BanDelete("sip:Chat@example.com", "a@b")) == "chat@example.com"
    assert room_of(LimitSet("sip:Chat@example.com", 5)) == "chat@example.com"
    # and so are its archive and its topic
    assert room_of(HistoryAppend("sip:chat@example.com", "sip:a@b", 0.0, None, b"hi", 10)) == (
        "chat@example.com"
    )
    assert room_of(RoomInfoSet("sip:chat@example.com", "", "", None, None)) == "chat@example.com"
    assert room_of(RoomState("x", "y", 0, (Member("sip:a@b"),))) is None


# -- a conference with a node name ----------------------------------------------------------------


def conference_config(db_url: str, tables: Tables, node: str) -> Config:
    return Config(
        db_url=db_url, domains=["example.com"], node=node, lease_ttl=TTL,
        rooms_table=tables.rooms, members_table=tables.members, pending_table=tables.pending,
        location_table=tables.location, lease_table=tables.leases, node_table=tables.nodes,
        subscriber_table=tables.subscriber, secret_table=tables.secret, bans_table=tables.bans,
        limits_table=tables.limits, history_table=tables.history, room_info_table=tables.room_info,
        metrics_table=tables.metrics,
    )  # fmt: skip


def say(room: str, user: str, body: str) -> IncomingMessage:
    return IncomingMessage(f"sip:{room}@example.com", f"sip:{user}@example.com", body.encode())


async def test_a_node_starting_beside_another_counts_only_the_rooms_it_holds(
    db_url: str, tables: Tables
) -> None:
    # a tour: a node restarted while the other held 3 rooms showed imc_rooms 3 (sum() over
    # the cluster counted them twice) and refused #create with "too many rooms" at max_rooms 3
    from dataclasses import replace

    one = conference_config(db_url, tables, "n1")
    async with open_conference(one) as first:
        for name in ("a", "b"):
            assert (await first.handle(say("imc-manager", "alice", f"#create {name}"))).code == 200
        two = replace(conference_config(db_url, tables, "n2"), max_rooms=2)
        async with open_conference(two) as second:
            assert second.supervisor.statistics().rooms == 0 and second.rooms() == []
            created = await second.handle(say("imc-manager", "bob", "#create c"))
            assert created.code == 200  # its first room: a and b are n1's
            assert second.supervisor.statistics().rooms == 1
            assert first.supervisor.statistics().rooms == 2


async def test_a_node_on_other_room_tables_beside_a_running_node_is_refused(
    db_url: str, tables: Tables
) -> None:
    # a tour: node c started with --rooms-table imc_rooms2 on the cluster's lease and node
    # tables; only a WARNING said anything, and a private room of c's was later recreated
    # on a as a public one with the owners mixed
    from dataclasses import replace

    from imc_actors.store.instance import DatabaseInUse
    from tests.storage.conftest import drop_tables, new_tables

    other = replace(new_tables(), leases=tables.leases, nodes=tables.nodes)
    try:
        async with open_conference(conference_config(db_url, tables, "n1")) as first:
            assert (await first.handle(say("imc-manager", "alice", "#create a"))).code == 200
            with pytest.raises(BaseExceptionGroup) as raised:
                async with open_conference(conference_config(db_url, other, "n2")):
                    pass
            refused = raised.value
            while isinstance(refused, BaseExceptionGroup):  # (out of the conference's nurseries)
                (refused,) = refused.exceptions
            assert isinstance(refused, DatabaseInUse)  # serve: "cannot start: ...", exit 1
            assert str(refused) == (
                f"node 'n1' serves rooms that are not in this node's rooms table {other.rooms} "
                "(such as a@example.com): the nodes of a cluster must use the same room tables "
                "(rooms_table, members_table and the others) on the same lease_table"
            )
            async with open_conference(conference_config(db_url, tables, "n3")) as third:
                assert third.rooms() == []  # the same tables: a node beside n1, as always
    finally:
        drop_tables(db_url, replace(other, leases="unused_l", nodes="unused_n"))


async def test_a_conference_holds_its_rooms_leases_and_is_fenced_once_they_are_taken(
    db_url: str, tables: Tables, clock: FakeClock
) -> None:
    config = conference_config(db_url, tables, "n1")  # on the real wall clock
    clock.now = time.time()
    async with open_conference(config) as conf:
        for name in ("a", "b"):
            assert (await conf.handle(say("imc-manager", "alice", f"#create {name}"))).code == 200
        assert conf.leases is not None and conf.leases.statistics().held == 2
    with tables.repository(db_url, node="n2", lease_ttl=TTL, clock=clock) as other:
        for room in ("a@example.com", "b@example.com"):  # released at the clean shutdown
            lease = other.owner_of(room)
            assert lease is not None and (lease.node, lease.epoch) == ("n1", 1)
            assert not lease.live(other.now())
        async with open_conference(config) as conf:  # takes its stored rooms back at startup
            assert other.acquire("a@example.com") is None
            clock.now = 10 * T0  # n1's leases are long expired on n2's clock
            assert other.acquire("a@example.com") == 3  # taken over from n1 (epoch 2)
            with conf.subscribe("sip:bob@example.com") as bob:
                refused = await conf.handle(say("a", "bob", "#join"))
                assert (refused.code, refused.retry_after) == (503, 5)
                told = await bob.receive()
            assert told.notice.body == b"*** Room is held by another node now; try again in 5 seconds"
            assert told.notice.sender == "sip:a@example.com"
            assert (await conf.handle(say("b", "bob", "#join"))).code == 200
            # not served from this node's memory either (n2 holds the room: no stale reads), and
            # with the archive on a chat line is a write too
            assert (await conf.handle(say("a", "alice", "hello"))).code == 503
        members = {room.key: [m.uri for m in room.members] for room in other.load_rooms()}
        assert members == {
            "a@example.com": ["sip:alice@example.com"],
            "b@example.com": ["sip:alice@example.com", "sip:bob@example.com"],
        }
        assert other.owner_of("a@example.com").node == "n2"  # n1's release left n2's lease alone


# -- the node registry and where a room lives (issue 13 item 2) -----------------------------------


def test_heartbeats_record_each_node_and_locate_finds_a_rooms_owner(
    db_url: str, tables: Tables, nodes: tuple[Repository, Repository], clock: FakeClock
) -> None:
    one, two = nodes
    assert one.nodes() == []
    one.heartbeat(["udp:10.0.0.1:5060", "tcp:10.0.0.1:5060"])
    clock.now = T0 + 1
    two.heartbeat(["udp:10.0.0.2:5060"])
    one.heartbeat(["udp:10.0.0.1:5070"])  # a second beat replaces the row
    assert one.nodes() == [
        NodeInfo("n1", ("udp:10.0.0.1:5070",), T0 + 1),
        NodeInfo("n2", ("udp:10.0.0.2:5060",), T0 + 1),
    ]
    assert not NodeInfo("n1", (), T0).live(T0 + TTL, TTL)
    assert two.locate("chat@example.com") is None  # nobody holds it: anyone may acquire it
    assert two.acquire("chat@example.com") == 1
    assert one.locate("Chat@Example.com") == RoomLocation(
        "chat@example.com", "n2", 1, ("udp:10.0.0.2:5060",)
    )
    clock.now = T0 + 1 + TTL  # the lease expired: the room lives nowhere now
    assert one.locate("chat@example.com") is None
    with tables.repository(db_url, node="n3", clock=clock) as three:
        assert three.acquire("other@example.com") == 1  # a node that never heartbeat
        assert one.locate("other@example.com") == RoomLocation("other@example.com", "n3", 1, ())


async def test_a_paused_node_that_finds_its_name_taken_by_another_process_stops(
    db_url: str, tables: Tables, clock: FakeClock
) -> None:
    # a tour: n1 SIGSTOPped past lease_ttl, a replacement started as n1 elsewhere, then the
    # old one was resumed: both ran on, the node row's address flipping between them, and
    # every other request forwarded by either got 403 Not Forwarded By A Known Node
    from imc_actors.store.instance import LockLost

    paused = tables.repository(db_url, node="n1", lease_ttl=TTL, clock=clock)
    replacement = tables.repository(db_url, node="n1", lease_ttl=TTL, clock=clock)
    paused.init_schema()
    try:
        paused.heartbeat(["udp:127.0.0.2:5060"])
        clock.now += 1.0
        paused.heartbeat(["udp:127.0.0.2:5060"])  # its own row as it left it: goes on
        clock.now += 2 * TTL  # paused; the replacement starts and beats
        replacement.heartbeat(["udp:127.0.0.4:5060"])
        keeper = LeaseKeeper(DirectStore(paused), TTL)
        with pytest.raises(LockLost) as stopped:  # resumed: its next round ends it
            await keeper.round()
        assert str(stopped.value) == (
            "another process runs as node 'n1' (it heartbeat from udp:127.0.0.4:5060): "
            "stopping, so that no room is served twice"
        )
        assert [n.addresses for n in replacement.nodes()] == [("udp:127.0.0.4:5060",)]
        clock.now += 1.0
        replacement.heartbeat(["udp:127.0.0.4:5060"])  # the replacement goes on
    finally:
        paused.close()
        replacement.close()


async def test_a_server_with_a_node_name_advertises_its_bound_addresses(
    db_url: str, tables: Tables
) -> None:
    config = conference_config(db_url, tables, "n1").replace(listen=["udp:127.0.0.81:0"])
    async with open_server(config) as server:
        (address,) = server.addresses
        assert address.port != 0
        with tables.repository(db_url) as reader:
            (node,) = reader.nodes()
    assert (node.name, node.addresses) == ("n1", (str(address),))
    assert node.live(time.time(), TTL)


async def test_the_leases_show_in_the_metrics(db_url: str, tables: Tables) -> None:
    config = conference_config(db_url, tables, "n1").replace(listen=["udp:127.0.0.81:0"])
    async with open_server(config) as server:
        await server.conference.handle(say("imc-manager", "alice", "#create m"))
        text = server.metrics.exposition().decode()
    assert 'imc_leases_held{node="n1"} 1.0' in text
    assert 'imc_lease_renew_failures_total{node="n1"} 0.0' in text
    assert 'imc_leases_not_acquired{node="n1"} 0.0' in text
    assert 'imc_leases_taken_over_total{node="n1"} 0.0' in text
    assert 'imc_leases_lost_total{node="n1"} 0.0' in text
    assert 'imc_forwarded_messages_total{node="n1"} 0.0' in text


def test_writes_racing_a_takeover_are_either_stored_or_fenced_never_both(
    nodes: tuple[Repository, Repository], clock: FakeClock
) -> None:
    """n1 keeps writing for a room while n2 takes it over: every write n1 was told succeeded
    is stored, no refused one is, every write n1 began after the takeover is refused, and
    nothing of n1 commits after the takeover (the fence's row lock makes the takeover wait)."""
    one, two = nodes
    one.apply_batch(room_writes("hot"))
    clock.now = T0 + TTL  # n1's lease has run out; n2 may take the room over
    ready, taken = threading.Event(), threading.Event()
    stored: list[int] = []
    refused: list[int] = []
    began_after: list[int] = []

    def writer() -> None:
        for i in range(100_000):
            if i == 10:
                ready.set()
            if i > 10:  # leave the other connection gaps (SQLite's busy handler polls)
                taken.wait(0.001)
            if taken.is_set():
                if len(began_after) == 5:
                    return
                began_after.append(i)
            try:
                one.apply_batch([MemberUpsert("sip:hot@example.com", f"sip:u{i}@example.com", 0)])
            except Fenced:
                refused.append(i)
            else:
                stored.append(i)
        ready.set()

    thread = threading.Thread(target=writer)
    thread.start()
    assert ready.wait(60)
    assert two.acquire("hot@example.com") == 2
    at_takeover = two.load_rooms()  # what the new owner starts from
    taken.set()
    thread.join(120)
    assert began_after and set(began_after) <= set(refused)
    (room,) = one.load_rooms()
    assert [room] == at_takeover  # nothing of n1 was committed after the takeover
    users = {m.uri for m in room.members} - {"sip:alice@example.com"}
    assert users == {f"sip:u{i}@example.com" for i in stored}
    assert len(stored) >= 10


class PauseAtCommit:
    """A CommitGuard that stops the write transaction right before COMMIT (after the fence)."""

    def __init__(self) -> None:
        self.reached = threading.Event()
        self.go = threading.Event()

    def check(self) -> None:
        pass

    def committing(self) -> None:
        self.reached.set()
        assert self.go.wait(60)


def test_a_takeover_waits_for_a_write_transaction_that_passed_the_fence(
    db_url: str, tables: Tables, nodes: tuple[Repository, Repository], clock: FakeClock
) -> None:
    """The fence's read locks the lease row until COMMIT: a takeover cannot slip in between
    the check and the commit (it runs into its lock timeout instead), so the new owner
    always starts from a state that holds every write the old owner committed."""
    one, _ = nodes
    one.apply_batch(room_writes("held"))
    clock.now = T0 + TTL  # expired: only the open transaction stands in the way
    pause = PauseAtCommit()
    errors: list[BaseException] = []

    def write() -> None:
        try:
            with guarded(pause):
                one.apply_batch([MemberUpsert("sip:held@example.com", "sip:bob@example.com", 0)])
        except BaseException as exc:  # noqa: BLE001 - checked below
            errors.append(exc)

    thread = threading.Thread(target=write)
    thread.start()
    try:
        assert pause.reached.wait(60)
        with tables.repository(db_url, node="n2", clock=clock, lock_timeout=1) as taker:
            with pytest.raises(StoreError):
                taker.acquire("held@example.com")
            pause.go.set()
            thread.join(60)
            assert errors == []
            assert taker.acquire("held@example.com") == 2
            (room,) = taker.load_rooms()
    finally:
        pause.go.set()
        thread.join(60)
    assert [m.uri for m in room.members] == ["sip:alice@example.com", "sip:bob@example.com"]


def test_acquire_all_takes_what_is_free_or_expired_in_few_transactions(
    nodes: tuple[Repository, Repository], clock: FakeClock
) -> None:
    one, two = nodes
    assert two.acquire("held@x") == 1
    clock.now = T0 + 1
    assert two.acquire("fresh@x") == 1
    clock.now = T0 + TTL  # held@x expired, fresh@x (until T0 + 1 + TTL) not
    rooms = ["held@x", "fresh@x", *(f"r{i}@x" for i in range(1200))]  # three transactions
    got = one.acquire_all(rooms)
    assert got["held@x"] == 2 and got["fresh@x"] is None
    assert all(got[f"r{i}@x"] == 1 for i in range(1200))
    assert one.lease_count == 1201 and "fresh@x" not in one.held


def test_each_node_keeps_one_metrics_row_and_reads_the_others_fresh_ones(
    nodes: tuple[Repository, Repository], clock: FakeClock
) -> None:
    one, two = nodes
    one.share_metrics('[["imc_rooms"]]')
    clock.now = T0 + 10
    one.share_metrics("[]")  # replaces its row: one per node, however long it runs
    two.share_metrics("[1]")
    assert two.peer_metrics(T0) == [("n1", T0 + 10, "[]")]
    assert one.peer_metrics(T0) == [("n2", T0 + 10, "[1]")]
    assert one.peer_metrics(T0 + 11) == []  # older than asked for: left out
    with pytest.raises(ValueError, match="at most"):
        one.share_metrics("x" * (MAX_METRICS_BODY + 1))
    assert two.peer_metrics(T0) == [("n1", T0 + 10, "[]")]


def test_the_cluster_read_has_every_room_the_live_leases_and_the_nodes(
    nodes: tuple[Repository, Repository], clock: FakeClock
) -> None:
    one, two = nodes
    one.apply_batch([RoomUpsert("a", "example.com", 0), RoomUpsert("b", "example.com", 0)])
    one.heartbeat(["udp:10.0.0.1:5060"])
    found = two.cluster()
    assert [room.key for room in found.rooms] == ["a@example.com", "b@example.com"]
    assert found.owners == {"a@example.com": "n1", "b@example.com": "n1"}  # created: leased
    assert [node.name for node in found.nodes] == ["n1"]
    assert found.now == T0
    clock.now = T0 + TTL  # every lease expired: the rooms are nobody's now
    assert two.cluster().owners == {}
    assert two.acquire("b@example.com") == 2
    assert two.cluster().owners == {"b@example.com": "n2"}


async def test_a_conference_shows_the_whole_cluster_reading_it_once_per_cluster_view_age(
    db_url: str, tables: Tables, clock: FakeClock
) -> None:
    config = conference_config(db_url, tables, "n1").replace(cluster_view_age=60.0)
    clock.now = time.time()
    async with open_conference(config) as conf:
        assert (await conf.handle(say("imc-manager", "alice", "#create a"))).code == 200
        with tables.repository(db_url, node="n2", lease_ttl=TTL, clock=clock) as other:
            other.apply_batch([RoomUpsert("z", "example.com", 0)])  # n2's room, leased by n2
            assert conf.room("sip:z@example.com") is None  # not in n1's memory
            views = []
            async with trio.open_nursery() as nursery:  # two callers at once: one read
                for _ in range(2):
                    nursery.start_soon(lambda: _append(views, conf.snapshot()))
            assert conf.cluster is not None and conf.cluster.reads == 1
            for view in views:
                assert [room.key for room in view.rooms()] == ["a@example.com", "z@example.com"]
                assert view.owner(view.room("sip:Z@example.com")) == "n2"
                assert view.owner(view.room("sip:a@example.com")) == "n1"
            other.apply_batch([RoomUpsert("y", "example.com", 0)])
            assert "y@example.com" not in [r.key for r in (await conf.snapshot()).rooms()]  # cached
            assert conf.cluster.reads == 1
            answer = await conf.administer("sip:z@example.com", "destroy")  # not n1's to write
            assert (answer.code, answer.retry_after) == (503, 5)
            assert answer.body == b"*** Room is held by node n2; send the request to that node"
            assert other.load_room("z@example.com") is not None


async def test_rooms_says_when_it_lists_this_nodes_rooms_only(db_url: str, tables: Tables) -> None:
    # a tour: during a database outage #rooms on a node that serves no room answered an
    # empty "Rooms:", which reads as "the cluster has no rooms"
    from imc_actors.imc import texts

    async with open_conference(conference_config(db_url, tables, "n1")) as conf:
        assert (await conf.handle(say("imc-manager", "alice", "#create a"))).code == 200
        assert conf.cluster is not None

        async def down() -> None:
            raise StoreError("the database is unavailable")

        conf.cluster.read = down  # type: ignore[method-assign]
        with conf.subscribe("sip:alice@example.com") as alice:
            assert (await conf.handle(say("imc-manager", "alice", "#rooms"))).code == 200
            told = [(await alice.receive()).notice.body for _ in range(2)]
        assert told == [b"Rooms:\n[a]", texts.ROOMS_THIS_NODE_ONLY.encode()]


async def _append(into: list, awaitable) -> None:
    into.append(await awaitable)
