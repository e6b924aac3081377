"""The repository: Kamailio's imc tables through peewee, synchronously (spec §8).

One :class:`Repository` owns one database connection and is used from one thread at a time:
the store's writer thread (:mod:`imc_actors.store.writer`), or the main thread at startup before
the writer runs. Every method that touches the database:

- connects on first use and reconnects transparently when the server dropped the connection:
  on an ``OperationalError``/``InterfaceError`` the connection is discarded and the operation is
  retried once on a fresh one. Replaying a batch is safe because every write is idempotent
  (upserts and deletes by key), even when the first attempt did commit before the link broke;
- raises :class:`StoreError`, and nothing else, when it fails; the message names the operation,
  the database (password hidden) and the driver's reason.

With a ``node`` name (issue 13) every write transaction is *fenced*: before it commits, it
checks, in the same transaction, that this node still holds the lease of every room it writes
for with the epoch it acquired (:mod:`imc_actors.store.leases`); otherwise it rolls back and
raises :class:`Fenced`, naming the rooms. Without one (the default) nothing of this runs.

A caller that may give up waiting on a write (the store, after ``db_timeout``) installs a
:class:`CommitGuard` for its thread with :func:`guarded`: :meth:`Repository.apply_batch` then asks
it before each attempt and right before COMMIT, and rolls back when the guard refuses, so a
change the caller already reported as failed is never written later.

Names, domains and member URIs compare case-insensitively (spec §1) while the spelling of the
first insert is kept. On SQLite and PostgreSQL that is ``lower(column) = lower(value)`` (backed by
expression indexes that :meth:`Repository.init_schema` adds); on MySQL/MariaDB the columns'
``_ci`` collation already compares that way, and ``lower()`` is used only for columns with a
case-sensitive collation.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, Protocol, TypeVar

import peewee

from ..imc.effects import MemberDelete, MemberUpsert, RoomDelete, RoomUpsert
from ..imc.history import HistoryLine
from ..imc.state import Member, RoomState, member_key
from . import own_tables, users
from .leases import Clock, Lease, LeaseTable, millis, room_of, rooms_of, wall_clock
from .models import (
    BAN_COLUMNS,
    HISTORY_COLUMNS,
    LEASE_COLUMNS,
    LIMIT_COLUMNS,
    LOCATION_COLUMNS,
    MAX_LENGTH,
    MAX_NODE_NAME,
    MAX_ROOM_KEY,
    MEMBER_COLUMNS,
    MEMBER_UNIQUE,
    METRICS_COLUMNS,
    NODE_COLUMNS,
    PENDING_COLUMNS,
    ROOM_COLUMNS,
    ROOM_INFO_COLUMNS,
    ROOM_UNIQUE,
    SECRET_COLUMNS,
    SHA256_COLUMN,
    SUBSCRIBER_COLUMNS,
    SUBSCRIBER_UNIQUE,
    SUBSCRIBER_VERSION,
    TABLE_VERSION,
    VERSION_TABLE,
    bind_models,
    check_table_name,
    extra_indexes,
)
from .nodes import ClusterRead, NodeInfo, NodeTable, RoomLocation
from .records import Binding, PendingRow, StoreWrite
from .urls import LOCK_TIMEOUT, DatabaseURL, open_database

__all__ = [
    "CommitGuard", "Fenced", "LockBusy", "Repository", "StoreError", "current_guard", "guarded",
    "refuses_writes", "split_member",
]  # fmt: skip

log = logging.getLogger(__name__)

_T = TypeVar("_T")

#: SQLite settings for :meth:`Repository.unflushed_writes` (synchronous 1 = NORMAL).
_UNFLUSHED = (("synchronous", 1), ("busy_timeout", 0), ("wal_autocheckpoint", 0))

#: Rooms whose leases :meth:`Repository.acquire_all` takes in one transaction.
_ACQUIRE_CHUNK = 500

#: MySQL engines with transactions (a batch is all or nothing only there).
_TRANSACTIONAL_ENGINES = {"innodb", "xtradb", "rocksdb", "tokudb", "ndbcluster"}


class StoreError(Exception):
    """A database operation failed. ``str()`` is a readable reason (never the password)."""


class LockBusy(StoreError):
    """Another connection held SQLite's write lock at the BEGIN of a transaction run without
    waiting for it (:meth:`Repository.unflushed_writes`): nothing was written, and the same
    writes may be applied again where waiting is fine."""


class NodeTaken(StoreError):
    """This node's row in the node table was written by another process since this one last
    heartbeat: another process runs under the same node name (this one was paused past
    ``lease_ttl``, say, and a replacement started). This one must stop."""


class Fenced(StoreError):
    """A write for rooms whose lease this node does not hold (any more) with the epoch it
    acquired: another node took them over, or this node never held them. Nothing of the
    transaction was written. ``rooms`` are the room keys (``name@domain``, lower case),
    ``node`` this node's name, ``retry_after`` the seconds for a 503's ``Retry-After`` (the
    lease TTL, rounded up)."""

    def __init__(self, rooms: frozenset[str], node: str, retry_after: int) -> None:
        names = ", ".join(sorted(rooms))
        super().__init__(f"node {node!r} does not hold the lease of {names}; nothing written")
        self.rooms = rooms
        self.node = node
        self.retry_after = retry_after


class CommitGuard(Protocol):
    """Asked by :meth:`Repository.apply_batch` in the thread it is installed in (:func:`guarded`).

    Both methods raise :class:`StoreError` when the change must not be written any more; the
    transaction is then rolled back and not retried.
    """

    def check(self) -> None:
        """Before each attempt of a write transaction."""

    def committing(self) -> None:
        """Right before COMMIT: when it returns, the outcome is up to the database."""


_guards = threading.local()


@contextmanager
def guarded(guard: CommitGuard) -> Iterator[None]:
    """Have :meth:`Repository.apply_batch` ask ``guard`` in this thread for the block's duration.

    A thread-local rather than an argument, so wrappers of a repository (metrics, fault
    injection) pass it on without knowing of it.
    """
    previous = current_guard()
    _guards.current = guard
    try:
        yield
    finally:
        _guards.current = previous


def current_guard() -> CommitGuard | None:
    """The guard installed in this thread (for backends with transactions of their own)."""
    return getattr(_guards, "current", None)


def split_member(uri: str) -> tuple[str, str]:
    """Split a member URI ``sip:user@host`` into the ``username`` and ``domain`` columns.

    The ``sip:``/``sips:`` scheme is optional. Raises :class:`StoreError` when there is no
    ``user@host``.
    """
    text = uri
    head = text[:5].lower()
    if head.startswith("sips:"):
        text = text[5:]
    elif head.startswith("sip:"):
        text = text[4:]
    user, sep, host = text.partition("@")
    if not sep or not user or not host:
        raise StoreError(f"member {uri!r} is not a sip:user@host URI")
    return user, host


def _check_length(value: str, what: str) -> None:
    if len(value) > MAX_LENGTH:
        raise StoreError(
            f"{what} {value[:MAX_LENGTH]!r}… is {len(value)} characters long; "
            f"the column holds {MAX_LENGTH}"
        )


def _room_key(room: str) -> str:
    """``room`` as a lease key (lower case); raises :class:`StoreError` when it is too long."""
    key = room.lower()
    if len(key) > MAX_ROOM_KEY:
        raise StoreError(f"room key {key[:40]!r}… is longer than {MAX_ROOM_KEY} characters")
    return key


def _is_connection_error(exc: BaseException) -> bool:
    """True for errors after which the connection may be dead (peewee's or a driver's); not
    when the database refuses every write (:func:`refuses_writes`): a full disk is no reason
    to reconnect and run each write twice."""
    if refuses_writes(exc):
        return False
    return any(cls.__name__ in ("OperationalError", "InterfaceError") for cls in type(exc).__mro__)


# SQLite's primary result codes (the low byte of an extended code): SQLITE_READONLY,
# SQLITE_IOERR, SQLITE_FULL
_SQLITE_NO_WRITES = frozenset({8, 10, 13})
# PostgreSQL SQLSTATEs: read_only_sql_transaction (a standby, default_transaction_read_only),
# insufficient_privilege (grants revoked), disk_full, io_error
_PG_NO_WRITES = frozenset({"25006", "42501", "53100", "58030"})
# MySQL/MariaDB errors: ER_DISK_FULL, ER_DBACCESS_DENIED_ERROR, ER_RECORD_FILE_FULL ("The
# table is full"), ER_TABLEACCESS_DENIED_ERROR and ER_COLUMNACCESS_DENIED_ERROR (grants
# revoked), ER_OPTION_PREVENTS_STATEMENT (--read-only), ER_CANT_EXECUTE_IN_READ_ONLY_TRANSACTION; and the
# write errors that carry errno 28 (ENOSPC): ER_ERROR_ON_WRITE, ER_GET_ERRNO
_MYSQL_NO_WRITES = frozenset({1021, 1044, 1114, 1142, 1143, 1290, 1792})
_MYSQL_ERRNO = frozenset({3, 1030})
_ENOSPC = re.compile(r"(?:Errcode:|error) 28\b")


def refuses_writes(exc: BaseException) -> bool:
    """True when ``exc`` (or what it wraps) says the database takes no writes now, whatever
    they write: its storage is full or failing (a full disk, SQLite's ``max_page_count``, an
    I/O error), it is read-only (a read-only file or mount, a PostgreSQL standby, MariaDB's
    ``read_only``) or this database user may not write (grants revoked). The store treats
    that as an outage (503 with ``Retry-After``, one log line, a probe until writes pass
    again) rather than as one command's bad change (500)."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        error = todo.pop()
        if error is None or id(error) in seen:
            continue
        seen.add(id(error))
        code = getattr(error, "sqlite_errorcode", None)
        if isinstance(code, int) and code & 0xFF in _SQLITE_NO_WRITES:
            return True
        if getattr(error, "pgcode", None) in _PG_NO_WRITES:
            return True
        args = getattr(error, "args", ())
        number = args[0] if args and isinstance(args[0], int) else None
        if number in _MYSQL_NO_WRITES or (number in _MYSQL_ERRNO and _ENOSPC.search(str(error))):
            return True
        todo.extend([error.__cause__, error.__context__, getattr(error, "orig", None)])
        todo.extend(arg for arg in args if isinstance(arg, BaseException))
    return False


