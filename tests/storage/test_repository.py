"""Repository tests: every kind of change round-trips on SQLite, PostgreSQL and MySQL/MariaDB."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Protocol

import peewee
import pytest

from imc_actors.imc.effects import (
    ADMIN,
    INVITED,
    OWNER,
    PRIVATE,
    MemberDelete,
    MemberUpsert,
    RoomDelete,
    RoomUpsert,
)
from imc_actors.imc.state import Member, RoomState
from imc_actors.store.repository import Repository, StoreError, split_member
from imc_actors.store.urls import DatabaseURL, redact

LOBBY = "sip:Lobby@Example.com"


SCHEMA_DIR = Path(__file__).resolve().parents[2] / "schema"


class Tables(Protocol):
    """The ``tables`` fixture: table names unique to the test, dropped at teardown."""

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
    all: tuple[str, ...]


def engine_of(url: str) -> str:
    return DatabaseURL.parse(url).engine


def room_map(repository: Repository) -> dict[str, RoomState]:
    """The loaded rooms by ``name@domain`` as spelled."""
    return {f"{room.name}@{room.domain}": room for room in repository.load_rooms()}


def member_uris(room: RoomState) -> list[tuple[str, int]]:
    return [(member.uri, member.flags) for member in room.members]


def q(db: peewee.Database, name: str) -> str:
    """``name`` quoted for ``db``."""
    return f"{db.quote[0]}{name}{db.quote[-1]}"


# -- round trips --------------------------------------------------------------------------------


def test_room_upsert_round_trip(repository: Repository) -> None:
    repository.apply_batch([RoomUpsert("Lobby", "Example.com", 0)])
    assert repository.load_rooms() == [RoomState("Lobby", "Example.com", 0, ())]


def test_private_flag_survives_a_restart(
    repository: Repository, db_url: str, tables: Tables
) -> None:
    repository.apply_batch([RoomUpsert("Secret", "example.com", PRIVATE)])
    repository.close()
    with tables.repository(db_url) as reopened:
        (room,) = reopened.load_rooms()
    assert room.private and room.flags == PRIVATE


def test_room_upsert_is_case_insensitive_and_keeps_the_first_spelling(
    repository: Repository,
) -> None:
    repository.apply_batch([RoomUpsert("Lobby", "Example.com", 0)])
    repository.apply_batch([RoomUpsert("LOBBY", "example.COM", PRIVATE)])
    assert repository.load_rooms() == [RoomState("Lobby", "Example.com", PRIVATE, ())]
    repository.apply_batch([RoomUpsert("lobby", "EXAMPLE.com", 0)])
    assert repository.load_rooms() == [RoomState("Lobby", "Example.com", 0, ())]


def test_members_load_in_joining_order_with_their_flags(repository: Repository) -> None:
    repository.apply_batch(
        [
            RoomUpsert("Lobby", "Example.com", 0),
            MemberUpsert(LOBBY, "sip:alice@example.org", OWNER),
            MemberUpsert(LOBBY, "sip:bob@example.org", 0),
        ]
    )
    repository.apply_batch([MemberUpsert(LOBBY, "sip:Carol@Example.org", INVITED)])
    repository.apply_batch([MemberUpsert(LOBBY, "sip:dave@example.org", ADMIN | OWNER)])
    (room,) = repository.load_rooms()
    assert member_uris(room) == [
        ("sip:alice@example.org", OWNER),
        ("sip:bob@example.org", 0),
        ("sip:Carol@Example.org", INVITED),
        ("sip:dave@example.org", ADMIN | OWNER),
    ]
    assert room.owner == Member("sip:alice@example.org", OWNER)


def test_member_flag_change_keeps_order_and_spelling(repository: Repository) -> None:
    repository.apply_batch(
        [
            RoomUpsert("Lobby", "Example.com", 0),
            MemberUpsert(LOBBY, "sip:alice@example.org", OWNER),
            MemberUpsert(LOBBY, "sip:Bob@example.org", INVITED),
            MemberUpsert(LOBBY, "sip:carol@example.org", 0),
        ]
    )
    # The invitation is accepted, then bob is made admin; the room URI and bob's URI are
    # spelled differently each time and must still find the row.
    repository.apply_batch([MemberUpsert(LOBBY, "sip:Bob@example.org", 0)])
    repository.apply_batch([MemberUpsert("sip:lobby@example.COM", "sip:BOB@Example.org", ADMIN)])
    (room,) = repository.load_rooms()
    assert member_uris(room) == [
        ("sip:alice@example.org", OWNER),
        ("sip:Bob@example.org", ADMIN),
        ("sip:carol@example.org", 0),
    ]


def test_member_delete(repository: Repository) -> None:
    repository.apply_batch(
        [
            RoomUpsert("Lobby", "Example.com", 0),
            MemberUpsert(LOBBY, "sip:alice@example.org", OWNER),
            MemberUpsert(LOBBY, "sip:bob@example.org", 0),
            MemberUpsert(LOBBY, "sip:carol@example.org", 0),
        ]
    )
    repository.apply_batch([MemberDelete("sip:LOBBY@example.com", "sip:Bob@Example.org")])
    (room,) = repository.load_rooms()
    assert member_uris(room) == [("sip:alice@example.org", OWNER), ("sip:carol@example.org", 0)]
    repository.apply_batch([MemberDelete(LOBBY, "sip:nobody@example.org")])  # a no-op
    assert repository.load_rooms() == [room]


def test_a_member_who_leaves_and_rejoins_goes_to_the_end(repository: Repository) -> None:
    repository.apply_batch(
        [
            RoomUpsert("Lobby", "Example.com", 0),
            MemberUpsert(LOBBY, "sip:alice@example.org", OWNER),
            MemberUpsert(LOBBY, "sip:bob@example.org", 0),
            MemberUpsert(LOBBY, "sip:carol@example.org", 0),
        ]
    )
    repository.apply_batch(
        [MemberDelete(LOBBY, "sip:bob@example.org"), MemberUpsert(LOBBY, "sip:bob@example.org", 0)]
    )
    (room,) = repository.load_rooms()
    assert [m.uri for m in room.members] == [
        "sip:alice@example.org",
        "sip:carol@example.org",
        "sip:bob@example.org",
    ]


def test_room_delete_cascades_to_its_members_only(repository: Repository) -> None:
    repository.apply_batch(
        [
            RoomUpsert("Lobby", "Example.com", 0),
            MemberUpsert(LOBBY, "sip:alice@example.org", OWNER),
            MemberUpsert("sip:lobby@example.com", "sip:bob@example.org", 0),  # other spelling
            RoomUpsert("Other", "example.com", 0),
            MemberUpsert("sip:Other@example.com", "sip:alice@example.org", OWNER),
        ]
    )
    repository.apply_batch([RoomDelete("LOBBY", "EXAMPLE.COM")])
    assert repository.load_rooms() == [
        RoomState("Other", "example.com", 0, (Member("sip:alice@example.org", OWNER),))
    ]
    # Re-creating the room starts from nothing: no member rows were left behind.
    repository.apply_batch([RoomUpsert("Lobby", "Example.com", 0)])
    assert room_map(repository)["Lobby@Example.com"].members == ()


def test_rooms_without_members_load_and_do_not_stop_the_load(repository: Repository) -> None:
    repository.apply_batch(
        [
            RoomUpsert("Empty", "example.com", 0),
            RoomUpsert("Hidden", "example.com", PRIVATE),
            RoomUpsert("Lobby", "Example.com", 0),
            MemberUpsert(LOBBY, "sip:alice@example.org", OWNER),
            RoomUpsert("Last", "example.com", 0),
        ]
    )
    rooms = repository.load_rooms()
    assert [(r.name, r.flags, len(r.members)) for r in rooms] == [
        ("Empty", 0, 0),
        ("Hidden", PRIVATE, 0),
        ("Lobby", 0, 1),
        ("Last", 0, 0),
    ]


def test_every_change_in_one_batch(repository: Repository) -> None:
    """A room's whole life in one transaction, as a busy group commit would write it."""
    repository.apply_batch(
        [
            RoomUpsert("Lobby", "Example.com", 0),
            MemberUpsert(LOBBY, "sip:alice@example.org", OWNER),
            MemberUpsert(LOBBY, "sip:bob@example.org", INVITED),
            MemberUpsert(LOBBY, "sip:bob@example.org", 0),
            RoomUpsert("Lobby", "Example.com", PRIVATE),
            RoomUpsert("Gone", "example.com", 0),
            MemberUpsert("sip:Gone@example.com", "sip:alice@example.org", OWNER),
            MemberUpsert(LOBBY, "sip:carol@example.org", 0),
            MemberDelete(LOBBY, "sip:carol@example.org"),
            RoomDelete("Gone", "example.com"),
        ]
    )
    assert repository.load_rooms() == [
        RoomState(
            "Lobby",
            "Example.com",
            PRIVATE,
            (Member("sip:alice@example.org", OWNER), Member("sip:bob@example.org", 0)),
        )
    ]


