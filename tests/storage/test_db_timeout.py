"""``db_timeout`` on the real engines: a write stuck behind another client's lock fails with
:class:`StoreUnavailable` in about ``db_timeout``, nothing of it is ever written (not even once
the lock is gone), and the store resumes by itself.

The lock is taken from a second connection: ``BEGIN EXCLUSIVE`` on SQLite, ``LOCK TABLE … IN
ACCESS EXCLUSIVE MODE`` on PostgreSQL, ``LOCK TABLES … WRITE`` on MySQL/MariaDB. Waits are on
events and the store's own state; ``trio.fail_after`` is only a safety net.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import peewee
import pytest
import trio

from imc_actors.imc.effects import OWNER, MemberUpsert, RoomUpsert, Write
from imc_actors.imc.state import RoomState
from imc_actors.store.repository import Repository, StoreError, current_guard
from imc_actors.store.urls import DatabaseURL, open_database
from imc_actors.store.writer import Store, StoreUnavailable
from tests.storage.conftest import Tables, engine_of

DB_TIMEOUT = 0.5
SHORT_TIMEOUT = 0.2  # where no engine's lock timeout is involved
SAFETY = 20  # seconds; never reached unless the store hangs


def room(name: str) -> list[Write]:
    return [
        RoomUpsert(name, "example.com", 0),
        MemberUpsert(f"sip:{name}@example.com", "sip:alice@example.org", OWNER),
    ]


@contextmanager
def locked(db_url: str, tables: Tables) -> Iterator[None]:
    """Hold a lock on the rooms and members tables from another connection for the block."""
    engine = engine_of(db_url)
    db: peewee.Database = open_database(DatabaseURL.parse(db_url))
    q = db.quote[0], db.quote[-1]
    names = [f"{q[0]}{t}{q[1]}" for t in (tables.rooms, tables.members)]
    try:
        if engine == "sqlite":
            db.execute_sql("BEGIN EXCLUSIVE")
            release = "ROLLBACK"
        elif engine == "postgresql":
            db.execute_sql("BEGIN")
            db.execute_sql(f"LOCK TABLE {', '.join(names)} IN ACCESS EXCLUSIVE MODE")
            release = "ROLLBACK"
        else:
            db.execute_sql(f"LOCK TABLES {', '.join(f'{n} WRITE' for n in names)}")
            release = "UNLOCK TABLES"
        try:
            yield
        finally:
            db.execute_sql(release)
    finally:
        db.close()


def stored_names(db_url: str, tables: Tables) -> list[str]:
    """The rooms in the database, read on a fresh connection."""
    with tables.repository(db_url) as repository:
        return sorted(state.name for state in repository.load_rooms())


async def run_store(store: Store, nursery: trio.Nursery) -> None:
    await nursery.start(store.run)


class CountedProbes:
    """A repository whose failed write probes are counted; ``refused`` is set at ``times``."""

    def __init__(self, inner: Repository, times: int) -> None:
        self.inner = inner
        self.failed = 0
        self.times = times
        self.refused = trio.Event()

    def apply_batch(self, writes: Sequence[Write]) -> None:
        self.inner.apply_batch(writes)

    def ping(self) -> None:
        self.inner.ping()

    def probe_write(self) -> None:
        try:
            self.inner.probe_write()
        except StoreError:
            self.failed += 1
            if self.failed == self.times:
                trio.from_thread.run_sync(self.refused.set)
            raise

    def load_rooms(self) -> list[RoomState]:
        return self.inner.load_rooms()


async def test_a_write_behind_a_lock_fails_in_time_and_the_store_resumes(
    db_url: str, tables: Tables
) -> None:
    repository = tables.repository(db_url, lock_timeout=DB_TIMEOUT)
    repository.init_schema()
    probes = CountedProbes(repository, times=2)
    store = Store(probes, db_timeout=DB_TIMEOUT, ping_interval=0.05)
    try:
        async with trio.open_nursery() as nursery:
            await run_store(store, nursery)
            await store.commit(room("before"))
            with locked(db_url, tables), trio.fail_after(SAFETY):
                with pytest.raises(StoreUnavailable) as caught:
                    await store.commit(room("stuck"))
                assert caught.value.retry_after >= 1
                assert "db_timeout" in str(caught.value)
                # while the thread may still wait, later writes fail at once, not behind it
                assert not store.statistics().available
                with pytest.raises(StoreUnavailable):
                    await store.commit(room("refused"))
                # while the lock is held the store does not resume: its probe waits for the
                # write lock (a read would pass), so writes keep failing at once
                await probes.refused.wait()
                assert not store.statistics().available
                with pytest.raises(StoreUnavailable):
                    await store.commit(room("refused again"))
            with trio.fail_after(SAFETY):
                await store.wait_available()
                await store.commit(room("after"))
            nursery.cancel_scope.cancel()
    finally:
        repository.close()
    assert stored_names(db_url, tables) == ["after", "before"]
    stats = store.statistics()
    assert (stats.commits, stats.failures) == (2, 3)


async def test_a_write_abandoned_at_db_timeout_is_not_committed_when_the_lock_goes(
    db_url: str, tables: Tables
) -> None:
    # The engine would wait 30 s for the lock; the store gives up after DB_TIMEOUT, the lock
    # goes, the statement goes on: the guard must roll it back instead of committing.
    repository = tables.repository(db_url, lock_timeout=30)
    repository.init_schema()
    store = Store(repository, db_timeout=DB_TIMEOUT, ping_interval=0.05)
    try:
        async with trio.open_nursery() as nursery:
            await run_store(store, nursery)
            await store.commit(room("before"))
            with trio.fail_after(SAFETY):
                with locked(db_url, tables), pytest.raises(StoreUnavailable):
                    await store.commit(room("stuck"))
                await store.wait_available()  # the abandoned thread has ended: rolled back
                await store.commit(room("after"))
            nursery.cancel_scope.cancel()
    finally:
        repository.close()
    assert stored_names(db_url, tables) == ["after", "before"]


class SlowCommit:
    """A backend whose COMMIT is under way when the deadline passes, and then succeeds: the
    real transaction commits (its guard let the COMMIT go), but the answer comes late."""

    def __init__(self, inner: Repository) -> None:
        self.inner = inner
        self.committed: list[int] = []

    def apply_batch(self, writes: Sequence[Write]) -> None:
        assert current_guard() is not None  # the store installed its guard in this thread
        self.inner.apply_batch(writes)
        self.committed.append(len(writes))
        threading.Event().wait(3 * SHORT_TIMEOUT)  # the database acknowledges after db_timeout

    def ping(self) -> None:
        self.inner.ping()

    def load_rooms(self) -> list[RoomState]:
        return self.inner.load_rooms()


async def test_a_commit_under_way_at_db_timeout_is_waited_for(
    sqlite_repository: Repository,
) -> None:
    backend = SlowCommit(sqlite_repository)
    store = Store(backend, db_timeout=SHORT_TIMEOUT)
    async with trio.open_nursery() as nursery:
        await run_store(store, nursery)
        with trio.fail_after(SAFETY):
            await store.commit(room("slow"))  # durable: no 503 for a change that was stored
        nursery.cancel_scope.cancel()
    assert backend.committed == [2]
    assert [state.name for state in sqlite_repository.load_rooms()] == ["slow"]
    assert store.statistics().available


async def test_a_commit_queued_behind_a_read_waits_on_the_wall_clock_not_trio_s(
    sqlite_repository: Repository, autojump_clock: trio.testing.MockClock
) -> None:
    # A read holds the connection while a commit waits for it, and Trio's (virtual) clock
    # races a minute ahead: db_timeout is wall-clock time, so the commit still goes through.
    # (It used to be armed on Trio's clock: the commit was cancelled before it started, then
    # waited db_timeout of wall-clock time for a thread that never ran, and failed with 503.)
    store = Store(sqlite_repository, db_timeout=SHORT_TIMEOUT * 25)
    release = threading.Event()
    committed = trio.Event()

    async def commit() -> None:
        await store.commit(room("queued"))
        committed.set()

    async with trio.open_nursery() as nursery:
        await run_store(store, nursery)
        nursery.start_soon(store.read, lambda _repository: release.wait(SAFETY))
        nursery.start_soon(commit)
        await trio.testing.wait_all_tasks_blocked()
        await trio.sleep(60)  # virtual: the clock jumps past any Trio deadline
        release.set()
        await committed.wait()  # (no fail_after: on this clock it would fire at once)
        nursery.cancel_scope.cancel()
    assert [state.name for state in sqlite_repository.load_rooms()] == ["queued"]
    assert store.statistics().available
