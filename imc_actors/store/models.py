"""Peewee models on Kamailio's imc tables (spec §8).

The tables are Kamailio's, so an existing Kamailio (or OpenSER) imc database works as is::

    imc_rooms   (id PK auto, name varchar(64), domain varchar(64), flag int, UNIQUE(name, domain))
    imc_members (id PK auto, username varchar(64), domain varchar(64), room varchar(64), flag int,
                 UNIQUE(username, domain, room))                      -- room = 'sip:name@domain'
    version     (id PK auto, table_name varchar(32) UNIQUE, table_version int)  -- Kamailio's

Two tables are imc-actors' own, each modelled on the Kamailio table that does the same job, so
operators recognise them (Kamailio never reads them):

    imc_pending  -- notices waiting for an unreachable member; msilo's ``silo`` columns:
                    (id PK auto, src_addr, dst_addr, username, domain, inc_time, exp_time,
                     ctype, body, callid, kind)   -- username/domain lower case, for lookups
    imc_location -- the registrar's bindings; usrloc's ``location`` columns (ruid, username,
                    domain, contact, received, path, expires, q, callid, cseq, last_modified,
                    flags, cflags, user_agent, socket, methods, instance, reg_id, server_id,
                    connection_id, keepalive, partition)

Two more hold what rooms have beyond Kamailio's columns (issue 16):

    imc_history   -- the archive of relayed chat lines: (id PK auto, room, seq, sender,
                     inc_time, ctype, body), UNIQUE(room, seq); room = 'sip:name@domain'
                     lower case, seq numbers the room's lines from 1
    imc_room_info -- one row per room: (id PK auto, room UNIQUE, topic, topic_by,
                     topic_time, created)

Table names are configurable (``rooms_table``, ``members_table``, ``pending_table``,
``location_table``, ``history_table``, ``room_info_table``), so the model classes are made per database by :func:`bind_models`.
``schema/*.sql`` holds the same shape as plain DDL.

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
PENDING_COLUMNS = (
    "id", "src_addr", "dst_addr", "username", "domain", "inc_time", "exp_time", "ctype",
    "body", "callid", "kind",
)  # fmt: skip
LOCATION_COLUMNS = (
    "id", "ruid", "username", "domain", "contact", "received", "path", "expires", "q",
    "callid", "cseq", "last_modified", "flags", "cflags", "user_agent", "socket", "methods",
    "instance", "reg_id", "server_id", "connection_id", "keepalive", "partition",
)  # fmt: skip
HISTORY_COLUMNS = ("id", "room", "seq", "sender", "inc_time", "ctype", "body")
ROOM_INFO_COLUMNS = ("id", "room", "topic", "topic_by", "topic_time", "created")
#: Widths of the columns that hold what users send (longer values are refused before a write).
MAX_ADDRESS = 255  # src_addr, dst_addr
MAX_CONTACT = 512  # location.contact, as in Kamailio
MAX_CALL_ID = 255
MAX_USER_AGENT = 255
MAX_CONTENT_TYPE = 255
MAX_TOPIC = 255  # imc.effects.MAX_TOPIC_LENGTH


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
    pending: type[peewee.Model]
    location: type[peewee.Model]
    history: type[peewee.Model]
    room_info: type[peewee.Model]


def bind_models(
    database: peewee.Database,
    rooms_table: str,
    members_table: str,
    pending_table: str = "imc_pending",
    location_table: str = "imc_location",
    history_table: str = "imc_history",
    room_info_table: str = "imc_room_info",
) -> Models:
    """Model classes for the four tables in ``database``.

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

    class Pending(peewee.Model):
        """One notice waiting for an unreachable member (msilo's ``silo`` shape).

        ``username``/``domain`` are the member's, lower case (the lookup key); ``dst_addr``
        is the recipient URI as the room spelled it, ``src_addr`` the room (From);
        ``inc_time``/``exp_time`` seconds since the epoch; ``callid`` the Call-ID of the
        MESSAGE that caused it (sent as In-Reply-To); ``kind`` notice or relay.
        """

        id = peewee.AutoField()
        src_addr = peewee.CharField(max_length=MAX_ADDRESS)
        dst_addr = peewee.CharField(max_length=MAX_ADDRESS)
        username = peewee.CharField(max_length=MAX_LENGTH)
        domain = peewee.CharField(max_length=MAX_LENGTH)
        inc_time = peewee.BigIntegerField()
        exp_time = peewee.BigIntegerField()
        ctype = peewee.CharField(max_length=MAX_CONTENT_TYPE, default="")
        body = peewee.BlobField()
        callid = peewee.CharField(max_length=MAX_CALL_ID, default="")
        kind = peewee.CharField(max_length=16, default="notice")

        class Meta:
            table_name = pending_table
            table_settings = settings

    class Location(peewee.Model):
        """One registrar binding (usrloc's ``location`` shape; ``expires`` in UTC)."""

        id = peewee.AutoField()
        ruid = peewee.CharField(max_length=64, default="")
        username = peewee.CharField(max_length=MAX_LENGTH, default="")
        domain = peewee.CharField(max_length=MAX_LENGTH, null=True)
        contact = peewee.CharField(max_length=MAX_CONTACT, default="")
        received = peewee.CharField(max_length=128, null=True)
        path = peewee.CharField(max_length=512, null=True)
        expires = peewee.DateTimeField()
        q = peewee.DecimalField(max_digits=10, decimal_places=2, default=1)
        callid = peewee.CharField(max_length=MAX_CALL_ID, default="Default-Call-ID")
        cseq = peewee.IntegerField(default=1)
        last_modified = peewee.DateTimeField()
        flags = peewee.IntegerField(default=0)
        cflags = peewee.IntegerField(default=0)
        user_agent = peewee.CharField(max_length=MAX_USER_AGENT, default="")
        socket = peewee.CharField(max_length=64, null=True)
        methods = peewee.IntegerField(null=True)
        instance = peewee.CharField(max_length=255, null=True)
        reg_id = peewee.IntegerField(default=0)
        server_id = peewee.IntegerField(default=0)
        connection_id = peewee.IntegerField(default=0)
        keepalive = peewee.IntegerField(default=0)
        partition = peewee.IntegerField(default=0)

        class Meta:
            table_name = location_table
            table_settings = settings

    class History(peewee.Model):
        """One archived chat line: ``room`` the room URI in lower case, ``seq`` its number in
        the room (from 1), ``sender`` the member URI, ``inc_time`` epoch seconds, ``ctype``
        the Content-Type (``""``: none), ``body`` the bytes as sent."""

        id = peewee.AutoField()
        room = peewee.CharField(max_length=MAX_LENGTH)
        seq = peewee.BigIntegerField()
        sender = peewee.CharField(max_length=MAX_ADDRESS)
        inc_time = peewee.BigIntegerField()
        ctype = peewee.CharField(max_length=MAX_CONTENT_TYPE, default="")
        body = peewee.BlobField()

        class Meta:
            table_name = history_table
            table_settings = settings

    class RoomInfo(peewee.Model):
        """What a room has beyond Kamailio's columns: its topic and creation time."""

        id = peewee.AutoField()
        room = peewee.CharField(max_length=MAX_LENGTH)
        topic = peewee.CharField(max_length=MAX_TOPIC, default="")
        topic_by = peewee.CharField(max_length=MAX_ADDRESS, default="")
        topic_time = peewee.BigIntegerField(null=True)
        created = peewee.BigIntegerField(null=True)

        class Meta:
            table_name = room_info_table
            table_settings = settings

    History.add_index(
        History.index(History.room, History.seq, unique=True, name=f"{history_table}_room_seq_idx")
    )
    History.add_index(History.index(History.inc_time, name=f"{history_table}_time_idx"))
    RoomInfo.add_index(
        RoomInfo.index(RoomInfo.room, unique=True, name=f"{room_info_table}_room_idx")
    )
    Pending.add_index(
        Pending.index(
            Pending.username, Pending.domain, Pending.id, name=f"{pending_table}_account_idx"
        )
    )
    Location.add_index(
        Location.index(Location.ruid, unique=True, name=f"{location_table}_ruid_idx")
    )
    Location.add_index(
        Location.index(
            Location.username,
            Location.domain,
            Location.contact,
            name=f"{location_table}_account_contact_idx",
        )  # fmt: skip
    )
    Location.add_index(Location.index(Location.expires, name=f"{location_table}_expires_idx"))
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
    database.bind(
        [Room, Member, Version, Pending, Location, History, RoomInfo],
        bind_refs=False, bind_backrefs=False,
    )  # fmt: skip
    return Models(Room, Member, Version, Pending, Location, History, RoomInfo)


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