def test_a_room_stored_under_several_spellings_keeps_joining_order(repository: Repository) -> None:
    repository.apply_batch(
        [
            RoomUpsert("Lobby", "Example.com", 0),
            MemberUpsert(LOBBY, "sip:alice@example.org", OWNER),
            MemberUpsert("sip:lobby@example.com", "sip:bob@example.org", 0),
            MemberUpsert(LOBBY, "sip:carol@example.org", 0),
            MemberUpsert("sip:LOBBY@EXAMPLE.COM", "sip:dave@example.org", 0),
        ]
    )
    (room,) = repository.load_rooms()
    assert [m.uri for m in room.members] == [
        "sip:alice@example.org",
        "sip:bob@example.org",
        "sip:carol@example.org",
        "sip:dave@example.org",
    ]


def test_rows_differing_only_in_case_load_once(
    repository: Repository, raw_db: peewee.Database, tables: Tables, db_url: str
) -> None:
    """Rows a case-sensitive database let someone add by hand: the first one wins."""
    if engine_of(db_url) == "mysql":
        pytest.skip("MySQL's _ci unique keys refuse such rows")
    p = raw_db.param
    rooms, members = q(raw_db, tables.rooms), q(raw_db, tables.members)
    for name, flag in (("Lobby", 0), ("LOBBY", PRIVATE)):
        raw_db.execute_sql(
            f"INSERT INTO {rooms} (name, domain, flag) VALUES ({p}, {p}, {p})",
            (name, "example.com", flag),
        )
    for user, flag in (("alice", OWNER), ("bob", 0), ("Alice", 0)):
        raw_db.execute_sql(
            f"INSERT INTO {members} (username, domain, room, flag) VALUES ({p}, {p}, {p}, {p})",
            (user, "example.org", "sip:Lobby@example.com", flag),
        )
    assert repository.load_rooms() == [
        RoomState(
            "Lobby",
            "example.com",
            0,
            (Member("sip:alice@example.org", OWNER), Member("sip:bob@example.org", 0)),
        )
    ]
    # Writes reach every row of the name, so the duplicates cannot resurface with stale flags.
    repository.apply_batch([MemberDelete("sip:lobby@example.com", "sip:ALICE@example.org")])
    (room,) = repository.load_rooms()
    assert [m.uri for m in room.members] == ["sip:bob@example.org"]
    repository.apply_batch([RoomDelete("lobby", "example.com")])
    assert repository.load_rooms() == []


