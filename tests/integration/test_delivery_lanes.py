"""Delivery: per-member order, isolation, holds and store-and-forward on a real SQLite store."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
import trio.testing

from imc_actors.actors.delivery import HOLD_LIMIT, RECOUNT_INTERVAL, Delivery, DeliveryResult
from imc_actors.imc.effects import Notice
from imc_actors.store.repository import Repository
from imc_actors.store.writer import Store

ROOM = "sip:chat@example.com"
ALICE, BOB, CAROL = "sip:alice@example.com", "sip:bob@example.com", "sip:carol@example.com"


def relay(to: str, text: str) -> Notice:
    return Notice(to, text.encode(), ROOM, "relay", keep=True)


class Member:
    """How one recipient answers: a code, or (``gate`` set) not before the gate opens."""

    def __init__(self, code: int = 200) -> None:
        self.code = code
        self.gate: trio.Event | None = None


class Sender:
    """A sender that records every attempt and answers as each recipient's :class:`Member` says."""

    def __init__(self) -> None:
        self.members: dict[str, Member] = {}
        self.attempts: list[tuple[str, bytes, float | None]] = []
        self.in_flight: dict[str, int] = {}
        self.most_in_flight: dict[str, int] = {}

    def member(self, uri: str) -> Member:
        return self.members.setdefault(uri, Member())

    def bodies(self, uri: str, code: int | None = None) -> list[bytes]:
        return [body for to, body, _ in self.attempts if to == uri]

    async def __call__(self, notice: Notice, in_reply_to: str) -> DeliveryResult:
        member = self.member(notice.to)
        self.attempts.append((notice.to, notice.body, notice.date))
        self.in_flight[notice.to] = self.in_flight.get(notice.to, 0) + 1
        self.most_in_flight[notice.to] = max(
            self.most_in_flight.get(notice.to, 0), self.in_flight[notice.to]
        )
        try:
            if member.gate is not None:
                await member.gate.wait()
            await trio.lowlevel.checkpoint()
            return DeliveryResult(member.code, "scripted")
        finally:
            self.in_flight[notice.to] -= 1


@pytest.fixture
async def store(tmp_path: Path, nursery: trio.Nursery) -> Store:
    repository = Repository(f"sqlite:///{tmp_path / 'imc.db'}")
    repository.init_schema()
    store = Store(repository)
    await nursery.start(store.run)
    return store


def make(sender: Sender, store: Store | None, **kwargs: object) -> Delivery:
    return Delivery(sender, store=store, **kwargs)  # type: ignore[arg-type]


async def started(nursery: trio.Nursery, delivery: Delivery) -> Delivery:
    await delivery.restore()
    await nursery.start(delivery.run)
    return delivery


async def test_one_member_gets_its_notices_one_at_a_time_in_order(nursery, store) -> None:
    sender = Sender()
    delivery = await started(nursery, make(sender, store))
    await delivery.submit([relay(ALICE, f"line {i}") for i in range(20)], "cid")
    await delivery.drain()
    assert sender.bodies(ALICE) == [f"line {i}".encode() for i in range(20)]
    assert sender.most_in_flight[ALICE] == 1


async def test_a_window_lets_several_go_but_never_more(nursery, store) -> None:
    sender = Sender()
    gate = sender.member(ALICE).gate = trio.Event()
    delivery = await started(nursery, make(sender, store, window=3))
    await delivery.submit([relay(ALICE, f"line {i}") for i in range(10)], "cid")
    await trio.testing.wait_all_tasks_blocked()
    assert sorted(sender.bodies(ALICE)) == [b"line 0", b"line 1", b"line 2"]  # (tasks: any order)
    gate.set()
    await delivery.drain()
    assert sorted(sender.bodies(ALICE)) == sorted(f"line {i}".encode() for i in range(10))
    assert sender.most_in_flight[ALICE] == 3


async def test_a_dead_member_delays_only_itself(nursery, store) -> None:
    sender = Sender()
    dead = sender.member(ALICE)
    dead.gate = trio.Event()  # never answers while the test runs
    delivery = await started(nursery, make(sender, store))
    for i in range(50):
        await delivery.submit([relay(ALICE, f"line {i}"), relay(BOB, f"line {i}")], "cid")
    await trio.testing.wait_all_tasks_blocked()
    assert sender.bodies(BOB) == [f"line {i}".encode() for i in range(50)]
    assert sender.bodies(ALICE) == [b"line 0"]  # the rest wait behind it, in alice's lane only
    stats = delivery.statistics()
    assert (stats.in_flight, stats.queued, stats.ok) == (1, 49, 50)


async def test_unreachable_member_gets_everything_in_order_when_back(nursery, store) -> None:
    sender = Sender()
    sender.member(ALICE).code = 480
    delivery = await started(nursery, make(sender, store))
    await delivery.submit([relay(ALICE, "one"), relay(BOB, "one")], "cid-1")
    await delivery.drain()
    await delivery.submit(
        [relay(ALICE, "two"), Notice(ALICE, b"*** joined", ROOM, keep=True)], "cid-2"
    )
    await delivery.drain()
    assert sender.bodies(ALICE) == [b"one"]  # tried once; the rest is stored behind it
    stats = delivery.statistics()
    assert (stats.stored, stats.pending, stats.waiting_members, stats.failed) == (3, 3, 1, 0)

    sender.member(ALICE).code = 200
    delivery.wake("sip:Alice@example.com")
    await delivery.drain()
    later = [(body, date) for to, body, date in sender.attempts[2:] if to == ALICE]
    assert [body for body, _ in later] == [b"one", b"two", b"*** joined"]
    assert all(date is not None for _, date in later)  # sent with the original time
    assert delivery.statistics().pending == 0 and delivery.statistics().flushed == 3
    await delivery.submit([relay(ALICE, "three")], "cid-3")  # direct again
    await delivery.drain()
    assert sender.attempts[-1][1:] == (b"three", None)


