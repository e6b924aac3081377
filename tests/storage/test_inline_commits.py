"""Commits on the event loop's thread for an SQLite file, flushed by a helper process
(:mod:`imc_actors.store.inline`): what they write is there, every one is flushed before it is
reported, and whatever stands in their way (another connection's write lock, a dead helper, a
failed fsync) sends the batch to the writer thread or fails it as a failed COMMIT would.

Real SQLite files, a real helper process and real threads: no autojump clock (the store's
waits are for threads and processes, which a virtual clock would skip over).
"""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
from pathlib import Path

import pytest
import trio
import trio.testing

import imc_actors.store.writer as writer_module
from imc_actors import Config, IncomingMessage, open_conference
from imc_actors.imc.effects import RoomUpsert
from imc_actors.store.inline import WalSync, inline_repository
from imc_actors.store.repository import Repository
from imc_actors.store.writer import Store, StoreError


def _repository(tmp_path: Path) -> Repository:
    repository = Repository(f"sqlite:///{tmp_path / 'imc.db'}")
    repository.init_schema()
    return repository


def _rooms(tmp_path: Path) -> set[str]:
    with Repository(f"sqlite:///{tmp_path / 'imc.db'}") as fresh:
        return {room.name for room in fresh.load_rooms()}


async def test_commits_of_an_sqlite_file_run_inline_and_each_is_flushed_first(tmp_path: Path) -> None:
    repository = _repository(tmp_path)
    store = Store(repository)
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        for i in range(5):
            await store.commit([RoomUpsert(f"r{i}", "example.org", 0)])
        stats = store.statistics()
        assert (stats.commits, stats.inline_commits, stats.inline_declined) == (5, 5, 0)
        assert store._wal is not None and store._wal.helper_syncs == 5
        assert store._wal.thread_syncs == 0
        nursery.cancel_scope.cancel()
    assert _rooms(tmp_path) == {f"r{i}" for i in range(5)}
    # the connection's own settings are back: the writer thread's commits flush themselves
    pragmas = [repository._db.execute_sql(f"PRAGMA {name}").fetchone()[0]
               for name in ("synchronous", "busy_timeout", "wal_autocheckpoint")]
    assert pragmas == [2, 5000, 1000]


async def test_sqlite_inline_false_keeps_every_commit_in_the_writer_thread(tmp_path: Path) -> None:
    # for a filesystem that may be frozen (snapshots): a blocked write then stalls the
    # writer thread, and db_timeout answers 503, instead of stalling the event loop
    config = Config.from_sources(environ={"IMC_SQLITE_INLINE": "false"}, overrides={
        "db_url": f"sqlite:///{tmp_path / 'imc.db'}", "domains": ["example.org"],
    })  # fmt: skip
    assert config.sqlite_inline is False
    async with open_conference(config) as conf:
        say = IncomingMessage("sip:imc-manager@example.org", "sip:alice@example.org", b"#create r",
                              "text/plain", "c1")  # fmt: skip
        assert (await conf.handle(say)).code == 200
        stats = conf.store.statistics()
        assert stats.commits >= 1 and stats.inline_commits == 0 and conf.store._wal is None


async def test_a_taken_write_lock_sends_the_batch_to_the_writer_thread(tmp_path: Path) -> None:
    store = Store(_repository(tmp_path))
    other = sqlite3.connect(tmp_path / "imc.db", isolation_level=None)
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        other.execute("BEGIN IMMEDIATE")  # another process's write lock (a CLI, a worker)
        done = trio.Event()

        async def commit() -> None:
            await store.commit([RoomUpsert("locked", "example.org", 0)])
            done.set()

        nursery.start_soon(commit)
        await trio.testing.wait_all_tasks_blocked()
        # declined at once (nothing written), now waiting in the writer thread's busy wait
        assert store.statistics().inline_declined == 1
        assert not done.is_set()
        other.execute("ROLLBACK")
        with trio.fail_after(10):
            await done.wait()
        stats = store.statistics()
        assert (stats.commits, stats.failures, stats.inline_commits) == (1, 0, 0)
        await store.commit([RoomUpsert("after", "example.org", 0)])  # inline again
        assert store.statistics().inline_commits == 1
        nursery.cancel_scope.cancel()
    other.close()
    assert _rooms(tmp_path) == {"locked", "after"}


