"""The send queue of a stream connection: bounded in bytes, in order, awaited senders never
overtaken, closing fails what waits."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from imc_actors.transport.sendqueue import SendQueue


def test_offer_holds_the_bound_in_bytes() -> None:
    queue = SendQueue(100)
    assert queue.offer(b"a" * 60) and queue.offer(b"b" * 40)
    assert not queue.offer(b"c")  # 101 bytes would not fit
    assert (queue.queued, queue.peak, queue.refused, len(queue)) == (100, 100, 1, 2)
    assert not queue.has_room(1) and SendQueue(100).has_room(100)


def test_a_message_larger_than_the_bound_goes_alone() -> None:
    queue = SendQueue(10)
    assert queue.offer(b"x" * 50)  # could never be sent otherwise
    assert not queue.offer(b"y")


async def test_take_batches_in_order_and_done_frees_the_room() -> None:
    queue = SendQueue(100)
    for part in (b"1" * 30, b"2" * 30, b"3" * 30):
        assert queue.offer(part)
    batch = await queue.take(60)
    assert [data for data, _ in batch] == [b"1" * 30, b"2" * 30]
    assert queue.queued == 90  # bytes count until written
    queue.done(batch, True)
    assert queue.queued == 30
    assert [data for data, _ in await queue.take(0)] == [b"3" * 30]  # at least one


async def test_put_waits_for_room_then_for_the_write_and_offer_does_not_overtake() -> None:
    queue = SendQueue(100)
    assert queue.offer(b"a" * 80)
    results: list[bool] = []

    async def sender() -> None:
        results.append(await queue.put(b"b" * 50))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sender)
        await trio.testing.wait_all_tasks_blocked()
        assert len(queue) == 1  # waiting for room
        assert not queue.offer(b"c")  # would overtake the waiting sender
        first = await queue.take(1000)
        queue.done(first, True)
        await trio.testing.wait_all_tasks_blocked()
        assert queue.queued == 50 and results == []  # queued, not written yet
        second = await queue.take(1000)
        queue.done(second, True)
    assert results == [True]


async def test_close_fails_waiting_senders_and_ends_the_writer() -> None:
    queue = SendQueue(10)
    assert queue.offer(b"x" * 10)
    results: list[bool] = []

    async def sender() -> None:
        results.append(await queue.put(b"y"))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sender)
        await trio.testing.wait_all_tasks_blocked()
        queue.close()
    assert results == [False]
    assert queue.queued == 0 and await queue.take(100) == []
    assert not queue.offer(b"z") and not await queue.put(b"z")


def test_limit_must_be_positive() -> None:
    with pytest.raises(ValueError):
        SendQueue(0)
