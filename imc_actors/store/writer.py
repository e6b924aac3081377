"""The store: durable writes from Trio, with group commit (spec §8, design "durable before ack").

Room actors call ``await store.commit(outcome.writes)`` and answer only after it returns. One
writer task (:meth:`Store.run`) collects the commits waiting from all rooms and hands them to
:meth:`Repository.apply_batch` together, in one transaction, in one worker thread
(``trio.to_thread.run_sync`` with a dedicated ``CapacityLimiter(1)``), so a thousand rooms
committing at once cost one disk flush, and the event loop never waits on the database.
For an SQLite file the batch is first tried on the event loop's own thread without a flush and
without waiting for a lock, and a helper process flushes the write-ahead log before the
commits are reported durable (:mod:`.inline`: the writer thread's GIL waits made commits slow
under load); what stands in its way sends the batch to the writer thread as before.

Failures stay local:

- when a combined batch fails while the database answers, each commit of the batch is retried
  alone, so one bad change fails only its own command (:class:`StoreError`);
- when the database does not answer, the store becomes *unavailable*: the commits of that batch
  and every later one fail at once with :class:`StoreUnavailable` (the caller answers 503 with
  ``Retry-After``) while a background probe (every ``ping_interval`` seconds of Trio time)
  waits for the database to return and take a write (``probe_write``: a ping that also waits
  for the write locks, so another client's lock keeps the store answering 503 at once rather
  than letting each write wait ``db_timeout`` for it); then the store resumes by itself;
- when the database takes no writes (:func:`~.repository.refuses_writes`: a full disk, an I/O
  error, a read-only database, revoked grants), every write would fail alike: that too is an
  outage, as above, whose probe also commits a small write (``probe_write(commit=True)``);
  an outage soon after resuming (a nearly full disk takes the probe's write, not the next
  batch) backs the probe off, up to ``MAX_BACKOFF`` ping intervals;
- when a combined batch is *fenced* (:class:`~.repository.Fenced`: rooms whose lease this node
  lost, issue 13), the commits that write for those rooms fail with that error and the rest
  are committed together at once, without them: a fenced room never fails another room;
- when a batch is not durable within ``db_timeout`` seconds of wall-clock time (a table locked
  by another client, a stalled server), its commits fail with :class:`StoreUnavailable` at
  that moment and the store becomes unavailable as above, although the worker thread (which
  cannot be cancelled) is still waiting. Nothing of such a batch is written later: the thread
  asks a :class:`~.repository.CommitGuard` before each attempt and right before COMMIT, and the
  guard refuses once the waiting side gave up (the transaction rolls back), while the engine's
  lock timeout (see :func:`~.urls.open_database`) ends the thread's wait in about as long.
  Only a COMMIT already sent when the deadline passes is waited for: its outcome is the truth.

The store only calls ``apply_batch``, ``ping`` and ``load_rooms`` on its repository (and
``probe_write`` when it has one, else ``ping``), so tests and fault-injection tools can pass any
object with those methods.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol, TypeVar

import trio

from ..imc.state import RoomState
from .inline import CHECKPOINT_EVERY, WalSync, inline_repository
from .leases import rooms_of
from .records import StoreWrite
from .repository import Fenced, LockBusy, StoreError, guarded, refuses_writes
from .watchdog import Watchdog

_T = TypeVar("_T")

FLAP_WINDOW = 60.0  # seconds: an outage this soon after the store resumed backs the probe off
MAX_BACKOFF = 32  # the probe waits at most this many ping intervals

__all__ = ["Backend", "Store", "StoreError", "StoreStatistics", "StoreStopped", "StoreUnavailable"]

log = logging.getLogger(__name__)


class StoreUnavailable(StoreError):
    """The database cannot be reached (or the store is backlogged): answer 503.

    ``retry_after`` is the number of seconds to put in the ``Retry-After`` header.
    """

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class StoreStopped(StoreUnavailable):
    """The store stopped before this change was known to be written: it is shut down, or was
    cancelled, or a KeyboardInterrupt or SystemExit ended it during the commit. No database
    failure, so callers do not log it as one; to a client it is unavailability like any other
    (503 with ``Retry-After``: the server is going away, another one or the next start takes
    the request), never a 500."""

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message, retry_after)


class Backend(Protocol):
    """What the store needs of a repository (:class:`~.repository.Repository` has it)."""

    def apply_batch(self, writes: Sequence[StoreWrite]) -> None: ...

    def ping(self) -> None: ...

    def load_rooms(self) -> list[RoomState]: ...


@dataclass(frozen=True, slots=True)
class StoreStatistics:
    """A snapshot of the store's counters (for metrics and tests).

    ``commits``: calls to :meth:`Store.commit` that became durable. ``batches``: transactions
    the writer started with the commits it collected (a retry of a failed batch commit by
    commit is not counted again). ``failures``: calls to :meth:`Store.commit` that raised
    (including those refused at once while unavailable). ``pending``: commits queued or in
    flight now. ``available``: False while the database is failing. ``last_commit_seconds``:
    how long the last successful transaction took, its flush included (None before the
    first). ``inline_commits``: batches committed on the event loop's thread and flushed by
    the helper process (an SQLite file: :mod:`.inline`); ``inline_declined``: batches that went
    to the writer thread instead because the write lock or the connection was taken.
    ``outages``: times the store became unavailable (the database did not answer in time, or
    took no writes: full, failing or read-only).
    """

    commits: int
    batches: int
    failures: int
    pending: int
    available: bool
    last_commit_seconds: float | None
    inline_commits: int = 0
    inline_declined: int = 0
    outages: int = 0


class _Waiter:
    """One call to :meth:`Store.commit`: its writes, and its result once the writer is done."""

    __slots__ = ("done", "error", "writes")

    def __init__(self, writes: tuple[StoreWrite, ...]) -> None:
        self.writes = writes
        self.done = trio.Event()
        self.error: StoreError | None = None


@dataclass(slots=True)
class _BatchResult:
    """What the worker thread reports back for one batch."""

    errors: list[BaseException | None]  # one per waiter, None when durable
    down: BaseException | None = None  # why the database counts as not answering
    seconds: float | None = None  # duration of the successful combined transaction


class _Attempt:
    """One batch handed to the worker thread, and the handshake that lets the waiting side give
    up on it ``timeout`` seconds from now without a late commit: the thread's
    :class:`~.repository.CommitGuard`."""

    def __init__(self, groups: list[tuple[StoreWrite, ...]], timeout: float) -> None:
        self.groups = groups
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout
        self.durable = [False] * len(groups)  # set once a group's transaction has committed
        self.result: _BatchResult | None = None  # set by the thread before ``finished``
        self.finished = threading.Event()
        self._lock = threading.Lock()
        self._abandoned = False
        self._committing = False

    def late(self) -> bool:
        """True once the waiting side gave up or the deadline has passed (no new attempt)."""
        return self._abandoned or time.monotonic() >= self.deadline

    def timeout_error(self) -> StoreError:
        return StoreError(f"the database did not commit within db_timeout ({self.timeout:g} s)")

    # -- the CommitGuard, called in the worker thread by the repository -----------------------

    def check(self) -> None:
        with self._lock:
            if self.late():
                raise self.timeout_error()

    def committing(self) -> None:
        with self._lock:
            if self.late():
                raise self.timeout_error()
            self._committing = True

    def settled(self, indexes: Iterable[int], *, durable: bool) -> None:
        """The worker thread: the transaction of ``groups[indexes]`` has ended."""
        with self._lock:
            self._committing = False
            if durable:
                for index in indexes:
                    self.durable[index] = True

    # -- the waiting side ---------------------------------------------------------------------

    def abandon(self) -> bool:
        """No transaction starts or commits from now on. True when none is committing (then
        ``durable`` is final); False when a COMMIT is under way (wait for ``finished``)."""
        with self._lock:
            self._abandoned = True
            return not self._committing

    def timed_out(self) -> _BatchResult:
        """The result of an abandoned attempt: durable groups stay so, the others failed."""
        error = self.timeout_error()
        return _BatchResult(errors=[None if ok else error for ok in self.durable], down=error)


class Store:
    """Group-committing writer in front of a :class:`~.repository.Repository`.

    ``max_batch`` bounds the writes per transaction (a single commit larger than that still
    goes alone, whole). ``max_pending`` bounds the commits waiting; beyond it :meth:`commit`
    fails at once with :class:`StoreUnavailable` (backpressure, spec §3). ``ping_interval`` is
    the Trio time between pings while the database is failing; ``retry_after`` is the
    ``Retry-After`` given meanwhile. ``db_timeout`` is the wall-clock time a commit may take
    (its wait for the writer thread included) before it fails with :class:`StoreUnavailable`.
    ``inline`` False keeps an SQLite file's commits in the writer thread too (:mod:`.inline`).
    """

    def __init__(
        self,
        repository: Backend,
        *,
        max_batch: int = 512,
        max_pending: int = 10_000,
        ping_interval: float = 1.0,
        retry_after: int | None = None,
        db_timeout: float = 5.0,
        inline: bool = True,
    ) -> None:
        if max_batch < 1 or max_pending < 1 or ping_interval <= 0 or not db_timeout > 0:
            raise ValueError(
                "max_batch, max_pending, ping_interval and db_timeout must be positive"
            )
        self._repository = repository
        self._db_timeout = db_timeout
        self._max_batch = max_batch
        self._max_pending = max_pending
        self._ping_interval = ping_interval
        self._retry_after = (
            retry_after if retry_after is not None else max(1, math.ceil(ping_interval))
        )
        self._limiter = trio.CapacityLimiter(1)
        self._queue: deque[_Waiter] = deque()
        self._wakeup = trio.Event()
        self._running = False
        self._stopped = False
        self._available = True
        self._recovered = trio.Event()  # replaced when the store becomes unavailable
        self._recovered.set()
        self._resumed_at: float | None = None  # trio time the store last resumed
        self._flaps = 0  # outages in a row, each within FLAP_WINDOW of resuming
        self._outages = 0
        self._refused_writes = False  # the current outage: the database refused writes
        self._in_flight = 0
        self._commits = 0
        self._batches = 0
        self._failures = 0
        self._last_commit_seconds: float | None = None
        self._watchdog: Watchdog | None = None  # while running
        # commits on the loop's thread, flushed by a helper process (SQLite files: .inline)
        self._inline = inline_repository(repository) if inline else None
        self._wal = WalSync(self._inline.wal_path) if self._inline is not None else None
        self._inline_commits = 0
        self._inline_declined = 0
        self._since_checkpoint = 0

    # -- public API ---------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The writer task; start it with ``await nursery.start(store.run)``. Runs until cancelled.

        Commits made before it starts wait for it. On cancellation the batch in flight is
        finished (shielded: its waiters learn the truth), then every commit still queued fails
        with :class:`StoreError` and later commits fail at once. It may be run again afterwards.
        """
        if self._running:
            raise RuntimeError("Store.run() is already running")
        self._running = True
        self._stopped = False
        self._watchdog = Watchdog(trio.lowlevel.current_trio_token())
        self._watchdog.start()
        try:
            async with trio.open_nursery() as nursery:
                if not self._available:  # stopped while failing: keep watching the database
                    nursery.start_soon(self._wait_for_database)
                task_status.started()
                await self._write_loop(nursery)
        finally:
            if self._wal is not None:
                await self._wal.aclose()
            self._watchdog.stop()
            self._watchdog = None
            self._running = False
            self._stopped = True
            self._fail_queued(
                lambda: StoreStopped("the store was shut down before this change was written")
            )

    async def commit(self, writes: Sequence[StoreWrite]) -> None:
        """Make ``writes`` durable, in order, in one transaction; return once they are.

        Empty ``writes`` return at once (no checkpoint). Raises :class:`StoreUnavailable` at
        once while the database is failing or the queue is full, after ``db_timeout`` seconds
        when the database has not committed by then (nothing of it is written later),
        :class:`StoreError` when this change cannot be stored, :class:`StoreStopped` (a
        StoreError too) when the store is shut down or stops before the change was written. If
        the caller is cancelled while the change is still queued, it is dropped and never
        written; once its transaction has started, it may still become durable.
        """
        if not writes:
            return
        if self._stopped:
            self._failures += 1
            raise StoreStopped("the store is shut down")
        if not self._available:
            self._failures += 1
            raise StoreUnavailable("the database is unavailable", self._retry_after_now())
        if len(self._queue) >= self._max_pending:
            self._failures += 1
            raise StoreUnavailable(
                f"the store has {len(self._queue)} changes waiting", self._retry_after
            )
        waiter = _Waiter(tuple(writes))
        self._queue.append(waiter)
        self._wakeup.set()
        try:
            await waiter.done.wait()
        except BaseException:
            if not waiter.done.is_set():
                try:
                    self._queue.remove(waiter)  # still queued: it will never be written
                except ValueError:
                    pass  # already in flight: its outcome is counted by the writer
            raise
        if waiter.error is not None:
            raise waiter.error

    async def load_rooms(self) -> list[RoomState]:
        """Every stored room (see :meth:`Repository.load_rooms`), read in the writer thread."""
        try:
            return await trio.to_thread.run_sync(self._repository.load_rooms, limiter=self._limiter)
        except StoreError:
            raise
        except Exception as exc:
            raise StoreError(f"loading the rooms failed: {type(exc).__name__}: {exc}") from exc

    @property
    def repository(self) -> Backend:
        """The repository this store writes to."""
        return self._repository

    async def read(self, query: Callable[[Any], _T]) -> _T:
        """Run ``query(repository)`` in the writer thread (the repository's one connection is
        used by one thread at a time) and return its result. Raises :class:`StoreError` (as
        :class:`StoreUnavailable` while the database is failing). Checkpoints."""
        if not self._available:
            raise StoreUnavailable("the database is unavailable", self._retry_after_now())
        try:
            return await trio.to_thread.run_sync(query, self._repository, limiter=self._limiter)
        except StoreError:
            raise
        except Exception as exc:
            raise StoreError(f"reading failed: {type(exc).__name__}: {exc}") from exc

    async def wait_available(self) -> None:
        """Return once the store accepts commits again (at once when it does now).

        Event-driven, so tests on an autojump clock need not guess how much virtual time the
        background ping (which runs in a worker thread) takes.
        """
        while not self._available:
            await self._recovered.wait()
        await trio.lowlevel.checkpoint()

    def statistics(self) -> StoreStatistics:
        """Counters and state now."""
        return StoreStatistics(
            commits=self._commits,
            batches=self._batches,
            failures=self._failures,
            pending=len(self._queue) + self._in_flight,
            available=self._available,
            last_commit_seconds=self._last_commit_seconds,
            inline_commits=self._inline_commits,
            inline_declined=self._inline_declined,
            outages=self._outages,
        )

    # -- the writer ---------------------------------------------------------------------------

    async def _write_loop(self, nursery: trio.Nursery) -> None:
        while True:
            while not self._queue:
                self._wakeup = trio.Event()
                await self._wakeup.wait()
            # A cancelled store finishes the batch in flight but does not start another one.
            await trio.lowlevel.checkpoint_if_cancelled()
            batch = self._take_batch()
            with trio.CancelScope(shield=True):
                await self._write(batch, nursery)

    def _take_batch(self) -> list[_Waiter]:
        batch = [self._queue.popleft()]
        size = len(batch[0].writes)
        while self._queue and size + len(self._queue[0].writes) <= self._max_batch:
            waiter = self._queue.popleft()
            size += len(waiter.writes)
            batch.append(waiter)
        return batch

    async def _write(self, batch: list[_Waiter], nursery: trio.Nursery) -> None:
        """Write one batch (called shielded) and wake its waiters."""
        self._in_flight = len(batch)
        self._batches += 1
        attempt = _Attempt([waiter.writes for waiter in batch], self._db_timeout)
        try:
            result = await self._attempt(attempt)
        except BaseException as exc:  # never leave waiters hanging
            # an Exception is a bug, not a database failure; a KeyboardInterrupt (an inline
            # commit runs on the loop's thread, where Ctrl-C lands) or SystemExit stops the store
            stopped = not isinstance(exc, Exception)
            for waiter in batch:
                self._failures += 1
                waiter.error = (
                    StoreStopped(f"the store stopped ({type(exc).__name__}) during this change's "
                                 "commit: it may or may not be written")
                    if stopped else StoreError(f"the store's writer failed: {exc!r}")
                )  # fmt: skip
                waiter.done.set()
            raise
        finally:
            self._in_flight = 0
        if result.seconds is not None:
            self._last_commit_seconds = result.seconds
        if result.down is not None:
            self._mark_unavailable(result.down, nursery)
        for waiter, error in zip(batch, result.errors, strict=True):
            if error is None:
                self._commits += 1
            else:
                self._failures += 1
                waiter.error = self._as_store_error(error, down=result.down is not None)
            waiter.done.set()

    async def _attempt(self, attempt: _Attempt) -> _BatchResult:
        """Run ``attempt`` in the writer thread; give up on it at its deadline (see the module
        docstring). An abandoned thread keeps the limiter until it ends, so nothing else uses
        the connection meanwhile.

        The deadline is wall-clock time, watched by the store's :class:`~.watchdog.Watchdog`
        thread: a Trio timer would fire at once on a virtual clock (tests), and it would also
        count the wait for the limiter wrongly when a read holds the connection."""
        watchdog = self._watchdog
        if watchdog is None:
            raise RuntimeError("Store._attempt outside Store.run")
        if self._inline is not None:
            result = await self._attempt_inline(attempt)
            if result is not None:
                return result
        writing = trio.CancelScope()
        watchdog.watch(attempt, writing.cancel)
        try:
            with writing:
                return await trio.to_thread.run_sync(
                    self._write_in_thread, attempt, limiter=self._limiter, abandon_on_cancel=True
                )
        finally:
            watchdog.done(attempt)
        if not attempt.finished.is_set() and not attempt.abandon():
            log.warning("a COMMIT was under way at db_timeout; waiting for its outcome")
            await trio.to_thread.run_sync(attempt.finished.wait)
        if attempt.finished.is_set():
            if attempt.result is None:
                raise RuntimeError("the writer thread failed")
            return attempt.result
        return attempt.timed_out()

    async def _attempt_inline(self, attempt: _Attempt) -> _BatchResult | None:
        """Run ``attempt`` on this thread without a flush, then flush the WAL in the helper
        process before reporting it (see :mod:`.inline`); None when it must go to the writer
        thread instead (nothing was written then)."""
        if self._since_checkpoint >= CHECKPOINT_EVERY:
            self._since_checkpoint = 0
            return None  # the writer thread's COMMIT checkpoints the WAL
        result, flushed = None, True
        try:
            self._limiter.acquire_nowait()
        except trio.WouldBlock:  # a read holds the connection
            pass
        else:
            try:
                started = time.perf_counter()
                result = self._write_unflushed(attempt)
                if result is not None and any(error is None for error in result.errors):
                    result, flushed = await self._flushed(attempt, result, started)
            finally:
                self._limiter.release()
        if result is None:
            self._inline_declined += 1
        elif flushed:
            self._inline_commits += 1
            self._since_checkpoint += 1
        return result

    def _write_unflushed(self, attempt: _Attempt) -> _BatchResult | None:
        """:meth:`_write_groups` on this thread, committed but not flushed; None when the
        write lock was taken or the connection could not be set up (nothing written)."""
        assert self._inline is not None
        try:
            with self._inline.unflushed_writes():
                return self._write_groups(attempt)
        except LockBusy:
            return None
        except Exception as exc:  # noqa: BLE001 - setting the connection up failed
            log.debug("an inline commit was not possible (%s); using the writer thread", exc)
            return None

    async def _flushed(
        self, attempt: _Attempt, result: _BatchResult, started: float
    ) -> tuple[_BatchResult, bool]:
        """``(result, True)`` once the WAL is on disk; ``(result with its committed groups
        failed, False)`` when the flush failed. A helper that has not answered at
        ``attempt``'s deadline is stopped (a thread flushes instead)."""
        wal, watchdog = self._wal, self._watchdog
        assert wal is not None and watchdog is not None

        def late() -> None:
            log.warning("flushing %s has taken over db_timeout (%g s); stopping the helper and "
                        "waiting for a flush in a thread", wal.path, attempt.timeout)  # fmt: skip
            wal.stop_helper()

        watchdog.watch(attempt, late)
        try:
            await wal.sync()
        except OSError as exc:
            down = StoreError(f"flushing {wal.path} failed: {exc}")
            errors: list[BaseException | None] = [
                down if error is None else error for error in result.errors
            ]
            return _BatchResult(errors=errors, down=down), False
        finally:
            watchdog.done(attempt)
        if result.seconds is not None:
            result.seconds = time.perf_counter() - started
        return result, True

    def _write_in_thread(self, attempt: _Attempt) -> _BatchResult:
        """Runs in the worker thread: :meth:`_write_groups` under the attempt's guard."""
        try:
            with guarded(attempt):
                attempt.result = self._write_groups(attempt)
            return attempt.result
        finally:
            attempt.finished.set()

    def _write_groups(self, attempt: _Attempt) -> _BatchResult:
        """The combined transaction, then the fallbacks (nothing new once ``attempt`` is late)."""
        repository = self._repository
        groups = attempt.groups
        started = time.perf_counter()
        fenced: list[BaseException | None] = [None] * len(groups)
        remaining = list(range(len(groups)))
        while True:
            try:
                repository.apply_batch([write for i in remaining for write in groups[i]])
            except Fenced as exc:
                attempt.settled(remaining, durable=False)
                hit = self._fenced_groups(exc, groups, remaining, fenced)
                if not hit:  # names no room of the batch: an error like any other
                    combined: BaseException = exc
                    break
                remaining = [i for i in remaining if fenced[i] is None]
                if not remaining:
                    return _BatchResult(errors=fenced)
                if attempt.late():
                    timeout = attempt.timeout_error()
                    errors = [timeout if fenced[i] is None else fenced[i] for i in range(len(groups))]
                    return _BatchResult(errors=errors, down=timeout)
            except LockBusy:  # inline, nothing written: the writer thread does it (see .inline)
                raise
            except Exception as exc:  # noqa: BLE001 - any failure is reported to the waiters
                attempt.settled(remaining, durable=False)
                combined = exc
                break
            else:
                attempt.settled(remaining, durable=True)
                return _BatchResult(errors=fenced, seconds=time.perf_counter() - started)
        rest = self._write_groups_of(attempt, remaining, combined)  # fenced groups are done
        for i, error in zip(remaining, rest.errors, strict=True):
            fenced[i] = error
        return _BatchResult(errors=fenced, down=rest.down)

    @staticmethod
    def _fenced_groups(
        exc: Fenced, groups: list[tuple[StoreWrite, ...]], remaining: list[int],
        errors: list[BaseException | None],
    ) -> bool:
        """Give each remaining group that writes for a room of ``exc`` its own :class:`Fenced`
        (naming its rooms); False when there is none."""
        hit = False
        for i in remaining:
            rooms = rooms_of(groups[i]) & exc.rooms
            if rooms:
                errors[i] = Fenced(frozenset(rooms), exc.node, exc.retry_after)
                hit = True
        return hit

    def _write_groups_of(
        self, attempt: _Attempt, indexes: list[int], combined: BaseException
    ) -> _BatchResult:
        """The fallbacks after the combined transaction of ``groups[indexes]`` failed with
        ``combined``: an outage, or each group alone. Errors in the order of ``indexes``."""
        repository = self._repository
        groups = [attempt.groups[i] for i in indexes]
        if attempt.late():  # a lock wait ran out: the database does not answer in time
            return _BatchResult(errors=[combined] * len(groups), down=attempt.timeout_error())
        try:
            repository.ping()
        except Exception as exc:  # noqa: BLE001 - the database does not answer: an outage
            return _BatchResult(errors=[combined] * len(groups), down=exc)
        if refuses_writes(combined):  # every write would fail alike: an outage, not a bad change
            return _BatchResult(errors=[combined] * len(groups), down=combined)
        if len(groups) == 1:
            return _BatchResult(errors=[combined])
        log.warning(
            "batch of %d commits failed (%s); retrying them one by one", len(groups), combined
        )
        errors: list[BaseException | None] = []
        for index, group in zip(indexes, groups, strict=True):
            if attempt.late():
                timeout = attempt.timeout_error()
                errors.extend([timeout] * (len(groups) - len(errors)))
                return _BatchResult(errors=errors, down=timeout)
            try:
                repository.apply_batch(group)
            except LockBusy:  # inline and the first transaction: nothing written yet
                raise
            except Exception as exc:  # noqa: BLE001
                attempt.settled((index,), durable=False)
                errors.append(exc)
                if refuses_writes(exc):  # the rest would fail alike
                    errors.extend([exc] * (len(groups) - len(errors)))
                    return _BatchResult(errors=errors, down=exc)
            else:
                attempt.settled((index,), durable=True)
                errors.append(None)
        return _BatchResult(errors=errors)

    def _as_store_error(self, error: BaseException, *, down: bool) -> StoreError:
        """The exception one waiter gets (a fresh one unless the repository raised it for it)."""
        if not down and isinstance(error, StoreError):
            return error
        result: StoreError
        if down:
            result = StoreUnavailable(f"the database is unavailable: {error}", self._retry_after_now())
        else:
            result = StoreError(f"{type(error).__name__}: {error}")
        result.__cause__ = error
        return result

    # -- availability -------------------------------------------------------------------------

    def _mark_unavailable(self, reason: BaseException, nursery: trio.Nursery) -> None:
        if not self._available:
            return
        self._available = False
        self._recovered = trio.Event()
        # An outage soon after the last one (a disk that is still full takes the probe's
        # write, not the next batch): probe half as often each time, up to 32 intervals.
        now = trio.current_time()
        soon = self._resumed_at is not None and now - self._resumed_at < FLAP_WINDOW
        self._flaps = min(self._flaps + 1, MAX_BACKOFF.bit_length() - 1) if soon else 0
        self._outages += 1
        self._refused_writes = refuses_writes(reason)
        if self._flaps:
            log.error("store unavailable again, answering 503 and probing every %g s: %s",
                      self._probe_interval(), reason)  # fmt: skip
        else:
            log.error("store unavailable, answering 503 until the database is back: %s", reason)
        self._fail_queued(
            lambda: StoreUnavailable(f"the database is unavailable: {reason}", self._retry_after_now())
        )
        nursery.start_soon(self._wait_for_database)

    async def _wait_for_database(self) -> None:
        # A repository that can tell whether a write would wait for a lock says so (a read
        # goes on under SQLite's write lock); others are pinged.
        probe = getattr(self._repository, "probe_write", None)
        if probe is None:
            probe = self._repository.ping
        elif self._refused_writes:  # locks alone prove nothing here: the probe commits a write
            probe = partial(probe, commit=True)
        while True:
            await trio.sleep(self._probe_interval())
            try:
                await trio.to_thread.run_sync(probe, limiter=self._limiter)
                if self._wal is not None:  # a failed flush made it unavailable: flush again
                    await self._wal.sync()
            except Exception as exc:  # noqa: BLE001 - still down: keep pinging
                log.debug("database still unavailable: %s", exc)
                continue
            self._available = True
            self._resumed_at = trio.current_time()
            self._recovered.set()
            log.warning("database available again; the store resumes")
            return

    def _probe_interval(self) -> float:
        return self._ping_interval * (1 << self._flaps)

    def _retry_after_now(self) -> int:
        """``Retry-After`` for an outage: ``retry_after``, or the probe's interval once it
        backs off (the store cannot resume sooner)."""
        return max(self._retry_after, math.ceil(self._probe_interval()))

    def _fail_queued(self, make_error: Callable[[], StoreError]) -> None:
        while self._queue:
            waiter = self._queue.popleft()
            waiter.error = make_error()
            self._failures += 1
            waiter.done.set()