async def test_refusals_replies_and_invitations_are_not_stored(nursery, store) -> None:
    sender = Sender()
    sender.member(ALICE).code = 403
    sender.member(BOB).code = 480
    outcomes: list[tuple[str, int]] = []
    delivery = make(sender, store, on_outcome=lambda n, r, res: outcomes.append((n.to, res.code)))
    await started(nursery, delivery)
    await delivery.submit([relay(ALICE, "no"), Notice(BOB, b"Members: ...", ROOM, "reply")], "c")
    await delivery.drain()
    assert sorted(outcomes) == [(ALICE, 403), (BOB, 480)]
    assert delivery.statistics().stored == 0
    await delivery.submit([relay(BOB, "kept")], "c")  # parks bob's lane
    await delivery.drain()
    invitation = Notice(BOB, b"*** invites you", ROOM, invite_of=BOB)
    await delivery.submit([invitation], "c")
    assert outcomes[-1] == (BOB, 480)  # refused at once: the room withdraws it
    assert delivery.statistics().stored == 1


async def test_stored_notices_survive_a_restart(nursery, store) -> None:
    sender = Sender()
    sender.member(ALICE).code = 503
    first = await started(nursery, make(sender, store))
    await first.submit([relay(ALICE, f"line {i}") for i in range(3)], "cid")
    await first.drain()
    assert first.statistics().pending == 3

    sender.member(ALICE).code = 200
    second = await started(nursery, make(sender, store))  # the same store: as after a restart
    assert second.statistics().pending == 3
    await second.submit([relay(ALICE, "after restart")], "cid")  # waits behind the stored ones
    await second.drain()
    second.wake(ALICE)
    await second.drain()
    assert sender.bodies(ALICE)[-4:] == [b"line 0", b"line 1", b"line 2", b"after restart"]


async def test_pending_max_drops_the_oldest_and_counts(nursery, store) -> None:
    sender = Sender()
    sender.member(ALICE).code = 408
    delivery = await started(nursery, make(sender, store, pending_max=3))
    await delivery.submit([relay(ALICE, f"line {i}") for i in range(5)], "cid")
    await delivery.drain()
    stats = delivery.statistics()
    assert (stats.stored, stats.dropped, stats.pending) == (5, 2, 3)
    sender.member(ALICE).code = 200
    delivery.wake(ALICE)
    await delivery.drain()
    assert sender.bodies(ALICE)[-3:] == [b"line 2", b"line 3", b"line 4"]


async def test_a_flood_past_pending_max_warns_once_a_minute(nursery, store, caplog) -> None:
    sender = Sender()
    sender.member(ALICE).code = 408
    delivery = await started(nursery, make(sender, store, pending_max=3))
    for round in range(3):  # each round stores and drops again
        await delivery.submit([relay(ALICE, f"line {round}.{i}") for i in range(5)], "cid")
        await delivery.drain()
    assert delivery.statistics().dropped == 12
    warnings = [r.getMessage() for r in caplog.records if "stored notices: dropped" in r.getMessage()]
    assert warnings == [f"member {ALICE.removeprefix('sip:')} has over 3 stored notices: dropped the 2 oldest"]


async def test_pending_total_max_bounds_the_stored_notices_of_all_members(nursery, store, caplog) -> None:
    # was: only pending_max per member, so members x pending_max rows (a flood of absent
    # members: the disk) with no bound of the server's own
    sender = Sender()
    sender.member(ALICE).code = sender.member(BOB).code = 408
    delivery = await started(nursery, make(sender, store, pending_max=10, pending_total_max=5))
    await delivery.submit([relay(ALICE, f"alice {i}") for i in range(4)], "cid")
    await delivery.drain()
    await delivery.submit([relay(BOB, f"bob {i}") for i in range(4)], "cid")
    await delivery.drain()
    stats = delivery.statistics()
    assert (stats.stored, stats.full, stats.dropped, stats.pending) == (5, 3, 0, 5)
    assert sorted(len(store.repository.load_pending(key, 100)) for key in (
        "alice@example.com", "bob@example.com")) == [1, 4]  # fmt: skip
    warnings = [r.getMessage() for r in caplog.records if "pending_total_max" in r.getMessage()]
    assert warnings == ["the store holds pending_total_max (5) notices: 3 new notices not stored "
                        "(the last for bob@example.com)"]  # fmt: skip
    # alice is back: her four go out and make room for bob's next one
    sender.member(ALICE).code = 200
    delivery.wake(ALICE)
    await delivery.drain()
    assert sender.bodies(ALICE)[-4:] == [f"alice {i}".encode() for i in range(4)]
    await delivery.submit([relay(BOB, "bob later")], "cid")
    await delivery.drain()
    assert (delivery.statistics().stored, delivery.statistics().full) == (6, 3)


async def test_a_member_at_pending_max_trades_its_oldest_even_when_the_store_is_full(nursery, store) -> None:
    # the table does not grow when a member's newest notice replaces its oldest
    sender = Sender()
    sender.member(ALICE).code = 408
    delivery = await started(nursery, make(sender, store, pending_max=3, pending_total_max=3))
    await delivery.submit([relay(ALICE, f"line {i}") for i in range(5)], "cid")
    await delivery.drain()
    await delivery.submit([relay(ALICE, "line 5")], "cid")
    await delivery.drain()
    stats = delivery.statistics()
    assert (stats.stored, stats.dropped, stats.full, stats.pending) == (6, 3, 0, 3)
    assert [row.body for row in store.repository.load_pending("alice@example.com", 10)] == [
        b"line 3", b"line 4", b"line 5"]  # fmt: skip


