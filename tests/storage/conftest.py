"""Fixtures for the storage tests: the same tests on SQLite, PostgreSQL and MySQL/MariaDB.

``db_url`` is parametrized over the three engines. The servers default to the ones CI starts
(``postgresql://postgres@127.0.0.1:5432/test``, ``mysql://root@127.0.0.1:3306/test``);
``IMC_TEST_POSTGRESQL_URL`` and ``IMC_TEST_MYSQL_URL`` point elsewhere. An unreachable server
skips its tests with the reason, except when the ``CI`` environment variable is set: then the
tests fail, so CI can never pass without testing every engine.

Every test gets its own table names (``imc_rooms_<random>``, ``imc_members_<random>``) and
drops them, and their ``version`` rows, at teardown, so runs never see each other's data. The
``version`` table itself (made by ``init_schema`` or the DDL files when absent) is dropped too
when the test found none and it is empty again, so the databases are left as they were found.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from dataclasses import astuple, dataclass, fields
from pathlib import Path
from typing import Any

import peewee
import pytest

from imc_actors.store.repository import Repository, StoreError
from imc_actors.store.urls import DatabaseURL, open_database

ENGINES = ("sqlite", "postgresql", "mysql")
SERVER_URLS = {
    "postgresql": os.environ.get(
        "IMC_TEST_POSTGRESQL_URL", "postgresql://postgres@127.0.0.1:5432/test"
    ),
    "mysql": os.environ.get("IMC_TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306/test"),
}
SCHEMA_DIR = Path(__file__).resolve().parents[2] / "schema"

_unreachable: dict[str, str | None] = {}  # engine -> why it cannot be used (None: it can)


def _why_unreachable(engine: str, url: str) -> str | None:
    """Ping the server once per session; the reason it failed, or None."""
    if engine not in _unreachable:
        try:
            with Repository(url) as repository:
                repository.ping()
        except StoreError as exc:
            _unreachable[engine] = f"{engine} server not reachable ({exc})"
        else:
            _unreachable[engine] = None
    return _unreachable[engine]


def skip_or_fail(reason: str) -> None:
    """Skip the test, or fail it when ``CI`` is set (CI must exercise every engine)."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; CI is set, so this fails instead of skipping", pytrace=False)
    pytest.skip(reason)


def engine_of(url: str) -> str:
    """``sqlite``, ``postgresql`` or ``mysql`` for a database URL."""
    return DatabaseURL.parse(url).engine


@pytest.fixture(params=ENGINES)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database URL for each engine (SQLite: a file in the test's tmp_path)."""
    engine: str = request.param
    if engine == "sqlite":
        return f"sqlite:///{tmp_path / 'imc.db'}"
    url = SERVER_URLS[engine]
    reason = _why_unreachable(engine, url)
    if reason is not None:
        skip_or_fail(reason)
    return url


@dataclass(frozen=True, slots=True)
class Tables:
    """The table names one test uses."""

    rooms: str
    members: str
    pending: str
    location: str
    subscriber: str
    secret: str
    bans: str
    limits: str
    leases: str
    nodes: str
    metrics: str
    history: str
    room_info: str

    @property
    def all(self) -> tuple[str, ...]:
        return astuple(self)

    def by_parameter(self) -> dict[str, str]:
        """Repository parameter (``rooms_table``...) -> the table name."""
        renamed = {"leases": "lease_table", "nodes": "node_table"}
        return {renamed.get(f.name, f"{f.name}_table"): getattr(self, f.name) for f in fields(self)}

    def repository(self, db_url: str, **options: Any) -> Repository:
        """A :class:`Repository` on these tables (not connected yet); ``options`` are passed on
        (``lock_timeout``, ``node``, ``clock``...)."""
        return Repository(db_url, **self.by_parameter(), **options)

    def flags(self) -> list[str]:
        """The CLI flags that name these tables."""
        return [
            text
            for parameter, name in self.by_parameter().items()
            for text in ("--" + parameter.replace("_", "-"), name)
        ]


def new_tables() -> Tables:
    """Fresh, unique table names."""
    suffix = secrets.token_hex(4)
    return Tables(
        f"imc_rooms_{suffix}", f"imc_members_{suffix}", f"imc_pending_{suffix}",
        f"imc_location_{suffix}", f"subscriber_{suffix}", f"imc_secret_{suffix}",
        f"imc_bans_{suffix}", f"imc_limits_{suffix}", f"imc_leases_{suffix}", f"imc_nodes_{suffix}",
        f"imc_metrics_{suffix}", f"imc_history_{suffix}", f"imc_room_info_{suffix}",
    )  # fmt: skip


def version_table_exists(url: str) -> bool:
    """Whether the database at ``url`` has a ``version`` table (an SQLite file is not made)."""
    if engine_of(url) == "sqlite":
        return False  # a fresh file in the test's own tmp_path: nothing to leave behind
    db = open_database(DatabaseURL.parse(url))
    try:
        return db.table_exists("version")
    finally:
        db.close()


def drop_tables(url: str, tables: Tables, *, drop_version: bool = False) -> None:
    """Drop ``tables`` and remove their ``version`` rows (missing ones are fine). With
    ``drop_version``, also drop the ``version`` table when no row is left in it."""
    db = open_database(DatabaseURL.parse(url))
    try:
        left, right = db.quote[0], db.quote[-1]
        for table in tables.all:
            db.execute_sql(f"DROP TABLE IF EXISTS {left}{table}{right}")
        if db.table_exists("version"):
            db.execute_sql(
                f"DELETE FROM version WHERE table_name IN ({db.param}, {db.param}, {db.param})",
                (tables.rooms, tables.members, tables.subscriber),
            )
            if drop_version and db.execute_sql("SELECT 1 FROM version").fetchone() is None:
                db.execute_sql("DROP TABLE IF EXISTS version")
    finally:
        db.close()


@pytest.fixture
def tables(db_url: str) -> Iterator[Tables]:
    """Unique table names for this test; the tables are dropped afterwards, and so is a
    ``version`` table the test made (one that was there before the test is kept)."""
    names = new_tables()
    had_version = version_table_exists(db_url)
    yield names
    drop_tables(db_url, names, drop_version=not had_version)


@pytest.fixture
def raw_db(db_url: str) -> Iterator[peewee.Database]:
    """A separate peewee connection to the test database, for DDL and checks behind our back."""
    db = open_database(DatabaseURL.parse(db_url))
    yield db
    db.close()


@pytest.fixture
def repository(db_url: str, tables: Tables) -> Iterator[Repository]:
    """A :class:`Repository` on fresh tables created by ``init_schema``."""
    repo = tables.repository(db_url)
    repo.init_schema()
    yield repo
    repo.close()


@pytest.fixture
def sqlite_repository(tmp_path: Path) -> Iterator[Repository]:
    """A :class:`Repository` on a fresh SQLite file (the writer tests need no server)."""
    repo = Repository(f"sqlite:///{tmp_path / 'store.db'}")
    repo.init_schema()
    yield repo
    repo.close()