#: Name and domain of the rooms row a committing :meth:`Repository.probe_write` adds and
#: deletes again in one transaction (not a valid room name: no room can have it).
_PROBE_ROW = "~imc-actors-probe"


def _unmasked(exc: Exception) -> Exception:
    """The error that made peewee roll back, when its ROLLBACK then failed because SQLite had
    rolled back by itself (a full disk): "no transaction is active" says nothing of why."""
    found: BaseException | None = exc
    while found is not None and "no transaction is active" in str(found):
        found = found.__context__
    return found if isinstance(found, Exception) else exc


def _describe(exc: BaseException) -> str:
    """``Type: message`` of the driver's exception (peewee wraps it as its first argument)."""
    if isinstance(exc, peewee.PeeweeException) and exc.args and isinstance(exc.args[0], Exception):
        exc = exc.args[0]
    text = " ".join(str(exc).split()) or repr(exc)
    return f"{type(exc).__name__}: {text}"


class Repository:
    """Kamailio's imc tables in the database at ``db_url``.

    ``db_url`` is a peewee URL (see :mod:`imc_actors.store.urls`); ``rooms_table`` and
    ``members_table`` name Kamailio's tables, ``pending_table``, ``location_table``,
    ``history_table`` and ``room_info_table`` imc-actors' own (plain identifiers of at most 32
    characters). ``lock_timeout`` (seconds,
    ``db_timeout``) bounds how long a statement waits for another connection's lock (see
    :func:`~imc_actors.store.urls.open_database`). The constructor does not connect; a bad URL
    or table name raises :class:`StoreError` at once.
    """

    def __init__(
        self,
        db_url: str,
        rooms_table: str = "imc_rooms",
        members_table: str = "imc_members",
        *,
        pending_table: str = "imc_pending",
        location_table: str = "imc_location",
        subscriber_table: str = "subscriber",
        secret_table: str = "imc_secret",
        history_table: str = "imc_history",
        room_info_table: str = "imc_room_info",
        lock_timeout: float = LOCK_TIMEOUT,
        bans_table: str = "imc_bans",
        limits_table: str = "imc_room_limits",
        lease_table: str = "imc_leases",
        node_table: str = "imc_nodes",
        metrics_table: str = "imc_metrics",
        node: str | None = None,
        lease_ttl: float = 5.0,
        clock: Clock = wall_clock,
    ) -> None:
        names = {
            "rooms_table": rooms_table,
            "members_table": members_table,
            "pending_table": pending_table,
            "location_table": location_table,
            "subscriber_table": subscriber_table,
            "secret_table": secret_table,
            "bans_table": bans_table,
            "limits_table": limits_table,
            "lease_table": lease_table,
            "node_table": node_table,
            "metrics_table": metrics_table,
            "history_table": history_table,
            "room_info_table": room_info_table,
        }
        try:
            self._url = DatabaseURL.parse(db_url)
            for param, name in names.items():
                check_table_name(name, param)
        except ValueError as exc:
            raise StoreError(str(exc)) from None
        lowered = [name.lower() for name in names.values()]
        if len(set(lowered)) != len(lowered) or VERSION_TABLE in lowered:
            raise StoreError(
                f"{', '.join(names)} must be different tables, none called "
                f"{VERSION_TABLE!r} (got {', '.join(names.values())})"
            )
        if node is not None and not 0 < len(node) <= MAX_NODE_NAME:
            raise StoreError(f"node name {node[:40]!r} must have 1 to {MAX_NODE_NAME} characters")
        self.rooms_table = rooms_table
        self.members_table = members_table
        self.pending_table = pending_table
        self.location_table = location_table
        self.subscriber_table = subscriber_table
        self.secret_table = secret_table
        self.bans_table = bans_table
        self.limits_table = limits_table
        self.history_table = history_table
        self.room_info_table = room_info_table
        self._db: peewee.Database = open_database(self._url, lock_timeout=lock_timeout)
        self._models = bind_models(self._db, **names)
        self._has_sha256: bool | None = None  # subscriber.ha1_sha256 there? (None: not looked)
        # ownership (issue 13): this node's name, and the epochs of the leases it acquired
        self.lease_table = lease_table
        self.node_table = node_table
        self.metrics_table = metrics_table
        self.node = node
        self.lease_ttl = lease_ttl
        self._clock = clock
        self._leases = LeaseTable(self._db, lease_table)
        self._nodes = NodeTable(self._models.node, self._models.metrics)
        self._held: dict[str, int] = {}
        #: (heartbeat in ms, addresses) of the node row as this process last wrote it (and of
        #: a write under way); empty before its first heartbeat.
        self._beats: tuple[tuple[int, tuple[str, ...]], ...] = ()
        #: room (lower-case URI) -> the number of its last archived line, as committed
        self._history_seq: dict[str, int] = {}
        # Does plain "=" already compare case-insensitively? Never on SQLite/PostgreSQL; on
        # MySQL it depends on the columns' collation, looked up on first use (None: not yet).
        self._exact_is_ci: bool | None = None if self.engine == "mysql" else False
        self._statement_cache: dict[bool, _Statements] = {}
        self._nowait = False  # the next write transaction fails with LockBusy instead of waiting
        self._saved_pragmas: tuple[tuple[str, Any], ...] | None = None

    # -- properties ---------------------------------------------------------------------------

    @property
    def engine(self) -> str:
        """``sqlite``, ``postgresql`` or ``mysql``."""
        return self._url.engine

    @property
    def database_url(self) -> DatabaseURL:
        """The parsed ``db_url``."""
        return self._url

    @property
    def url(self) -> str:
        """The database URL with the password hidden (for logs)."""
        return self._url.redacted

    def __repr__(self) -> str:
        return f"Repository({self.url!r}, {self.rooms_table!r}, {self.members_table!r})"

    # -- public operations --------------------------------------------------------------------

    def init_schema(self) -> None:
        """Create the tables, their unique keys and the ``version`` rows where absent.

        Idempotent; existing tables and rows are left as they are. Also adds the indexes of
        :func:`~imc_actors.store.models.extra_indexes` when the database user may (a failure
        there is logged, not raised: lookups stay correct, only slower).
        """
        database = self._url.database
        if self.engine == "sqlite" and not self._url.params.get("uri") and database != ":memory:":
            folder = os.path.dirname(os.path.abspath(database))
            if not os.path.isdir(folder):  # SQLite says only "unable to open database file"
                raise StoreError(f"the folder {folder} of {self.url} does not exist (make it first)")
        self._run("creating the tables", self._init_schema)
        for table, name, sql in extra_indexes(self.engine, self.rooms_table, self.members_table):
            try:
                self._run(
                    f"adding index {name}", lambda t=table, n=name, s=sql: self._add_index(t, n, s)
                )
            except StoreError as exc:
                log.warning("%s (lookups stay correct, only slower)", exc)

    def check_schema(self) -> list[str]:
        """Human-readable problems that keep this database from working; ``[]`` when it fits.

        Checks that both tables exist with their columns, an auto-incrementing ``id`` and their
        unique keys; on MySQL that the tables use a transactional engine; and that the
        ``version`` table, when present, does not name another version of the imc tables.
        """
        return self._run("checking the tables", self._check_schema)

    def load_rooms(self) -> list[RoomState]:
        """Every room with its members and flags, rooms in creation order (row id).

        Members are in joining order (member row id). Rooms without members are included.
        Two full scans and a grouping in memory, however many rooms there are. Member rows
        naming no existing room are skipped (logged); rows that differ only in case from an
        earlier one (possible on a case-sensitive database edited by hand) are skipped too.
        """
        return self._run("loading the rooms", self._load_rooms)

    def apply_batch(self, writes: Sequence[StoreWrite]) -> None:
        """Apply ``writes`` in order, in one transaction: all of them are durable, or none.

        Raises :class:`StoreError` on any failure (the transaction is rolled back), including a
        write that cannot be stored (a value longer than the column, a member that is not
        ``sip:user@host``, an unknown record), or a refusal of the thread's :class:`CommitGuard`.
        """
        batch = list(writes)
        if not batch:
            return
        for write in batch:
            self._validate(write)
        self._run("writing", lambda: self._apply(batch))

    def pending_counts(self) -> dict[str, int]:
        """Member key (``user@host``, lower case) -> number of notices waiting for it."""
        return self._run(
            "counting the pending notices", lambda: own_tables.pending_counts(self._models)
        )

    def pending_count(self, member: str) -> int:
        """How many notices wait for ``member`` (``user@host``): one indexed COUNT."""
        return self._run(
            "counting the pending notices", lambda: own_tables.pending_count(self._models, member)
        )

    def pending_total(self) -> int:
        """How many notices wait in the table for all members together (one COUNT)."""
        return self._run("counting the pending notices", lambda: own_tables.pending_total(self._models))

    def load_pending(self, member: str, limit: int) -> list[PendingRow]:
        """The oldest ``limit`` notices waiting for ``member`` (``user@host``), oldest first."""
        return self._run(
            "reading the pending notices",
            lambda: own_tables.load_pending(self._models, member, limit),
        )

    def load_history(self, room: str, limit: int, before: int | None = None) -> list[HistoryLine]:
        """The newest ``limit`` archived lines of ``room`` (``sip:name@domain``, any case),
        numbered below ``before`` when given, oldest first."""
        return self._run(
            "reading the history",
            lambda: own_tables.load_history(self._models, room.lower(), limit, before),
        )

    def load_bindings(
        self, now: float, since: float | None = None, aor: str | None = None
    ) -> list[Binding]:
        """Every registrar binding that has not expired at ``now`` (epoch seconds), oldest
        first. Expired rows are deleted. With ``since``: only those written (by any node) from
        about then on, nothing deleted (a node catching up with the others' REGISTERs). With
        ``aor`` (``user@host``): that AOR's alone, nothing deleted (a node looking for a
        member another node registered)."""
        return self._run(
            "loading the bindings",
            lambda: own_tables.load_bindings(self._db, self._models, now, since, aor),
        )

    # -- users (digest authentication; see store/users.py) ----------------------------------

    def load_subscriber(self, username: str, domain: str) -> users.Subscriber | None:
        """The ``subscriber`` row of ``username`` at ``domain`` (exact match), or None."""

        def load() -> users.Subscriber | None:
            if self._has_sha256 is None:
                self._has_sha256 = users.has_sha256_column(self._db, self.subscriber_table)
            return users.load_subscriber(
                self._db, self._models, username, domain, sha256=self._has_sha256
            )

        return self._run("reading a user", load)

    def set_user(self, username: str, domain: str, password: str, *, create: bool) -> bool:
        """Add a user (``create``) or change an existing one's password; False when the user
        exists already (add) or does not (passwd). Stores hashes only (see store/users.py)."""
        try:
            return self._run(
                "writing a user",
                lambda: users.set_user(self._db, self._models, username, domain, password, create=create),
            )
        except ValueError as exc:
            raise StoreError(str(exc)) from None

    def delete_user(self, username: str, domain: str) -> bool:
        """Delete a user; False when there was none."""
        return self._run("deleting a user", lambda: users.delete_user(self._models, username, domain))

    def list_users(self, domain: str | None = None) -> list[tuple[str, str]]:
        """``(username, domain)`` of every user (of ``domain`` when given), sorted."""
        return self._run("listing the users", lambda: users.list_users(self._models, domain))

    def load_secret(self) -> bytes:
        """The nonce secret (made and stored in ``secret_table`` on first use)."""
        return self._run("reading the nonce secret", lambda: users.load_secret(self._db, self._models))
    # -- ownership (issue 13): see imc_actors.store.leases ------------------------------------

    @property
    def held(self) -> dict[str, int]:
        """Room key -> epoch of every lease this repository's node acquired (a copy)."""
        return dict(self._held)

    @property
    def lease_count(self) -> int:
        """How many leases this repository's node holds (safe to read from any thread)."""
        return len(self._held)

    def acquire(self, room: str, ttl: float | None = None) -> int | None:
        """Take the lease of ``room`` (a room key, ``name@domain``) for this node for ``ttl``
        seconds (default ``lease_ttl``): its new epoch, or None while another node holds it.
        One transaction; the epoch is what this node's writes for the room are fenced by."""
        node = self._require_node()
        key = _room_key(room)

        def acquire() -> int | None:
            with self._db.atomic():
                return self._leases.acquire(key, node, self._ttl(ttl), self._clock())

        epoch = self._run(f"acquiring the lease of {key}", acquire)
        self._note_lease(key, epoch)
        return epoch

    def acquire_all(self, rooms: Sequence[str], ttl: float | None = None) -> dict[str, int | None]:
        """:meth:`acquire` for many rooms (startup), a few hundred per transaction: room key
        -> new epoch, or None where another node holds the lease."""
        node = self._require_node()
        keys = [_room_key(room) for room in rooms]
        result: dict[str, int | None] = {}
        for start in range(0, len(keys), _ACQUIRE_CHUNK):
            chunk = keys[start : start + _ACQUIRE_CHUNK]

            def acquire(chunk: list[str] = chunk) -> dict[str, int | None]:
                now = self._clock()
                with self._db.atomic():
                    return {key: self._leases.acquire(key, node, self._ttl(ttl), now) for key in chunk}

            got = self._run(f"acquiring {len(chunk)} leases", acquire)
            for key, epoch in got.items():
                self._note_lease(key, epoch)
            result.update(got)
        return result

    def _note_lease(self, key: str, epoch: int | None) -> None:
        """Remember the outcome of acquiring ``key``'s lease (None: another node holds it).
        A new epoch means other nodes may have written for the room meanwhile: what this one
        remembers of it (its archive's last line number) is read again."""
        if epoch is None:
            self._held.pop(key, None)
        elif self._held.get(key) != epoch:
            self._history_seq.pop(f"sip:{key}", None)
            self._held[key] = epoch

    def renew(self, ttl: float | None = None) -> int:
        """Extend every lease this node holds by ``ttl`` seconds from now (default
        ``lease_ttl``), in one statement; how many rows changed."""
        node = self._require_node()
        return self._run(
            "renewing the leases", lambda: self._leases.renew(node, self._ttl(ttl), self._clock())
        )

    def release(self) -> int:
        """Expire every lease of this node at once and mark it as gone in the node table
        (clean shutdown: other nodes take the rooms over without waiting for ``lease_ttl``,
        their scan at once); how many leases there were."""
        node = self._require_node()

        def release() -> int:
            with self._db.atomic():
                self._nodes.retire(node)
                return self._leases.release(node)

        count = self._run("releasing the leases", release)
        self._held.clear()
        return count

    def let_go(self, room: str) -> None:
        """Forget that this node holds ``room``'s lease (a room key) without writing: its
        state is not served here any more (a takeover that failed after the room's actor was
        stopped), so the next request must take it over again and read it first. The row
        stays as it is (renewed with this node's others, or expiring)."""
        self._held.pop(_room_key(room), None)

    def holds(self, room: str) -> bool:
        """True while this node holds the lease of ``room`` (a room key) as far as it knows
        (safe to read from any thread; :meth:`lost` finds the ones taken over since)."""
        return room in self._held

    def take_over(self, room: str) -> tuple[int | None, RoomState | None]:
        """Acquire ``room``'s lease (free, expired, or this node's own: epoch + 1), then read
        the room's state from the database: ``(epoch, state)``; ``(None, None)`` while another
        node holds a live lease. A room that is not stored (any more) gets its lease deleted
        again: ``(epoch, None)``. The state is read after the lease is taken, so it holds
        every write the previous owner committed (its later ones are fenced)."""
        key = room.lower()
        epoch = self.acquire(key)
        if epoch is None:
            return None, None
        state = self.load_room(key)
        if state is None:
            node = self._require_node()
            self._run(f"forgetting the lease of {key}", lambda: self._leases.forget(node, key))
            self._held.pop(key, None)
        return epoch, state

    def lost(self) -> list[str]:
        """The rooms this node believed it held whose lease another node has taken since (they
        are forgotten here: their writes would be fenced anyway). Call after :meth:`renew`
        changed fewer rows than :attr:`lease_count`."""
        node = self._require_node()
        rows = self._run("reading the held leases", lambda: self._leases.epochs_of(node))
        gone = [room for room, epoch in list(self._held.items()) if rows.get(room) != epoch]
        for room in gone:
            self._held.pop(room, None)
        return gone

    def orphans(self, limit: int = 500) -> list[str]:
        """Up to ``limit`` rooms whose lease has expired and whose node has not heartbeat for
        ``lease_ttl`` (dead, or shut down cleanly): for a periodic takeover scan."""
        node = self._require_node()
        now = self._clock()
        return self._run(
            "finding orphaned rooms",
            lambda: self._leases.orphans(node, self._nodes.table, now, now - self.lease_ttl, limit),
        )

    def load_room(self, room: str) -> RoomState | None:
        """One room (a room key) as stored, with its members, bans and limit; None if absent."""
        return self._run(f"loading the room {room}", lambda: self._load_room(room.lower()))

    def has_room(self, room: str) -> bool:
        """Whether the rooms table holds ``room`` (a room key, any case): one indexed read."""

        def has_room() -> bool:
            table = self._models.room
            return self._db.execute(self._room_rows(room, table.id).limit(1)).fetchone() is not None

        return self._run(f"looking {room} up", has_room)

    def _room_rows(self, key: str, *columns: Any) -> Any:
        """The rooms table's rows of the room ``key`` (``name@domain``, any case: names match
        case-insensitively, through the ``lower()`` indexes), selecting ``columns``."""
        room = self._models.room
        name, _, domain = key.lower().partition("@")
        return room.select(*columns).where(
            peewee.fn.LOWER(room.name) == name, peewee.fn.LOWER(room.domain) == domain
        )

    def foreign_rooms(self, known: Iterable[str], limit: int = 5) -> list[tuple[str, str]]:
        """``(room, node)`` of other nodes' live leases whose rooms are not among ``known``
        (the keys of this repository's rooms table, as :meth:`load_rooms` read them),
        ``limit`` at most. A live lease's room is in its owner's rooms table (both are
        written in one transaction, and deleted in one), so any such lease says that node
        uses other room tables on the same lease table: its rooms would be recreated here,
        private ones public (see ``open_conference``)."""
        node = self._require_node()
        ours = set(known)
        owners = self._run(
            "reading the other nodes' leases", lambda: self._leases.live_owners(self._clock())
        )
        strangers = ((room, owner) for room, owner in owners.items() if owner != node and room not in ours)
        return sorted(strangers)[:limit]

    def owner_of(self, room: str) -> Lease | None:
        """The lease of ``room`` as stored now, or None when it never had one. Expired or
        not: see :meth:`Lease.live` with this repository's clock (:meth:`now`)."""
        return self._run(f"reading the lease of {room}", lambda: self._leases.owner_of(room.lower()))

    # -- the node registry (issue 13 item 2): see imc_actors.store.nodes ----------------------

    def heartbeat(self, addresses: Sequence[str]) -> None:
        """Record that this node is alive now and reachable at ``addresses`` (its SIP listen
        addresses, ``udp:host:port``)."""
        node = self._require_node()
        problem = NodeTable.problem(addresses)
        if problem is not None:
            raise StoreError(f"node {node!r}: {problem}")

        def beat() -> None:
            now = self._clock()
            if self._beats:  # the row must still be what this process wrote last
                row = self._nodes.get(node)
                if row is not None and (round(row.heartbeat * 1000), row.addresses) not in self._beats:
                    raise NodeTaken(
                        f"another process runs as node {node!r} (it heartbeat from "
                        f"{' '.join(row.addresses) or 'no address yet'}): stopping, so that no "
                        "room is served twice"
                    )
            # what it writes now counts as its own before the write: a commit whose answer
            # was lost (the retry after a reconnect) must not look like another process's
            written = (millis(now), tuple(" ".join(addresses).split()))
            self._beats = (*self._beats[-3:], written)  # (until one commits: a retry or two)
            self._nodes.heartbeat(node, addresses, now)
            self._beats = (written,)

        self._run("recording the heartbeat", beat)

    def nodes(self) -> list[NodeInfo]:
        """Every node that ever heartbeat, by name (live or not: see :meth:`NodeInfo.live`)."""
        return self._run("reading the nodes", self._nodes.all)

    def cluster(self) -> ClusterRead:
        """What the management views show of the whole cluster, read in one transaction:
        every stored room, the node holding each live lease, every node (issue 13 item 3)."""

        def read() -> ClusterRead:
            now = self._clock()
            with self._db.atomic():
                rooms = self._load_rooms()
                owners = self._leases.live_owners(now)
                nodes = self._nodes.all()
            return ClusterRead(rooms, owners, nodes, now)

        return self._run("reading the cluster's rooms", read)

    def share_metrics(self, body: str) -> None:
        """Store ``body`` (JSON) as this node's metrics snapshot, replacing its last one;
        ValueError when it is longer than the column holds (``MAX_METRICS_BODY``)."""
        node = self._require_node()
        problem = NodeTable.metrics_problem(body)
        if problem is not None:
            raise ValueError(problem)
        self._run(
            "storing the metrics", lambda: self._nodes.share_metrics(node, body, self._clock())
        )

    def peer_metrics(self, since: float) -> list[tuple[str, float, str]]:
        """``(node, updated, body)`` of the other nodes' metrics snapshots stored at or after
        ``since`` (seconds since the epoch), by node."""
        node = self._require_node()
        return self._run("reading the metrics", lambda: self._nodes.peer_metrics(node, since))

    def locate(self, room: str) -> RoomLocation | None:
        """Where ``room`` (a room key) is served now: the node holding its live lease and that
        node's addresses; None when no node holds a live lease (anyone may acquire it)."""

        def locate() -> RoomLocation | None:
            lease = self._leases.owner_of(room.lower())
            if lease is None or not lease.live(self._clock()):
                return None
            info = self._nodes.get(lease.node)
            addresses = info.addresses if info is not None else ()
            return RoomLocation(lease.room, lease.node, lease.epoch, addresses)

        return self._run(f"locating {room}", locate)

    def now(self) -> float:
        """The wall clock leases are measured on (seconds since the epoch)."""
        return self._clock()

    def _require_node(self) -> str:
        if self.node is None:
            raise StoreError("leases need a node name (config node)")
        return self.node

    def _ttl(self, ttl: float | None) -> float:
        return self.lease_ttl if ttl is None else ttl

    def _fence(self, writes: list[StoreWrite], node: str) -> tuple[dict[str, int], set[str]]:
        """Inside the write transaction: raise :class:`Fenced` unless this node holds every
        written room's lease with its epoch. Returns the leases taken for new rooms and the
        rooms destroyed (their leases are deleted), to record once committed."""
        rooms = rooms_of(writes)
        if not rooms:
            return {}, set()
        held = {room: self._held.get(room) for room in rooms}
        fenced, taken = self._leases.fence(node, held, self.lease_ttl, self._clock())
        if fenced:
            for room in fenced:  # lost (or never held): the next request for it takes it over
                self._held.pop(room, None)
            raise Fenced(frozenset(fenced), node, max(1, math.ceil(self.lease_ttl)))
        destroyed: set[str] = set()
        for write in writes:
            if isinstance(write, RoomDelete):
                destroyed.add(room_of(write))  # type: ignore[arg-type]
            elif isinstance(write, RoomUpsert):
                destroyed.discard(room_of(write))  # type: ignore[arg-type]
        for room in destroyed:
            self._leases.forget(node, room)
        return taken, destroyed

    def ping(self) -> None:
        """A cheap round trip; raises :class:`StoreError` when the database cannot be reached."""
        self._run("ping", lambda: self._db.execute_sql("SELECT 1").fetchone())

    def probe_write(self, *, commit: bool = False) -> None:
        """:meth:`ping`, and wait (up to the lock timeout) for the locks a write takes, then
        roll back: SQLite's write lock (``BEGIN IMMEDIATE``); on every engine the rooms' and
        members' table locks (an UPDATE that matches no row). Raises :class:`StoreError`
        while another client holds one, so the store does not resume into a lock its next
        write would wait ``db_timeout`` for. Row locks on other rows are not seen.

        ``commit``: also write and commit (a row added to and deleted from the rooms table,
        which every room change writes, in the same transaction, so nothing is left and no
        other client sees it): for a database that refused writes (full, read-only, grants),
        where locks alone prove nothing."""
        room, member = self._models.room, self._models.member

        def write() -> None:
            self._touch(room, member)
            if commit:
                probe_row = (room.name == _PROBE_ROW) & (room.domain == _PROBE_ROW)
                room.delete().where(probe_row).execute()  # never left behind, but be sure
                room.insert(name=_PROBE_ROW, domain=_PROBE_ROW, flag=0).execute()
                room.delete().where(probe_row).execute()

        def probe() -> None:
            if self.engine == "sqlite":
                self._db.execute_sql("BEGIN IMMEDIATE")
                try:
                    write()
                except BaseException:
                    with contextlib.suppress(Exception):  # SQLite may have rolled back already
                        self._db.execute_sql("ROLLBACK")
                    raise
                self._db.execute_sql("COMMIT" if commit else "ROLLBACK")
                return
            with self._db.atomic() as transaction:
                write()
                if not commit:
                    transaction.rollback()

        try:  # not through _run: a lock wait is no reason to reconnect, and the store retries
            probe()
        except Exception as exc:
            if _is_connection_error(exc) or refuses_writes(exc):  # a standby: connect afresh
                self._discard_connection()
            raise StoreError(f"probing for a write on {self.url} failed: {_describe(exc)}") from exc

    @staticmethod
    def _touch(*models: type[peewee.Model]) -> None:
        for model in models:
            model.update({model.id: model.id}).where(peewee.SQL("1 = 0")).execute()

    def close(self) -> None:
        """Close the connection (a later call reconnects)."""
        try:
            self._db.close()
        except Exception:  # noqa: BLE001 - a dead connection is closed either way
            self._db.dispose()

    def __enter__(self) -> Repository:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- connection handling ------------------------------------------------------------------

    def _run(self, what: str, operation: Callable[[], _T]) -> _T:
        """Run ``operation``; on a connection error reconnect and retry once; map to StoreError.
        One line either way: a WARNING when the retry went through, else the StoreError alone
        (its caller says it, once: "cannot start: …" at startup)."""
        first: Exception | None = None
        for attempt in (1, 2):
            try:
                result = operation()
            except StoreError:
                raise
            except Exception as raised:
                exc = _unmasked(raised)
                retry = attempt == 1 and _is_connection_error(exc)
                if _is_connection_error(exc):
                    self._discard_connection()
                if retry:
                    first = exc
                    continue
                raise StoreError(f"{what} failed on {self.url}: {_describe(exc)}") from exc
            if first is not None:
                log.warning("%s on %s failed (%s); tried again on a new connection, it went through",
                            what, self.url, _describe(first))  # fmt: skip
            return result
        raise AssertionError("unreachable")

    def _discard_connection(self) -> None:
        try:
            self._db.close()
        except Exception:  # noqa: BLE001 - the connection is gone; forget it
            self._db.dispose()

    # -- schema -------------------------------------------------------------------------------

    def _init_schema(self) -> None:
        models = self._models
        existing = set(self._db.get_tables())
        with self._db.atomic():
            for model in models.all():
                if model._meta.table_name not in existing:
                    model.create_table(safe=True)
            version = models.version
            for table, number in (
                (self.rooms_table, TABLE_VERSION),
                (self.members_table, TABLE_VERSION),
                (self.subscriber_table, SUBSCRIBER_VERSION),
            ):
                if not version.select().where(version.table_name == table).exists():
                    version.insert(table_name=table, table_version=number).execute()
        if self.subscriber_table in existing and not users.has_sha256_column(
            self._db, self.subscriber_table
        ):  # a Kamailio subscriber table: add our SHA-256 HA1 column
            field = self._models.subscriber._meta.fields[SHA256_COLUMN]
            self._db.execute_sql(
                f"ALTER TABLE {self._db.quote[0]}{self.subscriber_table}{self._db.quote[-1]} "
                f"ADD COLUMN {self._db.quote[0]}{SHA256_COLUMN}{self._db.quote[-1]} "
                f"VARCHAR({field.max_length}) DEFAULT '' NOT NULL"
            )
        self._has_sha256 = None
        if self.engine == "mysql":
            self._exact_is_ci = None  # the tables may be new: look at their collation again

    def _add_index(self, table: str, name: str, sql: str) -> None:
        if any(index.name == name for index in self._db.get_indexes(table)):
            return
        self._db.execute_sql(sql)

    def _check_schema(self) -> list[str]:
        database = self._url.database
        if self.engine == "sqlite" and database != ":memory:" and not os.path.exists(database):
            return [f"database file {database} does not exist"]  # and checking must not make it
        problems: list[str] = []
        tables = set(self._db.get_tables())
        for table, columns, unique in (
            (self.rooms_table, ROOM_COLUMNS, ROOM_UNIQUE),
            (self.members_table, MEMBER_COLUMNS, MEMBER_UNIQUE),
        ):
            if table not in tables:
                problems.append(f"table {table} is missing")
                continue
            found = {column.name.lower(): column for column in self._db.get_columns(table)}
            missing = [column for column in columns if column not in found]
            if missing:
                problems.append(f"table {table} has no column {', '.join(missing)}")
            elif not found["id"].identity:
                problems.append(f"column {table}.id is not an auto-incrementing key")
            wanted = sorted(unique)
            if not any(
                index.unique and sorted(str(c).lower() for c in index.columns) == wanted
                for index in self._db.get_indexes(table)
            ):
                problems.append(f"table {table} has no unique key on ({', '.join(unique)})")
            if self.engine == "mysql":
                engine = self._db.execute_sql(
                    "SELECT ENGINE FROM information_schema.TABLES "
                    "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = %s",
                    (table,),
                ).fetchone()
                if engine and str(engine[0]).lower() not in _TRANSACTIONAL_ENGINES:
                    problems.append(
                        f"table {table} uses the {engine[0]} engine, which has no transactions "
                        f"(ALTER TABLE {table} ENGINE=InnoDB)"
                    )
        for table, columns in (
            (self.pending_table, PENDING_COLUMNS),
            (self.location_table, LOCATION_COLUMNS),
            (self.subscriber_table, ()),
            (self.secret_table, SECRET_COLUMNS),
            (self.bans_table, BAN_COLUMNS),
            (self.limits_table, LIMIT_COLUMNS),
            (self.lease_table, LEASE_COLUMNS),
            (self.node_table, NODE_COLUMNS),
            (self.metrics_table, METRICS_COLUMNS),
            (self.history_table, HISTORY_COLUMNS),
            (self.room_info_table, ROOM_INFO_COLUMNS),
        ):
            if table == self.subscriber_table:
                problems.extend(self._check_subscriber(tables))
                continue
            if table not in tables:
                problems.append(f"table {table} is missing (imc-actors db init creates it)")
                continue
            found = {column.name.lower() for column in self._db.get_columns(table)}
            missing = [column for column in columns if column not in found]
            if missing:
                problems.append(f"table {table} has no column {', '.join(missing)}")
        if VERSION_TABLE in tables:
            version = self._models.version
            rows = version.select(version.table_name, version.table_version).where(
                version.table_name.in_([self.rooms_table, self.members_table])
            )
            for table_name, table_version in rows.tuples():
                if int(table_version) != TABLE_VERSION:
                    problems.append(
                        f"{VERSION_TABLE} table gives {table_name} version {table_version}; "
                        f"imc-actors knows version {TABLE_VERSION}"
                    )
        return problems


    def _check_subscriber(self, tables: set[str]) -> list[str]:
        """Kamailio's subscriber columns and key, and our ``ha1_sha256`` column."""
        table = self.subscriber_table
        if table not in tables:
            return [f"table {table} (users) is missing (imc-actors db init creates it)"]
        problems: list[str] = []
        found = {column.name.lower() for column in self._db.get_columns(table)}
        missing = [column for column in SUBSCRIBER_COLUMNS if column not in found]
        if missing:
            problems.append(f"table {table} has no column {', '.join(missing)}")
        elif SHA256_COLUMN not in found:
            problems.append(
                f"table {table} has no column {SHA256_COLUMN} for SHA-256 digests "
                "(imc-actors db init adds it)"
            )
        wanted = sorted(SUBSCRIBER_UNIQUE)
        if not any(
            index.unique and sorted(str(c).lower() for c in index.columns) == wanted
            for index in self._db.get_indexes(table)
        ):
            problems.append(f"table {table} has no unique key on ({', '.join(SUBSCRIBER_UNIQUE)})")
        return problems

    # -- reading ------------------------------------------------------------------------------

    def _load_rooms(self) -> list[RoomState]:
        room, member = self._models.room, self._models.member
        room_rows = self._db.execute(
            room.select(room.name, room.domain, room.flag).order_by(room.id)
        ).fetchall()
        # Group member rows by the room column as stored: one dict lookup per row, and the
        # case-insensitive key is computed once per distinct spelling, not once per row.
        by_spelling: dict[str, list[Member]] = {}
        lookup = by_spelling.get
        cursor = self._db.execute(
            member.select(member.username, member.domain, member.room, member.flag).order_by(
                member.id
            )
        )
        for username, domain, room_uri, flag in cursor:
            members = lookup(room_uri)
            if members is None:
                by_spelling[room_uri] = members = []
            members.append(Member(f"sip:{username}@{domain}", flag))
        grouped: dict[str, list[Member]] = {}
        spellings: dict[str, list[str]] = {}
        for room_uri, members in by_spelling.items():
            key = member_key(room_uri)
            spellings.setdefault(key, []).append(room_uri)
            grouped[key] = grouped[key] + members if key in grouped else members
        for key, uris in spellings.items():
            if len(uris) > 1:  # one room spelled several ways: re-read it in joining order
                grouped[key] = self._members_spelled(uris)

        infos = own_tables.load_room_info(self._models)
        rooms: list[RoomState] = []
        taken: set[str] = set()
        for name, domain, flag in room_rows:
            key = f"{name}@{domain}".lower()
            if key in taken:
                log.warning("skipping room row %s@%s: same name as an earlier room", name, domain)
                continue
            taken.add(key)
            members = grouped.pop(key, [])
            state = RoomState(name, domain, int(flag), _unique_members(key, members))
            info = infos.get(f"sip:{key}")
            rooms.append(replace(state, info=info) if info is not None else state)
        rooms = own_tables.with_moderation(self._models, rooms)
        if grouped:
            log.warning(
                "%d member rows name rooms that do not exist (%s); they are ignored",
                sum(len(members) for members in grouped.values()),
                ", ".join(sorted(grouped)[:5]),
            )
        return rooms

    def _load_room(self, key: str) -> RoomState | None:
        room, member = self._models.room, self._models.member
        rows = self._db.execute(
            self._room_rows(key, room.name, room.domain, room.flag).order_by(room.id)
        ).fetchall()
        if not rows:
            return None
        spellings = [f"sip:{key}", f"sips:{key}", key]
        cursor = self._db.execute(
            member.select(member.username, member.domain, member.flag)
            .where(peewee.fn.LOWER(member.room).in_(spellings))
            .order_by(member.id)
        )
        members = [Member(f"sip:{username}@{host}", flag) for username, host, flag in cursor]
        name, domain, flag = rows[0]
        state = RoomState(name, domain, int(flag), _unique_members(key, members))
        info = own_tables.load_room_info(self._models, f"sip:{key}").get(f"sip:{key}")
        if info is not None:  # the topic and creation time come along, as at startup
            state = replace(state, info=info)
        return own_tables.with_moderation(self._models, [state], f"sip:{key}")[0]

    def _members_spelled(self, room_uris: list[str]) -> list[Member]:
        """Members whose room column is one of ``room_uris`` (exactly), in joining order."""
        member = self._models.member
        query = (
            member.select(member.username, member.domain, member.flag)
            .where(member.room.in_(room_uris))
            .order_by(member.id)
        )
        return [
            Member(f"sip:{username}@{domain}", flag)
            for username, domain, flag in self._db.execute(query).fetchall()
        ]

    # -- writing ------------------------------------------------------------------------------

    def _validate(self, write: StoreWrite) -> None:
        if isinstance(write, own_tables.OWN_WRITES):
            own_tables.validate(write)
        elif isinstance(write, RoomUpsert | RoomDelete):
            _check_length(write.name, "room name")
            _check_length(write.domain, "room domain")
            if not write.name or not write.domain:
                raise StoreError(f"room {write.name!r}@{write.domain!r} has an empty part")
            if isinstance(write, RoomUpsert):
                _check_flags(write.flags)
        elif isinstance(write, MemberUpsert | MemberDelete):
            user, host = split_member(write.member)
            _check_length(user, "member user")
            _check_length(host, "member domain")
            _check_length(write.room, "room URI")
            if not write.room:
                raise StoreError(f"member {write.member!r} has an empty room URI")
            if isinstance(write, MemberUpsert):
                _check_flags(write.flags)
        else:
            raise StoreError(f"not a store write: {write!r}")

    def _apply(self, writes: list[StoreWrite]) -> None:
        guard = current_guard()
        if guard is not None:
            guard.check()
        if self._exact_is_ci is None:
            self._exact_is_ci = self._mysql_columns_are_ci()
        sql = self._statements(bool(self._exact_is_ci))
        seqs = own_tables.HistorySeqs(self._history_seq)
        try:
            self._apply_in_transaction(writes, sql, seqs, guard)
        except peewee.IntegrityError:
            seqs.settle(committed=False)
            if self.node is not None:
                self._fenced_after_conflict(writes, self.node)
            raise
        except BaseException:
            seqs.settle(committed=False)
            raise
        seqs.settle(committed=True)

    def _fenced_after_conflict(self, writes: list[StoreWrite], node: str) -> None:
        """A batch that broke a unique key (rolled back): raise :class:`Fenced` when the
        fence refuses it now, in a transaction rolled back in turn. The fence is checked
        after the writes (its lease rows stay locked only for the end of the transaction),
        so a node that lost a room, or created one that another node created first, met the
        other node's rows before its fence: an IntegrityError and a 500, not the 503 (or the
        forwarding) a lost lease gets. Returns when the fence passes (a real conflict)."""
        fenced: Fenced | None = None
        with self._db.atomic() as check:
            try:
                self._fence(writes, node)
            except Fenced as exc:
                fenced = exc
            check.rollback()
        if fenced is not None:
            raise fenced

    def _apply_in_transaction(
        self,
        writes: list[StoreWrite],
        sql: _Statements,
        seqs: own_tables.HistorySeqs,
        guard: CommitGuard | None,
    ) -> None:
        execute = self._db.execute_sql
        run: list[Any] = []  # consecutive writes of one kind that go in one statement
        with self._transaction():
            for write in writes:
                if run and type(write) is not type(run[0]):
                    own_tables.apply_run(self._models, run, seqs)
                    run = []
                if isinstance(write, own_tables.RUN_WRITES):
                    run.append(write)
                    continue
                if isinstance(write, RoomUpsert):
                    key: tuple[Any, ...] = (write.name, write.domain)
                    ids = execute(sql.room_exact, key).fetchall()
                    if not ids and not self._exact_is_ci:
                        ids = execute(sql.room_ci, key).fetchall()
                    if ids:
                        for (row_id,) in ids:
                            execute(sql.room_update, (write.flags, row_id))
                    else:
                        execute(sql.room_insert, (*key, write.flags))
                        # a new room inherits nothing a deleted namesake left in our tables
                        own_tables.delete_room(self._models, f"sip:{write.name}@{write.domain}")
                elif isinstance(write, RoomDelete):
                    execute(sql.room_delete, (write.name, write.domain))
                    execute(sql.room_members_delete, (f"sip:{write.name}@{write.domain}",))
                    room = f"sip:{write.name}@{write.domain}".lower()
                    own_tables.delete_room(self._models, room)
                    own_tables.clear_room(self._models, room, seqs)
                elif isinstance(write, own_tables.OWN_WRITES):
                    own_tables.apply(self._db, self._models, write)
                elif isinstance(write, MemberUpsert):
                    user, host = split_member(write.member)
                    ids = execute(sql.member_exact, (user, host, write.room)).fetchall()
                    if not ids and not self._exact_is_ci:
                        ids = execute(sql.member_ci, (write.room, user, host)).fetchall()
                    if ids:
                        for (row_id,) in ids:
                            execute(sql.member_update, (write.flags, row_id))
                    else:
                        execute(sql.member_insert, (user, host, write.room, write.flags))
                else:
                    user, host = split_member(write.member)
                    execute(sql.member_delete, (write.room, user, host))
            if run:
                own_tables.apply_run(self._models, run, seqs)
            node = self.node
            if node is not None:
                taken, destroyed = self._fence(writes, node)
            if guard is not None:
                guard.committing()  # a refusal raises here: the block rolls back
        if node is not None:  # committed: record the leases taken and forgotten
            self._held.update(taken)
            for room in destroyed:
                self._held.pop(room, None)

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """``atomic()``; the first one after :meth:`unflushed_writes` began raises
        :class:`LockBusy` when its BEGIN finds the write lock taken (nothing written)."""
        nowait, self._nowait = self._nowait, False
        atomic = self._db.atomic()
        try:
            atomic.__enter__()
        except peewee.OperationalError as exc:
            if nowait and "locked" in str(exc).lower():
                raise LockBusy(f"the write lock of {self.url} is taken") from exc
            raise
        try:
            yield
        except BaseException as exc:
            try:
                atomic.__exit__(type(exc), exc, exc.__traceback__)
            except peewee.OperationalError as rollback:
                # SQLite rolled back by itself (a full disk, an I/O error): its error stands
                if "no transaction is active" not in str(rollback):
                    raise
            raise
        try:
            atomic.__exit__(None, None, None)
        except peewee.OperationalError as rollback:
            # the COMMIT failed and SQLite had rolled back already: the COMMIT's error stands
            failed = _unmasked(rollback)
            if failed is not rollback:
                raise failed from None
            raise

    @property
    def wal_path(self) -> str | None:
        """The write-ahead log of an SQLite database file (``<file>-wal``); None for an
        in-memory database and the other engines."""
        if self.engine != "sqlite":
            return None
        name = str(self._db.database)
        if not name or name == ":memory:" or name.startswith("file:") or "mode=memory" in name:
            return None
        return os.path.abspath(name) + "-wal"

    @contextmanager
    def unflushed_writes(self) -> Iterator[None]:
        """SQLite only (:attr:`wal_path`): for the block, write transactions on this thread
        neither flush nor wait. ``synchronous=NORMAL``: a COMMIT appends to the WAL and returns
        without an fsync (the caller makes the WAL durable, by fsyncing :attr:`wal_path`, before
        it reports the writes durable); no busy wait: the first write transaction raises
        :class:`LockBusy` when another connection holds the write lock; no automatic
        checkpoint (it would flush): a commit made outside the block checkpoints. Restored on
        exit (never raises then: a connection that cannot be restored is closed, and the next
        use opens one with the usual settings), so an exception out of this block is one of
        the block or of its set-up, before anything was written. Used by the store to commit
        on the event loop's thread (:mod:`.inline`)."""
        db = self._db
        db.connect(reuse_if_open=True)
        execute = db.execute_sql
        if self._saved_pragmas is None:  # the connection's own settings (see open_database)
            self._saved_pragmas = tuple(
                (name, execute(f"PRAGMA {name}").fetchone()[0]) for name, _ in _UNFLUSHED
            )
        saved = self._saved_pragmas
        for name, value in _UNFLUSHED:
            execute(f"PRAGMA {name} = {value}")
        self._nowait = True
        try:
            yield
        finally:
            self._nowait = False
            if not db.is_closed():  # a reconnect inside the block set them again
                try:
                    for name, value in saved:
                        execute(f"PRAGMA {name} = {int(value)}")
                except Exception as exc:  # noqa: BLE001 - never raise once the block has run
                    log.warning("restoring the settings of %s failed (%s); reconnecting",
                                self.url, _describe(exc))  # fmt: skip
                    self._discard_connection()  # a new connection has them (open_database)

    def _statements(self, exact_is_ci: bool) -> _Statements:
        """The write statements, rendered once (peewee's query builder costs more than SQLite)."""
        cached = self._statement_cache.get(exact_is_ci)
        if cached is None:
            cached = self._statement_cache[exact_is_ci] = _Statements.render(
                self._db, self.rooms_table, self.members_table, exact_is_ci
            )
        return cached

    def _mysql_columns_are_ci(self) -> bool | None:
        """MySQL: True when every key column has a case-insensitive collation (None: no tables)."""
        rows = self._db.execute_sql(
            "SELECT TABLE_NAME, COLUMN_NAME, COLLATION_NAME FROM information_schema.COLUMNS "
            "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME IN (%s, %s)",
            (self.rooms_table, self.members_table),
        ).fetchall()
        collations = {(str(t), str(c).lower()): str(k or "") for t, c, k in rows}
        wanted = [(self.rooms_table, c) for c in ROOM_UNIQUE] + [
            (self.members_table, c) for c in MEMBER_UNIQUE
        ]
        if not all(key in collations for key in wanted):
            return None
        return all(collations[key].lower().endswith("_ci") for key in wanted)