def test_member_rows_of_missing_rooms_are_ignored(repository: Repository) -> None:
    repository.apply_batch(
        [
            MemberUpsert("sip:ghost@example.com", "sip:alice@example.org", OWNER),
            RoomUpsert("Lobby", "Example.com", 0),
        ]
    )
    assert repository.load_rooms() == [RoomState("Lobby", "Example.com", 0, ())]


# -- failures -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "write",
    [
        RoomUpsert("x" * 65, "example.com", 0),
        RoomUpsert("Lobby", "example.com", -1),
        MemberUpsert(LOBBY, "not-a-uri", 0),
        MemberUpsert("sip:" + "r" * 60 + "@example.com", "sip:alice@example.org", 0),
        MemberDelete(LOBBY, "sip:@example.org"),
    ],
    ids=["long-name", "bad-flags", "bad-member", "long-room-uri", "empty-user"],
)
def test_a_bad_write_fails_the_whole_batch(repository: Repository, write: object) -> None:
    with pytest.raises(StoreError):
        repository.apply_batch([RoomUpsert("Lobby", "Example.com", 0), write])  # type: ignore[list-item]
    assert repository.load_rooms() == []


def test_a_database_failure_mid_batch_rolls_back(
    repository: Repository, raw_db: peewee.Database, tables: Tables
) -> None:
    raw_db.execute_sql(f"DROP TABLE {q(raw_db, tables.members)}")
    with pytest.raises(StoreError, match="writing failed"):
        repository.apply_batch(
            [RoomUpsert("Lobby", "Example.com", 0), MemberUpsert(LOBBY, "sip:a@example.org", 1)]
        )
    room = repository._models.room  # noqa: SLF001 - count rows behind the API's back
    assert room.select().count() == 0