async def test_the_writer_thread_takes_one_commit_in_every_checkpoint_every(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(writer_module, "CHECKPOINT_EVERY", 3)
    store = Store(_repository(tmp_path))
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        for i in range(8):
            await store.commit([RoomUpsert(f"r{i}", "example.org", 0)])
        # 3 inline, the 4th in the thread (its COMMIT checkpoints the WAL), 3 inline, the 8th
        assert store.statistics().inline_commits == 6
        assert store.statistics().commits == 8
        nursery.cancel_scope.cancel()
    assert len(_rooms(tmp_path)) == 8


class CountedWalSync(WalSync):
    """A WalSync that counts its flushes and says when ``until`` of them have failed."""

    def __init__(self, path: str, until: int) -> None:
        super().__init__(path)
        self.failed = 0
        self.until = until
        self.enough = trio.Event()

    async def sync(self) -> None:
        try:
            await super().sync()
        except OSError:
            self.failed += 1
            if self.failed >= self.until:
                self.enough.set()
            raise


async def test_a_failed_flush_fails_the_batch_and_the_store_resumes(tmp_path: Path) -> None:
    store = Store(_repository(tmp_path), ping_interval=0.05)
    broken = CountedWalSync(str(tmp_path / "missing" / "imc.db-wal"), until=3)  # cannot open
    store._wal = broken
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        with pytest.raises(StoreError, match="flushing .* failed: .*No such file"):
            await store.commit([RoomUpsert("lost", "example.org", 0)])
        assert not store.statistics().available  # a disk that cannot flush is an outage
        with trio.fail_after(10):
            await broken.enough.wait()  # the probe flushed twice more, and failed
        assert not store.statistics().available  # a passing write probe is not enough
        store._wal = WalSync(repository_wal(store))
        with trio.fail_after(10):
            await store.wait_available()
        await store.commit([RoomUpsert("kept", "example.org", 0)])
        nursery.cancel_scope.cancel()
    assert "kept" in _rooms(tmp_path)


def repository_wal(store: Store) -> str:
    assert store._inline is not None and store._inline.wal_path is not None
    return store._inline.wal_path


async def synced_wal(tmp_path: Path, *, restart_after: float) -> WalSync:
    """A :class:`WalSync` for ``tmp_path/file-wal`` whose helper has done one flush."""
    path = tmp_path / "file-wal"
    path.write_bytes(b"x")
    wal = WalSync(str(path), restart_after=restart_after)
    await wal.sync()
    return wal


async def kill_helper(wal: WalSync) -> trio.Process:
    """kill -9 of ``wal``'s helper, waited for; the process."""
    helper = wal._process
    assert helper is not None
    helper.kill()
    await helper.wait()
    return helper


async def test_a_dead_helper_leaves_the_flush_to_a_thread(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    wal = await synced_wal(tmp_path, restart_after=3600.0)
    path = tmp_path / "file-wal"
    assert (wal.helper_syncs, wal.thread_syncs) == (1, 0)
    os.replace(tmp_path / "file-wal", tmp_path / "old")  # SQLite made a new WAL file
    path.write_bytes(b"y")
    await wal.sync()  # the helper opens the new one
    assert wal.helper_syncs == 2
    assert wal._process is not None
    wal._process.send_signal(signal.SIGINT)  # a Ctrl-C reaches the whole process group
    wal._process.send_signal(signal.SIGTERM)
    await wal.sync()
    assert wal.helper_syncs == 3
    await kill_helper(wal)
    with caplog.at_level(logging.WARNING, logger="imc_actors.store.inline"):
        await wal.sync()
        await wal.sync()
    assert (wal.helper_syncs, wal.thread_syncs) == (3, 2)
    assert "flushing in a thread instead, a new helper in 3600 s" in caplog.text
    assert wal.helpers_started == 1
    await wal.aclose()


async def test_a_new_helper_is_started_restart_after_seconds_after_one_died(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Else one dead helper would leave every later flush to a thread (the GIL cost the
    # helper exists to avoid) until the server restarts.
    wal = await synced_wal(tmp_path, restart_after=0.0)
    first = await kill_helper(wal)
    with caplog.at_level(logging.WARNING, logger="imc_actors.store.inline"):
        await wal.sync()  # the helper is gone: this flush in a thread
        await wal.sync()  # restart_after has passed: a new helper
    assert (wal.helper_syncs, wal.thread_syncs, wal.helpers_started) == (2, 1, 2)
    assert wal._process is not None and wal._process is not first
    assert "started again" in caplog.text
    await wal.aclose()


async def test_the_helper_ends_with_the_store(tmp_path: Path) -> None:
    store = Store(_repository(tmp_path))
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        await store.commit([RoomUpsert("r", "example.org", 0)])
        assert store._wal is not None and store._wal._process is not None
        process = store._wal._process
        nursery.cancel_scope.cancel()
    assert process.returncode == 0  # it read the end of its input and exited


def test_only_the_stores_own_sqlite_file_repository_commits_inline(tmp_path: Path) -> None:
    from imc_actors.control.metrics import TimedRepository

    repository = _repository(tmp_path)
    assert inline_repository(repository) is repository
    assert inline_repository(TimedRepository(repository, lambda seconds: None)) is repository

    class Wrapper:  # fault injection and other wrappers may block: never on the loop's thread
        def __getattr__(self, name: str) -> object:
            return getattr(repository, name)

    assert inline_repository(Wrapper()) is None
    assert inline_repository(Repository("sqlite:///:memory:")) is None


async def test_a_stopped_helper_is_given_up_at_db_timeout(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = Store(_repository(tmp_path), db_timeout=0.5)
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        await store.commit([RoomUpsert("first", "example.org", 0)])
        assert store._wal is not None and store._wal._process is not None
        helper = store._wal._process
        helper.send_signal(signal.SIGSTOP)
        try:
            with caplog.at_level(logging.WARNING), trio.fail_after(20):
                await store.commit([RoomUpsert("second", "example.org", 0)])
        finally:
            if helper.returncode is None:
                helper.send_signal(signal.SIGCONT)
        assert "stopping the helper" in caplog.text
        assert store._wal.thread_syncs == 1
        await store.commit([RoomUpsert("third", "example.org", 0)])  # flushed in a thread
        assert store._wal.thread_syncs == 2
        nursery.cancel_scope.cancel()
    assert _rooms(tmp_path) == {"first", "second", "third"}


async def test_a_full_database_says_so(tmp_path: Path) -> None:
    repository = _repository(tmp_path)
    store = Store(repository)
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        await store.commit([RoomUpsert("small", "example.org", 0)])
        pages = repository._db.execute_sql("PRAGMA page_count").fetchone()[0]
        repository._db.execute_sql(f"PRAGMA max_page_count = {pages}")  # no room to grow,
        repository._db._pragmas = [*repository._db._pragmas, ("max_page_count", pages)]  # ever
        big = [RoomUpsert(f"room-{i}-{'x' * 40}", "example.org", 0) for i in range(2000)]
        with pytest.raises(StoreError) as failed:
            await store.commit(big)
        assert "full" in str(failed.value)  # SQLite's own error, not the ROLLBACK's after it
        assert "cannot rollback" not in str(failed.value)
        nursery.cancel_scope.cancel()
