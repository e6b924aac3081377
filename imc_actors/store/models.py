"""Peewee models on Kamailio's imc tables (spec §8).

The tables are Kamailio's, so an existing Kamailio (or OpenSER) imc database works as is::

    imc_rooms   (id PK auto, name varchar(64), domain varchar(64), flag int, UNIQUE(name, domain))
    imc_members (id PK auto, username varchar(64), domain varchar(64), room varchar(64), flag int,
                 UNIQUE(username, domain, room))                      -- room = 'sip:name@domain'
    version     (id PK auto, table_name varchar(32) UNIQUE, table_version int)  -- Kamailio's

Table names are configurable (``rooms_table``, ``members_table``), so the model classes are
made per database by :func:`bind_models`. ``schema/*.sql`` holds the same shape as plain DDL.

Besides Kamailio's keys, :func:`extra_indexes` lists indexes imc-actors adds when it may (they
make case-insensitive lookups and room deletes use an index); a database without them works,
only slower.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import peewee

#: Width of Kamailio's varchar columns: longer names, domains and room URIs do not fit.
MAX_LENGTH = 64
#: Kamailio's table of schema versions, and the version of both imc tables in it.
VERSION_TABLE = "version"
TABLE_VERSION = 1
#: Width of ``version.table_name``.
MAX_TABLE_NAME = 32

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")

#: Columns each table must have, and the columns of its unique key.
ROOM_COLUMNS = ("id", "name", "domain", "flag")
ROOM_UNIQUE = ("name", "domain")
MEMBER_COLUMNS = ("id", "username", "domain", "room", "flag")
MEMBER_UNIQUE = ("username", "domain", "room")


def check_table_name(name: str, param: str) -> str:
    """Return ``name`` when it is a plain SQL identifier that fits Kamailio's version table.

    Raises :class:`ValueError` naming ``param`` otherwise (table names are spliced into DDL).
    """
    if not _IDENTIFIER.match(name or ""):
        raise ValueError(f"{param} {name!r} is not a plain table name (letters, digits, _)")
    if len(name) > MAX_TABLE_NAME:
        raise ValueError(f"{param} {name!r} is longer than {MAX_TABLE_NAME} characters")
    return name


@dataclass(frozen=True, slots=True)
class Models:
    """The three model classes bound to one database and one pair of table names."""

    room: type[peewee.Model]
    member: type[peewee.Model]
    version: type[peewee.Model]


def bind_models(database: peewee.Database, rooms_table: str, members_table: str) -> Models:
    """Model classes for ``rooms_table`` and ``members_table`` in ``database``.

    Index names follow Kamailio's PostgreSQL/SQLite DDL (``<table>_name_domain_idx``,
    ``<table>_account_room_idx``); MySQL tables are created as InnoDB (transactions).
    """
    settings = ["ENGINE=InnoDB"] if isinstance(database, peewee.MySQLDatabase) else []

    class Room(peewee.Model):
        """One row of ``imc_rooms``: ``flag`` is PRIVATE=1."""

        id = peewee.AutoField()
        name = peewee.CharField(max_length=MAX_LENGTH)
        domain = peewee.CharField(max_length=MAX_LENGTH)
        flag = peewee.IntegerField()

        class Meta:
            table_name = rooms_table
            table_settings = settings

    class Member(peewee.Model):
        """One row of ``imc_members``: ``room`` is ``sip:name@domain``; ``flag`` OWNER|ADMIN|INVITED."""

        id = peewee.AutoField()
        username = peewee.CharField(max_length=MAX_LENGTH)
        domain = peewee.CharField(max_length=MAX_LENGTH)
        room = peewee.CharField(max_length=MAX_LENGTH)
        flag = peewee.IntegerField()

        class Meta:
            table_name = members_table
            table_settings = settings

    class Version(peewee.Model):
        """One row of Kamailio's ``version`` table."""

        id = peewee.AutoField()
        table_name = peewee.CharField(max_length=MAX_TABLE_NAME)
        table_version = peewee.IntegerField(default=0)

        class Meta:
            table_name = VERSION_TABLE
            table_settings = settings

    Room.add_index(
        Room.index(Room.name, Room.domain, unique=True, name=f"{rooms_table}_name_domain_idx")
    )
    Member.add_index(
        Member.index(
            Member.username,
            Member.domain,
            Member.room,
            unique=True,
            name=f"{members_table}_account_room_idx",
        )
    )
    Version.add_index(
        Version.index(Version.table_name, unique=True, name=f"{VERSION_TABLE}_table_name_idx")
    )
    database.bind([Room, Member, Version], bind_refs=False, bind_backrefs=False)
    return Models(Room, Member, Version)


def extra_indexes(engine: str, rooms_table: str, members_table: str) -> list[tuple[str, str, str]]:
    """Indexes imc-actors adds to Kamailio's tables: ``(table, index name, CREATE INDEX …)``.

    SQLite and PostgreSQL compare case-sensitively, so case-insensitive lookups use
    ``lower(column)``; expression indexes keep those fast. MySQL/MariaDB columns normally have a
    case-insensitive collation, so a plain index on ``room`` (for room deletes) is enough there.
    """
    if engine == "mysql":
        name = f"{members_table}_room_idx"
        return [(members_table, name, f"CREATE INDEX `{name}` ON `{members_table}` (`room`)")]
    rooms_idx = f"{rooms_table}_ci_idx"
    members_idx = f"{members_table}_room_ci_idx"
    return [
        (
            rooms_table,
            rooms_idx,
            f'CREATE INDEX IF NOT EXISTS "{rooms_idx}" ON "{rooms_table}" '
            '(lower("name"), lower("domain"))',
        ),
        (
            members_table,
            members_idx,
            f'CREATE INDEX IF NOT EXISTS "{members_idx}" ON "{members_table}" '
            '(lower("room"), lower("username"), lower("domain"))',
        ),
    ]
