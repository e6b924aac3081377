"""Room actors and the supervisor that owns them.

Each room is one Trio task that alone owns its :class:`~imc_actors.imc.state.RoomState` and
reads :class:`Envelope` records from its own bounded memory channel, one at a time: a command is
atomic without locks. For each command the actor runs the pure ``apply``, commits the writes
through the store (durable first), only then adopts the new state, queues the notices for
delivery and answers.

The supervisor splits the room registry into ``2**hash_size`` partitions (a nursery and a slice
of the registry each; a room goes to the partition of the CRC-32 of its lower-cased
``name@domain``). It starts actors lazily, on a room's first command, so a restart that recovers
100,000 rooms starts no task until a room is used. An actor that raises is restarted from its
last committed state; the command that failed gets 500; other rooms never notice. A room that
keeps crashing (``restart_limit`` crashes within ``restart_window`` seconds) is quarantined:
its commands get 503 until the window has passed.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import zlib
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import trio

from ..imc import texts
from ..imc.effects import OWNER, HistoryAppend, HistoryQuery, Notice, Outcome, Write
from ..imc.history import history_notices
from ..imc.room import AdminAction, InviteFailed, Policy, RoomRequest, apply
from ..imc.state import RoomState, member_key
from ..store.repository import Fenced
from ..store.writer import StoreError, StoreUnavailable
from ..transport.limits import LogInterval
from .delivery import Delivery, DeliveryResult, Hold

log = logging.getLogger("imc_actors.supervisor")

#: Answer code telling the caller the room went away while the command waited: route it again.
RETRY = 0


@dataclass(frozen=True, slots=True)
class Answer:
    """What a room (or the conference) answers to one MESSAGE.

    ``code``/``reason`` are the SIP final response; ``retry_after`` goes into a Retry-After
    header (503); ``body`` carries command output (``#members``) for embedders; ``replies``
    is how many reply notices (pages of a listing) the command sent its sender, which the
    server charges to the request's source (``flood_rate``) beyond the first.
    """

    code: int
    reason: str
    retry_after: int | None = None
    body: bytes | None = None
    replies: int = 0


def _replies(notices: Iterable[Notice]) -> int:
    """The reply notices (``#members`` pages and the like) among ``notices``."""
    return sum(1 for notice in notices if notice.kind == "reply")


class _Create:
    """First envelope of a new room: commit its creation before anything else runs."""

    __slots__ = ("outcome",)

    def __init__(self, outcome: Outcome) -> None:
        self.outcome = outcome


#: Told the answer to a posted command (see :meth:`Supervisor.post`); must not block.
AnswerCallback = Callable[[Answer], None]


class Envelope:
    """One command in a mailbox; ``answer`` is set once it is handled, and then either
    ``done`` fires (a caller awaits it) or ``callback`` is called (nobody waits: no task
    switch back to a caller, see :meth:`Supervisor.post`)."""

    __slots__ = ("op", "call_id", "done", "answer", "callback", "hold")

    def __init__(
        self,
        op: RoomRequest | InviteFailed | AdminAction | _Create,
        call_id: str,
        callback: AnswerCallback | None = None,
        hold: Hold | None = None,
    ) -> None:
        self.op = op
        self.call_id = call_id
        self.callback = callback
        self.hold = hold  # the notices it causes wait for it (see Delivery.hold)
        self.done: trio.Event | None = trio.Event() if callback is None else None
        self.answer: Answer | None = None

    def resolve(self, answer: Answer) -> None:
        if self.answer is not None:
            return
        self.answer = answer
        if self.done is not None:
            self.done.set()
            return
        assert self.callback is not None
        try:
            self.callback(answer)
        except Exception:  # runs inside the room actor: a caller's bug must not crash the room
            log.exception("answer callback for call_id=%s raised", self.call_id)


@dataclass(eq=False, slots=True)
class RoomHandle:
    """The supervisor's record of one room. ``state`` is always the last committed state."""

    state: RoomState
    partition: int
    committed: bool = True
    running: bool = False
    gone: bool = False
    restarts: int = 0
    processed: int = 0
    crash_times: tuple[float, ...] = ()
    quarantined_until: float = -math.inf
    send: trio.MemorySendChannel[Envelope] | None = None
    receive: trio.MemoryReceiveChannel[Envelope] | None = None
    current: Envelope | None = None
    backlog: deque[Envelope] | None = None  # taken from the mailbox, not yet answered
    ended: trio.Event | None = None  # set when the actor ends (see Supervisor.stop)
    # a read found the room's archive empty and no line has been archived since: a join's
    # replay needs no read (churn in rooms without chat pays no database round trip)
    archive_empty: bool = False


@dataclass(frozen=True, slots=True)
class SupervisorStatistics:
    """Counters for metrics and tests."""

    rooms: int
    running_actors: int
    members: int
    restarts: int
    quarantined: int
    processed: int
    mailbox_full: int
    max_mailbox_depth: int


class Committer(Protocol):
    """What the supervisor needs of the store: ``await commit(writes)``, durable on return."""

    async def commit(self, writes: Sequence[Write]) -> None: ...


class Reader(Protocol):
    """What the supervisor needs to read a room's archive: the store's ``read``."""

    async def read(self, query: Callable[[Any], Any]) -> Any: ...


#: One command of a batch: its envelope, the state after it, and its outcome.
_Staged = tuple[Envelope, RoomState, Outcome]

#: The pure transition a room actor runs; replaceable to inject faults (imc_actors.testing).
ApplyFn = Callable[
    [RoomState, RoomRequest | InviteFailed | AdminAction, Policy], tuple[RoomState, Outcome]
]


#: Commands a room answers in one step after a commit before it lets other tasks run.
ADOPT_SLICE = 32


def partition_of(key: str, hash_size: int) -> int:
    """Partition index of a lower-cased ``name@domain`` key."""
    return zlib.crc32(key.encode()) & ((1 << hash_size) - 1)


class Supervisor:
    """Creates, runs, restarts and ends room actors; owns the room registry."""

    def __init__(
        self,
        *,
        store: Committer,
        delivery: Delivery,
        policy: Policy,
        hash_size: int = 4,
        mailbox_size: int = 1024,
        restart_limit: int = 5,
        restart_window: float = 60.0,
        apply: ApplyFn = apply,
        max_batch: int | None = None,
        reader: Reader | None = None,
    ) -> None:
        self._apply = apply
        self._reader = reader  # reads the archive for HistoryQuery outcomes (None: no archive)
        # a whole mailbox per commit by default: a busy room's commit waits for the writer
        # thread, and the commands that arrived meanwhile all go in the next one
        self.max_batch = max_batch if max_batch is not None else mailbox_size
        self._store = store
        self._delivery = delivery
        self._commit_failures = 0  # refused changes (500): logged once a second, counted
        self._commit_log = LogInterval(1.0)
        self._policy = policy
        self._hash_size = hash_size
        self._mailbox_size = mailbox_size
        self.restart_limit = restart_limit
        self.restart_window = restart_window
        self._partitions: list[dict[str, RoomHandle]] = [{} for _ in range(1 << hash_size)]
        self._nurseries: list[trio.Nursery] = []
        self._restarts = 0
        self._processed = 0
        self._mailbox_full = 0
        self._owned: Counter[str] = Counter()  # member key -> rooms registered with it as owner
        self._members_total = 0  # members and invitations of all registered rooms
        self._stopping: dict[str, RoomHandle] = {}  # retired rooms whose actor has not ended yet

    # ------------------------------------------------------------------ lifecycle
    async def run(self, *, task_status: trio.TaskStatus[Supervisor] = trio.TASK_STATUS_IGNORED) -> None:
        """Open one nursery per partition, then serve until cancelled.

        On cancellation every actor is cancelled with its partition's nursery; commands
        waiting in mailboxes are answered 503 so no caller waits forever.
        """
        try:
            async with trio.open_nursery() as outer:
                for _ in self._partitions:
                    self._nurseries.append(await outer.start(self._partition_task))
                task_status.started(self)
        finally:
            for rooms in [*self._partitions, self._stopping]:
                for handle in rooms.values():
                    self._drain(handle, Answer(503, "Service Unavailable", retry_after=5))

    async def _partition_task(self, *, task_status: trio.TaskStatus[trio.Nursery]) -> None:
        async with trio.open_nursery() as nursery:
            task_status.started(nursery)
            await trio.sleep_forever()

    # ------------------------------------------------------------------ registry
    def load(self, states: list[RoomState]) -> None:
        """Register recovered rooms (no actor starts until a room gets a command)."""
        for state in states:
            index = partition_of(state.key, self._hash_size)
            self._partitions[index][state.key] = RoomHandle(state, index)
            self._count_owners(state, 1)

    def lookup(self, name: str, domain: str) -> RoomHandle | None:
        key = f"{name}@{domain}".lower()
        handle = self._partitions[partition_of(key, self._hash_size)].get(key)
        return handle

    def handles(self) -> Iterator[RoomHandle]:
        for rooms in self._partitions:
            yield from rooms.values()

    def rooms(self) -> list[RoomState]:
        """Committed state of every room (a consistent snapshot per room)."""
        return [h.state for h in self.handles() if h.committed]

    def replace(self, state: RoomState) -> None:
        """Serve ``state`` (read from the database after taking the room's lease over) instead
        of whatever this registry held for the room (see :meth:`retire`)."""
        self.retire(state.key)
        index = partition_of(state.key, self._hash_size)
        self._partitions[index][state.key] = RoomHandle(state, index)
        self._count_owners(state, 1)

    async def stop(self, key: str) -> None:
        """:meth:`retire` the room ``key`` and wait until its actor has ended (a batch it is
        committing finishes first, fenced or not). Checkpoints only when an actor runs."""
        handle = self._partitions[partition_of(key, self._hash_size)].get(key)
        if handle is not None:
            self.retire(key)
        else:
            handle = self._stopping.get(key)  # retired earlier (fenced), its actor still running
        if handle is not None and handle.running:
            handle.ended = ended = handle.ended or trio.Event()
            await ended.wait()

    def retire(self, key: str) -> None:
        """Stop serving the room ``key`` here (its lease is another node's, or it is gone):
        unregister it and end its actor. Commands already queued for it are routed again."""
        handle = self._partitions[partition_of(key, self._hash_size)].get(key)
        if handle is not None:
            self._retire(handle)

    def _retire(self, handle: RoomHandle) -> None:
        self._unregister(handle)
        if handle.send is not None:
            handle.send.close()  # the actor ends at its next receive and re-routes the rest
        if handle.running:
            self._stopping[handle.state.key] = handle  # stop() waits for it
        else:
            self._drain(handle, Answer(RETRY, "Room gone"))

    def _unregister(self, handle: RoomHandle) -> None:
        rooms = self._partitions[handle.partition]
        if rooms.get(handle.state.key) is handle:
            del rooms[handle.state.key]
            self._count_owners(handle.state, -1)
        handle.gone = True

    def room_count(self) -> int:
        """How many rooms are registered here (``max_rooms``), those being created included."""
        return sum(len(rooms) for rooms in self._partitions)

    # ------------------------------------------------------------------ rooms per owner
    def owned(self, user: str) -> int:
        """How many registered rooms list ``user`` (``sip:user@host``) as an active OWNER
        (``max_rooms_per_user``). Rooms being created count from their registration."""
        return self._owned.get(member_key(user), 0)

    def members_total(self) -> int:
        """Members and invitations listed by all registered rooms (``max_members_total``)."""
        return self._members_total

    def _count_owners(self, state: RoomState, sign: int) -> None:
        self._members_total += sign * len(state.members)
        owned = self._owned
        for member in state.members:
            if member.flags & OWNER and member.active:
                left = owned[member.key] + sign
                if left > 0:
                    owned[member.key] = left
                else:
                    del owned[member.key]

    def _set_state(self, handle: RoomHandle, state: RoomState) -> None:
        """Adopt a committed state, keeping :meth:`owned` in step (O(members) only when the
        members changed: chat and refusals return the very same state)."""
        old = handle.state
        if state.members is not old.members:
            self._count_owners(old, -1)
            self._count_owners(state, 1)
        handle.state = state

    # ------------------------------------------------------------------ calls
    async def create(
        self, state: RoomState, outcome: Outcome, call_id: str, hold: Hold | None = None
    ) -> Answer:
        """Register a new room and have its actor commit the creation before anything else.

        Commands for the room that arrive meanwhile queue behind the creation. If the commit
        fails the room is unregistered and those commands are routed again.
        """
        index = partition_of(state.key, self._hash_size)
        handle = RoomHandle(state, index, committed=False)
        self._partitions[index][state.key] = handle
        self._count_owners(state, 1)
        return await self._call(handle, _Create(outcome), call_id, hold)

    async def call(
        self,
        handle: RoomHandle,
        op: RoomRequest | InviteFailed | AdminAction,
        call_id: str,
        hold: Hold | None = None,
    ) -> Answer:
        """Send one command to a room and wait for its answer.

        Returns ``Answer(RETRY)`` when the room went away meanwhile, 503 with Retry-After when
        its mailbox is full or it is quarantined. Checkpoints while waiting; if the caller is
        cancelled the command still runs (it was accepted) but nobody waits for its answer.
        The notices it causes are submitted under ``hold`` (see :meth:`Delivery.hold`).
        """
        return await self._call(handle, op, call_id, hold)

    def post(
        self,
        handle: RoomHandle,
        op: RoomRequest,
        call_id: str,
        on_answer: AnswerCallback,
        hold: Hold | None = None,
    ) -> Answer | None:
        """Queue one command for a room without waiting: :meth:`call` for callers that need
        no task of their own (the SIP fast path). ``on_answer`` is called once, later, from
        the room's actor (or the supervisor's shutdown) with what :meth:`call` would return;
        it must not block. When the command cannot be queued, nothing is queued and the answer
        (``RETRY``, or 503 as for :meth:`call`) is returned at once instead. Never checkpoints.
        """
        posted = self._post(handle, op, call_id, on_answer, hold)
        return posted if isinstance(posted, Answer) else None

    async def _call(
        self,
        handle: RoomHandle,
        op: RoomRequest | InviteFailed | AdminAction | _Create,
        call_id: str,
        hold: Hold | None = None,
    ) -> Answer:
        posted = self._post(handle, op, call_id, None, hold)
        if isinstance(posted, Answer):
            return posted
        assert posted.done is not None
        await posted.done.wait()
        assert posted.answer is not None
        return posted.answer

    def _post(
        self,
        handle: RoomHandle,
        op: RoomRequest | InviteFailed | AdminAction | _Create,
        call_id: str,
        callback: AnswerCallback | None,
        hold: Hold | None = None,
    ) -> Envelope | Answer:
        """Put an envelope in the room's mailbox, or say at once why not."""
        if handle.gone:
            return Answer(RETRY, "Room gone")
        now = trio.current_time()
        if now < handle.quarantined_until:
            return Answer(503, "Service Unavailable", retry_after=max(1, math.ceil(handle.quarantined_until - now)))
        self._ensure_running(handle)
        assert handle.send is not None
        envelope = Envelope(op, call_id, callback, hold)
        try:
            handle.send.send_nowait(envelope)
        except trio.WouldBlock:
            self._mailbox_full += 1
            return Answer(503, "Service Unavailable", retry_after=1)
        return envelope

    def _ensure_running(self, handle: RoomHandle) -> None:
        if handle.running:
            return
        if handle.send is None:  # mailboxes exist only for rooms that have been used
            handle.send, handle.receive = trio.open_memory_channel[Envelope](self._mailbox_size)
            handle.backlog = deque()
        handle.running = True
        self._nurseries[handle.partition].start_soon(self._supervise, handle, name=f"room:{handle.state.key}")

    # ------------------------------------------------------------------ actor
    async def _supervise(self, handle: RoomHandle) -> None:
        """Run the room's actor; restart it from the last committed state when it raises."""
        try:
            while True:
                try:
                    await self._actor(handle)
                    return
                except Exception as exc:
                    self._restarts += 1
                    handle.restarts += 1
                    if handle.current is not None:
                        handle.current.resolve(Answer(500, "Server Internal Error"))
                        if handle.backlog and handle.current in handle.backlog:
                            handle.backlog.remove(handle.current)
                        handle.current = None
                    now = trio.current_time()
                    handle.crash_times = (
                        *(t for t in handle.crash_times if now - t < self.restart_window), now)
                    if len(handle.crash_times) >= self.restart_limit:
                        handle.quarantined_until = now + self.restart_window
                        log.error(
                            "room=%s crashed %d times in %.0fs (%r): quarantined for %.0fs",
                            handle.state.uri, len(handle.crash_times), self.restart_window, exc,
                            self.restart_window, exc_info=exc,
                        )
                        self._drain(handle, Answer(503, "Service Unavailable", retry_after=max(1, math.ceil(self.restart_window))))
                        return
                    log.error(
                        "room=%s actor crashed (%r); restarted from its last committed state "
                        "(restart %d)", handle.state.uri, exc, handle.restarts, exc_info=exc,
                    )
        finally:
            handle.running = False
            if self._stopping.get(handle.state.key) is handle:
                del self._stopping[handle.state.key]
            if handle.ended is not None:
                handle.ended.set()

    async def _actor(self, handle: RoomHandle) -> None:
        """The actor loop: take what is queued (up to ``max_batch``), handle it, repeat.

        Taken envelopes wait in ``handle.backlog`` until answered, so a crash loses none of
        them: the restarted actor handles them again from the last committed state.
        """
        assert handle.receive is not None
        receive = handle.receive
        backlog = handle.backlog
        assert backlog is not None
        while not handle.gone:
            if not backlog:
                try:
                    backlog.append(receive.receive_nowait())
                except trio.WouldBlock:
                    try:
                        backlog.append(await receive.receive())
                    except trio.EndOfChannel:  # retired: see retire()
                        break
                except trio.EndOfChannel:
                    break
            while len(backlog) < self.max_batch:
                try:
                    backlog.append(receive.receive_nowait())
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
            if isinstance(backlog[0].op, _Create) or not handle.committed:
                await self._process(handle, backlog[0])
                backlog.popleft()
            else:
                await self._process_batch(handle)
        self._drain(handle, Answer(RETRY, "Room gone"))

    async def _process_batch(self, handle: RoomHandle) -> None:
        """Apply the queued commands in order, commit all their writes at once, then answer.

        Group commit inside a room: a room under churn pays one transaction per batch, not
        per command. When the combined commit fails, see :meth:`_commit_failed`: commands
        without writes are never failed for another command's writes.
        """
        backlog = handle.backlog
        assert backlog is not None
        state = handle.state
        staged: list[_Staged] = []
        writes: list[Write] = []
        for envelope in backlog:
            if isinstance(envelope.op, _Create) or len(staged) >= self.max_batch:
                break
            handle.current = envelope  # a raise in apply is blamed on this one command
            state, outcome = self._apply(state, envelope.op, self._policy)
            handle.current = None
            if handle.archive_empty and _archives(outcome.writes):
                handle.archive_empty = False
            staged.append((envelope, state, outcome))
            writes.extend(outcome.writes)
            if outcome.destroyed or outcome.history is not None:
                break  # a history read must see the archive as of this command, no later
        if writes:
            try:
                await self._store.commit(writes)
            except StoreError as exc:
                await self._commit_failed(handle, staged, exc)
                return
        await self._adopt(handle, staged)

    async def _adopt(self, handle: RoomHandle, staged: list[_Staged]) -> None:
        """The staged commands (the first ones of the backlog) are committed: adopt the state
        after the last of them, send their notices and answer them."""
        backlog = handle.backlog
        assert backlog is not None
        if not staged:
            return
        self._set_state(handle, staged[-1][1])
        for done, (envelope, _, outcome) in enumerate(staged):
            if done and not done % ADOPT_SLICE:
                # let the event loop read the answers to what went out meanwhile: a whole
                # mailbox in one step kept every member's next notice waiting behind it
                await trio.lowlevel.cancel_shielded_checkpoint()
            backlog.popleft()
            if outcome.notices:
                await self._delivery.submit(outcome.notices, envelope.call_id, hold=envelope.hold)
            answer = Answer(outcome.code, outcome.reason, body=outcome.body, replies=_replies(outcome.notices))
            if outcome.history is not None:
                answer = await self._read_history(handle, envelope, outcome.history, answer)
            envelope.resolve(answer)
            self._count(handle)
        if staged[-1][2].destroyed:
            self._unregister(handle)

    async def _commit_failed(self, handle: RoomHandle, staged: list[_Staged], exc: StoreError) -> None:
        """The combined commit of ``staged`` failed, so nothing of it is stored.

        The commands before the first one with writes ran on the committed state and stored
        nothing: they get their own answers (chat, ``#members``). When the store is unavailable
        (503) or that first writer is the batch's only one (its own change failed: 500), it gets
        the error. Every command after it ran on top of its uncommitted state, so those (and,
        when several writers' changes were refused together, the first writer too) are redone
        one at a time from the committed state: a bad change fails only itself.
        """
        backlog = handle.backlog
        assert backlog is not None
        first = next(index for index, (_, _, outcome) in enumerate(staged) if outcome.writes)
        await self._adopt(handle, staged[:first])
        rest = staged[first:]
        if isinstance(exc, Fenced) and handle.committed:
            # another node holds the room now: stop it here; the rest of the backlog (this
            # writer and everything after it) is routed again, to the new owner
            log.warning("room=%s write refused: %s", handle.state.uri, exc)
            self._retire(handle)
            return
        writers = sum(1 for _, _, outcome in rest if outcome.writes)
        if isinstance(exc, StoreUnavailable | Fenced) or writers == 1:
            envelope = rest[0][0]
            if isinstance(exc, StoreUnavailable | Fenced):
                if isinstance(exc, Fenced):
                    await self._fenced(handle, envelope, exc)
                answer = Answer(503, "Service Unavailable", retry_after=exc.retry_after)
            else:
                self._log_refused(handle, envelope, exc)
                answer = Answer(500, "Server Internal Error")
            backlog.popleft()
            envelope.resolve(answer)
            self._count(handle)
            rest = rest[1:]
        for _ in rest:  # redo them one at a time from the committed state
            if handle.gone:  # retired meanwhile: the actor's end routes the rest again
                return
            await self._process(handle, backlog[0])
            backlog.popleft()

    def _log_refused(self, handle: RoomHandle, envelope: Envelope, exc: StoreError) -> None:
        """Log a change the database refused (a 500): at most one line a second, with the
        count so far, since a broken table (renamed, a column dropped) refuses every command
        that writes to it. (A store that stopped, at shutdown or Ctrl-C, is unavailability:
        503, not logged here.)"""
        self._commit_failures += 1
        if self._commit_log.due(trio.current_time()):
            log.error("room=%s commit failed call_id=%s (%d so far): %s", handle.state.uri,
                      envelope.call_id, self._commit_failures, exc)  # fmt: skip

    def _count(self, handle: RoomHandle) -> None:
        handle.processed += 1
        self._processed += 1

    async def _process(self, handle: RoomHandle, envelope: Envelope) -> None:
        """Handle one envelope alone (creation, re-routing, and the one-by-one fallback)."""
        op = envelope.op
        handle.current = envelope
        if isinstance(op, _Create):
            outcome = op.outcome
            new_state = handle.state
        else:
            if not handle.committed:  # creation failed earlier; this command must be re-routed
                envelope.resolve(Answer(RETRY, "Room gone"))
                handle.current = None
                return
            new_state, outcome = self._apply(handle.state, op, self._policy)
        handle.current = None
        if handle.archive_empty and _archives(outcome.writes):
            handle.archive_empty = False
        self._count(handle)
        if outcome.writes:
            try:
                await self._store.commit(outcome.writes)
            except (StoreUnavailable, Fenced) as exc:
                if isinstance(exc, Fenced) and handle.committed:  # as in _commit_failed
                    log.warning("room=%s write refused call_id=%s: %s", handle.state.uri,
                                envelope.call_id, exc)
                    self._retire(handle)
                    envelope.resolve(Answer(RETRY, "Room gone"))
                    return
                if isinstance(exc, Fenced):
                    await self._fenced(handle, envelope, exc)
                self._failed_commit(handle, envelope, Answer(503, "Service Unavailable", retry_after=exc.retry_after))
                return
            except StoreError as exc:
                self._log_refused(handle, envelope, exc)
                self._failed_commit(handle, envelope, Answer(500, "Server Internal Error"))
                return
        self._set_state(handle, new_state)
        if isinstance(op, _Create):  # a new room's archive is empty (RoomDelete cleared it)
            handle.archive_empty = True
        handle.committed = True
        if outcome.destroyed:
            self._unregister(handle)
        if outcome.notices:
            await self._delivery.submit(outcome.notices, envelope.call_id, hold=envelope.hold)
        answer = Answer(outcome.code, outcome.reason, body=outcome.body, replies=_replies(outcome.notices))
        if outcome.history is not None:
            answer = await self._read_history(handle, envelope, outcome.history, answer)
        envelope.resolve(answer)

    async def _read_history(
        self, handle: RoomHandle, envelope: Envelope, query: HistoryQuery, answer: Answer
    ) -> Answer:
        """Read the archive ``query`` asks for (the room waits meanwhile, so the lines are those
        before this command) and send it; return the command's answer. A ``#history`` whose
        read fails gets 503 and a notice; a replay that fails is only logged (the join stands).
        """
        uri = handle.state.uri
        try:
            if self._reader is None:
                raise StoreError("no archive to read")
            if handle.archive_empty:
                lines = []
            else:
                lines = await self._reader.read(lambda r: r.load_history(query.room, query.limit))
                handle.archive_empty = not lines and query.limit > 0
        except StoreError as exc:
            log.warning("room=%s reading the history failed call_id=%s: %s", uri, envelope.call_id, exc)
            if query.replay:
                return answer
            notice = Notice(query.to, texts.HISTORY_UNAVAILABLE.encode(), uri)
            await self._delivery.submit((notice,), envelope.call_id, hold=envelope.hold)
            retry = exc.retry_after if isinstance(exc, StoreUnavailable) else 1
            return Answer(503, "Service Unavailable", retry_after=retry)
        notices = history_notices(query, lines, uri)
        if notices:
            await self._delivery.submit(notices, envelope.call_id, hold=envelope.hold)
        replies = _replies(notices)
        return dataclasses.replace(answer, replies=answer.replies + replies) if replies else answer

    async def _fenced(self, handle: RoomHandle, envelope: Envelope, exc: Fenced) -> None:
        """A new room's creation refused because another node holds its lease: log it and
        tell the creator why its 503 came (the notice leaves after the answer, like every
        other). A served room's fenced write retires the room instead (see
        :meth:`_commit_failed`): its commands are routed again, to the new owner."""
        log.warning("room=%s write refused call_id=%s: %s", handle.state.uri, envelope.call_id, exc)
        op = envelope.op
        to = op.sender if isinstance(op, RoomRequest) else None
        if isinstance(op, _Create) and op.outcome.notices:
            to = op.outcome.notices[0].to  # the creator
        if to is None:
            return
        text = texts.ROOM_HELD_ELSEWHERE.format(seconds=exc.retry_after)
        notice = Notice(to, text.encode(), handle.state.uri)
        await self._delivery.submit((notice,), envelope.call_id, hold=envelope.hold)

    def _failed_commit(self, handle: RoomHandle, envelope: Envelope, answer: Answer) -> None:
        envelope.resolve(answer)
        if not handle.committed:  # the room never came to be
            self._unregister(handle)

    def _drain(self, handle: RoomHandle, answer: Answer) -> None:
        """Answer every command still queued for ``handle``."""
        if handle.current is not None:
            handle.current.resolve(answer)
        while handle.backlog:
            handle.backlog.popleft().resolve(answer)
        if handle.receive is None:
            return
        while True:
            try:
                handle.receive.receive_nowait().resolve(answer)
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                return

    # ------------------------------------------------------------------ invitations
    def on_delivery(self, notice: Notice, in_reply_to: str, result: DeliveryResult) -> None:
        """Delivery hook: a failed invitation goes back to its room as :class:`InviteFailed`."""
        if notice.invite_of is None or result.ok or not self._nurseries:
            return
        user_host = notice.sender.split(":", 1)[-1]
        name, _, domain = user_host.partition("@")
        handle = self.lookup(name, domain)
        if handle is None:
            return
        op = InviteFailed(notice.invite_of, result.code, result.reason)
        self._nurseries[handle.partition].start_soon(self._call, handle, op, in_reply_to)

    # ------------------------------------------------------------------ metrics
    @property
    def history_reader(self) -> Reader | None:
        """What the archive is read through (None: no archive)."""
        return self._reader

    @property
    def store(self) -> Committer:
        """The store this supervisor commits through (read-only; metrics read its statistics)."""
        return self._store

    def statistics(self) -> SupervisorStatistics:
        handles = list(self.handles())
        now = trio.current_time() if self._nurseries else 0.0
        return SupervisorStatistics(
            rooms=sum(1 for h in handles if h.committed),
            running_actors=sum(1 for h in handles if h.running),
            members=sum(len(h.state.members) for h in handles if h.committed),
            restarts=self._restarts,
            quarantined=sum(1 for h in handles if now < h.quarantined_until),
            processed=self._processed,
            mailbox_full=self._mailbox_full,
            max_mailbox_depth=max(
                (h.send.statistics().current_buffer_used for h in handles if h.send is not None),
                default=0,
            ),
        )


def _archives(writes: Sequence[object]) -> bool:
    """True when ``writes`` append a line to a room's archive."""
    return any(isinstance(write, HistoryAppend) for write in writes)
