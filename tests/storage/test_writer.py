"""Store tests: group commit, failure isolation, unavailability and cancellation (Trio side).

The store runs over a real SQLite repository wrapped in :class:`FaultyRepository`, which can
hold a batch at a gate (to line commits up deterministically), refuse writes as if the database
were down, and counts what the store asked of it. No test sleeps in real time: ordering comes
from events and ``wait_all_tasks_blocked``, time from the autojump clock.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable, Sequence

import pytest
import trio
import trio.testing

from imc_actors.imc.effects import OWNER, MemberUpsert, RoomUpsert, Write
from imc_actors.imc.state import RoomState
from imc_actors.store.repository import Repository
from imc_actors.store.writer import Store, StoreError, StoreStatistics, StoreUnavailable


class FaultyRepository:
    """A repository wrapper for tests: gate, outage switch and call log.

    ``gate``: while cleared, ``apply_batch`` waits at it (in the worker thread) after setting
    ``entered``. ``down``: ``apply_batch`` and ``ping`` raise as if the server were gone.
    ``batches`` logs the size of each ``apply_batch`` call; ``pings`` counts pings, and each
    ping's outcome (True: answered) is sent to ``ping_results`` when that is set.
    """

    def __init__(self, inner: Repository) -> None:
        self.inner = inner
        self.gate = threading.Event()
        self.gate.set()
        self.entered = trio.Event()
        self.down = False
        self.batches: list[int] = []
        self.pings = 0
        self.ping_results: trio.MemorySendChannel[bool] | None = None

    def apply_batch(self, writes: Sequence[Write]) -> None:
        self.batches.append(len(writes))
        if not self.gate.is_set():
            trio.from_thread.run_sync(self.entered.set)
            self.gate.wait()
        if self.down:
            raise StoreError("connection refused")
        self.inner.apply_batch(writes)

    def ping(self) -> None:
        self.pings += 1
        down = self.down
        if self.ping_results is not None:
            trio.from_thread.run_sync(self.ping_results.send_nowait, not down)
        if down:
            raise StoreError("connection refused")
        self.inner.ping()

    def load_rooms(self) -> list[RoomState]:
        return self.inner.load_rooms()


def room(name: str) -> list[Write]:
    """The writes of creating room ``name`` with one owner."""
    return [
        RoomUpsert(name, "example.com", 0),
        MemberUpsert(f"sip:{name}@example.com", "sip:alice@example.org", OWNER),
    ]


Results = dict[str, BaseException | None]


async def commit_into(store: Store, results: Results, key: str, writes: Sequence[Write]) -> None:
    """Commit and record the outcome under ``key`` (None: durable; else the StoreError)."""
    try:
        await store.commit(writes)
    except StoreError as exc:
        results[key] = exc
    else:
        results[key] = None


def stored_names(repository: Repository) -> list[str]:
    return [r.name for r in repository.load_rooms()]


async def with_store(store: Store, body: Callable[[trio.Nursery], Awaitable[None]]) -> None:
    """Run ``store`` for the duration of ``body(nursery)``, then stop it."""
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        await body(nursery)
        nursery.cancel_scope.cancel()


async def test_commit_is_durable_and_loads_back(sqlite_repository: Repository) -> None:
    store = Store(sqlite_repository)

    async def body(nursery: trio.Nursery) -> None:
        await store.commit(room("Lobby"))
        assert [r.name for r in await store.load_rooms()] == ["Lobby"]

    await with_store(store, body)
    stats = store.statistics()
    assert (stats.commits, stats.batches, stats.failures, stats.pending) == (1, 1, 0, 0)
    assert stats.available and stats.last_commit_seconds is not None
    reopened = Repository(sqlite_repository.url)
    assert stored_names(reopened) == ["Lobby"]
    reopened.close()


async def test_empty_commit_returns_at_once(sqlite_repository: Repository) -> None:
    store = Store(sqlite_repository)  # not even running
    await store.commit([])
    await store.wait_available()
    assert store.statistics() == StoreStatistics(0, 0, 0, 0, True, None)


async def test_concurrent_commits_share_a_transaction(sqlite_repository: Repository) -> None:
    faulty = FaultyRepository(sqlite_repository)
    store = Store(faulty)
    results: Results = {}

    async def body(nursery: trio.Nursery) -> None:
        faulty.gate.clear()
        nursery.start_soon(commit_into, store, results, "first", room("first"))
        await faulty.entered.wait()  # the first batch is in the thread, alone
        for i in range(9):
            nursery.start_soon(commit_into, store, results, f"r{i}", room(f"r{i}"))
        await trio.testing.wait_all_tasks_blocked()
        assert store.statistics().pending == 10
        faulty.gate.set()
        while len(results) < 10:
            await trio.testing.wait_all_tasks_blocked()
            await trio.lowlevel.checkpoint()

    await with_store(store, body)
    assert all(error is None for error in results.values())
    assert faulty.batches == [2, 18]  # one transaction for the nine that queued meanwhile
    stats = store.statistics()
    assert (stats.commits, stats.batches, stats.failures, stats.pending) == (10, 2, 0, 0)
    assert sorted(stored_names(sqlite_repository)) == sorted(
        ["first", *(f"r{i}" for i in range(9))]
    )


async def test_max_batch_bounds_a_transaction(sqlite_repository: Repository) -> None:
    faulty = FaultyRepository(sqlite_repository)
    store = Store(faulty, max_batch=5)
    results: Results = {}

    async def body(nursery: trio.Nursery) -> None:
        faulty.gate.clear()
        nursery.start_soon(commit_into, store, results, "first", room("first"))
        await faulty.entered.wait()
        for i in range(5):  # queued one by one: in this order
            nursery.start_soon(commit_into, store, results, f"r{i}", room(f"r{i}"))
            await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(commit_into, store, results, "big", [RoomUpsert("big", "x.org", 0)] * 7)
        await trio.testing.wait_all_tasks_blocked()
        faulty.gate.set()
        while len(results) < 7:
            await trio.testing.wait_all_tasks_blocked()
            await trio.lowlevel.checkpoint()

    await with_store(store, body)
    assert all(error is None for error in results.values())
    assert faulty.batches == [2, 4, 4, 2, 7]  # then 2 commits, 2, 1, and the big one alone, whole


async def test_one_bad_change_fails_only_its_own_commit(sqlite_repository: Repository) -> None:
    faulty = FaultyRepository(sqlite_repository)
    store = Store(faulty)
    results: Results = {}

    async def body(nursery: trio.Nursery) -> None:
        faulty.gate.clear()
        nursery.start_soon(commit_into, store, results, "first", room("first"))
        await faulty.entered.wait()
        nursery.start_soon(commit_into, store, results, "good1", room("good1"))
        nursery.start_soon(commit_into, store, results, "bad", room("b" * 65))  # too long
        nursery.start_soon(commit_into, store, results, "good2", room("good2"))
        await trio.testing.wait_all_tasks_blocked()
        faulty.gate.set()
        while len(results) < 4:
            await trio.testing.wait_all_tasks_blocked()
            await trio.lowlevel.checkpoint()

    await with_store(store, body)
    bad = results.pop("bad")
    assert isinstance(bad, StoreError) and not isinstance(bad, StoreUnavailable)
    assert "65 characters" in str(bad)
    assert results == {"first": None, "good1": None, "good2": None}
    assert sorted(stored_names(sqlite_repository)) == ["first", "good1", "good2"]
    stats = store.statistics()
    assert (stats.commits, stats.failures, stats.available) == (3, 1, True)
    assert faulty.batches == [2, 6, 2, 2, 2]  # the combined batch, then each commit alone
    assert faulty.pings == 1  # the database answered: a bad change, not an outage


async def test_outage_fails_fast_and_recovers(
    sqlite_repository: Repository, autojump_clock: trio.testing.MockClock
) -> None:
    faulty = FaultyRepository(sqlite_repository)
    store = Store(faulty, ping_interval=1.0, retry_after=3)
    # Pings run in a worker thread, during which the autojump clock may race ahead: follow them
    # through a channel rather than by the clock.
    faulty.ping_results, ping_results = trio.open_memory_channel[bool](100)

    async def body(nursery: trio.Nursery) -> None:
        await store.commit(room("before"))
        faulty.down = True
        with pytest.raises(StoreError) as first:
            await store.commit(room("during1"))
        assert isinstance(first.value, StoreUnavailable)
        assert not store.statistics().available
        # Now refused at once: no database call, no time passing.
        calls, now = len(faulty.batches), trio.current_time()
        with pytest.raises(StoreUnavailable) as fast:
            await store.commit(room("during2"))
        assert fast.value.retry_after == 3
        assert (len(faulty.batches), trio.current_time()) == (calls, now)
        # The failed batch's ping, then the background pings, every second, while it is down...
        start = trio.current_time()
        for _ in range(4):
            assert await ping_results.receive() is False
        assert trio.current_time() - start >= 3.0
        assert not store.statistics().available
        # ...and the store resumes by itself once the database answers again.
        faulty.down = False
        while not await ping_results.receive():
            pass
        await store.wait_available()  # the ping's thread finishing is not a matter of time
        assert store.statistics().available
        await store.commit(room("after"))

    await with_store(store, body)
    assert stored_names(sqlite_repository) == ["before", "after"]
    stats = store.statistics()
    assert (stats.commits, stats.failures, stats.available) == (2, 2, True)


async def test_outage_fails_the_commits_queued_behind_the_failing_batch(
    sqlite_repository: Repository,
) -> None:
    faulty = FaultyRepository(sqlite_repository)
    store = Store(faulty)
    results: Results = {}

    async def body(nursery: trio.Nursery) -> None:
        faulty.gate.clear()
        faulty.down = True
        nursery.start_soon(commit_into, store, results, "in-flight", room("a"))
        await faulty.entered.wait()
        nursery.start_soon(commit_into, store, results, "queued", room("b"))
        await trio.testing.wait_all_tasks_blocked()
        faulty.gate.set()
        while len(results) < 2:
            await trio.testing.wait_all_tasks_blocked()
            await trio.lowlevel.checkpoint()

    await with_store(store, body)
    assert isinstance(results["in-flight"], StoreUnavailable)
    assert isinstance(results["queued"], StoreUnavailable)
    assert faulty.batches == [2]  # the queued commit never reached the database


async def test_backlog_is_refused_with_503(sqlite_repository: Repository) -> None:
    faulty = FaultyRepository(sqlite_repository)
    store = Store(faulty, max_pending=2, retry_after=7)
    results: Results = {}

    async def body(nursery: trio.Nursery) -> None:
        faulty.gate.clear()
        nursery.start_soon(commit_into, store, results, "in-flight", room("a"))
        await faulty.entered.wait()
        nursery.start_soon(commit_into, store, results, "q1", room("b"))
        nursery.start_soon(commit_into, store, results, "q2", room("c"))
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(StoreUnavailable) as refused:
            await store.commit(room("d"))
        assert refused.value.retry_after == 7
        faulty.gate.set()
        while len(results) < 3:
            await trio.testing.wait_all_tasks_blocked()
            await trio.lowlevel.checkpoint()

    await with_store(store, body)
    assert results == {"in-flight": None, "q1": None, "q2": None}


async def test_cancellation_finishes_the_batch_in_flight(sqlite_repository: Repository) -> None:
    faulty = FaultyRepository(sqlite_repository)
    store = Store(faulty)
    results: Results = {}
    store_scope = trio.CancelScope()

    async def run_store(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with store_scope:
            await store.run(task_status=task_status)

    whole_room = [
        RoomUpsert("whole", "example.com", 0),
        *(MemberUpsert("sip:whole@example.com", f"sip:m{i}@example.org", 0) for i in range(5)),
    ]
    async with trio.open_nursery() as nursery:
        await nursery.start(run_store)
        faulty.gate.clear()
        nursery.start_soon(commit_into, store, results, "in-flight", whole_room)
        await faulty.entered.wait()
        nursery.start_soon(commit_into, store, results, "queued", room("queued"))
        await trio.testing.wait_all_tasks_blocked()
        store_scope.cancel()  # shutdown while a transaction is in the worker thread
        await trio.testing.wait_all_tasks_blocked()
        assert results == {}  # the store still waits for its batch
        faulty.gate.set()
    assert results["in-flight"] is None  # finished and reported, not abandoned
    queued = results["queued"]
    assert isinstance(queued, StoreError) and not isinstance(queued, StoreUnavailable)
    with pytest.raises(StoreError, match="shut down"):
        await store.commit(room("late"))
    (loaded,) = sqlite_repository.load_rooms()
    assert loaded.name == "whole" and len(loaded.members) == 5  # all of it
    assert store.statistics().pending == 0


async def test_a_cancelled_commit_that_was_still_queued_is_never_written(
    sqlite_repository: Repository,
) -> None:
    faulty = FaultyRepository(sqlite_repository)
    store = Store(faulty)
    results: Results = {}

    async def body(nursery: trio.Nursery) -> None:
        faulty.gate.clear()
        nursery.start_soon(commit_into, store, results, "in-flight", room("kept"))
        await faulty.entered.wait()
        with trio.CancelScope() as scope:
            scope.cancel()
            await store.commit(room("dropped"))  # cancelled while queued
        await trio.testing.wait_all_tasks_blocked()
        assert store.statistics().pending == 1
        faulty.gate.set()
        while len(results) < 1:
            await trio.testing.wait_all_tasks_blocked()
            await trio.lowlevel.checkpoint()

    await with_store(store, body)
    assert results == {"in-flight": None}
    assert faulty.batches == [2]
    assert stored_names(sqlite_repository) == ["kept"]


async def test_commits_made_before_run_wait_for_it(sqlite_repository: Repository) -> None:
    store = Store(sqlite_repository)
    results: Results = {}
    async with trio.open_nursery() as nursery:
        nursery.start_soon(commit_into, store, results, "early", room("early"))
        await trio.testing.wait_all_tasks_blocked()
        assert results == {} and store.statistics().pending == 1
        await nursery.start(store.run)
        while not results:
            await trio.testing.wait_all_tasks_blocked()
            await trio.lowlevel.checkpoint()
        nursery.cancel_scope.cancel()
    assert results == {"early": None}


async def test_run_twice_at_once_is_refused(sqlite_repository: Repository) -> None:
    store = Store(sqlite_repository)

    async def body(nursery: trio.Nursery) -> None:
        with pytest.raises(RuntimeError):
            await store.run()

    await with_store(store, body)


async def test_load_rooms_errors_are_store_errors(sqlite_repository: Repository) -> None:
    class Broken(FaultyRepository):
        def load_rooms(self) -> list[RoomState]:
            raise RuntimeError("boom")

    with pytest.raises(StoreError, match="boom"):
        await Store(Broken(sqlite_repository)).load_rooms()
