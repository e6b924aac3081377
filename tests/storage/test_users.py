"""Users and the nonce secret (``subscriber``, ``imc_secret``) on each of the three engines."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import peewee

from imc_actors.sip.digest import ha1
from imc_actors.store.repository import Repository
from tests.storage.conftest import Tables, engine_of
from tests.storage.test_cli_db import cli


def q(db: peewee.Database, name: str) -> str:
    return f"{db.quote[0]}{name}{db.quote[-1]}"


def test_users_are_written_as_hashes_only(repository: Repository, tables: Tables, raw_db: peewee.Database) -> None:
    assert repository.set_user("alice", "example.org", "pw one", create=True)
    assert not repository.set_user("alice", "example.org", "other", create=True)  # exists
    assert not repository.set_user("bob", "example.org", "pw", create=False)  # no such user
    rows = raw_db.execute_sql(
        f"SELECT password, ha1, ha1b, ha1_sha256 FROM {q(raw_db, tables.subscriber)}"
    ).fetchall()
    assert [tuple(row) for row in rows] == [(
        "", hashlib.md5(b"alice:example.org:pw one").hexdigest(),
        hashlib.md5(b"alice@example.org:example.org:pw one").hexdigest(),
        hashlib.sha256(b"alice:example.org:pw one").hexdigest(),
    )]  # fmt: skip
    assert repository.set_user("alice", "example.org", "pw two", create=False)
    found = repository.load_subscriber("alice", "example.org")
    assert found is not None and found.ha1_for("SHA-256", "example.org") == ha1("SHA-256", "alice", "example.org", "pw two")
    assert repository.load_subscriber("alice", "example.net") is None
    assert repository.set_user("bob", "example.org", "pw", create=True)
    assert repository.set_user("carol", "example.net", "pw", create=True)
    assert sorted(repository.list_users()) == [("alice", "example.org"), ("bob", "example.org"), ("carol", "example.net")]
    assert repository.list_users("example.net") == [("carol", "example.net")]
    assert repository.delete_user("bob", "example.org") and not repository.delete_user("bob", "example.org")
    assert repository.load_subscriber("bob", "example.org") is None


def test_a_kamailio_subscriber_table_is_read_as_is_and_given_our_column(
    db_url: str, tables: Tables, raw_db: peewee.Database
) -> None:
    pk = {"sqlite": "INTEGER PRIMARY KEY", "postgresql": "SERIAL PRIMARY KEY",
          "mysql": "INT UNSIGNED AUTO_INCREMENT PRIMARY KEY"}[engine_of(db_url)]  # fmt: skip
    table = q(raw_db, tables.subscriber)
    raw_db.execute_sql(
        f"CREATE TABLE {table} (id {pk} NOT NULL, username VARCHAR(64) DEFAULT '' NOT NULL, "
        "domain VARCHAR(64) DEFAULT '' NOT NULL, password VARCHAR(64) DEFAULT '' NOT NULL, "
        "ha1 VARCHAR(128) DEFAULT '' NOT NULL, ha1b VARCHAR(128) DEFAULT '' NOT NULL, "
        f"CONSTRAINT {q(raw_db, tables.subscriber + '_acc')} UNIQUE (username, domain))"
    )
    p = raw_db.param
    raw_db.execute_sql(
        f"INSERT INTO {table} (username, domain, password, ha1, ha1b) VALUES ({p}, {p}, {p}, '', '')",
        ("alice", "example.org", "plain"),
    )
    with tables.repository(db_url) as repository:
        found = repository.load_subscriber("alice", "example.org")  # before db init: no ha1_sha256
        assert found is not None and found.password == "plain"
        assert found.ha1_for("MD5", "example.org") == ha1("MD5", "alice", "example.org", "plain")
        assert found.ha1_for("SHA-256", "example.org") == ha1("SHA-256", "alice", "example.org", "plain")
        assert any("no column ha1_sha256" in problem for problem in repository.check_schema())
        repository.init_schema()
        assert repository.check_schema() == []
        assert repository.set_user("bob", "example.org", "pw", create=True)
        assert repository.load_subscriber("alice", "example.org") == found  # untouched


def test_the_nonce_secret_is_made_once_and_shared(db_url: str, tables: Tables) -> None:
    with tables.repository(db_url) as first, tables.repository(db_url) as second:
        first.init_schema()
        secret = first.load_secret()
        assert len(secret) == 32
        assert second.load_secret() == secret == first.load_secret()


def test_user_commands(db_url: str, tables: Tables) -> None:
    flags = ["--db-url", db_url, *tables.flags()]
    added = cli("user", "add", "Alice@Example.org", "--password", "pw", *flags)
    assert (added.returncode, added.stdout.strip()) == (0, "imc-actors: user Alice@example.org added")
    again = cli("user", "add", "Alice@example.org", "--password", "pw", *flags)
    assert again.returncode == 1
    assert again.stderr.strip() == "imc-actors: user Alice@example.org exists (user passwd changes its password)"
    changed = subprocess_input(["user", "passwd", "Alice@example.org", *flags], "new pw\n")
    assert (changed.returncode, changed.stdout.strip()) == (0, "imc-actors: password of Alice@example.org changed")
    with tables.repository(db_url) as repository:
        found = repository.load_subscriber("Alice", "example.org")
        assert found is not None and found.ha1 == ha1("MD5", "Alice", "example.org", "new pw")
    listed = cli("user", "list", *flags)
    assert (listed.returncode, listed.stdout) == (0, "Alice@example.org\n")
    # another spelling of the same identity is refused: it would be a second password for
    # sip:alice (a tour: ALICE and alice each got a row, and each password authenticated)
    for twin in ("ALICE@example.org", "alice@Example.org", "%41lice@example.org"):
        refused = cli("user", "add", twin, "--password", "other", *flags)
        assert (refused.returncode, refused.stderr.strip()) == (1, (
            "imc-actors: user Alice@example.org exists, and names compare case-insensitively "
            "with escapes decoded (user passwd changes its password)"
        )), twin  # fmt: skip
    assert cli("user", "list", *flags).stdout == "Alice@example.org\n"
    with tables.repository(db_url) as repository:  # a row made elsewhere (Kamailio's kamctl)
        repository.set_user("\x1b[31mmallory", "example.org", "pw", create=True)
    listed = cli("user", "list", *flags)
    assert sorted(listed.stdout.splitlines()) == ["Alice@example.org", "\\x1b[31mmallory@example.org"]  # escaped
    with tables.repository(db_url) as repository:
        repository.delete_user("\x1b[31mmallory", "example.org")
    assert cli("user", "del", "Alice@example.org", *flags).stdout.strip() == "imc-actors: user Alice@example.org deleted"
    missing = cli("user", "del", "Alice@example.org", *flags)
    assert (missing.returncode, missing.stderr.strip()) == (1, "imc-actors: no user Alice@example.org")
    empty = subprocess_input(["user", "add", "bob@example.org", *flags], "\n")
    assert (empty.returncode, empty.stderr.strip()) == (2, "imc-actors: empty password")
    bad = cli("user", "add", "nodomain", "--password", "x", *flags)
    assert (bad.returncode, bad.stderr.strip()) == (2, "imc-actors: 'nodomain' is not USER@DOMAIN")
    for name in ("\x1b[31mevil@example.org",):  # was: stored, then listed raw
        bad = cli("user", "add", name, "--password", "x", *flags)
        assert (bad.returncode, bad.stderr.strip()) == (
            2, f"imc-actors: {name!r} is not USER@DOMAIN (a SIP user and host)")  # fmt: skip
    long = cli("user", "add", "u" * 100 + "@example.org", "--password", "x", *flags)  # not a db error
    assert (long.returncode, long.stderr.strip()) == (2, "imc-actors: user and domain may have at most 64 characters each")


def subprocess_input(args: list[str], text: str) -> subprocess.CompletedProcess[str]:
    """The CLI with ``text`` on standard input (not a terminal: the password is its first line)."""
    return subprocess.run(
        [sys.executable, "-m", "imc_actors", *args], input=text, capture_output=True, text=True,
        timeout=120, env={"PATH": "/usr/bin:/bin"},
    )
