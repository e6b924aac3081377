"""Fan-out of outgoing MESSAGEs: sent at once when the sender can, else a bounded queue
drained by a pool of workers.

A room actor never awaits a delivery: it hands its notices over and goes on with the next
command, so one slow or dead member never stalls a room. A sender with a ``start`` method (the
server's SIP sender, for a member at an IP address over UDP) sends a notice on the spot and
reports the outcome through a callback: no task per delivery, at most ``max_started`` in
flight. Everything else goes through the queue, which is bounded (backpressure instead of
memory growth), with at most ``workers`` of those deliveries in flight at once.

When ``max_started`` deliveries are in flight (members that stopped answering hold their slot
until Timer F, 32 s), notices queue, and a worker that takes one waits for the next free slot
and starts it there rather than sending it itself: the queue then drains as fast as slots free
up (a round trip each), not at ``workers`` per round trip, so a burst of lost answers does
not throttle every delivery behind it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from ..imc.effects import Notice

log = logging.getLogger("imc_actors.delivery")


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    """The final answer to one outgoing MESSAGE: ``code`` is the SIP status (408 on timeout)."""

    code: int
    reason: str

    @property
    def ok(self) -> bool:
        return 200 <= self.code < 300


#: Sends one notice; ``in_reply_to`` is the Call-ID of the MESSAGE that caused it.
Sender = Callable[[Notice, str], Awaitable[DeliveryResult]]
#: Told the outcome of each delivery (used to report failed invitations back to the room).
OutcomeHook = Callable[[Notice, str, DeliveryResult], None]


@dataclass(frozen=True, slots=True)
class DeliveryStatistics:
    """Counters for metrics: ``queued`` is the current queue depth."""

    submitted: int
    ok: int
    failed: int
    queued: int
    in_flight: int
    by_kind: dict[str, int]


class Delivery:
    """A bounded delivery queue with ``workers`` concurrent senders."""

    def __init__(
        self,
        sender: Sender,
        *,
        on_outcome: OutcomeHook | None = None,
        workers: int = 128,
        queue_size: int = 20_000,
        max_started: int = 20_000,
    ) -> None:
        self._sender = sender
        self.on_outcome = on_outcome
        self._workers = workers
        self._send, self._receive = trio.open_memory_channel[tuple[Notice, str]](queue_size)
        self._submitted = 0
        self._ok = 0
        self._failed = 0
        self._in_flight = 0
        self._slots = trio.Semaphore(max_started)  # one per started delivery in flight
        self._queued = 0  # notices in the channel, not yet taken by a worker
        self._unfinished = 0
        self._idle = trio.Event()
        self._idle.set()
        self._by_kind: dict[str, int] = {}

    def set_sender(self, sender: Sender) -> None:
        """Replace how notices are sent (e.g. an embedding app delivering its own way)."""
        self._sender = sender

    async def run(self, *, task_status: trio.TaskStatus[Delivery] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the workers until cancelled. Queued, unsent notices are dropped on cancellation."""
        async with trio.open_nursery() as nursery:
            for _ in range(self._workers):
                nursery.start_soon(self._worker)
            task_status.started(self)

    async def submit(self, notices: tuple[Notice, ...] | list[Notice], in_reply_to: str) -> None:
        """Queue ``notices``. Checkpoints only when the queue is full (then waits for room).

        When the sender can start a delivery without waiting (it has a ``start(notice,
        in_reply_to, on_done) -> bool`` method, as the server's SIP sender does for a member
        reached over UDP at an IP address) and nothing is queued, the notice is sent at once
        and needs no worker; at most ``max_started`` such deliveries are in flight.
        """
        start = getattr(self._sender, "start", None)
        for notice in notices:
            self._submitted += 1
            self._unfinished += 1
            if self._idle.is_set():
                self._idle = trio.Event()
            self._by_kind[notice.kind] = self._by_kind.get(notice.kind, 0) + 1
            if start is not None and not self._queued and self._slots.value:
                self._slots.acquire_nowait()
                if self._start(start, notice, in_reply_to):
                    continue
                self._slots.release()
            self._queued += 1
            try:
                self._send.send_nowait((notice, in_reply_to))
            except trio.WouldBlock:
                try:
                    await self._send.send((notice, in_reply_to))
                except BaseException:
                    self._queued -= 1
                    raise

    def _start(self, start: Callable[..., bool], notice: Notice, in_reply_to: str) -> bool:
        """Start one delivery in a slot the caller holds (kept by it when True is returned)."""

        def done(result: DeliveryResult) -> None:
            self._slots.release()
            self._in_flight -= 1
            self._finished(notice, in_reply_to, result)

        try:
            started = start(notice, in_reply_to, done)
        except Exception:  # a sender bug: deliver through the workers instead
            log.exception("starting a delivery to %s raised", notice.to)
            return False
        if started:
            self._in_flight += 1
        return bool(started)

    async def _worker(self) -> None:
        async for notice, in_reply_to in self._receive:
            self._queued -= 1
            start = getattr(self._sender, "start", None)
            if start is not None:  # wait for a free slot: the queue drains at its pace
                await self._slots.acquire()
                if self._start(start, notice, in_reply_to):
                    continue
                self._slots.release()
            self._in_flight += 1
            try:
                result = await self._sender(notice, in_reply_to)
            except Exception as exc:  # a sender bug must not kill the pool
                log.exception("delivery to %s raised", notice.to)
                result = DeliveryResult(500, f"Delivery error: {type(exc).__name__}")
            finally:
                self._in_flight -= 1
            self._finished(notice, in_reply_to, result)

    def _finished(self, notice: Notice, in_reply_to: str, result: DeliveryResult) -> None:
        if result.ok:
            self._ok += 1
        else:
            self._failed += 1
            log.info(
                "delivery failed to=%s kind=%s code=%d reason=%s call_id=%s",
                notice.to, notice.kind, result.code, result.reason, in_reply_to,
            )
        if self.on_outcome is not None:
            self.on_outcome(notice, in_reply_to, result)
        self._unfinished -= 1
        if self._unfinished == 0:
            self._idle.set()

    async def drain(self) -> None:
        """Wait until every notice submitted so far has been delivered or has failed."""
        await self._idle.wait()

    def statistics(self) -> DeliveryStatistics:
        return DeliveryStatistics(
            submitted=self._submitted,
            ok=self._ok,
            failed=self._failed,
            queued=self._send.statistics().current_buffer_used,
            in_flight=self._in_flight,
            by_kind=dict(self._by_kind),
        )