def test_unreachable_server_raises_store_error() -> None:
    with pytest.raises(StoreError, match="ping failed on postgresql://postgres@127.0.0.1:1/test"):
        Repository("postgresql://postgres@127.0.0.1:1/test").ping()
    with pytest.raises(StoreError, match=r"mysql://root:\*\*\*@127.0.0.1:1/test"):
        Repository("mysql://root:secret@127.0.0.1:1/test").ping()


def test_unwritable_sqlite_path_raises_store_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="missing-dir of sqlite:.* does not exist"):
        Repository(f"sqlite:///{tmp_path / 'missing-dir' / 'imc.db'}").init_schema()
    (tmp_path / "file").write_text("")  # a folder that is a file: SQLite's own words then
    with pytest.raises(StoreError, match="does not exist|unable to open"):
        Repository(f"sqlite:///{tmp_path / 'file' / 'imc.db'}").init_schema()


def test_reconnects_after_the_server_dropped_the_connection(
    repository: Repository, raw_db: peewee.Database, db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    engine = engine_of(db_url)
    if engine == "sqlite":
        pytest.skip("SQLite has no server to drop the connection")
    repository.apply_batch([RoomUpsert("Lobby", "Example.com", 0)])
    db = repository._db  # noqa: SLF001 - find our session to kill it
    if engine == "postgresql":
        (pid,) = db.execute_sql("SELECT pg_backend_pid()").fetchone()
        raw_db.execute_sql("SELECT pg_terminate_backend(%s)", (pid,))
    else:
        (pid,) = db.execute_sql("SELECT CONNECTION_ID()").fetchone()
        raw_db.execute_sql(f"KILL {int(pid)}")
    repository.apply_batch([MemberUpsert(LOBBY, "sip:alice@example.org", OWNER)])
    (room,) = repository.load_rooms()
    assert member_uris(room) == [("sip:alice@example.org", OWNER)]
    repository.ping()
    # one line, once it is known to have gone through
    (line,) = [r.getMessage() for r in caplog.records if "new connection" in r.getMessage()]
    assert line.startswith("writing on ") and line.endswith("tried again on a new connection, it went through")


# -- schema -------------------------------------------------------------------------------------


def test_init_schema_is_idempotent(
    repository: Repository, raw_db: peewee.Database, tables: Tables
) -> None:
    repository.apply_batch(
        [RoomUpsert("Lobby", "Example.com", PRIVATE), MemberUpsert(LOBBY, "sip:a@example.org", 1)]
    )
    before = repository.load_rooms()
    repository.init_schema()
    repository.init_schema()
    assert repository.load_rooms() == before
    assert repository.check_schema() == []
    rows = raw_db.execute_sql(
        f"SELECT table_name, table_version FROM version WHERE table_name IN ({raw_db.param}, "
        f"{raw_db.param}) ORDER BY table_name",
        (tables.members, tables.rooms),
    ).fetchall()
    assert [(name, int(v)) for name, v in rows] == [(tables.members, 1), (tables.rooms, 1)]


def test_check_schema_is_empty_on_a_fresh_database(repository: Repository) -> None:
    assert repository.check_schema() == []


def test_check_schema_reports_missing_tables(
    db_url: str, tables: Tables, raw_db: peewee.Database
) -> None:
    with tables.repository(db_url) as repository:
        repository.ping()  # SQLite: the file exists now, empty
        problems = repository.check_schema()
        assert len(problems) == len(tables.all)
        for problem, table in zip(problems, tables.all, strict=True):
            assert table in problem and "missing" in problem
        repository.init_schema()
        raw_db.execute_sql(f"DROP TABLE {q(raw_db, tables.members)}")
        assert repository.check_schema() == [f"table {tables.members} is missing"]


def test_check_schema_does_not_create_a_missing_sqlite_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.db"
    with Repository(f"sqlite:///{path}") as repository:
        assert repository.check_schema() == [f"database file {path} does not exist"]
    assert not path.exists()


def test_check_schema_reports_a_missing_column(
    repository: Repository, raw_db: peewee.Database, tables: Tables
) -> None:
    raw_db.execute_sql(f"ALTER TABLE {q(raw_db, tables.members)} DROP COLUMN flag")
    assert repository.check_schema() == [f"table {tables.members} has no column flag"]


def test_check_schema_reports_a_missing_unique_key(
    repository: Repository, raw_db: peewee.Database, tables: Tables, db_url: str
) -> None:
    index = q(raw_db, f"{tables.rooms}_name_domain_idx")
    if engine_of(db_url) == "mysql":
        raw_db.execute_sql(f"DROP INDEX {index} ON {q(raw_db, tables.rooms)}")
    else:
        raw_db.execute_sql(f"DROP INDEX {index}")
    assert repository.check_schema() == [
        f"table {tables.rooms} has no unique key on (name, domain)"
    ]


def test_check_schema_reports_a_non_transactional_mysql_table(
    repository: Repository, raw_db: peewee.Database, tables: Tables, db_url: str
) -> None:
    if engine_of(db_url) != "mysql":
        pytest.skip("storage engines are a MySQL matter")
    raw_db.execute_sql(f"ALTER TABLE {q(raw_db, tables.rooms)} ENGINE=MyISAM")
    (problem,) = repository.check_schema()
    assert "MyISAM" in problem and "ENGINE=InnoDB" in problem


def _ddl_statements(engine: str, tables: Tables, *, kamailio_only: bool) -> list[str]:
    """The statements of ``schema/<engine>.sql`` for ``tables``.

    With ``kamailio_only``, imc-actors' own tables and optional indexes at the end are left
    out, which is what a database made by Kamailio's own DDL looks like.
    """
    text = (SCHEMA_DIR / f"{engine}.sql").read_text()
    if kamailio_only:
        text = text.split("-- imc-actors' own tables", 1)[0]
    text = text.replace("imc_members", tables.members).replace("imc_rooms", tables.rooms)
    text = text.replace("imc_pending", tables.pending).replace("imc_location", tables.location)
    text = text.replace("subscriber", tables.subscriber).replace("imc_secret", tables.secret)
    text = text.replace("imc_bans", tables.bans).replace("imc_room_limits", tables.limits)
    text = text.replace("imc_leases", tables.leases).replace("imc_nodes", tables.nodes)
    text = text.replace("imc_history", tables.history).replace("imc_room_info", tables.room_info)
    text = text.replace("imc_metrics", tables.metrics)
    text = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("--"))
    return [statement.strip() for statement in text.split(";") if statement.strip()]


