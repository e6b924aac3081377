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

Users and passwords (digest authentication, :mod:`imc_actors.auth`):

    subscriber   -- Kamailio auth_db's table as is (id, username, domain, password, ha1, ha1b),
                    plus our column ``ha1_sha256`` (the SHA-256 HA1); Kamailio ignores it, and a
                    Kamailio table without it works (``password`` or MD5 ``ha1``)
    imc_secret   -- imc-actors' own: (id, name UNIQUE, value): the nonce secret

Two more hold what moderation adds to a room (issue 16; Kamailio has nothing like them):

    imc_bans        -- (id PK auto, room, username, domain, reason, banned_by, ban_time,
                        UNIQUE(room, username, domain))  -- room 'sip:name@domain', all three
                        lower case; username '*' bans the whole domain
    imc_room_limits -- (id PK auto, room UNIQUE, max_members)  -- an owner's ``#limit``

Two more of imc-actors' own tables say which node serves which room (issue 13, see
:mod:`imc_actors.store.leases`); they have no Kamailio counterpart:

    imc_leases   -- (room PK varchar(128), node varchar(64), epoch bigint, expires bigint)
                    room = the room key ``name@domain`` lower case; expires in milliseconds
                    since the epoch, on the owner's wall clock
    imc_nodes    -- (name PK varchar(64), addresses varchar(1024), heartbeat bigint)
                    addresses = the node's SIP listen addresses, space-separated
    imc_metrics  -- (node PK varchar(64), updated bigint, body text): each node's latest
                    metrics snapshot (JSON, see :mod:`imc_actors.control.metrics`), one row
                    per node, replaced every ``metrics_share_interval``

Two more hold what rooms have beyond Kamailio's columns (issue 16):

    imc_history   -- the archive of relayed chat lines: (id PK auto, room, seq, sender,
                     inc_time, ctype, body), UNIQUE(room, seq); room = 'sip:name@domain'
                     lower case, seq numbers the room's lines from 1
    imc_room_info -- one row per room: (id PK auto, room UNIQUE, topic, topic_by,
                     topic_time, created)

