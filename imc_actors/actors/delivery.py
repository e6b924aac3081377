"""Delivery of outgoing MESSAGEs: one ordered queue per recipient, store and forward.

A room actor never awaits a delivery: it hands its notices over (:meth:`Delivery.submit`) and
goes on with the next command. Each recipient (``user@host``, lower case) has a *lane* of its
own, so a slow or dead member only ever delays itself. A notice is in one of these states:

- **held**: submitted under a :class:`Hold` that is not released yet (the server holds the
  notices a MESSAGE caused until the final response to it is on the wire);
- **queued**: in its recipient's lane, in the order the rooms produced it;
- **in flight**: sent, waiting for its final answer. A lane has at most ``window`` notices in
  flight (default 1: the next one leaves when the previous one has its final answer), all
  lanes together at most ``max_in_flight``. A lane with ``burst`` or more notices queued (a
  member sent more than one round trip per notice allows: a bot in a busy room) *bursts*
  once the member has answered one with a 2xx (a dead contact never bursts): up
  to ``burst`` are in flight until the lane is idle again, so the member keeps up instead of
  overflowing into the store. Over UDP a lost MESSAGE may then arrive after up to
  ``burst - 1`` later ones, so a lane does not burst again before it is idle once an answer
  took :data:`LATE_ANSWER` or more (a retransmission), a delivery failed or went overdue.
  Only through a sender's ``start`` (below), which puts each notice on the wire as it is
  started: tasks would send the notices of a burst in any order, so a notice that ``start``
  declines ends the burst too. A notice unanswered for ``overdue`` seconds (its
  MESSAGE being retransmitted) stops counting against the window (one such notice per lane at
  a time, so an overloaded server is not sent more work); when it then times out (408)
  while a later one was answered, the member is there and only its answer was
  lost: it fails alone, the lane does not park. When the next one goes as long unanswered
  too, with no answer since the first, the member is gone (a phone off the network): the
  lane parks at once (:meth:`Delivery._park_silent`), its notices in flight stored in their
  turn, rather than keep everything that comes for it in memory until Timer F; a late 2xx to
  one of them wakes it. So does a full ``queue_size``: lanes with an overdue notice park
  before the rooms are made to wait;
- **delivered** (2xx), or **refused** (a deliberate 4xx/6xx such as 403, 404, 415: dropped and
  counted; a failed invitation is reported back to its room through ``on_outcome``);
- **unreachable** (408, 480, 486, 5xx, no binding, transport error): a notice the room sent a
  *member* (``Notice.keep``) is **stored** durably (the ``imc_pending`` table, through the
  store) and the lane is *parked*: what comes next for that member is stored behind it, in
  order (a notice still in flight when the lane parks keeps its turn: what is newer waits
  for its outcome, and an overdue one is stored in its turn at once), and nothing is sent
  until the member is reachable again (:meth:`Delivery.wake`, called
  on its next REGISTER and its next MESSAGE; or a 2xx to a notice still in flight), or until a retry: a parked member that still has
  a binding (``reachable``) is tried again ``pending_retry`` seconds after it parked, then
  after twice as long each time it is still unreachable, up to an hour. Then the stored
  notices go out oldest first, each with a ``Date:`` of its original time, while what keeps
  coming for the member is stored behind them, and once none is left the lane delivers
  directly again. Refusals, replies and invitations are never stored: an unreachable one fails (an
  invitation is withdrawn by its room).

Bounds: a lane holds at most ``member_queue`` notices in memory (past that, member notices
are stored and the lane flushes from the store; others fail with 503), all lanes together
``queue_size`` notices and ``queue_bytes`` bytes of bodies, a body shared by several notices
counted once (past either, :meth:`submit` waits: backpressure on the rooms). A member has at
most ``pending_max`` stored notices (the oldest are dropped and counted), each kept at most
``pending_ttl`` seconds (then dropped and counted as expired). All members together have at
most ``pending_total_max`` (counted in the whole table at :meth:`restore`, again hourly and
whenever the count nears the bound, and kept up to date here in between): a notice that would
pass it is not stored (dropped and counted as ``full``), so no number of absent members can
fill the disk.

A sender with a ``start`` method (the server's SIP sender, for the common case of a member
at an IP address) sends a notice on the spot and reports the outcome through a callback: no
task per delivery. Otherwise each delivery in flight runs in a task of its own.

With several workers (``serve --workers N``), a member's notices may be delivered by the
worker of its own (``handoff``, :mod:`imc_actors.handoff`): :meth:`submit` puts those into an
*outbox* for that worker instead of a lane. An outbox respects holds as a lane does and, once
free, hands its notices over in one frame per batch; the other worker queues them with
:meth:`take` in its lanes. Notices it cannot take at once (down, or behind) go into the lanes
here. Invitations stay here, since their failure goes back to their room.

Stored notices are delivered at least once: a crash between a delivery and the delete of its
row sends it again after the restart (rows are deleted every :data:`FLUSH_DELETE` deliveries).
A wake (REGISTER, MESSAGE) that comes while a notice to the member is in flight makes the lane
flush again at once should that notice fail: its new binding is tried without a retry's wait.
"""

from __future__ import annotations

import heapq
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import trio

from ..imc.effects import Notice
from ..imc.state import member_key
from ..store.records import PendingAdd, PendingDelete, PendingExpire, PendingRow, PendingTrim
from ..store.repository import StoreError
from ..store.writer import StoreUnavailable
from ..transport.limits import LogBudget

log = logging.getLogger("imc_actors.delivery")

#: Failed deliveries logged per second at most (one line each; the first line after a second
#: that left some out says how many). Each is counted in ``imc_deliveries_total{result="failed"}`` anyway.
FAILED_LOG_LINES = 20

#: Seconds a :class:`Hold` may stay unreleased before delivery releases it by itself.
HOLD_LIMIT = 2.0
#: Pending-table counts :meth:`Delivery.adopt` reads at once at most (a REGISTER flood
#: costs that many reads, then is not looked at).
ADOPT_READS = 8
#: Stored notices read per round of a flush.
FLUSH_BATCH = 100
#: Stored notices delivered between two deletes of their rows during a flush: what a crash
#: (kill -9) may deliver a second time after the restart.
FLUSH_DELETE = 10
#: Notices written to the store per commit when a lane parks.
PERSIST_BATCH = 100
#: The longest wait between two retries of a parked member (seconds; see ``pending_retry``).
RETRY_CAP = 3600.0
#: Seconds between two warnings about one member's dropped stored notices (each drop counts).
DROP_WARNING_INTERVAL = 60.0
#: Seconds between two counts of the whole pending table near ``pending_total_max``.
RECOUNT_INTERVAL = 5.0
#: An answer this late (RFC 3261's T1: its MESSAGE was retransmitted over UDP, or the member is
#: slow) stops its lane's burst until the lane is idle (see ``burst``).
LATE_ANSWER = 0.5


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    """The final answer to one outgoing MESSAGE: ``code`` is the SIP status (408 on timeout)."""

    code: int
    reason: str

    @property
    def ok(self) -> bool:
        return 200 <= self.code < 300

    @property
    def unreachable(self) -> bool:
        """The recipient could not be reached (408, 480, 5xx): worth storing and retrying.
        Any other failure is a deliberate refusal (403, 404, 415, 482, 6xx, ...); 486 Busy
        Here is not (RFC 3261 §21.4.24: the user may be reachable later)."""
        return self.code in (408, 480, 486) or 500 <= self.code < 600


