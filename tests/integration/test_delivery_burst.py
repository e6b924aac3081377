"""``delivery_burst``: a member that has answered and has that many notices waiting gets that
many in flight at once, in order, until it is idle; a late answer, a failure, an overdue
notice or one sent by a task keeps it at ``delivery_window`` until then. (A sender without
``start`` never bursts: test_delivery_lanes.py,
``test_one_member_gets_its_notices_one_at_a_time_in_order``; nor does a dead member:
test_delivery_e2e.py, ``test_a_dead_member_delays_only_its_own_notices``.)"""

from __future__ import annotations

import trio
import trio.testing

from imc_actors.actors.delivery import LATE_ANSWER, Delivery, DeliveryResult
from imc_actors.imc.effects import Notice

ROOM = "sip:room@example.org"
ALICE = "sip:alice@example.org"
OK = DeliveryResult(200, "OK")


class HeldSender:
    """A sender with ``start`` whose deliveries end when the test answers them, oldest first."""

    def __init__(self, declines: frozenset[bytes] = frozenset()) -> None:
        self.declines = declines  # bodies start declines (they go through __call__)
        self.called: list[bytes] = []
        self.started: list[bytes] = []
        self.unanswered: list[object] = []  # their on_done, oldest first
        self.most_in_flight = 0

    async def __call__(self, notice: Notice, in_reply_to: str) -> DeliveryResult:
        self.called.append(notice.body)
        await trio.lowlevel.checkpoint()
        return OK

    def start(self, notice: Notice, in_reply_to: str, on_done) -> bool:  # type: ignore[no-untyped-def]
        if notice.body in self.declines:
            return False
        self.started.append(notice.body)
        self.unanswered.append(on_done)
        self.most_in_flight = max(self.most_in_flight, len(self.unanswered))
        return True

    def answer(self, result: DeliveryResult = OK) -> None:
        self.unanswered.pop(0)(result)  # type: ignore[operator]

    def in_flight(self) -> int:
        return len(self.unanswered)


def lines(first: int, count: int) -> list[Notice]:
    return [Notice(ALICE, f"line {i}".encode(), ROOM, keep=True) for i in range(first, first + count)]


def bodies(first: int, count: int) -> list[bytes]:
    return [f"line {i}".encode() for i in range(first, first + count)]


async def settle() -> None:
    await trio.testing.wait_all_tasks_blocked()


async def started(nursery: trio.Nursery, sender: HeldSender, **options: object) -> Delivery:
    delivery = Delivery(sender, **options)  # type: ignore[arg-type]
    await nursery.start(delivery.run)
    return delivery


async def answer_all(sender: HeldSender, delivery: Delivery) -> None:
    while sender.unanswered:
        sender.answer()
        await trio.testing.wait_all_tasks_blocked()
    with trio.fail_after(5):
        await delivery.drain()


async def test_a_backlog_of_burst_notices_goes_out_that_many_at_a_time_in_order(nursery):
    sender = HeldSender()
    delivery = await started(nursery, sender, burst=4)
    await delivery.submit(lines(0, 10), "cid")
    await settle()
    assert sender.started == bodies(0, 1)  # alone until the member has answered once
    sender.answer()
    await settle()
    assert sender.started == bodies(0, 5) and sender.in_flight() == 4
    sender.answer()
    await settle()
    assert sender.started == bodies(0, 6) and sender.in_flight() == 4
    await answer_all(sender, delivery)
    assert sender.started == bodies(0, 10)
    assert sender.most_in_flight == 4
    assert delivery.statistics().bursts == 1


async def first_answered(sender: HeldSender, delivery: Delivery, count: int = 11) -> None:
    """Submit ``count`` lines and answer the first: the other ``count - 1`` may burst."""
    await delivery.submit(lines(0, count), "cid")
    await settle()
    sender.answer()
    await settle()


async def test_fewer_waiting_than_burst_go_one_at_a_time(nursery):
    sender = HeldSender()
    delivery = await started(nursery, sender, burst=4)
    await delivery.submit(lines(0, 3), "cid")
    await settle()
    assert sender.started == bodies(0, 1)
    await answer_all(sender, delivery)
    assert sender.started == bodies(0, 3) and sender.most_in_flight == 1
    assert delivery.statistics().bursts == 0


async def test_a_late_answer_keeps_the_member_at_its_window_until_it_is_idle(
    nursery, autojump_clock
):
    sender = HeldSender()
    delivery = await started(nursery, sender, burst=4, overdue=0)
    await first_answered(sender, delivery)
    assert sender.in_flight() == 4 and sender.started == bodies(0, 5)
    await trio.sleep(LATE_ANSWER)  # as if line 1 had been retransmitted
    sender.answer()
    await settle()
    assert sender.in_flight() == 3 and sender.started == bodies(0, 5)  # nothing new went
    for _ in range(3):
        sender.answer()
    await settle()
    assert sender.in_flight() == 1 and sender.started == bodies(0, 6)  # one at a time now
    await answer_all(sender, delivery)
    assert sender.started == bodies(0, 11)
    # Idle once: the next backlog bursts again (this lane was forgotten: it answers first).
    sender.most_in_flight = 0
    await delivery.submit(lines(11, 10), "cid-2")
    await settle()
    sender.answer()
    await settle()
    assert sender.started[11:] == bodies(11, 5)
    await answer_all(sender, delivery)
    assert sender.most_in_flight == 4 and delivery.statistics().bursts == 2


async def test_a_failed_delivery_keeps_the_member_at_its_window(nursery):
    sender = HeldSender()
    delivery = await started(nursery, sender, burst=4)
    await first_answered(sender, delivery)
    sender.answer(DeliveryResult(403, "Forbidden"))  # refused: dropped, counted
    for _ in range(3):
        sender.answer()
    await settle()
    assert sender.in_flight() == 1 and sender.started == bodies(0, 6)
    await answer_all(sender, delivery)
    assert sender.started == bodies(0, 11)
    assert delivery.statistics().failed == 1


async def test_a_notice_start_declines_ends_the_burst(nursery):
    # It goes in a task, which may put it on the wire after the next one: nothing more is
    # started until it is answered.
    sender = HeldSender(declines=frozenset([b"line 3"]))
    delivery = await started(nursery, sender, burst=4)
    await first_answered(sender, delivery)
    assert sender.started == bodies(0, 3) and sender.called == [b"line 3"]
    assert sender.in_flight() == 2  # lines 1, 2 (line 3's task is done: answered at once)
    await answer_all(sender, delivery)
    assert sender.started == bodies(0, 3) + bodies(4, 7)
    assert sender.most_in_flight == 2  # one at a time after the declined one


async def test_burst_1_never_sends_more_than_the_window(nursery):
    sender = HeldSender()
    delivery = await started(nursery, sender, burst=1)
    await delivery.submit(lines(0, 40), "cid")
    await answer_all(sender, delivery)
    assert sender.started == bodies(0, 40) and sender.most_in_flight == 1