@dataclass(frozen=True, slots=True)
class _Statements:
    """Parametrized SQL for the writes, for one database and pair of tables.

    "ci" conditions compare ignoring case: ``lower(col) = lower(?)`` (the form the expression
    indexes of :func:`~.models.extra_indexes` serve), or plain ``col = ?`` where the collation
    already ignores case. Member conditions name ``room`` first, as the index does.
    """

    room_exact: str  # (name, domain) -> ids
    room_ci: str  # (name, domain) -> ids
    room_update: str  # (flag, id)
    room_insert: str  # (name, domain, flag)
    room_delete: str  # (name, domain)
    room_members_delete: str  # (room uri,)
    member_exact: str  # (username, domain, room) -> ids
    member_ci: str  # (room, username, domain) -> ids
    member_update: str  # (flag, id)
    member_insert: str  # (username, domain, room, flag)
    member_delete: str  # (room, username, domain)

    @classmethod
    def render(
        cls, db: peewee.Database, rooms_table: str, members_table: str, exact_is_ci: bool
    ) -> _Statements:
        left, right = db.quote[0], db.quote[-1]
        p = db.param

        def q(name: str) -> str:
            return f"{left}{name}{right}"

        def ci(column: str) -> str:
            return f"{q(column)} = {p}" if exact_is_ci else f"lower({q(column)}) = lower({p})"

        rooms, members = q(rooms_table), q(members_table)
        room_ci = f"{ci('name')} AND {ci('domain')}"
        member_ci = f"{ci('room')} AND {ci('username')} AND {ci('domain')}"
        return cls(
            room_exact=f"SELECT id FROM {rooms} WHERE name = {p} AND domain = {p}",
            room_ci=f"SELECT id FROM {rooms} WHERE {room_ci} ORDER BY id",
            room_update=f"UPDATE {rooms} SET flag = {p} WHERE id = {p}",
            room_insert=f"INSERT INTO {rooms} (name, domain, flag) VALUES ({p}, {p}, {p})",
            room_delete=f"DELETE FROM {rooms} WHERE {room_ci}",
            room_members_delete=f"DELETE FROM {members} WHERE {ci('room')}",
            member_exact=(
                f"SELECT id FROM {members} WHERE username = {p} AND domain = {p} AND room = {p}"
            ),
            member_ci=f"SELECT id FROM {members} WHERE {member_ci} ORDER BY id",
            member_update=f"UPDATE {members} SET flag = {p} WHERE id = {p}",
            member_insert=(
                f"INSERT INTO {members} (username, domain, room, flag) VALUES ({p}, {p}, {p}, {p})"
            ),
            member_delete=f"DELETE FROM {members} WHERE {member_ci}",
        )


def _check_flags(flags: object) -> None:
    if not isinstance(flags, int) or isinstance(flags, bool) or not 0 <= flags < 2**31:
        raise StoreError(f"flags {flags!r} are not a non-negative integer")


def _unique_members(room_key: str, members: list[Member]) -> tuple[Member, ...]:
    """The members in order, dropping rows whose URI differs only in case from an earlier one."""
    if len(members) < 2 or len({member.uri.lower() for member in members}) == len(members):
        return tuple(members)
    seen: set[str] = set()
    unique: list[Member] = []
    for member in members:
        key = member.uri.lower()
        if key in seen:
            log.warning("room %s: skipping duplicate member row %s", room_key, member.uri)
            continue
        seen.add(key)
        unique.append(member)
    return tuple(unique)