async def test_pending_total_max_counts_what_other_workers_stored_and_deleted(
    nursery, store, mock_clock
) -> None:
    # two deliveries on one table, as two workers: each counts the table at restore, and
    # again near the bound, so what the other stored or flushed meanwhile counts
    sender = Sender()
    sender.member(ALICE).code = sender.member(BOB).code = 408
    first = await started(nursery, make(sender, store, pending_total_max=4))
    await first.submit([relay(ALICE, f"alice {i}") for i in range(4)], "cid")
    await first.drain()
    second = await started(nursery, make(sender, store, pending_total_max=4))
    await second.submit([relay(BOB, "bob 0")], "cid")
    await second.drain()
    assert (second.statistics().stored, second.statistics().full) == (0, 1)  # counted at restore
    sender.member(ALICE).code = 200
    first.wake(ALICE)
    await first.drain()  # alice's four are delivered and deleted by the first one
    mock_clock.jump(RECOUNT_INTERVAL)  # the second one may count the table again
    await second.submit([relay(BOB, "bob 1")], "cid")
    await second.drain()
    assert (second.statistics().stored, second.statistics().full) == (1, 1)
    assert [row.body for row in store.repository.load_pending("bob@example.com", 10)] == [b"bob 1"]


async def test_made_up_members_parking_at_once_log_a_bounded_number_of_lines(
    nursery, store, mock_clock, caplog
) -> None:
    # was: one INFO line per member parked, so a flood of made-up members joining sized the log
    caplog.set_level(logging.INFO)
    sender = Sender()
    members = [f"sip:ghost{i}@example.com" for i in range(50)]
    for member in members:
        sender.member(member).code = 480
    delivery = await started(nursery, make(sender, store))
    await delivery.submit([relay(member, "hello") for member in members], "cid")
    await delivery.drain()
    parked = [r.getMessage() for r in caplog.records if "storing its notices" in r.getMessage()]
    assert len(parked) == 20 and delivery.statistics().waiting_members == 50
    mock_clock.jump(1.0)
    sender.member(CAROL).code = 480
    await delivery.submit([relay(CAROL, "hello")], "cid")
    await delivery.drain()
    last = [r.getMessage() for r in caplog.records if "storing its notices" in r.getMessage()][-1]
    assert last == ("member carol@example.com unreachable (480 scripted): storing its notices "
                    "(30 more members parked not logged)")  # fmt: skip


async def test_expired_notices_are_dropped_and_counted(nursery, store) -> None:
    now = [1_000_000.0]
    sender = Sender()
    sender.member(ALICE).code = 480
    delivery = await started(nursery, make(sender, store, pending_ttl=60, clock=lambda: now[0]))
    await delivery.submit([relay(ALICE, "old")], "cid")
    await delivery.drain()
    now[0] += 30
    await delivery.submit([relay(ALICE, "new")], "cid")
    await delivery.drain()
    now[0] += 40  # "old" is 70 s old now, "new" 40 s
    sender.member(ALICE).code = 200
    delivery.wake(ALICE)
    await delivery.drain()
    assert sender.bodies(ALICE) == [b"old", b"new"]  # the first try, then only the fresh one
    stats = delivery.statistics()
    assert (stats.expired, stats.flushed, stats.pending) == (1, 1, 0)


async def test_a_slow_member_overflows_into_the_store_in_order(nursery, store) -> None:
    sender = Sender()
    gate = sender.member(ALICE).gate = trio.Event()
    delivery = await started(nursery, make(sender, store, member_queue=4))
    await delivery.submit([relay(ALICE, f"line {i}") for i in range(10)], "cid")
    await delivery.submit([Notice(ALICE, b"reply", ROOM, "reply")], "cid")  # not a member notice
    with trio.fail_after(5):
        while delivery.statistics().stored < 10:  # what overflows goes to the store
            await trio.sleep(0.01)
    assert delivery.statistics().queued == 0  # memory stays bounded
    gate.set()
    await delivery.drain()
    assert sender.bodies(ALICE) == [f"line {i}".encode() for i in range(10)] + [b"reply"]


async def test_a_full_member_queue_fails_what_cannot_be_stored(nursery) -> None:
    sender = Sender()
    sender.member(ALICE).gate = trio.Event()
    outcomes: list[int] = []
    delivery = make(
        sender, None, member_queue=2, on_outcome=lambda n, r, res: outcomes.append(res.code)
    )
    await started(nursery, delivery)
    await delivery.submit([relay(ALICE, f"line {i}") for i in range(4)], "cid")
    assert outcomes == [503]  # one in flight, two queued, the fourth refused
    assert delivery.statistics().queued == 2


async def test_held_notices_wait_for_their_release(nursery, store) -> None:
    sender = Sender()
    delivery = await started(nursery, make(sender, store))
    hold = delivery.hold()
    await delivery.submit([relay(ALICE, "caused by the request")], "cid", hold=hold)
    await delivery.submit([relay(BOB, "unrelated")], "other")
    await trio.testing.wait_all_tasks_blocked()
    assert sender.bodies(ALICE) == [] and sender.bodies(BOB) == [b"unrelated"]
    hold.release()
    await delivery.drain()
    assert sender.bodies(ALICE) == [b"caused by the request"]


async def test_a_forgotten_hold_is_released_after_a_while(nursery, store, autojump_clock) -> None:
    sender = Sender()
    delivery = await started(nursery, make(sender, store))
    await delivery.submit([relay(ALICE, "x")], "cid", hold=delivery.hold())
    with trio.fail_after(5):
        await delivery.drain()
    assert sender.bodies(ALICE) == [b"x"]


class StartingSender(Sender):
    """Answers through ``start`` (the server's fast path), later, when the test says so."""

    def __init__(self) -> None:
        super().__init__()
        self.pending: list[tuple[Notice, Callable[[DeliveryResult], None]]] = []

    def start(
        self, notice: Notice, in_reply_to: str, on_done: Callable[[DeliveryResult], None]
    ) -> bool:
        self.attempts.append((notice.to, notice.body, notice.date))
        self.pending.append((notice, on_done))
        return True


async def test_the_fast_path_keeps_order_too(nursery, store) -> None:
    sender = StartingSender()
    delivery = await started(nursery, make(sender, store))
    await delivery.submit([relay(ALICE, f"a{i}") for i in range(3)] + [relay(BOB, "b0")], "cid")
    assert [body for _, body, _ in sender.attempts] == [b"a0", b"b0"]
    for expected in ([b"a0", b"a1"], [b"a0", b"a1", b"a2"]):
        answering, sender.pending = sender.pending, []
        for _, done in answering:
            done(DeliveryResult(200, "OK"))
        assert (
            sender.bodies(ALICE) == expected
        )  # the next one leaves when its predecessor is answered
    sender.pending.pop()[1](DeliveryResult(200, "OK"))
    with trio.fail_after(5):
        await delivery.drain()
    assert sender.bodies(CAROL) == []