Table names are configurable (``rooms_table``, ``members_table``, ``pending_table``,
``location_table``, ``subscriber_table``, ``secret_table``, ``bans_table``, ``limits_table``,
``lease_table``, ``node_table``, ``metrics_table``, ``history_table``, ``room_info_table``), so the model classes
are made per database by :func:`bind_models`.
``schema/*.sql`` holds the same shape as plain DDL.

Besides Kamailio's keys, :func:`extra_indexes` lists indexes imc-actors adds when it may (they
make case-insensitive lookups and room deletes use an index); a database without them works,
only slower.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields

import peewee

from ..imc.effects import MAX_REASON_LENGTH

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
SUBSCRIBER_COLUMNS = ("id", "username", "domain", "password", "ha1", "ha1b")
SUBSCRIBER_UNIQUE = ("username", "domain")
#: Our column in Kamailio's subscriber table: the SHA-256 HA1 (64 hex digits).
SHA256_COLUMN = "ha1_sha256"
SECRET_COLUMNS = ("id", "name", "value")
#: Kamailio's version of its subscriber table (written to ``version`` by ``db init``).
SUBSCRIBER_VERSION = 7
BAN_COLUMNS = ("id", "room", "username", "domain", "reason", "banned_by", "ban_time")
LIMIT_COLUMNS = ("id", "room", "max_members")
HISTORY_COLUMNS = ("id", "room", "seq", "sender", "inc_time", "ctype", "body")
ROOM_INFO_COLUMNS = ("id", "room", "topic", "topic_by", "topic_time", "created")
#: Widths of the columns that hold what users send (longer values are refused before a write).
MAX_ADDRESS = 255  # src_addr, dst_addr
MAX_CONTACT = 512  # location.contact, as in Kamailio
MAX_CALL_ID = 255
MAX_USER_AGENT = 255
MAX_CONTENT_TYPE = 255
MAX_REASON = MAX_REASON_LENGTH  # imc_bans.reason

# -- ownership (issue 13): room leases and the node registry ---------------------------------
LEASE_COLUMNS = ("room", "node", "epoch", "expires")
NODE_COLUMNS = ("name", "addresses", "heartbeat")
METRICS_COLUMNS = ("node", "updated", "body")
#: Widths of the lease and node columns (a room key ``name@domain`` fits twice over).
MAX_ROOM_KEY = 128
MAX_NODE_NAME = 64
MAX_NODE_ADDRESSES = 1024
#: Longest metrics snapshot stored (characters of JSON; MySQL's TEXT holds 65,535 bytes).
MAX_METRICS_BODY = 60000
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
    """The model classes bound to one database and its table names (see :meth:`all`)."""

    version: type[peewee.Model]
    room: type[peewee.Model]
    member: type[peewee.Model]
    pending: type[peewee.Model]
    location: type[peewee.Model]
    subscriber: type[peewee.Model]
    secret: type[peewee.Model]
    ban: type[peewee.Model]
    limit: type[peewee.Model]
    # ownership (issue 13)
    lease: type[peewee.Model]
    node: type[peewee.Model]
    metrics: type[peewee.Model]
    history: type[peewee.Model]
    room_info: type[peewee.Model]

    def all(self) -> tuple[type[peewee.Model], ...]:
        """Every model, in the order of the fields (the order ``init_schema`` creates them)."""
        return tuple(getattr(self, f.name) for f in fields(self))


def bind_models(
    database: peewee.Database,
    rooms_table: str,
    members_table: str,
    pending_table: str = "imc_pending",
    location_table: str = "imc_location",
    subscriber_table: str = "subscriber",
    secret_table: str = "imc_secret",
    bans_table: str = "imc_bans",
    limits_table: str = "imc_room_limits",
    *,
    lease_table: str = "imc_leases",
    node_table: str = "imc_nodes",
    metrics_table: str = "imc_metrics",
    history_table: str = "imc_history",
    room_info_table: str = "imc_room_info",
) -> Models:
    """Model classes for the tables in ``database``.

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

    class Subscriber(peewee.Model):
        """One user (Kamailio auth_db's ``subscriber``): ``password`` plaintext (Kamailio's
        choice; never written by us), ``ha1`` = MD5(username:domain:password), ``ha1b`` =
        MD5(username@domain:domain:password), ``ha1_sha256`` = SHA-256(username:domain:password)."""

        id = peewee.AutoField()
        username = peewee.CharField(max_length=MAX_LENGTH, default="")
        domain = peewee.CharField(max_length=MAX_LENGTH, default="")
        password = peewee.CharField(max_length=MAX_LENGTH, default="")
        ha1 = peewee.CharField(max_length=128, default="")
        ha1b = peewee.CharField(max_length=128, default="")
        ha1_sha256 = peewee.CharField(max_length=64, default="")

        class Meta:
            table_name = subscriber_table
            table_settings = settings

    class Secret(peewee.Model):
        """A server secret by name (``nonce``: the key of the digest nonces' HMAC, hex)."""

        id = peewee.AutoField()
        name = peewee.CharField(max_length=MAX_LENGTH)
        value = peewee.CharField(max_length=255)

        class Meta:
            table_name = secret_table
            table_settings = settings

    Subscriber.add_index(
        Subscriber.index(
            Subscriber.username, Subscriber.domain, unique=True,
            name=f"{subscriber_table}_account_idx",
        )  # fmt: skip
    )
    Subscriber.add_index(Subscriber.index(Subscriber.username, name=f"{subscriber_table}_username_idx"))
    Secret.add_index(Secret.index(Secret.name, unique=True, name=f"{secret_table}_name_idx"))

    class BanRow(peewee.Model):
        """One ban: ``room`` ``sip:name@domain``, ``username``/``domain`` the banned user
        (``*``: every user of the domain), all lower case; ``ban_time`` epoch seconds."""

        id = peewee.AutoField()
        room = peewee.CharField(max_length=MAX_LENGTH)
        username = peewee.CharField(max_length=MAX_LENGTH)
        domain = peewee.CharField(max_length=MAX_LENGTH)
        reason = peewee.CharField(max_length=MAX_REASON, default="")
        banned_by = peewee.CharField(max_length=MAX_ADDRESS, default="")
        ban_time = peewee.BigIntegerField(default=0)

        class Meta:
            table_name = bans_table
            table_settings = settings

    class LimitRow(peewee.Model):
        """A room's own member limit (``#limit``); ``room`` ``sip:name@domain`` lower case."""

        id = peewee.AutoField()
        room = peewee.CharField(max_length=MAX_LENGTH)
        max_members = peewee.IntegerField()

        class Meta:
            table_name = limits_table
            table_settings = settings

    BanRow.add_index(
        BanRow.index(
            BanRow.room, BanRow.username, BanRow.domain, unique=True,
            name=f"{bans_table}_room_account_idx",
        )  # fmt: skip
    )
    LimitRow.add_index(LimitRow.index(LimitRow.room, unique=True, name=f"{limits_table}_room_idx"))

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
    lease, node, metrics = _ownership_models(settings, lease_table, node_table, metrics_table)
    models = Models(
        version=Version, room=Room, member=Member, pending=Pending, location=Location,
        subscriber=Subscriber, secret=Secret, ban=BanRow, limit=LimitRow, lease=lease, node=node,
        metrics=metrics, history=History, room_info=RoomInfo,
    )  # fmt: skip
    database.bind(list(models.all()), bind_refs=False, bind_backrefs=False)
    return models


def _ownership_models(
    settings: list[str], lease_table: str, node_table: str, metrics_table: str
) -> tuple[type[peewee.Model], type[peewee.Model], type[peewee.Model]]:
    """The lease, node and metrics tables (issue 13; read and written by :mod:`.leases` and
    :mod:`.nodes`)."""

    class Lease(peewee.Model):
        """Which node serves a room: ``room`` is the room key (``name@domain``, lower case),
        ``node`` the owner's name, ``epoch`` how many times the lease was acquired (each
        acquisition adds one; writes are fenced by it), ``expires`` milliseconds since the
        epoch on the owner's wall clock."""

        room = peewee.CharField(max_length=MAX_ROOM_KEY, primary_key=True)
        node = peewee.CharField(max_length=MAX_NODE_NAME)
        epoch = peewee.BigIntegerField()
        expires = peewee.BigIntegerField()

        class Meta:
            table_name = lease_table
            table_settings = settings

    class Node(peewee.Model):
        """One node of a cluster: its SIP listen addresses (space-separated) and its last
        heartbeat (milliseconds since the epoch, on its own wall clock)."""

        name = peewee.CharField(max_length=MAX_NODE_NAME, primary_key=True)
        addresses = peewee.CharField(max_length=MAX_NODE_ADDRESSES, default="")
        heartbeat = peewee.BigIntegerField()

        class Meta:
            table_name = node_table
            table_settings = settings

    class Metrics(peewee.Model):
        """One node's latest metrics snapshot: ``body`` is JSON, ``updated`` milliseconds
        since the epoch on that node's wall clock."""

        node = peewee.CharField(max_length=MAX_NODE_NAME, primary_key=True)
        updated = peewee.BigIntegerField()
        body = peewee.TextField()

        class Meta:
            table_name = metrics_table
            table_settings = settings

    Lease.add_index(Lease.index(Lease.node, name=f"{lease_table}_node_idx"))
    return Lease, Node, Metrics

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