@pytest.mark.parametrize("kamailio_only", [False, True], ids=["schema-file", "kamailio-keys-only"])
def test_a_database_made_by_the_ddl_file_works_unchanged(
    db_url: str, raw_db: peewee.Database, tables: Tables, kamailio_only: bool
) -> None:
    for statement in _ddl_statements(engine_of(db_url), tables, kamailio_only=kamailio_only):
        raw_db.execute_sql(statement)
    with tables.repository(db_url) as repository:
        if kamailio_only:  # imc-actors' own tables are missing until `db init` makes them
            problems = repository.check_schema()
            assert [p.split()[1] for p in problems] == [
                tables.pending, tables.location, tables.subscriber, tables.secret,
                tables.bans, tables.limits, tables.leases, tables.nodes, tables.metrics,
                tables.history, tables.room_info,
            ]  # fmt: skip
            assert "no column ha1_sha256" in problems[2]
            repository.init_schema()
        assert repository.check_schema() == []
        repository.apply_batch(
            [
                RoomUpsert("Lobby", "Example.com", PRIVATE),
                MemberUpsert(LOBBY, "sip:alice@example.org", OWNER),
                MemberUpsert(LOBBY, "sip:bob@example.org", INVITED),
                RoomUpsert("Empty", "example.com", 0),
            ]
        )
        repository.apply_batch(
            [
                RoomUpsert("LOBBY", "example.com", PRIVATE),
                MemberUpsert("sip:lobby@example.com", "sip:BOB@example.org", 0),
                MemberDelete(LOBBY, "sip:alice@example.org"),
            ]
        )
        expected = [
            RoomState("Lobby", "Example.com", PRIVATE, (Member("sip:bob@example.org", 0),)),
            RoomState("Empty", "example.com", 0, ()),
        ]
        assert repository.load_rooms() == expected
        repository.init_schema()  # on tables it did not make: adds indexes, keeps the data
        assert repository.check_schema() == []
        repository.apply_batch([RoomDelete("lobby", "example.com")])
        assert repository.load_rooms() == expected[1:]


