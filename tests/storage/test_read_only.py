"""A database that takes no writes (read-only, on each engine): an outage, not a bad change.

Each engine is made read-only for the store's own connection with its own setting (SQLite's
``query_only``, PostgreSQL's ``default_transaction_read_only``, MariaDB's read-only session
transactions), as a read-only mount, a standby or ``read_only`` do for every connection.
"""

from __future__ import annotations

import logging
import uuid

import pytest
import trio
import trio.testing

from imc_actors.store.repository import Repository
from imc_actors.store.writer import Store, StoreUnavailable
from tests.storage.conftest import Tables
from tests.storage.test_writer import room, stored_names

READ_ONLY = {
    "sqlite": "PRAGMA query_only = 1",
    "postgresql": "SET default_transaction_read_only = on",
    "mysql": "SET SESSION TRANSACTION READ ONLY",
}


async def test_a_read_only_database_is_an_outage_and_the_probe_connects_afresh(
    repository: Repository, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    # Before: a 500 for each command (the database answered, the write failed) and, where the
    # driver calls it an OperationalError, a reconnect and a second try per command. Now: 503
    # with Retry-After, one line, and the probe, which opens a new connection (a standby that
    # was promoted, or a new primary behind the same name, is then found).
    store = Store(repository, ping_interval=1.0, retry_after=3)
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        await store.commit(room("before"))
        await store.read(lambda r: r._db.execute_sql(READ_ONLY[r.engine]))
        caplog.clear()
        with pytest.raises(StoreUnavailable) as refused:
            await store.commit(room("during"))
        assert refused.value.retry_after == 3
        assert store.statistics().outages == 1
        noted = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(noted) == 1 and "store unavailable" in noted[0], noted
        await store.wait_available()
        await store.commit(room("after"))
        nursery.cancel_scope.cancel()
    assert stored_names(repository) == ["before", "after"]


async def test_writes_the_database_user_may_not_make_are_an_outage_too(
    db_url: str, tables: Tables, autojump_clock: trio.testing.MockClock
) -> None:
    # PostgreSQL: a user whose INSERT/UPDATE/DELETE grants were revoked (found on a tour:
    # 2,813 answers 500 and 3,214 ERROR lines in 10 s). Now: 503 until they are granted again.
    if not db_url.startswith("postgresql"):
        pytest.skip("grants are checked on PostgreSQL here")
    owner = tables.repository(db_url)
    owner.init_schema()
    role = f"imc_writer_{uuid.uuid4().hex[:8]}"
    names = ", ".join(f'"{name}"' for name in tables.all)
    run = owner._db.execute_sql
    run(f'CREATE ROLE "{role}" LOGIN')
    try:
        run(f'GRANT SELECT, INSERT, UPDATE, DELETE ON {names} TO "{role}"')
        run(f'GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO "{role}"')
        repository = tables.repository(db_url.replace("postgres@", f"{role}@", 1))
        store = Store(repository, ping_interval=1.0, retry_after=3)
        async with trio.open_nursery() as nursery:
            await nursery.start(store.run)
            await store.commit(room("before"))
            run(f'REVOKE INSERT, UPDATE, DELETE ON {names} FROM "{role}"')
            with pytest.raises(StoreUnavailable):
                await store.commit(room("during"))
            run(f'GRANT INSERT, UPDATE, DELETE ON {names} TO "{role}"')
            await store.wait_available()  # its probe commits a write now
            await store.commit(room("after"))
            nursery.cancel_scope.cancel()
        repository.close()
        assert stored_names(owner) == ["before", "after"]
    finally:
        run(f'DROP OWNED BY "{role}"')
        run(f'DROP ROLE "{role}"')
        owner.close()
