"""The transaction timer wheel: FIFO lanes for deadlines that come in order, a heap for the rest.

Most transaction deadlines are "now + a constant" (Timer J of a server transaction; Timer K, a
client's first Timer E, Timer F over TCP), so each of those kinds arrives in order and goes to
a FIFO lane of its own (O(1), no heap); the rest (E's doubling retransmission intervals,
anything out of order) go to the heap. The lane a filing goes to is the caller's choice (the
``LANE_*`` constants below keep them apart). One :class:`TimerWheel` serves every transaction
of a :class:`~imc_actors.transport.SipTransport`; its one timer task takes the due filings with
:meth:`TimerWheel.due` and sleeps in :meth:`TimerWheel.sleep`.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import trio

__all__ = [
    "LANES",
    "LANE_FIRST_E",
    "LANE_J",
    "LANE_K",
    "LANE_TCP_F",
    "TICK",
    "Filing",
    "Fire",
    "Timed",
    "TimerWheel",
]

#: The FIFO lanes: Timer J (server), Timer K, a client's first Timer E, Timer F over TCP.
LANE_J, LANE_K, LANE_FIRST_E, LANE_TCP_F = range(4)
LANES = 4
#: Seconds: timers due within one tick fire together.
TICK = 0.005


class Timed(Protocol):
    """A transaction entry the wheel files: ``scheduled`` is the deadline it is filed under."""

    scheduled: float | None


#: ``fire(key, entry, now)``: what the timer task calls for a filing that is due.
Fire = Callable[[Any, Any, float], None]
#: ``(deadline, seq, fire, key, entry)``; ``seq`` keeps heap order stable and comparisons short.
Filing = tuple[float, int, Fire, Any, Any]


class TimerWheel:
    """Deadlines of transaction entries, each filed at most once at its earliest wake-up."""

    __slots__ = ("_heap", "_lanes", "_seq", "_wake", "_sleep_until")

    def __init__(self, lanes: int = LANES) -> None:
        self._heap: list[Filing] = []
        self._lanes: tuple[deque[Filing], ...] = tuple(deque() for _ in range(lanes))
        self._seq = 0
        self._wake = trio.Event()
        self._sleep_until = -math.inf

    def schedule(
        self, lane: int | None, fire: Fire, key: Any, entry: Timed, deadline: float | None
    ) -> None:
        """File ``entry`` under ``deadline`` (in ``lane`` when it keeps the lane in order, else
        in the heap) unless an earlier wake-up is already filed; wake the timer task when it
        sleeps past the new deadline. No checkpoint."""
        if deadline is None:
            return
        if entry.scheduled is not None and entry.scheduled <= deadline:
            return
        entry.scheduled = deadline
        self._seq += 1
        filing = (deadline, self._seq, fire, key, entry)
        fifo = self._lanes[lane] if lane is not None else None
        if fifo is not None and (not fifo or fifo[-1][0] <= deadline):
            fifo.append(filing)
        else:
            heapq.heappush(self._heap, filing)
        if deadline + TICK < self._sleep_until:
            self._sleep_until = -math.inf
            self._wake.set()

    def next_deadline(self) -> float:
        """The soonest deadline filed (``inf`` when none)."""
        soonest = self._heap[0][0] if self._heap else math.inf
        for lane in self._lanes:
            if lane and lane[0][0] < soonest:
                soonest = lane[0][0]
        return soonest

    def due(self, now: float) -> Iterator[Filing]:
        """Take the filings due at ``now`` off the heap and the lanes, lazily; a filing
        superseded by an earlier one of the same entry is skipped, and each yielded entry is
        unfiled (``scheduled`` None) so ``fire`` may file it again."""
        heap = self._heap
        while heap and heap[0][0] <= now:
            filing = heapq.heappop(heap)
            entry = filing[4]
            if entry.scheduled == filing[0]:
                entry.scheduled = None
                yield filing
        for lane in self._lanes:
            while lane and lane[0][0] <= now:
                filing = lane.popleft()
                entry = filing[4]
                if entry.scheduled == filing[0]:
                    entry.scheduled = None
                    yield filing

    async def sleep(self, now: float) -> None:
        """Sleep until the next deadline, at least one :data:`TICK` past ``now``, or until
        :meth:`schedule` files an earlier one.

        Wakes at most once per tick: under load deadlines are a fraction of a millisecond
        apart, and each timed wake-up costs Trio a cancel scope and a Cancelled exception, so
        timers fire in batches, at most a tick late (RFC 3261's are 500 ms and more).
        """
        self._sleep_until = max(self.next_deadline(), now + TICK)
        self._wake = trio.Event()
        with trio.move_on_at(self._sleep_until):
            await self._wake.wait()

    def clear(self) -> None:
        """Drop every filing (the transport stopped)."""
        self._heap.clear()
        for lane in self._lanes:
            lane.clear()
        self._sleep_until = -math.inf