def test_ddl_files_insert_kamailio_version_rows() -> None:
    for engine in ("sqlite", "postgresql", "mysql"):
        text = (SCHEMA_DIR / f"{engine}.sql").read_text()
        rows = re.findall(
            r"INSERT INTO version \(table_name, table_version\) VALUES \('(\w+)', (\d+)\)", text
        )
        assert rows == [("imc_rooms", "1"), ("imc_members", "1"), ("subscriber", "7")], engine


# -- URLs and names -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "engine", "database", "params"),
    [
        ("sqlite:///imc.db", "sqlite", "imc.db", {}),
        ("sqlite:///var/lib/imc.db", "sqlite", "var/lib/imc.db", {}),
        ("sqlite:////var/lib/imc.db", "sqlite", "/var/lib/imc.db", {}),
        ("sqlite:///:memory:", "sqlite", ":memory:", {}),
        (
            "postgresql://postgres@127.0.0.1:5432/test",
            "postgresql",
            "test",
            {"user": "postgres", "host": "127.0.0.1", "port": 5432},
        ),
        ("postgres://kam@db/kamailio", "postgresql", "kamailio", {"user": "kam", "host": "db"}),
        (
            "mysql://openser:openserrw@localhost/openser",
            "mysql",
            "openser",
            {"user": "openser", "password": "openserrw", "host": "localhost"},
        ),
        (
            "MySQL://u:p%40ss@h:3307/db?connect_timeout=9",
            "mysql",
            "db",
            {"user": "u", "password": "p@ss", "host": "h", "port": 3307, "connect_timeout": 9},
        ),
    ],
)
def test_database_urls(url: str, engine: str, database: str, params: dict[str, object]) -> None:
    parsed = DatabaseURL.parse(url)
    assert (parsed.engine, parsed.database, parsed.params) == (engine, database, params)


@pytest.mark.parametrize(
    "url", ["oracle://x@y/z", "mysql://root@localhost", "sqlite://host/file.db", "no-scheme"]
)
def test_bad_database_urls_raise_store_error(url: str) -> None:
    with pytest.raises(StoreError):
        Repository(url)


def test_an_unknown_sqlite_option_is_named_up_front() -> None:
    # ?mode=memory reached sqlite3.connect(): "TypeError: 'mode' is an invalid keyword argument"
    with pytest.raises(StoreError, match="unknown SQLite option 'mode'; a SQLite URL takes "):
        Repository("sqlite:///x.db?mode=memory")
    assert DatabaseURL.parse("sqlite:///x.db?timeout=2&uri=true").params == {"timeout": 2, "uri": True}


def test_redacted_url_hides_the_password() -> None:
    assert (
        redact("mysql://openser:openserrw@localhost/openser")
        == "mysql://openser:***@localhost/openser"
    )
    assert redact("sqlite:///imc.db") == "sqlite:///imc.db"
    assert "openserrw" not in repr(Repository("mysql://openser:openserrw@localhost/openser"))


@pytest.mark.parametrize(
    ("rooms", "members"),
    [
        ("imc rooms", "imc_members"),
        ("imc_rooms", "x;drop"),
        ("t", "t"),
        ("version", "m"),
        ("r" * 33, "m"),
    ],
)
def test_bad_table_names_raise_store_error(rooms: str, members: str) -> None:
    with pytest.raises(StoreError):
        Repository("sqlite:///:memory:", rooms, members)


def test_split_member() -> None:
    assert split_member("sip:alice@example.org") == ("alice", "example.org")
    assert split_member("SIPS:Bob@Example.org") == ("Bob", "Example.org")
    assert split_member("carol@example.org") == ("carol", "example.org")
    with pytest.raises(StoreError):
        split_member("sip:example.org")


def test_memory_database_works_across_threads() -> None:
    """The writer uses the repository from whichever worker thread Trio hands it."""
    import threading

    repository = Repository("sqlite:///:memory:")
    repository.init_schema()
    repository.apply_batch([RoomUpsert("Lobby", "Example.com", 0)])
    seen: list[object] = []
    thread = threading.Thread(target=lambda: seen.append(repository.load_rooms()))
    thread.start()
    thread.join()
    assert seen == [[RoomState("Lobby", "Example.com", 0, ())]]