class Chatter:
    """A room that goes on producing notices for ``to`` while its lane works: one more as each
    write to the store starts, and one more every second delivery attempt (faster than the
    member answers while the lane writes; the real store underneath)."""

    def __init__(self, store: Store, to: str, count: int) -> None:
        self.store = store
        self.to = to
        self.left = count
        self.submitted: list[bytes] = []
        self.delivery: Delivery | None = None
        self.sends = 0

    async def arrive(self) -> None:
        if self.left > 0 and self.delivery is not None:
            self.left -= 1
            body = f"late {len(self.submitted)}".encode()
            self.submitted.append(body)
            await self.delivery.submit([Notice(self.to, body, ROOM, "relay", keep=True)], "c")

    async def commit(self, writes) -> None:  # type: ignore[no-untyped-def]
        await self.arrive()
        await self.store.commit(writes)

    async def read(self, query):  # type: ignore[no-untyped-def]
        return await self.store.read(query)

    async def wait_available(self) -> None:
        await self.store.wait_available()


class ChattySender(Sender):
    def __init__(self, chatter: Chatter) -> None:
        super().__init__()
        self.chatter = chatter

    async def __call__(self, notice: Notice, in_reply_to: str) -> DeliveryResult:
        self.chatter.sends += 1
        if self.chatter.sends % 2 == 0:
            await self.chatter.arrive()
        return await super().__call__(notice, in_reply_to)


async def test_a_live_but_slow_member_gets_everything_in_order(nursery, store) -> None:
    # Its lane overflowed into the store, and notices keep coming while the lane writes: the
    # stored ones must go out as the answers come, not pile up behind a worker that flushes
    # only once nothing is queued (that reached pending_max and dropped the oldest).
    chatter = Chatter(store, ALICE, 400)
    sender = ChattySender(chatter)
    delivery = make(sender, chatter, member_queue=4, pending_max=100)  # type: ignore[arg-type]
    chatter.delivery = delivery
    await started(nursery, delivery)
    first = [relay(ALICE, f"line {i}") for i in range(60)]
    await delivery.submit(first, "cid")
    with trio.fail_after(30):
        while chatter.left:
            await trio.sleep(0.01)
        await delivery.drain()
    stats = delivery.statistics()
    assert stats.stored > 100  # it did go through the store, more than pending_max in all
    assert (stats.dropped, stats.pending, stats.failed) == (0, 0, 0)
    assert sender.bodies(ALICE) == [n.body for n in first] + chatter.submitted


async def test_what_comes_while_a_stored_notice_is_in_flight_is_stored(nursery, store) -> None:
    # A woken member whose stored notice takes long to answer (a dead contact: Timer F): what
    # comes meanwhile is stored, not heaped up in memory behind the flush.
    sender = Sender()
    sender.member(ALICE).code = 480
    delivery = await started(nursery, make(sender, store))
    await delivery.submit([relay(ALICE, "first")], "cid")
    await delivery.drain()
    gate = sender.member(ALICE).gate = trio.Event()
    sender.member(ALICE).code = 200
    delivery.wake(ALICE)
    with trio.fail_after(10):
        while len(sender.bodies(ALICE)) < 2:  # the stored one is in flight again
            await trio.sleep(0.01)
        await delivery.submit([relay(ALICE, f"line {i}") for i in range(300)], "cid")
        while delivery.statistics().queued:
            await trio.sleep(0.01)
    assert delivery.statistics().stored == 301
    gate.set()
    await delivery.drain()
    assert sender.bodies(ALICE)[2:] == [f"line {i}".encode() for i in range(300)]


async def test_one_sweep_lets_every_forgotten_hold_of_a_lane_go(nursery, store, mock_clock) -> None:
    # Five requests whose answers never went out (their after-hooks never ran): once the
    # holds are stale, the lane must not take a sweep per notice (it used to: one a second).
    sender = Sender()
    delivery = await started(nursery, make(sender, store))
    for i in range(5):
        await delivery.submit([relay(ALICE, f"line {i}")], f"cid-{i}", hold=delivery.hold())
    await trio.testing.wait_all_tasks_blocked()
    assert sender.bodies(ALICE) == []
    mock_clock.jump(HOLD_LIMIT * 1.5)  # past the limit, and one sweep of the stale holds
    await trio.testing.wait_all_tasks_blocked()
    assert sender.bodies(ALICE) == [f"line {i}".encode() for i in range(5)]


async def advance_to(clock: trio.testing.MockClock, delivery: Delivery, when: float) -> None:
    """Move the (stopped) clock to ``when``, then wait for what became due to finish (the
    store's thread works in real time meanwhile; the clock stays at ``when``)."""
    clock.jump(when - trio.current_time())
    await trio.testing.wait_all_tasks_blocked()
    await delivery.drain()


async def test_a_parked_member_is_retried_after_pending_retry(nursery, store, mock_clock) -> None:
    sender = Sender()
    sender.member(ALICE).code = 480
    delivery = await started(nursery, make(sender, store, pending_retry=60.0))
    parked = trio.current_time()
    await delivery.submit([relay(ALICE, f"line {i}") for i in range(3)], "cid")
    await delivery.drain()
    assert sender.bodies(ALICE) == [b"line 0"]
    sender.member(ALICE).code = 200  # the phone is back, and does not REGISTER again
    await advance_to(mock_clock, delivery, parked + 59)
    assert sender.bodies(ALICE) == [b"line 0"]  # not before pending_retry
    await advance_to(mock_clock, delivery, parked + 60)
    assert sender.bodies(ALICE) == [b"line 0", b"line 0", b"line 1", b"line 2"]
    assert delivery.statistics().pending == 0


