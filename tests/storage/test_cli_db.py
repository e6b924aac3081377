"""``imc-actors db init`` / ``db check`` as a user runs them, on each of the three engines."""

from __future__ import annotations

import subprocess
import sys

from tests.storage.conftest import Tables


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "imc_actors", *args], capture_output=True, text=True, timeout=120,
        env={"PATH": "/usr/bin:/bin"},
    )


def test_db_init_then_check(db_url: str, tables: Tables) -> None:
    flags = ["--db-url", db_url, *tables.flags()]
    before = cli("db", "check", *flags)
    assert before.returncode == 1, before
    # says what is missing: the tables, or (SQLite) the database file itself
    assert tables.rooms in before.stderr or "does not exist" in before.stderr, before.stderr

    created = cli("db", "init", *flags)
    assert created.returncode == 0, created.stderr
    assert f"tables {', '.join(tables.all)} ready" in created.stdout
    assert cli("db", "init", *flags).returncode == 0  # idempotent

    checked = cli("db", "check", *flags)
    assert (checked.returncode, checked.stdout.strip()) == (0, "imc-actors: database fits")
    with tables.repository(db_url) as repository:
        assert repository.check_schema() == []
        assert repository.load_rooms() == []


def test_db_check_on_an_unreachable_server_names_db_url() -> None:
    result = cli("db", "check", "--db-url", "postgresql://nobody@127.0.0.1:1/none")
    assert result.returncode == 1
    assert result.stderr.startswith("imc-actors: db_url:"), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_db_init_on_a_table_that_does_not_fit_says_so(db_url: str, tables: Tables) -> None:
    # was: "tables ... ready", exit 0, over a rooms table without its flag column (serve then
    # could not start: "no such column: t1.flag")
    flags = ["--db-url", db_url, *tables.flags()]
    assert cli("db", "init", *flags).returncode == 0
    with tables.repository(db_url) as repository:
        repository._db.execute_sql(f"ALTER TABLE {tables.rooms} DROP COLUMN flag")
    again = cli("db", "init", *flags)
    assert again.returncode == 1, again
    assert "ready" not in again.stdout
    assert f"table {tables.rooms} has no column flag" in again.stderr, again.stderr