#: Sends one notice; ``in_reply_to`` is the Call-ID of the MESSAGE that caused it.
Sender = Callable[[Notice, str], Awaitable[DeliveryResult]]
#: Told the final outcome of each delivery that was not stored (failed invitations go back to
#: their room through it).
OutcomeHook = Callable[[Notice, str, DeliveryResult], None]


class HandoffTarget(Protocol):
    """Where members' notices are delivered with several workers (see
    :class:`~imc_actors.handoff.Handoff`)."""

    def worker_of(self, key: str) -> int | None: ...

    def send(self, worker: int, notices: Sequence[tuple[Notice, str]]) -> int: ...

    def wake(self, worker: int, member: str) -> None: ...


class PendingStore(Protocol):
    """What delivery needs to store notices: the store's commit and read (see
    :class:`~imc_actors.store.writer.Store`)."""

    async def commit(self, writes: Sequence[Any]) -> None: ...

    async def read(self, query: Callable[[Any], Any]) -> Any: ...

    async def wait_available(self) -> None: ...


@dataclass(frozen=True, slots=True)
class DeliveryStatistics:
    """Counters for metrics.

    ``queued`` notices in memory now, ``in_flight`` sent and awaiting an answer; ``ok``,
    ``failed`` final outcomes so far (``failed`` includes refusals); ``stored`` notices put in
    the pending store, ``flushed`` stored ones delivered later, ``expired`` and ``dropped``
    (over ``pending_max``) stored ones given up, ``full`` ones not stored because the store
    held ``pending_total_max`` notices; ``pending`` stored ones waiting now, for
    ``waiting_members`` members. With several workers: ``handed_out`` notices handed to
    their member's worker, ``handed_in`` taken from another worker, ``handoff_fallbacks``
    delivered here because their member's worker could not take them. ``bursts``: times a
    lane had ``burst`` notices waiting and opened its window to that many.
    """

    submitted: int
    ok: int
    failed: int
    queued: int
    in_flight: int
    by_kind: dict[str, int]
    stored: int = 0
    flushed: int = 0
    expired: int = 0
    dropped: int = 0
    full: int = 0
    pending: int = 0
    waiting_members: int = 0
    handed_out: int = 0
    handed_in: int = 0
    handoff_fallbacks: int = 0
    bursts: int = 0


def _stops(result: DeliveryResult) -> bool:
    """A flush stops at an unreachable answer (the rest stays stored)."""
    return not result.ok and result.unreachable


class Hold:
    """Notices submitted under a hold stay queued until :meth:`release` (see the module
    docstring); made by :meth:`Delivery.hold`. Releasing twice does nothing."""

    __slots__ = ("_delivery", "_event", "_lanes", "made", "released")

    def __init__(self, delivery: Delivery) -> None:
        self._delivery = delivery
        self.released = False
        self.made = trio.current_time()
        self._lanes: list[_Lane] = []
        self._event: trio.Event | None = None

    def release(self) -> None:
        """Let the held notices go. Never blocks; may start deliveries."""
        if self.released:
            return
        self.released = True
        if self._event is not None:
            self._event.set()
        self._delivery._holds.discard(self)
        lanes, self._lanes = self._lanes, []
        for lane in lanes:
            self._delivery._pump(lane)

    async def wait(self) -> None:
        if not self.released:
            if self._event is None:
                self._event = trio.Event()
            await self._event.wait()

    def _block(self, lane: _Lane) -> None:
        if lane not in self._lanes:
            self._lanes.append(lane)
        self._delivery._holds.add(self)


class _Item:
    __slots__ = ("created", "detached", "hold", "in_reply_to", "notice", "overdue", "sent", "seq")

    def __init__(
        self, notice: Notice, in_reply_to: str, hold: Hold | None, seq: int, created: float
    ) -> None:
        self.notice = notice
        self.in_reply_to = in_reply_to
        self.hold = hold
        self.seq = seq
        self.created = created
        self.sent = 0.0  # trio time it was sent
        self.overdue = False  # unanswered for `overdue` s: no longer holds the lane's window
        self.detached = False  # stored while still in flight (see Delivery._detach): its outcome is moot


class _Lane:
    """One recipient's queue (see the module docstring)."""

    __slots__ = (
        "answered",
        "bursting",
        "flying",
        "in_flight",
        "items",
        "key",
        "nudge",
        "parked",
        "persisting",
        "remote",
        "retries",
        "retry_at",
        "steady",
        "stored",
        "unwarned",
        "waiting",
        "warned_at",
        "woke_at",
        "woken",
        "working",
    )

    def __init__(self, key: str, remote: int = -1) -> None:
        self.key = key
        self.remote = remote  # an outbox for this worker (see HandoffTarget); -1: a member's lane
        self.items: deque[_Item] = deque()
        self.in_flight = 0  # in flight and holding the window (overdue ones do not)
        self.flying: deque[_Item] = deque()  # every direct delivery in flight, oldest first
        self.answered = -math.inf  # trio time of the last 2xx
        self.bursting = False  # up to Delivery's burst in flight, until the lane is idle
        self.steady = True  # no late answer, failure or overdue since the lane was last idle
        self.parked = False  # unreachable: new notices are stored, nothing is sent
        self.woken = False  # reachable again: flush the stored notices
        self.woke_at = -math.inf  # trio time of the last wake (its REGISTER or MESSAGE)
        self.working = False  # the lane's worker task runs (flushing, or waiting for the store)
        self.persisting = False  # the lane's persister task runs (writing notices to the store)
        self.waiting = False  # in Delivery._waiting for a free in-flight slot
        self.stored = 0  # rows in the pending store
        self.nudge: trio.Event | None = None  # the worker waits on it: set on news for it
        self.retry_at: float | None = None  # a retry of the parked lane is scheduled then
        self.retries = 0  # retries since the lane parked (the backoff doubles with each)
        self.warned_at = -math.inf  # trio time of the last warning about dropped notices
        self.unwarned = 0  # notices dropped since that warning

    def unsteady(self) -> None:
        """A sign of loss (a late answer, a failure, an overdue notice) or a notice sent by a
        task: no more than the window in flight, and no burst, until the lane is idle."""
        self.steady = self.bursting = False


def _pending_total(repository: Any) -> int:
    """The whole pending table's count: one COUNT where the repository has it (a stand-in
    store's repository may have only ``pending_counts``)."""
    total = getattr(repository, "pending_total", None)
    return int(total()) if total is not None else sum(repository.pending_counts().values())