async def test_retries_back_off_and_need_a_binding(nursery, store, mock_clock) -> None:
    sender = Sender()
    sender.member(ALICE).code = 480
    sender.member(BOB).code = 480
    delivery = make(sender, store, pending_retry=600.0)
    bound = {"alice@example.com"}
    delivery.reachable = lambda key: key in bound
    await started(nursery, delivery)
    parked = trio.current_time()
    await delivery.submit([relay(ALICE, "a"), relay(BOB, "b")], "cid")
    await delivery.drain()
    tries = []
    # retries due at 600, then 1,200 later (1,800), 2,400 later (4,200), then the cap (7,800)
    for at in (599, 600, 1799, 1800, 4199, 4200, 7799, 7800):
        await advance_to(mock_clock, delivery, parked + at)
        tries.append(len(sender.bodies(ALICE)))
    assert tries == [1, 2, 2, 3, 3, 4, 4, 5]
    assert sender.bodies(BOB) == [b"b"]  # no binding: never retried
    bound.add("bob@example.com")
    sender.member(BOB).code = 200
    await advance_to(mock_clock, delivery, parked + 7800 + 3600)
    assert sender.bodies(BOB) == [b"b", b"b"]  # within the cap once it has one


async def test_an_overdue_answer_frees_the_window_and_a_lost_one_parks_nobody(
    nursery, store, mock_clock
) -> None:
    # A phone that never answers the retransmissions of a MESSAGE whose 200 was lost (SIPp's
    # UAS under overload): after delivery_overdue the next notice goes out; when the first
    # times out while later ones were answered, only it failed.
    sender = StartingSender()
    delivery = await started(nursery, make(sender, store, overdue=4.0))
    await delivery.submit([relay(ALICE, f"a{i}") for i in range(3)], "cid")
    assert sender.bodies(ALICE) == [b"a0"]
    await trio.testing.wait_all_tasks_blocked()  # the once-a-second check is asleep
    mock_clock.jump(3.5)
    await trio.testing.wait_all_tasks_blocked()
    assert sender.bodies(ALICE) == [b"a0"]  # not overdue yet
    mock_clock.jump(1.0)
    await trio.testing.wait_all_tasks_blocked()
    assert sender.bodies(ALICE) == [b"a0", b"a1"]  # a0 no longer holds the window
    first = sender.pending.pop(0)[1]
    sender.pending.pop(0)[1](DeliveryResult(200, "OK"))
    assert sender.bodies(ALICE) == [b"a0", b"a1", b"a2"]
    sender.pending.pop(0)[1](DeliveryResult(200, "OK"))
    first(DeliveryResult(408, "Request Timeout"))
    await delivery.drain()
    stats = delivery.statistics()
    assert (stats.ok, stats.failed, stats.stored, stats.waiting_members) == (2, 1, 0, 0)
    await delivery.submit([relay(ALICE, "a3")], "cid")
    assert sender.bodies(ALICE)[-1] == b"a3"  # direct: not parked


async def test_an_overdue_notice_of_a_silent_member_still_parks_it(
    nursery, store, mock_clock
) -> None:
    sender = StartingSender()
    delivery = await started(nursery, make(sender, store, overdue=4.0))
    await delivery.submit([relay(ALICE, f"a{i}") for i in range(3)], "cid")
    await trio.testing.wait_all_tasks_blocked()
    mock_clock.jump(4.5)
    await trio.testing.wait_all_tasks_blocked()
    assert sender.bodies(ALICE) == [b"a0", b"a1"]
    sender.pending.pop(0)[1](DeliveryResult(408, "Request Timeout"))  # nothing answered since
    sender.pending.pop(0)[1](DeliveryResult(408, "Request Timeout"))
    await delivery.drain()
    stats = delivery.statistics()
    assert (stats.stored, stats.pending, stats.waiting_members, stats.failed) == (3, 3, 1, 0)


async def test_a_silent_members_notices_are_stored_in_the_order_they_were_sent(
    nursery, store, mock_clock
) -> None:
    # a0 goes overdue, so a1 goes out too; a0 times out first (a1 still retransmitted): the
    # lane parks, and a1 must be stored in its turn, before a2 and a3, not when its own 408
    # comes (a flush then delivered a0, a2, a3, a1, and past pending_max dropped a newer one)
    sender = StartingSender()
    delivery = await started(nursery, make(sender, store, overdue=4.0))
    await delivery.submit([relay(ALICE, f"a{i}") for i in range(4)], "cid")
    await trio.testing.wait_all_tasks_blocked()
    mock_clock.jump(4.5)
    await trio.testing.wait_all_tasks_blocked()
    assert sender.bodies(ALICE) == [b"a0", b"a1"]
    first, second = sender.pending.pop(0)[1], sender.pending.pop(0)[1]
    first(DeliveryResult(408, "Request Timeout"))  # a1 is not overdue yet: a2, a3 wait for it
    await trio.testing.wait_all_tasks_blocked()
    for _ in range(5):  # a1 goes overdue on a parked lane: stored now, in its turn
        mock_clock.jump(1.0)
        await trio.testing.wait_all_tasks_blocked()
    await delivery.drain()
    rows = await store.read(lambda repository: repository.load_pending("alice@example.com", 10))
    assert [row.body for row in rows] == [b"a0", b"a1", b"a2", b"a3"]
    second(DeliveryResult(408, "Request Timeout"))  # its own end changes nothing now
    await delivery.drain()
    rows = await store.read(lambda repository: repository.load_pending("alice@example.com", 10))
    assert [row.body for row in rows] == [b"a0", b"a1", b"a2", b"a3"]
    stats = delivery.statistics()
    assert (stats.stored, stats.pending, stats.in_flight, stats.failed) == (4, 4, 0, 0)


