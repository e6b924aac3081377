"""Store tests: group commit, failure isolation, unavailability and cancellation (Trio side).

The store runs over a real SQLite repository wrapped in :class:`FaultyRepository`, which can
hold a batch at a gate (to line commits up deterministically), refuse writes as if the database
were down, and counts what the store asked of it. No test sleeps in real time: ordering comes
from events and ``wait_all_tasks_blocked``, time from the autojump clock.
"""

from __future__ import annotations

import contextlib
import logging
import subprocess
import threading
from collections.abc import Awaitable, Callable, Iterator, Sequence
from functools import partial
from pathlib import Path

import pytest
import trio
import trio.testing

from imc_actors.imc.effects import OWNER, MemberUpsert, RoomUpsert, Write
from imc_actors.imc.state import RoomState
from imc_actors.store.repository import Repository
from imc_actors.store.writer import (
    Store,
    StoreError,
    StoreStatistics,
    StoreStopped,
    StoreUnavailable,
)


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


def big_room(name: str) -> list[Write]:
    """Creating room ``name`` with 100 long member URIs: new pages in the database file."""
    return [
        RoomUpsert(name, "example.com", 0),
        *(
            MemberUpsert(f"sip:{name}@example.com", f"sip:{'m' * 60}{i}@example.org", 0)
            for i in range(100)
        ),
    ]


async def test_a_full_database_is_an_outage_not_a_bad_change(
    sqlite_repository: Repository,
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # SQLite's max_page_count makes the file "full" as a full disk does (SQLITE_FULL): every
    # write that needs a new page fails, whatever it writes. That is 503 with Retry-After and
    # one log line for the store, not a 500 and two lines per command (and no reconnecting).
    store = Store(sqlite_repository, ping_interval=1.0, retry_after=3)
    db = sqlite_repository._db

    async def body(nursery: trio.Nursery) -> None:
        await store.commit(room("before"))
        pages = db.execute_sql("PRAGMA page_count").fetchone()[0]
        db.execute_sql(f"PRAGMA max_page_count = {pages}")
        caplog.set_level(logging.INFO)
        caplog.clear()
        results: Results = {}
        async with trio.open_nursery() as inner:
            for index in range(8):
                inner.start_soon(
                    commit_into, store, results, f"big{index}", big_room(f"big{index}")
                )
        assert len(results) == 8
        assert all(
            isinstance(e, StoreUnavailable) and e.retry_after == 3 for e in results.values()
        ), results
        stats = store.statistics()
        assert (stats.available, stats.outages) == (False, 1)
        noted = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(noted) == 1 and "full" in noted[0].getMessage(), [r.getMessage() for r in noted]
        # Its probe's small write needs no new page, so the store resumes; the
        # next big write is an outage again, and the probe backs off (twice the interval).
        await store.wait_available()
        with pytest.raises(StoreUnavailable) as again:
            await store.commit(big_room("again"))
        assert store.statistics().outages == 2
        assert "probing every 2 s" in caplog.records[-1].getMessage()
        assert again.value.retry_after == 3  # retry_after until the probe waits longer
        for _ in range(2):  # two more such outages: the probe waits 8 s, and says so
            await store.wait_available()
            with pytest.raises(StoreUnavailable) as later:
                await store.commit(big_room("again"))
        assert "probing every 8 s" in caplog.records[-1].getMessage()
        assert later.value.retry_after == 8
        # Space again: the store resumes by itself and writes.
        db.execute_sql("PRAGMA max_page_count = 1073741823")
        await store.wait_available()
        await store.commit(big_room("after"))

    await with_store(store, body)
    assert stored_names(sqlite_repository) == ["before", "after"]


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs of its own (root only: mount); skipped where it cannot be mounted."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=True)


async def test_a_full_disk_is_an_outage_and_the_store_resumes_when_space_is_freed(
    small_disk: Path, autojump_clock: trio.testing.MockClock
) -> None:
    # A real full disk: the COMMIT fails (SQLite rolled back by itself) and that error, not
    # the ROLLBACK's "no transaction is active", decides: 503 for an outage, no reconnect.
    repository = Repository(f"sqlite:///{small_disk / 'imc.db'}", node="n1")
    repository.init_schema()
    store = Store(repository, ping_interval=1.0, retry_after=3)

    async def body(nursery: trio.Nursery) -> None:
        await store.commit(room("before"))
        pad = small_disk / "pad"
        with contextlib.suppress(OSError), open(pad, "wb", buffering=0) as file:  # to ENOSPC
            while True:
                file.write(b"\0" * 4096)
        with pytest.raises(StoreUnavailable) as full:
            for index in range(50):
                await store.commit(big_room(f"full{index}"))
        assert "database or disk is full" in str(full.value)
        assert not store.statistics().available
        with pytest.raises(StoreError) as lease:  # peewee's own transactions say so too
            for index in range(50):  # on the store's thread: its probe uses the connection too
                await trio.to_thread.run_sync(
                    repository.acquire, f"lease{index}{'x' * 100}@example.com", limiter=store._limiter
                )
        assert "database or disk is full" in str(lease.value), lease.value
        # a probe that only takes the locks passes on the full disk; the store's probe after
        # such an outage commits a write, so it does not resume into the same failure
        probe = partial(trio.to_thread.run_sync, limiter=store._limiter)
        await probe(repository.probe_write)
        with pytest.raises(StoreError):
            await probe(partial(repository.probe_write, commit=True))
        pad.unlink()
        await store.wait_available()
        await store.commit(room("after"))

    try:
        await with_store(store, body)
        assert stored_names(repository)[0] == "before" and stored_names(repository)[-1] == "after"
    finally:
        repository.close()


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
    assert isinstance(queued, StoreStopped)  # unavailability (503), no database failure
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