class Delivery:
    """Per-recipient ordered delivery with store and forward (see the module docstring).

    ``store`` is the pending store (None: an unreachable member's notices fail, as for a
    bare conference without storage); ``clock`` gives wall-clock seconds for stored notices.
    """

    def __init__(
        self,
        sender: Sender,
        *,
        on_outcome: OutcomeHook | None = None,
        store: PendingStore | None = None,
        window: int = 1,
        burst: int = 16,
        member_queue: int = 1000,
        queue_size: int = 20_000,
        queue_bytes: int = 64 * 1024 * 1024,
        max_in_flight: int = 20_000,
        pending_max: int = 1000,
        pending_total_max: int = 1_000_000,
        pending_ttl: float = 7 * 24 * 3600.0,
        pending_retry: float = 60.0,
        overdue: float = 4.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if min(window, burst, member_queue, queue_size, queue_bytes, max_in_flight, pending_total_max) < 1:
            raise ValueError(
                "window, burst, member_queue, queue_size, queue_bytes, max_in_flight and "
                "pending_total_max must be positive"
            )
        self.on_outcome = on_outcome
        self._store = store if pending_max > 0 else None
        self._window = window
        self._burst = burst
        self._bursts = 0
        self._member_queue = member_queue
        self._store_batch = min(PERSIST_BATCH, member_queue)  # see _persister
        self._queue_size = queue_size
        self._queue_bytes = queue_bytes
        self._max_in_flight = max_in_flight
        self._pending_max = pending_max
        self._pending_total_max = pending_total_max
        #: Stored notices in the whole table: as last counted, plus what this delivery stored
        #: and minus what it deleted since (other workers' and nodes' changes show at the next
        #: count: :meth:`_room_in_store`).
        self._stored_all = 0
        self._counted_at = -math.inf
        self._full_warned_at = -math.inf
        self._full_unwarned = 0
        self._pending_ttl = pending_ttl
        self._pending_retry = pending_retry
        self._overdue = overdue
        self._clock = clock
        #: Whether a member (``user@host``) has a binding now; None: assume it has. Set by the
        #: server from its registrar; a parked member without one is not retried until it has.
        self.reachable: Callable[[str], bool] | None = None
        self._retries: list[tuple[float, int, _Lane]] = []  # heap of (due, seq, lane)
        self._retry_changed: trio.Event | None = None
        self._retry_ids = 0
        self._sender: Sender = sender
        self._start: Callable[..., bool] | None = getattr(sender, "start", None)
        self._nursery: trio.Nursery | None = None
        self._lanes: dict[str, _Lane] = {}
        self._waiting: deque[_Lane] = deque()  # lanes waiting for an in-flight slot
        self._kicking = False
        self._holds: set[Hold] = set()
        self._seq = 0
        self._queued = 0
        self._queued_bytes = 0  # the distinct bodies of the queued notices
        #: id(body) -> [queued notices sharing it, its length]
        self._bodies: dict[int, list[int]] = {}
        self._in_flight = 0
        self._unfinished = 0
        self._idle = trio.Event()
        self._idle.set()
        self._space: trio.Event | None = None
        self._spilled_at = -math.inf  # trio time of the last _spill_silent
        self._adopting: set[str] = set()  # members whose stored rows adopt() is counting
        self._submitted = 0
        self._ok = 0
        self._failed = 0
        self._failed_log = LogBudget(FAILED_LOG_LINES)  # a flood of failures: a bounded log
        self._parked_log = LogBudget(FAILED_LOG_LINES)  # and of made-up members parking
        self._stored_total = 0
        self._flushed = 0
        self._expired = 0
        self._dropped = 0
        self._not_stored = 0
        self._by_kind: dict[str, int] = {}
        self._store_warned_at = -math.inf
        #: Several workers: hands members' notices to the worker that delivers to them.
        self.handoff: HandoffTarget | None = None
        self._outboxes: dict[int, _Lane] = {}
        self._handed_out = 0
        self._handed_in = 0
        self._handoff_fallbacks = 0

    def set_sender(self, sender: Sender) -> None:
        """Replace how notices are sent (e.g. an embedding app delivering its own way)."""
        self._sender = sender
        self._start = getattr(sender, "start", None)

    # ------------------------------------------------------------------ lifecycle
    async def restore(self) -> None:
        """Park the lanes of members who have stored notices (call once before :meth:`run`);
        with ``handoff`` set, of this worker's members only (each worker flushes its own).
        Raises StoreError when the store cannot be read."""
        if self._store is None:
            return
        counts: dict[str, int] = await self._store.read(
            lambda repository: repository.pending_counts()
        )
        self._counted(counts)
        handoff = self.handoff
        for key, count in counts.items():
            if handoff is not None and handoff.worker_of(key) is not None:
                continue
            lane = self._lane(key)
            lane.parked = True
            lane.stored = count

    async def run(
        self, *, task_status: trio.TaskStatus[Delivery] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Deliver until cancelled. Queued, unsent notices are dropped on cancellation (stored
        ones stay stored)."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._forget_nursery_when_stopped)
                nursery.start_soon(self._release_stale_holds)
                if self._overdue > 0:
                    nursery.start_soon(self._overdue_loop)
                if self._store is not None:
                    nursery.start_soon(self._expire_loop)
                    if self._pending_retry > 0:
                        nursery.start_soon(self._retry_loop)
                for lane in list(self._lanes.values()):
                    self._pump(lane)
                    if lane.parked:
                        self._schedule_retry(lane)
                task_status.started(self)
        finally:
            self._nursery = None

    async def _forget_nursery_when_stopped(self) -> None:
        # A child of the nursery, so it ends before the nursery closes to new tasks: a room
        # whose shielded commit ends during shutdown and submits its notices then finds no
        # nursery (its notices wait, and are dropped with the rest) instead of raising
        # "Nursery is closed to new arrivals" in the room's actor (a crash and a traceback).
        try:
            await trio.sleep_forever()
        finally:
            self._nursery = None

    # ------------------------------------------------------------------ public API
    def hold(self) -> Hold:
        """A new :class:`Hold` for :meth:`submit`. Never blocks."""
        return Hold(self)

    async def submit(
        self, notices: Sequence[Notice], in_reply_to: str, *, hold: Hold | None = None
    ) -> None:
        """Queue ``notices`` (in order, each in its recipient's lane). Checkpoints only when
        ``queue_size`` notices or ``queue_bytes`` of bodies are in memory already (then waits
        for room)."""
        for notice in notices:
            await self._wait_for_space()
            self._add(notice, in_reply_to, hold)
        for box in self._outboxes.values():
            if box.items:
                self._pump(box)

    async def take(self, notices: Sequence[tuple[Notice, str]]) -> None:
        """Queue ``(notice, in_reply_to)`` pairs another worker handed over: this worker
        delivers them (never hands them on). Waits as :meth:`submit` does."""
        for notice, in_reply_to in notices:
            await self._wait_for_space()
            self._handed_in += 1
            self._add(notice, in_reply_to, None, here=True)

    async def _wait_for_space(self) -> None:
        while self._full():
            self._spill_silent()
            if not self._full():
                break
            if self._space is None:
                self._space = trio.Event()
            await self._space.wait()

    def _spill_silent(self) -> None:
        """``queue_size`` or ``queue_bytes`` is reached: park every lane whose member has let a
        notice go unanswered for ``overdue`` seconds and has member notices queued, so that
        they are stored rather than wait in memory. Else members who answer nothing (phones
        gone without unregistering) hold the whole queue until Timer F, and every room waits
        for it. Once a second at most (it looks at every lane)."""
        now = trio.current_time()
        if self._store is None or now - self._spilled_at < 1.0:
            return
        self._spilled_at = now
        for lane in list(self._lanes.values()):
            if (
                not lane.parked and lane.flying and lane.flying[0].overdue
                and any(item.notice.keep for item in lane.items)
            ):  # fmt: skip
                self._park_silent(lane, now - lane.flying[0].sent)

    def _park_silent(self, lane: _Lane, silent: float) -> None:
        """Park ``lane`` as unreachable: its member answered nothing for ``silent`` seconds.
        Its member notices in flight are stored in their turn with what is queued (should one
        be answered after all, the member gets it twice: at least once); it is tried again
        on its next REGISTER or MESSAGE, or at its retry."""
        lane.parked = True
        lane.woken = False
        self._parked_log.log(
            log, logging.INFO, trio.current_time(),
            "member %s answered nothing for %.0f s: storing its notices", lane.key, silent,
            what="members parked",
        )  # fmt: skip
        for item in [item for item in lane.flying if item.notice.keep]:
            self._detach(lane, item)
        self._ensure_worker(lane)
        self._nudge(lane)

    def wake(self, member: str, *, here: bool = False) -> None:
        """``member`` (a URI or ``user@host``) is reachable again: deliver what is stored for it
        (no effect when nothing is); with several workers, its own worker is told too unless
        ``here`` (the caller tells every worker itself). Never blocks."""
        key = member_key(member)
        if self.handoff is not None and not here:
            worker = self.handoff.worker_of(key)
            if worker is not None:
                self.handoff.wake(worker, key)
        lane = self._lanes.get(key)
        if lane is None:
            return
        lane.woke_at = trio.current_time()  # a flush failing now tries the new binding at once
        self._wake_parked(lane)

    def adopt(self, member: str) -> None:
        """``member`` registered (config ``node``: other nodes share the pending table): if
        this process keeps no lane with stored notices for it, look in the table for rows
        another node stored, a node since killed that nobody restarted, and deliver them as
        if they were its own (they are flushed oldest first, ahead of anything newer). Never
        blocks: the count is read in a task; at most :data:`ADOPT_READS` at once."""
        key = member_key(member)
        lane = self._lanes.get(key)
        if self._store is None or self._nursery is None or (lane is not None and lane.parked):
            return  # (a parked lane flushes everything stored for the member: wake does)
        if self.handoff is not None and self.handoff.worker_of(key) is not None:
            return  # its own worker adopts them
        if key in self._adopting or len(self._adopting) >= ADOPT_READS:
            return
        self._adopting.add(key)
        self._nursery.start_soon(self._adopt, key)

    async def _adopt(self, key: str) -> None:
        assert self._store is not None
        try:
            count = int(await self._store.read(lambda repository: repository.pending_count(key)))
        except StoreError as exc:
            log.warning("looking for notices stored for %s failed: %s", key, exc)
            return
        finally:
            self._adopting.discard(key)
        lane = self._lane(key)
        if not count or lane.parked:
            self._forget_if_idle(lane)
            return
        log.info("member %s: delivering %d notices stored by another node", key, count)
        lane.stored = count
        lane.parked = lane.woken = True  # what comes now waits behind them, as for a slow member
        lane.retries = 0
        self._ensure_worker(lane)

    async def drain(self) -> None:
        """Wait until every notice submitted so far has been delivered, has failed or is
        stored, and no stored notices are being delivered."""
        await self._idle.wait()

    def statistics(self) -> DeliveryStatistics:
        parked = [lane for lane in self._lanes.values() if lane.parked]
        return DeliveryStatistics(
            submitted=self._submitted,
            ok=self._ok,
            failed=self._failed,
            queued=self._queued,
            in_flight=self._in_flight,
            by_kind=dict(self._by_kind),
            stored=self._stored_total,
            flushed=self._flushed,
            expired=self._expired,
            dropped=self._dropped,
            full=self._not_stored,
            pending=sum(lane.stored for lane in parked),
            waiting_members=sum(1 for lane in parked if lane.stored or lane.items),
            handed_out=self._handed_out,
            handed_in=self._handed_in,
            handoff_fallbacks=self._handoff_fallbacks,
            bursts=self._bursts,
        )

    # ------------------------------------------------------------------ lanes
    def _lane(self, key: str) -> _Lane:
        lane = self._lanes.get(key)
        if lane is None:
            lane = self._lanes[key] = _Lane(key)
        return lane

    def _add(self, notice: Notice, in_reply_to: str, hold: Hold | None, *, here: bool = False) -> None:
        key = member_key(notice.to)
        if self.handoff is not None and not here and notice.invite_of is None:
            worker = self.handoff.worker_of(key)
            if worker is not None:  # the member's worker delivers it (its outbox: see submit)
                box = self._outboxes.get(worker)
                if box is None:
                    box = self._outboxes[worker] = _Lane(f"worker {worker}", remote=worker)
                item = _Item(notice, in_reply_to, hold, 0, 0.0)
                box.items.append(item)
                self._enqueued(item)
                self._begin()
                return
        self._submitted += 1
        self._by_kind[notice.kind] = self._by_kind.get(notice.kind, 0) + 1
        lane = self._lane(key)
        if lane.parked and notice.invite_of is not None:
            self._final(
                notice, in_reply_to, DeliveryResult(480, "Temporarily Unavailable"), counted=False
            )
            return
        if not lane.parked and len(lane.items) >= self._member_queue:
            if not (notice.keep and self._store is not None):
                self._final(
                    notice, in_reply_to, DeliveryResult(503, "Member Queue Full"), counted=False
                )
                return
            lane.parked = lane.woken = True  # a slow member: store the overflow, flush it in order
        self._seq += 1
        item = _Item(notice, in_reply_to, hold, self._seq, self._clock())
        lane.items.append(item)
        self._enqueued(item)
        self._begin()
        if lane.parked:
            if not lane.woken or len(lane.items) >= self._store_batch:
                self._ensure_persister(lane)
            self._nudge(lane)  # a persister waiting for a notice in flight looks again
            self._ensure_worker(lane)
        else:
            self._pump(lane)

    def _nudge(self, lane: _Lane) -> None:
        """Tell ``lane``'s worker something changed (an answer, the persister done)."""
        if lane.nudge is not None:
            lane.nudge.set()
            lane.nudge = None

    def _pump(self, lane: _Lane) -> None:
        """Start what ``lane`` may start now. Never blocks."""
        if lane.remote >= 0:
            self._pump_outbox(lane)
            return
        items = lane.items
        if (
            not lane.bursting and len(items) >= self._burst > self._window and lane.steady
            and lane.answered > -math.inf and self._start is not None and not lane.parked
        ):  # fmt: skip
            lane.bursting = True
            self._bursts += 1
        while (
            not lane.parked and items
            and lane.in_flight < (self._burst if lane.bursting else self._window)
        ):  # fmt: skip
            item = items[0]
            hold = item.hold
            if hold is not None and not hold.released:
                if self._held_back(lane, hold):
                    return
                hold.release()
                continue
            if self._in_flight >= self._max_in_flight or self._nursery is None:
                if not lane.waiting and self._nursery is not None:
                    lane.waiting = True
                    self._waiting.append(lane)
                return
            items.popleft()
            self._dequeued((item,))
            lane.in_flight += 1
            self._in_flight += 1
            self._send(lane, item)
        if not items and not lane.flying:  # idle: the next backlog may burst again
            lane.bursting = False
            lane.steady = True
        self._forget_if_idle(lane)

    @staticmethod
    def _held_back(lane: _Lane, hold: Hold) -> bool:
        """True when the unreleased ``hold`` still holds ``lane`` back (pumped again on its
        release). False when it is stale (its answer never went out): the caller releases it
        and goes on, as the sweep would have, instead of waiting one sweep per notice."""
        if trio.current_time() - hold.made < HOLD_LIMIT:
            hold._block(lane)
            return True
        return False

    def _pump_outbox(self, box: _Lane) -> None:
        """Hand over what ``box`` holds, up to the first notice still held."""
        items = box.items
        batch: list[_Item] = []
        while items:
            hold = items[0].hold
            if hold is not None and not hold.released:
                if self._held_back(box, hold):
                    break
                if batch:  # what came before goes first: releasing pumps this box again
                    self._hand_off(box.remote, batch)
                    batch = []
                hold.release()
                continue
            batch.append(items.popleft())
        if batch:
            self._hand_off(box.remote, batch)

    def _hand_off(self, worker: int, batch: list[_Item]) -> None:
        """Hand ``batch`` (out of its outbox) to ``worker``; what it does not take is queued
        in the lanes here."""
        assert self.handoff is not None
        try:
            sent = self.handoff.send(worker, [(item.notice, item.in_reply_to) for item in batch])
        except Exception:  # a bug in the hand-off must not lose the notices
            log.exception("handing notices to worker %d raised", worker)
            sent = 0
        self._dequeued(batch)
        self._handed_out += sent
        for item in batch[sent:]:
            self._handoff_fallbacks += 1
            self._add(item.notice, item.in_reply_to, None, here=True)
        self._end(len(batch))  # after the fallbacks began: drain() never sees a false idle

    def _send(self, lane: _Lane, item: _Item) -> None:
        item.sent = trio.current_time()
        lane.flying.append(item)

        def done(result: DeliveryResult) -> None:
            self._done(lane, item, result)

        if not self._started(item.notice, item.in_reply_to, done):
            assert self._nursery is not None
            lane.unsteady()  # a task may send after the next one
            self._nursery.start_soon(self._send_task, lane, item)

    def _started(
        self, notice: Notice, in_reply_to: str, done: Callable[[DeliveryResult], None]
    ) -> bool:
        """Start a delivery through the sender's ``start`` (its answer goes to ``done``); False
        when the sender has none or declines, and when it raises (a sender bug): the caller
        then delivers through :meth:`_call`."""
        start = self._start
        if start is None:
            return False
        try:
            return bool(start(notice, in_reply_to, done))
        except Exception:
            log.exception("starting a delivery to %s raised", notice.to)
            return False

    async def _send_task(self, lane: _Lane, item: _Item) -> None:
        self._done(lane, item, await self._call(item.notice, item.in_reply_to))

    async def _call(self, notice: Notice, in_reply_to: str) -> DeliveryResult:
        try:
            return await self._sender(notice, in_reply_to)
        except Exception as exc:  # a sender bug must not kill delivery
            log.exception("delivery to %s raised", notice.to)
            return DeliveryResult(500, f"Delivery error: {type(exc).__name__}")

    def _done(self, lane: _Lane, item: _Item, result: DeliveryResult) -> None:
        if item.detached:  # stored in its turn when its lane parked: this outcome is moot,
            if result.ok:  # but the member is there after all
                self._wake_parked(lane)
            return
        self._landed(lane, item)
        self._nudge(lane)
        notice = item.notice
        now = trio.current_time()
        if not result.ok or now - item.sent >= LATE_ANSWER:
            lane.unsteady()
        if result.ok:
            lane.answered = now
            self._wake_parked(lane)
        elif result.code == 408 and lane.answered > item.sent:
            # Later notices were answered while this one went unanswered: the member is there
            # and its answer to this one was lost (a phone that ignores retransmissions). It
            # failed alone; the member is not parked. Only a timeout: a notice of a burst
            # answered 480 or 5xx while later ones got 2xx is stored (below), not lost.
            self._final(notice, item.in_reply_to, result)
            self._pump(lane)
            self._kick()
            return
        if not result.ok and result.unreachable and notice.keep and self._store is not None:
            # Back in the lane, ahead of anything newer, and the lane parks: stored in order.
            self._requeue(lane, item)
            if not lane.parked:
                lane.parked = True
                self._parked_log.log(
                    log, logging.INFO, trio.current_time(),
                    "member %s unreachable (%d %s): storing its notices",
                    lane.key, result.code, result.reason, what="members parked",
                )  # fmt: skip
            if lane.woke_at > item.sent:  # it registered (or wrote) since: try again at once
                lane.woken = True
            if not lane.woken:
                for other in [other for other in lane.flying if other.overdue]:
                    self._detach(lane, other)
            self._ensure_worker(lane)
        else:
            self._final(notice, item.in_reply_to, result)
        self._pump(lane)
        self._kick()

    def _wake_parked(self, lane: _Lane) -> None:
        """The member of parked ``lane`` is there (its REGISTER or MESSAGE, or a 2xx that came
        back while the lane was parked, for answering nothing or for a full queue on an answer
        merely lost): what is stored goes out now."""
        if lane.parked and not lane.woken:
            lane.woken = True
            lane.retries = 0
            self._nudge(lane)
            self._ensure_worker(lane)

    def _detach(self, lane: _Lane, item: _Item) -> None:
        """A parked lane's overdue notice, still unanswered (its MESSAGE retransmitted until
        Timer F): back in the lane in its turn, to be stored with the others, as if it had
        failed now. Else it would be stored when it fails, up to half a minute later, behind
        what came after it, and a flush would deliver it out of order. Stored notices are
        delivered at least once: should it be answered 2xx after all, the member gets it
        twice. Member notices only: the others fail on their own."""
        if not item.notice.keep or self._store is None:
            return
        item.detached = True
        self._landed(lane, item)
        self._requeue(lane, item)
        self._nudge(lane)
        self._kick()

    def _landed(self, lane: _Lane, item: _Item) -> None:
        """``item`` is no longer in flight: its window slot (unless it was overdue, which
        gave it back already) and its global slot are free."""
        if item.overdue:
            item.overdue = False
        else:
            lane.in_flight -= 1
        self._in_flight -= 1
        lane.flying.remove(item)  # _send put it there

    def _requeue(self, lane: _Lane, item: _Item) -> None:
        """Put ``item`` back in its lane in its turn, ahead of anything newer."""
        index = 0
        while index < len(lane.items) and lane.items[index].seq < item.seq:
            index += 1
        lane.items.insert(index, item)
        self._enqueued(item)

    def _oldest_flying(self, lane: _Lane) -> float:
        """The seq below which an unreachable lane's queued notices may be stored now: that of
        its oldest member notice still in flight (should it fail, it is stored in its turn,
        before them). No bound while the lane is being flushed (a slow member's overflow must
        go to the store at once; the notice in flight is most likely answered)."""
        if lane.woken:
            return math.inf
        return min((item.seq for item in lane.flying if item.notice.keep), default=math.inf)

    def _persist_now(self, lane: _Lane) -> bool:
        """What the persister waits for: the lane no longer parked, a notice it may store,
        or ``member_queue`` notices waiting."""
        return not lane.parked or self._storable(lane) or len(lane.items) >= self._member_queue

    def _storable(self, lane: _Lane) -> bool:
        """True when the lane's oldest queued notice may be stored now (see
        :meth:`_oldest_flying`)."""
        return bool(lane.items) and lane.items[0].seq < self._oldest_flying(lane)

    def _final(
        self, notice: Notice, in_reply_to: str, result: DeliveryResult, *, counted: bool = True
    ) -> None:
        """Record a final outcome (``counted``: the notice was counted as unfinished)."""
        if result.ok:
            self._ok += 1
        else:
            self._failed += 1
            self._failed_log.log(
                log, logging.INFO, trio.current_time(),
                "delivery failed to=%s kind=%s code=%d reason=%s in_reply_to=%s",
                notice.to, notice.kind, result.code, result.reason, in_reply_to,
                what="failed deliveries",
            )  # fmt: skip
        if self.on_outcome is not None:
            self.on_outcome(notice, in_reply_to, result)
        if counted:
            self._end(1)

    def _kick(self) -> None:
        """Give freed in-flight slots to lanes waiting for one (no recursion through it)."""
        if self._kicking:
            return
        self._kicking = True
        try:
            while self._waiting and self._in_flight < self._max_in_flight:
                lane = self._waiting.popleft()
                lane.waiting = False
                self._pump(lane)
        finally:
            self._kicking = False

    def _forget_if_idle(self, lane: _Lane) -> None:
        if (
            not lane.items and not lane.flying and not lane.parked and not lane.working
            and not lane.waiting and self._lanes.get(lane.key) is lane
        ):  # fmt: skip
            del self._lanes[lane.key]

    # ------------------------------------------------------------------ accounting
    def _begin(self) -> None:
        self._unfinished += 1
        if self._idle.is_set():
            self._idle = trio.Event()

    def _end(self, count: int) -> None:
        self._unfinished -= count
        if self._unfinished <= 0:
            self._unfinished = 0
            self._idle.set()

    def _enqueued(self, item: _Item) -> None:
        """Count ``item`` in ``queue_size``, and its body in ``queue_bytes`` once however many
        queued notices share it (a relayed line is one body for every member)."""
        self._queued += 1
        body = item.notice.body
        held = self._bodies.get(id(body))
        if held is None:  # (a queued item holds the body: its id is its own until dequeued)
            self._bodies[id(body)] = [1, len(body)]
            self._queued_bytes += len(body)
        else:
            held[0] += 1

    def _dequeued(self, items: Sequence[_Item]) -> None:
        self._queued -= len(items)
        bodies = self._bodies
        for item in items:
            key = id(item.notice.body)
            held = bodies[key]
            held[0] -= 1
            if not held[0]:
                del bodies[key]
                self._queued_bytes -= held[1]
        if self._space is not None and not self._full():
            self._space.set()
            self._space = None

    def _full(self) -> bool:
        return self._queued >= self._queue_size or self._queued_bytes >= self._queue_bytes

    # ------------------------------------------------------------------ store and forward
    def _ensure_worker(self, lane: _Lane) -> None:
        if not lane.working and self._nursery is not None:
            lane.working = True
            self._begin()  # drain() waits for the worker (ended in its finally)
            self._nursery.start_soon(self._lane_worker, lane)

    def _ensure_persister(self, lane: _Lane) -> None:
        if not lane.persisting and self._nursery is not None:
            lane.persisting = True
            self._begin()  # drain() waits for it too
            self._nursery.start_soon(self._persister, lane)

    async def _persister(self, lane: _Lane) -> None:
        """Write a parked lane's queued notices to the store, oldest first: all of them while
        it is unreachable, full batches (``PERSIST_BATCH``, or ``member_queue`` when smaller)
        while it is being flushed (what is left under a batch waits in memory for the flush to
        reach it). Runs beside the worker, so neither waits for the other's round trips."""
        try:
            while lane.parked and lane.items and (
                not lane.woken or len(lane.items) >= self._store_batch
            ):
                if not lane.woken and len(lane.items) >= self._member_queue:
                    # as many waiting as a lane may hold: those in flight are stored in their
                    # turn too, rather than hold more in memory
                    for item in [item for item in lane.flying if item.notice.keep]:
                        self._detach(lane, item)
                if not self._storable(lane):  # an older notice is in flight: its outcome first
                    await self._until(lane, lambda: self._persist_now(lane))
                    continue
                await self._persist(lane)
        finally:
            lane.persisting = False
            self._end(1)
            self._nudge(lane)

    async def _until(self, lane: _Lane, ready: Callable[[], bool]) -> None:
        """Wait until ``ready()`` (it must change only where the lane is nudged). The lane's
        worker and its persister may both wait: they share one event."""
        while not ready():
            if lane.nudge is None:
                lane.nudge = trio.Event()
            await lane.nudge.wait()

    async def _lane_worker(self, lane: _Lane) -> None:
        """A parked lane: when woken, deliver what is stored, oldest first, while the
        persister stores what keeps coming behind it: a live but slow member alternates (its
        overflow is stored, stored rows go out as its answers come) until nothing is stored,
        then its lane delivers directly again. Unreachable: wait for the persister, then end;
        the lane is retried later (:meth:`_schedule_retry`). Counts as unfinished work for
        :meth:`drain` while it runs."""
        try:
            while lane.parked:
                if not lane.woken:
                    if not lane.items and not lane.persisting:
                        return
                    self._ensure_persister(lane)
                    await self._until(lane, lambda: not lane.persisting or lane.woken)
                    continue
                # the window holds for stored notices too: wait out the ones in flight
                await self._until(lane, lambda: lane.in_flight == 0)
                outcome = await self._flush(lane)
                if outcome == "empty" and lane.woken:
                    if lane.persisting:  # notices on their way into the store: read again
                        await self._until(lane, lambda: not lane.persisting)
                        continue
                    lane.parked = lane.woken = False
                    lane.retries = 0
                    log.info("member %s reachable: delivering directly again", lane.key)
        finally:
            lane.working = False
            self._end(1)
            if not lane.parked:
                self._pump(lane)
            elif not lane.woken:
                self._schedule_retry(lane)

    async def _persist(self, lane: _Lane) -> None:
        """Write the lane's queued notices to the pending store, oldest first. A notice that
        cannot be stored (not an outage: a value too long for its column) fails alone."""
        batch: list[_Item] = []
        bound = self._oldest_flying(lane)  # nothing newer is stored before a notice in flight
        while lane.items and len(batch) < PERSIST_BATCH and lane.items[0].seq < bound:
            batch.append(lane.items.popleft())
        for item in batch:
            if item.hold is not None:
                await item.hold.wait()  # a reply to the MESSAGE goes after its final response
        outcome = await self._write_pending(lane, batch)
        if outcome == "bad":
            for index, item in enumerate(batch):
                outcome = await self._write_pending(lane, [item])
                if outcome == "outage":
                    lane.items.extendleft(reversed(batch[index:]))
                    return
                if outcome == "bad":
                    self._dequeued((item,))
                    self._final(item.notice, item.in_reply_to, DeliveryResult(500, "Cannot Store"))
        elif outcome == "outage":
            lane.items.extendleft(reversed(batch))

    def _counted(self, counts: dict[str, int]) -> None:
        """The whole table's count, read just now (``pending_counts``)."""
        self._stored_all = sum(counts.values())
        self._counted_at = trio.current_time()

    async def _room_in_store(self, wanted: int) -> int:
        """How many of ``wanted`` new notices ``pending_total_max`` lets the store take. Near
        the bound (within a tenth of it) the table is counted again first, at most once every
        ``RECOUNT_INTERVAL`` seconds, so that what other workers and nodes deleted counts."""
        assert self._store is not None
        bound = self._pending_total_max
        near = self._stored_all + wanted > bound - bound // 10
        if near and trio.current_time() - self._counted_at >= RECOUNT_INTERVAL:
            try:
                self._stored_all = await self._store.read(_pending_total)
                self._counted_at = trio.current_time()
            except StoreError:  # the commit that follows meets the same trouble
                pass
        return max(0, min(wanted, bound - self._stored_all))

    def _refuse_full(self, lane: _Lane, items: Sequence[_Item]) -> None:
        """``items`` cannot be stored: the store holds ``pending_total_max`` notices."""
        self._dequeued(items)
        for item in items:
            self._final(item.notice, item.in_reply_to, DeliveryResult(507, "Insufficient Storage"))
        self._not_stored += len(items)
        self._full_unwarned += len(items)
        now = trio.current_time()
        if now - self._full_warned_at >= DROP_WARNING_INTERVAL:  # a flood logs once a minute
            log.warning(
                "the store holds pending_total_max (%d) notices: %d new notices not stored "
                "(the last for %s)%s", self._pending_total_max, self._full_unwarned, lane.key,
                "" if self._full_warned_at == -math.inf else " since the last warning",
            )  # fmt: skip
            self._full_warned_at, self._full_unwarned = now, 0

    async def _write_pending(self, lane: _Lane, batch: list[_Item]) -> str:
        """Commit ``batch`` for ``lane``: ``ok``, ``bad`` (refused) or ``outage`` (waited a
        little; the caller puts the notices back). What ``pending_total_max`` leaves no room
        for is not stored (the newest of the batch); a member at ``pending_max`` still trades
        its oldest for newer ones (the table does not grow)."""
        assert self._store is not None
        growth = min(self._pending_max, lane.stored + len(batch)) - lane.stored
        room = await self._room_in_store(growth)
        if room < growth:
            self._refuse_full(lane, batch[room:])
            del batch[room:]
            if not batch:
                return "ok"
        writes: list[Any] = [
            PendingAdd(
                member=lane.key,
                recipient=item.notice.to,
                sender=item.notice.sender,
                body=item.notice.body,
                kind=item.notice.kind,
                content_type=item.notice.content_type,
                in_reply_to=item.in_reply_to,
                created=item.created,
                expires=item.created + self._pending_ttl,
            )  # fmt: skip
            for item in batch
        ]
        over = lane.stored + len(writes) - self._pending_max
        if over > 0:
            writes.append(PendingTrim(lane.key, self._pending_max))
        try:
            await self._store.commit(writes)
        except StoreUnavailable as exc:
            await self._store_trouble(exc)
            return "outage"
        except StoreError as exc:
            log.warning("cannot store %d notices for %s: %s", len(batch), lane.key, exc)
            return "bad"
        self._dequeued(batch)
        self._end(len(batch))
        self._stored_total += len(batch)
        self._stored_all += min(self._pending_max, lane.stored + len(batch)) - lane.stored
        if over > 0:
            self._dropped += over
            lane.unwarned += over
            now = trio.current_time()
            if now - lane.warned_at >= DROP_WARNING_INTERVAL:  # a flood logs once a minute
                log.warning(
                    "member %s has over %d stored notices: dropped the %d oldest%s",
                    lane.key, self._pending_max, lane.unwarned,
                    "" if lane.warned_at == -math.inf else " since the last warning",
                )  # fmt: skip
                lane.warned_at, lane.unwarned = now, 0
        lane.stored = min(self._pending_max, lane.stored + len(batch))
        return "ok"

    async def _flush(self, lane: _Lane) -> str:
        """Deliver one batch of stored notices: ``empty`` when none was stored, ``more`` when
        some were delivered (there may be more), ``parked`` when the lane must stay parked
        (the member is unreachable again, or the store failed)."""
        assert self._store is not None
        key = lane.key
        started = trio.current_time()
        try:
            rows: list[PendingRow] = await self._store.read(
                lambda repository: repository.load_pending(key, FLUSH_BATCH)
            )
        except StoreError as exc:
            await self._store_trouble(exc)
            return "parked"
        if not rows:
            lane.stored = 0
            return "empty"
        finished: list[int] = []
        now = self._clock()
        live: list[PendingRow] = []
        for row in rows:
            if row.expires <= now:
                self._expired += 1
                finished.append(row.id)
            else:
                live.append(row)
        notices = [
            (
                Notice(
                    row.recipient, row.body, row.sender, kind=row.kind,  # type: ignore[arg-type]
                    content_type=row.content_type, keep=True, date=row.created,
                ),
                row.in_reply_to,
            )
            for row in live
        ]  # fmt: skip
        reachable = True
        for first in range(0, max(1, len(live)), FLUSH_DELETE):
            chunk = live[first : first + FLUSH_DELETE]
            results = await self._send_in_turn(notices[first : first + FLUSH_DELETE])
            for row, result in zip(chunk, results, strict=False):
                if result.ok:
                    self._flushed += 1
                    self._ok += 1
                elif result.unreachable:
                    reachable = False
                    # registered again (or wrote) since the flush began: the new binding
                    # is tried at once, not at the next retry
                    lane.woken = lane.woke_at > started
                    break
                else:
                    self._failed += 1
                finished.append(row.id)
            if finished:  # deleted as they go: a crash sends at most FLUSH_DELETE again
                try:
                    await self._store.commit([PendingDelete(tuple(finished))])
                except StoreError as exc:  # delivered at least once: they may go again later
                    await self._store_trouble(exc)
                    return "parked"
                lane.stored = max(0, lane.stored - len(finished))
                self._stored_all = max(0, self._stored_all - len(finished))
                finished = []
            if not reachable:
                break
        return "more" if reachable else "parked"

    async def _send_in_turn(self, notices: list[tuple[Notice, str]]) -> list[DeliveryResult]:
        """Deliver ``notices`` one after the other (the next when the previous has its final
        answer), stopping after the first unreachable one: their results, in order. With a
        sender that has ``start`` the next one leaves from the previous one's callback, as
        direct deliveries do, so a flush goes at the member's round-trip rate and not at
        the scheduler's."""
        results: list[DeliveryResult] = []
        finished = trio.Event()

        def launch() -> bool:  # False: the rest goes through _call
            notice, in_reply_to = notices[len(results)]
            self._in_flight += 1
            if self._started(notice, in_reply_to, answered):
                return True
            self._in_flight -= 1
            return False

        def answered(result: DeliveryResult) -> None:
            self._in_flight -= 1
            results.append(result)
            if not _stops(result) and len(results) < len(notices) and launch():
                return
            finished.set()

        if notices and launch():
            await finished.wait()
        while len(results) < len(notices) and not (results and _stops(results[-1])):
            notice, in_reply_to = notices[len(results)]
            self._in_flight += 1
            try:
                results.append(await self._call(notice, in_reply_to))
            finally:
                self._in_flight -= 1
        return results

    # ------------------------------------------------------------------ retries
    def _schedule_retry(self, lane: _Lane) -> None:
        """Try parked ``lane`` again after ``pending_retry`` seconds, doubled with each retry
        that found the member still unreachable, up to :data:`RETRY_CAP` (or ``pending_retry``
        when that is longer). No effect when a retry is scheduled already."""
        if self._pending_retry <= 0 or self._store is None or lane.retry_at is not None:
            return
        cap = max(RETRY_CAP, self._pending_retry)
        delay = min(cap, self._pending_retry * 2 ** min(lane.retries, 32))
        lane.retry_at = trio.current_time() + delay
        self._retry_ids += 1
        heapq.heappush(self._retries, (lane.retry_at, self._retry_ids, lane))
        if self._retry_changed is not None:
            self._retry_changed.set()

    def _retry(self, lane: _Lane) -> None:
        if self._lanes.get(lane.key) is not lane or not lane.parked or lane.woken:
            return  # delivered, forgotten or woken meanwhile
        lane.retries += 1
        if self.reachable is not None and not self.reachable(lane.key):
            self._schedule_retry(lane)  # no binding now: look again later
            return
        log.info("member %s: retrying its %d stored notices", lane.key, lane.stored)
        lane.woken = True
        self._nudge(lane)
        self._ensure_worker(lane)

    async def _retry_loop(self) -> None:
        while True:
            now = trio.current_time()
            while self._retries and self._retries[0][0] <= now:
                _, _, lane = heapq.heappop(self._retries)
                lane.retry_at = None
                self._retry(lane)
            self._retry_changed = trio.Event()
            with trio.move_on_at(self._retries[0][0] if self._retries else math.inf):
                await self._retry_changed.wait()

    async def _store_trouble(self, exc: StoreError) -> None:
        now = trio.current_time()
        if now - self._store_warned_at >= 60:
            self._store_warned_at = now
            log.warning("pending store failing (%s); notices wait in memory meanwhile", exc)
        assert self._store is not None
        with trio.move_on_after(1.0):
            await self._store.wait_available()
        await trio.sleep(0.5)

    async def _expire_loop(self) -> None:
        """Drop stored notices older than ``pending_ttl``, hourly (or every ``pending_ttl``)."""
        assert self._store is not None
        interval = min(3600.0, self._pending_ttl)
        while True:
            await trio.sleep(interval)
            try:
                await self._store.commit([PendingExpire(self._clock())])
                counts: dict[str, int] = await self._store.read(lambda r: r.pending_counts())
            except StoreError as exc:
                log.warning("expiring stored notices failed: %s", exc)
                continue
            self._counted(counts)
            for lane in list(self._lanes.values()):
                if lane.parked and not lane.working and not lane.persisting:
                    left = counts.get(lane.key, 0)
                    self._expired += max(0, lane.stored - left)
                    lane.stored = left
                    if left == 0 and not lane.items:
                        lane.parked = False
                        self._forget_if_idle(lane)

    async def _overdue_loop(self) -> None:
        """Once a second: a delivery unanswered for ``overdue`` seconds stops holding its
        member's window, so the next notice goes out (see ``delivery_overdue``); at most one
        per member at a time."""
        while True:
            await trio.sleep(min(1.0, self._overdue / 2))
            limit = trio.current_time() - self._overdue
            for lane in [lane for lane in self._lanes.values() if lane.flying]:
                # One overdue notice per lane at a time: a lost answer no longer blocks the
                # member, but a server too slow to get answers in time is not sent more.
                oldest = lane.flying[0]
                if (
                    oldest.overdue and not lane.parked and self._store is not None
                    and lane.answered < oldest.sent
                    and any(not item.overdue and item.sent <= limit for item in lane.flying)
                ):  # fmt: skip
                    # the next notice went unanswered as long too, and nothing was answered
                    # since the first: a member gone (a phone off the network) is stored now,
                    # not after Timer F with everything that came for it meanwhile
                    self._park_silent(lane, trio.current_time() - oldest.sent)
                    continue
                if oldest.sent <= limit and not any(item.overdue for item in lane.flying):
                    oldest.overdue = True
                    lane.unsteady()
                    lane.in_flight -= 1
                    if lane.parked and not lane.woken:  # stored in its turn now, not at Timer F
                        self._detach(lane, oldest)
                    self._nudge(lane)
                    self._pump(lane)

    async def _release_stale_holds(self) -> None:
        while True:
            await trio.sleep(HOLD_LIMIT / 2)
            limit = trio.current_time() - HOLD_LIMIT
            for hold in [h for h in self._holds if h.made <= limit]:
                hold.release()