async def test_a_notice_in_flight_when_its_lane_parks_is_answered_and_not_stored(
    nursery, store
) -> None:
    # two in flight: a0 is answered 503 while a1 is still out: a2 waits for a1's outcome
    # (2xx: delivered, so neither stored nor sent twice), then is stored
    sender = SignallingSender()
    delivery = await started(nursery, make(sender, store, window=2, burst=1))
    await delivery.submit([relay(ALICE, f"a{i}") for i in range(3)], "cid")
    assert sender.bodies(ALICE) == [b"a0", b"a1"]
    first, second = sender.pending.pop(0)[1], sender.pending.pop(0)[1]
    first(DeliveryResult(503, "Service Unavailable"))
    await trio.testing.wait_all_tasks_blocked()
    rows = await store.read(lambda repository: repository.load_pending("alice@example.com", 10))
    assert [row.body for row in rows] == [b"a0"]  # a2 waits for the a1 in flight
    sender.attempts.clear()
    second(DeliveryResult(200, "OK"))  # a1 delivered, neither stored nor sent twice; and
    # ALICE is there after all (was: parked until the retry): a0, then a2, go out at once
    sender.sent = trio.Event()
    for _ in range(2):
        (await sender.next_attempt())[1](DeliveryResult(200, "OK"))
    await delivery.drain()
    assert sender.bodies(ALICE) == [b"a0", b"a2"]
    rows = await store.read(lambda repository: repository.load_pending("alice@example.com", 10))
    assert rows == []
    assert delivery.statistics().ok == 3


async def test_a_full_unreachable_lane_stores_its_notices_in_flight_and_flushes_later(
    nursery, store
) -> None:
    # a0 is answered 503 while a1 is still out (not overdue); member_queue notices then
    # wait behind a1: a1 is stored in its turn rather than hold more in memory, and once
    # the member is back everything flushes (a1's window slot was given back)
    sender = StartingSender()
    delivery = await started(nursery, make(sender, store, window=2, burst=1, member_queue=3))
    await delivery.submit([relay(ALICE, f"a{i}") for i in range(2)], "cid")
    first, second = sender.pending.pop(0)[1], sender.pending.pop(0)[1]
    first(DeliveryResult(503, "Service Unavailable"))
    await delivery.submit([relay(ALICE, f"a{i}") for i in range(2, 5)], "cid")
    with trio.fail_after(10):  # safety net only: the store's thread writes meanwhile
        while delivery.statistics().stored < 5:
            await trio.sleep(0.01)
    rows = await store.read(lambda repository: repository.load_pending("alice@example.com", 10))
    assert [row.body for row in rows] == [f"a{i}".encode() for i in range(5)]
    second(DeliveryResult(200, "OK"))  # its late outcome changes nothing
    delivery.wake(ALICE)
    with trio.fail_after(10):  # safety net only
        while sender.pending or delivery.statistics().pending:
            while sender.pending:
                sender.pending.pop(0)[1](DeliveryResult(200, "OK"))
            await trio.testing.wait_all_tasks_blocked()
        await delivery.drain()
    assert sender.bodies(ALICE)[2:] == [f"a{i}".encode() for i in range(5)]
    assert delivery.statistics().in_flight == 0


async def test_only_one_overdue_notice_per_member_at_a_time(nursery, store, mock_clock) -> None:
    # Answers slower than delivery_overdue (an overloaded server): one more notice goes out,
    # not one more per second.
    sender = StartingSender()
    delivery = await started(nursery, make(sender, store, overdue=4.0))
    await delivery.submit([relay(ALICE, f"a{i}") for i in range(5)], "cid")
    await trio.testing.wait_all_tasks_blocked()
    for _ in range(7):  # (a1 unanswered as long as a0 too would park ALICE: the next test)
        mock_clock.jump(1.0)
        await trio.testing.wait_all_tasks_blocked()
    assert sender.bodies(ALICE) == [b"a0", b"a1"]
    sender.pending.pop(0)[1](DeliveryResult(200, "OK"))  # the overdue one answered at last
    for _ in range(5):
        mock_clock.jump(1.0)
        await trio.testing.wait_all_tasks_blocked()
    assert sender.bodies(ALICE) == [b"a0", b"a1", b"a2"]  # a1 is the overdue one now


async def test_a_member_that_answers_nothing_is_stored_after_two_overdue_notices(
    nursery, store, mock_clock
) -> None:
    # a tour: 100 members whose phones left without unregistering each kept every line in
    # memory until Timer F (32 s): the server-wide queue filled, and every room waited
    sender = Sender()
    gate = sender.member(ALICE).gate = trio.Event()  # no answer until it opens
    delivery = await started(nursery, make(sender, store, overdue=4.0, pending_retry=0))
    await delivery.submit([relay(ALICE, f"a{i}") for i in range(5)], "cid")
    await trio.testing.wait_all_tasks_blocked()
    for _ in range(9):
        mock_clock.jump(1.0)
        await trio.testing.wait_all_tasks_blocked()
    await delivery.drain()  # the persister done
    assert sender.bodies(ALICE) == [b"a0", b"a1"]  # a1 unanswered 4 s too: ALICE is parked
    stats = delivery.statistics()
    assert (stats.queued, stats.pending, stats.in_flight) == (0, 5, 0)  # all five stored
    await delivery.submit([relay(ALICE, "a5")], "cid")
    await delivery.drain()
    assert delivery.statistics().pending == 6 and sender.bodies(ALICE) == [b"a0", b"a1"]
    # a late 2xx to one that was stored: ALICE is there after all, her stored notices flush
    gate.set()
    await trio.testing.wait_all_tasks_blocked()
    await delivery.drain()
    assert sender.bodies(ALICE)[2:] == [f"a{i}".encode() for i in range(6)]  # a0, a1 twice
    assert delivery.statistics().pending == 0


