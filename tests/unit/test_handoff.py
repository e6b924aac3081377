"""Delivery partitioned by member between workers (issue 13, imc_actors/handoff.py): the frame
of notices, and two Delivery instances handing notices to each other over real Unix sockets."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from functools import partial

import pytest
import trio
import trio.testing

from imc_actors.actors.delivery import Delivery, DeliveryResult
from imc_actors.handoff import Handoff, decode, encode, take_frame
from imc_actors.imc.effects import Notice
from imc_actors.transport.steering import Steering, home_of


def _members(worker: int, count: int) -> list[str]:
    """``count`` member URIs whose notices worker ``worker`` of two delivers."""
    found = (f"u{i}@example.com" for i in range(1000) if home_of(f"u{i}@example.com", 2) == worker)
    return [f"sip:{next(found)}" for _ in range(count)]


def test_a_frame_carries_each_notice_and_a_shared_body_once():
    body = b"[alice]: hello \xff"
    pairs = [
        (Notice("sip:b@example.com", body, "sip:r@example.com", "relay", "text/plain", keep=True),
         "call-1"),
        (Notice("sip:c@example.com", body, "sip:r@example.com", "relay", "text/plain", keep=True),
         "call-1"),
        (Notice("sip:d@example.com", b"*** x joined", "sip:r@example.com", date=1700000000.5),
         "call-2"),
    ]  # fmt: skip
    frame = encode(pairs)
    assert frame.count(body) == 1
    assert decode(frame) == pairs


@pytest.mark.parametrize(
    "frame", [b"", b"no header", b"[[],[5],[]]\nabc", b'[["c"],[1],[["a","b",9,null,1,null,0,0]]]\nx']
)
def test_a_malformed_frame_is_refused(frame):
    with pytest.raises(ValueError):
        decode(frame)


def _by_member(got: list[tuple[str, bytes]]) -> dict[str, list[bytes]]:
    """What each member got, in order (members' lanes run side by side)."""
    out: dict[str, list[bytes]] = {}
    for to, body in got:
        out.setdefault(to, []).append(body)
    return out


@asynccontextmanager
async def _workers(steerings: Sequence[Steering], *serving: Steering) -> AsyncIterator[trio.Nursery]:
    """``steerings`` listening for the block (closed after), the ``serving`` ones reading their
    connections; the block gets the nursery, cancelled when it ends."""
    for steering in steerings:
        steering.open()
    try:
        async with trio.open_nursery() as nursery:
            for steering in serving:
                nursery.start_soon(steering.serve, lambda *args: None, lambda *args: None)
            await trio.testing.wait_all_tasks_blocked()
            yield nursery
            nursery.cancel_scope.cancel()
    finally:
        for steering in steerings:
            steering.close()


class _Progress:
    """Set whenever a recorder got a notice: what the tests wait on (no polling)."""

    def __init__(self) -> None:
        self.event = trio.Event()

    def bump(self) -> None:
        self.event.set()
        self.event = trio.Event()

    async def until(self, predicate) -> None:
        with trio.fail_after(5):
            while not predicate():
                await self.event.wait()


class _Recorder:
    """A Delivery sender that answers 200 and records who got what, in order."""

    def __init__(self, progress: _Progress) -> None:
        self.got: list[tuple[str, bytes]] = []
        self.progress = progress

    async def __call__(self, notice: Notice, in_reply_to: str) -> DeliveryResult:
        self.got.append((notice.to, notice.body))
        self.progress.bump()
        return DeliveryResult(200, "OK")


async def test_each_members_notices_leave_its_own_worker_after_the_hold(tmp_path):
    steerings = [Steering(i, 2, tmp_path) for i in range(2)]
    progress = _Progress()
    senders = [_Recorder(progress), _Recorder(progress)]
    deliveries = [Delivery(sender) for sender in senders]
    for steering, delivery in zip(steerings, deliveries, strict=True):
        delivery.handoff = Handoff(steering)
        steering.on_notices = partial(take_frame, delivery)
    here, there = _members(0, 3), _members(1, 3)
    room = "sip:r@example.com"
    async with _workers(steerings, *steerings) as nursery:
        for delivery in deliveries:
            await nursery.start(delivery.run)
        hold = deliveries[0].hold()
        members = [m for pair in zip(here, there, strict=True) for m in pair]
        line = b"[alice]: hi"
        await deliveries[0].submit(
            [Notice(m, line, room, "relay", keep=True) for m in members], "call-1", hold=hold
        )
        invitation = Notice(there[0], b"invited", room, invite_of=there[0])
        await deliveries[0].submit([invitation], "call-1", hold=hold)
        await trio.testing.wait_all_tasks_blocked()
        assert senders[1].got == []  # held: nothing handed over before the answer is out
        hold.release()
        await deliveries[0].submit(
            [Notice(m, b"*** bob joined", room, keep=True) for m in members], "call-2"
        )
        await progress.until(lambda: len(senders[1].got) == 6 and len(senders[0].got) == 7)
    # worker 1 delivered to its members, each in order; the invitation stayed with its room
    assert _by_member(senders[1].got) == {
        m: [b"[alice]: hi", b"*** bob joined"] for m in there
    }
    assert _by_member(senders[0].got) == {
        **{m: [b"[alice]: hi", b"*** bob joined"] for m in here}, there[0]: [b"invited"]
    }
    first, second = deliveries[0].statistics(), deliveries[1].statistics()
    assert (first.handed_out, first.handoff_fallbacks, second.handed_in) == (6, 0, 6)
    assert (first.submitted, second.submitted, second.by_kind) == (7, 6, {"relay": 3, "notice": 3})


async def test_notices_for_a_worker_that_is_down_are_delivered_here(tmp_path):
    steering = Steering(0, 2, tmp_path)  # worker 1 never listens
    sender = _Recorder(_Progress())
    delivery = Delivery(sender)
    delivery.handoff = Handoff(steering)
    there = _members(1, 2)
    async with _workers([steering]) as nursery:
        await nursery.start(delivery.run)
        await delivery.submit([Notice(m, b"x", "sip:r@example.com") for m in there], "c")
        await delivery.drain()
    assert _by_member(sender.got) == {m: [b"x"] for m in there}
    stats = delivery.statistics()
    assert (stats.handed_out, stats.handoff_fallbacks, stats.ok) == (0, 2, 2)


def _woken_on_worker_1(tmp_path, clock=None):
    """Two steerings, a delivery on worker 0 handing off to worker 1, and what 1 is woken for."""
    steerings = [Steering(i, 2, tmp_path) for i in range(2)]
    woken: list[str] = []
    progress = _Progress()

    def on_wake(member: str) -> None:
        woken.append(member)
        progress.bump()

    steerings[1].on_wake = on_wake
    delivery = Delivery(_Recorder(progress))
    delivery.handoff = Handoff(steerings[0]) if clock is None else Handoff(steerings[0], clock=clock)
    return steerings, delivery, woken, progress


async def test_a_member_sending_wakes_its_own_worker(tmp_path):
    steerings, delivery, woken, progress = _woken_on_worker_1(tmp_path)
    async with _workers(steerings, steerings[1]):
        delivery.wake(_members(1, 1)[0], here=True)  # the caller tells the others itself
        delivery.wake(_members(1, 1)[0])
        delivery.wake(_members(0, 1)[0])  # its own member: nobody else is told
        await progress.until(lambda: woken)
        await trio.testing.wait_all_tasks_blocked()
    assert woken == [_members(1, 1)[0].removeprefix("sip:")]


async def test_a_member_that_goes_on_sending_wakes_its_worker_once_a_second(tmp_path):
    from imc_actors.handoff import WAKE_INTERVAL

    now = [100.0]
    steerings, delivery, woken, progress = _woken_on_worker_1(tmp_path, clock=lambda: now[0])
    member, other = _members(1, 2)
    async with _workers(steerings, steerings[1]):
        for _ in range(5):  # a chat line each: one frame
            delivery.wake(member)
        delivery.wake(other)  # another member is told at once
        await progress.until(lambda: len(woken) == 2)
        now[0] += WAKE_INTERVAL
        delivery.wake(member)
        await progress.until(lambda: len(woken) == 3)
        await trio.testing.wait_all_tasks_blocked()
    key, other_key = member.removeprefix("sip:"), other.removeprefix("sip:")
    assert sorted(woken[:2]) == sorted([key, other_key]) and woken[2:] == [key]


async def test_a_batch_too_big_for_one_frame_goes_in_several_in_order(tmp_path):
    from imc_actors.handoff import FRAME_LIMIT

    steerings = [Steering(i, 2, tmp_path) for i in range(2)]
    frames: list[list[tuple[Notice, str]]] = []
    progress = _Progress()

    async def on_notices(frame: bytes) -> None:
        frames.append(decode(frame))
        progress.bump()

    steerings[1].on_notices = on_notices
    handoff = Handoff(steerings[0])
    there = _members(1, 8)
    body_size = FRAME_LIMIT // 3  # each notice its own body: three do not fit in one frame
    pairs = [(Notice(m, bytes([65 + i]) * body_size, "sip:r@example.com"), "c") for i, m in enumerate(there)]
    huge = (Notice(there[0], b"x" * (FRAME_LIMIT + 1), "sip:r@example.com"), "c")
    async with _workers(steerings, steerings[1]):
        assert handoff.send(1, pairs) == 8
        assert handoff.send(1, [huge]) == 0  # one notice larger than a frame stays here
        await progress.until(lambda: sum(map(len, frames)) == 8)
    assert len(frames) > 1
    assert [pair for frame in frames for pair in frame] == pairs