async def test_a_full_queue_stores_the_members_that_answer_nothing_instead_of_waiting(
    nursery, store, mock_clock
) -> None:
    sender = StartingSender()
    delivery = await started(
        nursery, make(sender, store, overdue=4.0, queue_size=20, pending_retry=0)
    )
    await delivery.submit([relay(ALICE, f"a{i}") for i in range(10)], "cid")
    await delivery.submit([relay(BOB, f"b{i}") for i in range(10)], "cid")
    for _ in range(5):  # a0 and b0 overdue (4 s), a1 and b1 just sent: nobody parked yet
        mock_clock.jump(1.0)
        await trio.testing.wait_all_tasks_blocked()
    assert delivery.statistics().queued == 16 and delivery.statistics().pending == 0
    sender.pending = [entry for entry in sender.pending if entry[0].to != CAROL]
    done = trio.Event()

    async def carol() -> None:  # another room's line: it must not wait for ALICE and BOB
        await delivery.submit([relay(CAROL, f"c{i}") for i in range(6)], "cid")
        done.set()

    nursery.start_soon(carol)
    await done.wait()  # (it used to wait for Timer F: pytest's timeout would end it)
    await trio.testing.wait_all_tasks_blocked()
    stats = delivery.statistics()
    assert stats.pending == 20 and stats.waiting_members == 2  # ALICE's and BOB's, stored
    assert [n.body for n, _ in sender.pending][-1] == b"c0"  # carol's first is on its way


class SignallingSender(StartingSender):
    """A :class:`StartingSender` that sets :attr:`sent` at each attempt (a test waits on it)."""

    def __init__(self) -> None:
        super().__init__()
        self.sent = trio.Event()

    def start(self, notice: Notice, in_reply_to: str, on_done: Callable[[DeliveryResult], None]) -> bool:
        started = super().start(notice, in_reply_to, on_done)
        self.sent.set()
        return started

    async def next_attempt(self) -> tuple[Notice, Callable[[DeliveryResult], None]]:
        await self.sent.wait()
        self.sent = trio.Event()
        return self.pending.pop(0)


async def test_a_register_during_a_retry_to_a_dead_contact_tries_the_new_binding_at_once(
    nursery, store
) -> None:
    # a tour: a REGISTER from a new address came while the retry's notice was still being
    # sent to the old, dead contact; it was ignored, and the notices waited for the next
    # retry (two minutes) instead of going to the new binding when that notice failed
    sender = SignallingSender()
    delivery = await started(nursery, make(sender, store, pending_retry=0))
    await delivery.submit([relay(ALICE, "a0"), relay(ALICE, "a1")], "cid")
    (await sender.next_attempt())[1](DeliveryResult(503, "Service Unavailable"))
    await delivery.drain()
    assert delivery.statistics().pending == 2
    delivery.wake(ALICE)  # (a retry, or a REGISTER): the flush sends a0 to the old contact
    notice, answer = await sender.next_attempt()
    assert notice.body == b"a0"
    delivery.wake(ALICE)  # she registers from her new address meanwhile
    answer(DeliveryResult(408, "Request Timeout"))  # the old contact's Timer F
    for body in (b"a0", b"a1"):  # at once, to the binding she has now
        notice, answer = await sender.next_attempt()
        assert notice.body == body
        answer(DeliveryResult(200, "OK"))
    await delivery.drain()
    assert delivery.statistics().pending == 0


async def test_a_flush_deletes_its_rows_as_it_goes(nursery, store) -> None:
    # a tour: kill -9 during a slow member's flush sent every notice of the batch (up to 100)
    # again after the restart, since the batch's rows were deleted only once all were sent
    sender = SignallingSender()
    delivery = await started(nursery, make(sender, store, pending_retry=0))
    await delivery.submit([relay(ALICE, f"a{i}") for i in range(25)], "cid")
    (await sender.next_attempt())[1](DeliveryResult(480, "Temporarily Unavailable"))
    await delivery.drain()
    assert delivery.statistics().pending == 25
    delivery.wake(ALICE)
    for index in range(12):
        notice, answer = await sender.next_attempt()
        assert notice.body == f"a{index}".encode()
        answer(DeliveryResult(200, "OK"))
    await sender.sent.wait()  # a12 is out: the first ten rows were deleted before a10 left
    rows = await store.read(lambda repository: repository.load_pending("alice@example.com", 100))
    assert [row.body for row in rows] == [f"a{i}".encode() for i in range(10, 25)]


def test_busy_here_is_worth_storing_and_a_decline_is_not() -> None:
    # 486 is the member's "not now" (RFC 3261 §21.4.24): its notices used to be dropped
    assert DeliveryResult(486, "Busy Here").unreachable
    assert not DeliveryResult(603, "Decline").unreachable


async def test_with_several_workers_each_restores_only_its_own_members(nursery, store, tmp_path) -> None:
    """Stored notices are flushed by their member's worker (imc_actors.handoff): the other
    workers do not park (and later flush) lanes for them at startup."""
    import time

    from imc_actors.handoff import Handoff
    from imc_actors.store.records import PendingAdd
    from imc_actors.transport.steering import Steering, home_of

    now = time.time()
    mine = next(f"m{i}@example.com" for i in range(100) if home_of(f"m{i}@example.com", 2) == 0)
    theirs = next(f"m{i}@example.com" for i in range(100) if home_of(f"m{i}@example.com", 2) == 1)
    await store.commit([
        PendingAdd(member, f"sip:{member}", ROOM, b"kept", "relay", None, "cid", now, now + 3600)
        for member in (mine, theirs, theirs)
    ])  # fmt: skip
    alone, worker = make(Sender(), store), make(Sender(), store)
    worker.handoff = Handoff(Steering(0, 2, tmp_path))
    await alone.restore()
    await worker.restore()
    assert (alone.statistics().pending, alone.statistics().waiting_members) == (3, 2)
    assert (worker.statistics().pending, worker.statistics().waiting_members) == (1, 1)


async def test_a_notice_of_a_burst_answered_503_is_stored_not_lost(nursery, store) -> None:
    # In a burst, later notices are answered before an earlier one's 503: the member is
    # there, but that notice was refused for now. It is stored (and the lane parks, storing
    # what comes behind it in order), as with one notice in flight; only a timeout whose
    # answer was lost fails alone.
    sender = StartingSender()
    delivery = await started(nursery, make(sender, store, burst=4))

    async def answer_until_idle() -> None:
        """Answer 200 to whatever is sent until delivery has nothing left to do."""
        drained = trio.Event()

        async def drain() -> None:
            await delivery.drain()
            drained.set()

        async with trio.open_nursery() as inner:
            inner.start_soon(drain)
            with trio.fail_after(10):
                while not drained.is_set():
                    while sender.pending:
                        sender.pending.pop(0)[1](DeliveryResult(200, "OK"))
                    await trio.testing.wait_all_tasks_blocked()

    await delivery.submit([relay(ALICE, f"a{i}") for i in range(10)], "cid")
    sender.pending.pop(0)[1](DeliveryResult(200, "OK"))  # a0: the member answers, a burst
    assert [body for _, body, _ in sender.attempts] == [f"a{i}".encode() for i in range(5)]
    refused = sender.pending.pop(0)[1]  # a1
    for _ in range(3):  # a2 .. a4
        sender.pending.pop(0)[1](DeliveryResult(200, "OK"))
    refused(DeliveryResult(503, "Service Unavailable"))
    # the lane parks on the 503; the next 2xx says the member is there, so it does not wait
    # for a REGISTER or a retry (was: parked until then): a1 goes again, in its turn
    await answer_until_idle()
    stats = delivery.statistics()
    assert stats.failed == 0 and stats.waiting_members == 0 and stats.pending == 0
    assert set(sender.bodies(ALICE)) == {f"a{i}".encode() for i in range(10)}
    assert sender.bodies(ALICE).count(b"a1") == 2  # refused once, then delivered


async def test_a_flood_of_failed_deliveries_logs_a_bounded_number_of_lines(
    nursery, caplog, autojump_clock
) -> None:
    # 404 notices to made-up members wrote a line each: 236k lines (40 MB) in 75 s of a flood
    from imc_actors.actors.delivery import FAILED_LOG_LINES

    sender = Sender()
    members = [f"sip:u{i}@example.com" for i in range(5 * FAILED_LOG_LINES)]
    for uri in members:
        sender.member(uri).code = 404
    delivery = await started(nursery, make(sender, None))
    with caplog.at_level("INFO", logger="imc_actors.delivery"):
        await delivery.submit([Notice(uri, b"x", ROOM) for uri in members], "flood")
        await delivery.drain()
        assert delivery.statistics().failed == len(members)  # every one counted
        lines = [r.getMessage() for r in caplog.records if "delivery failed" in r.getMessage()]
        assert len(lines) == FAILED_LOG_LINES  # within one second (mock clock)
        await trio.sleep(1)
        await delivery.submit([Notice(members[0], b"y", ROOM)], "later")
        await delivery.drain()
    later = [r.getMessage() for r in caplog.records if "delivery failed" in r.getMessage()]
    assert len(later) == FAILED_LOG_LINES + 1
    assert later[-1].endswith(f"({len(members) - FAILED_LOG_LINES} more failed deliveries not logged)")


async def test_a_stopping_delivery_forgets_its_nursery_before_the_nursery_closes(nursery) -> None:
    # A room whose shielded commit ended during shutdown submitted its notices between the
    # nursery's closing and run()'s finally: "Nursery is closed to new arrivals" in the room's
    # actor, logged as a crash with a traceback (memory tour). Every task exit is watched:
    # once the nursery is closed to new tasks, delivery must no longer offer it.
    sender = Sender()
    sender.member(ALICE).gate = trio.Event()  # a send task still running when it stops
    delivery = make(sender, None)
    offered_closed: list[str] = []

    class Watch(trio.abc.Instrument):
        def task_exited(self, task: trio.lowlevel.Task) -> None:
            held = delivery._nursery  # noqa: SLF001
            if held is not None and held._closed:  # noqa: SLF001 - trio's own flag
                offered_closed.append(task.name)

    scope = trio.CancelScope()
    stopped = trio.Event()

    async def run() -> None:
        with scope:
            await delivery.run()
        stopped.set()

    trio.lowlevel.add_instrument(watch := Watch())
    try:
        nursery.start_soon(run)
        await trio.testing.wait_all_tasks_blocked()
        await delivery.submit([relay(ALICE, "one"), relay(BOB, "two")], "cid")
        await trio.testing.wait_all_tasks_blocked()
        scope.cancel()
        await stopped.wait()
    finally:
        trio.lowlevel.remove_instrument(watch)
    assert offered_closed == []
    await delivery.submit([relay(CAROL, "after")], "cid")  # no nursery: no traceback either


async def test_queued_bodies_are_bounded_in_bytes_a_shared_body_counted_once(nursery) -> None:
    # delivery_queue counted notices only: 20,000 #history pages of 30 KB lines for slow
    # members queued about 640 MB (memory tour)
    sender = Sender()
    for member in (ALICE, BOB):
        sender.member(member).gate = trio.Event()  # slow: never answers during the test
    delivery = await started(nursery, make(sender, None, queue_bytes=100_000, window=1))
    await delivery.submit([relay(ALICE, "first"), relay(BOB, "first")], "cid")  # in flight
    shared = b"x" * 40_000
    fan_out = [Notice(f"sip:m{i}@example.com", shared, ROOM) for i in range(50)]
    sender.members.update({n.to: Member() for n in fan_out})
    for notice in fan_out:
        sender.member(notice.to).gate = trio.Event()  # all slow: the first waits in flight
    with trio.fail_after(5):  # 100 notices, one 40 KB body: 40 KB, no wait
        await delivery.submit(fan_out + fan_out, "cid")
    pages = [Notice(ALICE, bytes([65 + i]) * 30_000, ROOM) for i in range(4)]
    queued_all = trio.Event()

    async def submit_pages() -> None:
        await delivery.submit(pages, "cid")
        queued_all.set()

    nursery.start_soon(submit_pages)
    await trio.testing.wait_all_tasks_blocked()
    assert not queued_all.is_set()  # 40 KB + 2 x 30 KB queued: the third page waits
    assert delivery.statistics().queued == 50 + 2
    for member in (ALICE, *(n.to for n in fan_out)):
        sender.member(member).gate.set()  # type: ignore[union-attr]
    with trio.fail_after(5):
        await queued_all.wait()
