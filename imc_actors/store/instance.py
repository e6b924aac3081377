"""Who may serve a database at once: one process without a node name, or any number of nodes.

A conference without ``node`` keeps every room in its own memory and trusts that nobody
else writes them; a second such process on the same database (two ``serve`` on one SQLite
file, say) would split each room in two without a word, each answering from its own member
list. So a conference holds a :class:`ServingLock` while it runs: **exclusive** without a
node name, **shared** with one (the nodes of a cluster coordinate through their leases,
:mod:`imc_actors.store.leases`, and may run side by side, but not beside a process that takes
no leases). A lock that is taken refuses startup with :class:`DatabaseInUse`, one line saying
who holds it.

How each engine holds it, for as long as the conference runs (a process that dies, even by
``kill -9``, lets it go at once):

- SQLite: ``flock`` on a file beside the database, ``<file>.lock`` (``<file>.<rooms_table>.lock``
  with other tables than the default), which names the holder's process id. An in-memory
  database is one per process and needs none.
- PostgreSQL: a session advisory lock (``pg_try_advisory_lock`` / ``_shared``) on a
  connection of its own, keyed by the rooms table.
- MySQL and MariaDB have no shared named lock: a process without a node name holds
  ``GET_LOCK`` on the rooms table's name and each node one on its own name; each side takes
  its own lock first (a node also puts its name in the node table) and then looks for the
  other's, so two starting at once see each other.

:meth:`ServingLock.check` (every :data:`CHECK_INTERVAL` seconds) keeps a server's connection
alive (MySQL drops idle ones after ``wait_timeout``) and takes the lock again after the
connection was lost; when another process took it meanwhile it raises :class:`LockLost`, and
the conference stops (two would serve every room).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import logging
import os
import zlib
from typing import Any
from urllib.parse import unquote, urlsplit

import peewee

from .repository import StoreError
from .urls import DatabaseURL, open_database

__all__ = ["CHECK_INTERVAL", "DatabaseInUse", "LockLost", "ServingLock", "serving_lock", "sqlite_file"]

log = logging.getLogger("imc_actors.store")

#: Seconds between :meth:`ServingLock.check` calls (a server database's lock connection).
CHECK_INTERVAL = 10.0
#: PostgreSQL advisory locks take two 32-bit keys: this one ("IMCA") and the rooms table's CRC.
_PG_CLASS = 0x494D4341
#: Tables the default configuration uses (its SQLite lock file is just ``<file>.lock``).
_DEFAULT_ROOMS_TABLE = "imc_rooms"


class DatabaseInUse(StoreError):
    """Another process serves the same database in a way this one cannot share it with.
    ``holder`` says who (the message without the advice that follows it)."""

    def __init__(self, message: str, holder: str | None = None) -> None:
        super().__init__(message)
        self.holder = holder if holder is not None else message


class LockLost(DatabaseInUse):
    """This process's lock was lost with its connection (a database restart, a killed
    session) and another process took it meanwhile: two now serve the database, and this
    one must stop (raised out of the conference; ``serve`` exits 1 with one line)."""


def serving_lock(
    url: DatabaseURL, rooms_table: str, node: str | None, node_table: str = "imc_nodes"
) -> ServingLock | None:
    """The lock a conference on ``url`` must hold, or None when none is needed (an in-memory
    SQLite database)."""
    if url.engine == "sqlite" and sqlite_file(url) is None:
        return None
    return ServingLock(url, rooms_table, node, node_table)


def sqlite_file(url: DatabaseURL) -> str | None:
    """The file an SQLite ``url`` opens, or None for an in-memory database. With ``?uri=true``
    a ``file:`` name is an SQLite URI (``file:/srv/imc.db``, ``file::memory:``): its path is the
    file, which another server may open as ``sqlite:////srv/imc.db``."""
    name = url.database
    if url.params.get("uri") and name.startswith("file:"):
        parts = urlsplit(name)
        if "mode=memory" in parts.query:
            return None
        name = unquote(parts.path)
    if name in ("", ":memory:") or "mode=memory" in name:
        return None
    return name


class ServingLock:
    """Held from :meth:`acquire` until :meth:`release` (blocking calls: run them in a thread).

    ``node`` None takes the lock exclusively; a node name takes it shared."""

    def __init__(
        self, url: DatabaseURL, rooms_table: str, node: str | None, node_table: str = "imc_nodes"
    ) -> None:
        self._url = url
        self._table = rooms_table.lower()
        self._node = node
        self._node_table = node_table
        self._fd: int | None = None  # SQLite: the lock file, open and flocked
        self._db: peewee.Database | None = None  # a server: the connection holding the lock
        self._lost = False  # the lock could not be taken again (logged once until it is)
        self._wanted = False  # between acquire and release
        #: :meth:`check` calls that found the lock held or took it again.
        self.checks = 0
        #: The server's id of the session holding the lock (PostgreSQL's backend pid, MySQL's
        #: connection id), as ``pg_stat_activity`` or ``SHOW PROCESSLIST`` show it; or None.
        self.session: int | None = None

    @property
    def path(self) -> str:
        """SQLite: the lock file's path (beside the file a symlink to the database points at:
        two servers that open one file by two names share one lock)."""
        database = sqlite_file(self._url)
        if database is not None and os.path.islink(database):
            database = os.path.realpath(database)
        if self._table == _DEFAULT_ROOMS_TABLE:
            return f"{database}.lock"
        return f"{database}.{self._table}.lock"

    @property
    def on_server(self) -> bool:
        """A server database's lock, held by a connection :meth:`check` keeps alive."""
        return self._url.engine != "sqlite"

    def acquire(self) -> None:
        """Take the lock, or raise :class:`DatabaseInUse` (held elsewhere) or
        :class:`StoreError` (it cannot be taken: a lock file that cannot be made, a database
        that cannot be reached)."""
        if not self.on_server:
            self._acquire_file()
        else:
            self._db = open_database(self._url)
            try:
                self._take()
            except BaseException:
                self._close_db()
                raise
        self._wanted = True

    def release(self) -> None:
        """Let the lock go (closing its file or connection does)."""
        self._wanted = False
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._close_db()

    def check(self) -> None:
        """Keep a server's lock connection alive; after it was lost, take the lock again.
        Raises :class:`LockLost` when another process took it meanwhile (this one must stop
        serving); a database that cannot be reached is logged (once) and tried again at the
        next check. Nothing to do for SQLite."""
        if not self._wanted or not self.on_server:
            return
        dropped: str | None = None  # why the connection was found dead, if it was
        if self._db is not None:
            try:
                self._db.execute_sql("SELECT 1")
                self.checks += 1
                return
            except (peewee.PeeweeException, OSError) as exc:
                self._close_db()
                dropped = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
        self._db = open_database(self._url)
        try:
            self._take()
        except DatabaseInUse as exc:
            self._close_db()
            self._wanted = False
            raise LockLost(
                "the database lock was lost with its connection, and meanwhile "
                f"{exc.holder}: stopping, so that no room is served twice",
                exc.holder,
            ) from None
        except StoreError as exc:  # the database is not back yet: the next check tries again
            self._close_db()
            if not self._lost:
                log.warning("the database lock's connection was lost; taking it again failed "
                            "(tried again every %g s): %s", CHECK_INTERVAL, exc)  # fmt: skip
            self._lost = True
        else:
            if self._lost:
                log.warning("the database lock is held again")
            elif dropped is not None:  # no other process took it in the meantime, this time
                log.warning("the database lock's connection was lost (%s); the lock is held "
                            "again on a new connection", dropped)  # fmt: skip
            self._lost = False
            self.checks += 1

    # -- SQLite ---------------------------------------------------------------------------

    def _acquire_file(self) -> None:
        path = self.path
        writable = True
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except PermissionError:  # there already, another user's: reading is enough to lock
            writable = False
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError as exc:
                raise StoreError(f"cannot open the lock file {path}: {exc.strerror}") from None
        except OSError as exc:
            raise StoreError(f"cannot open the lock file {path}: {exc.strerror}") from None
        mode = fcntl.LOCK_EX if self._node is None else fcntl.LOCK_SH
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _read_pid(fd)
            exclusive_holder = self._node is not None or not _can_share(fd)
            os.close(fd)
            if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise StoreError(f"cannot lock {path}: {exc.strerror}") from None
            raise self._refusal(exclusive_holder, holder, f"{path} is locked") from None
        if self._node is None and writable:  # name the holder for whoever is refused
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        self._warn_of_hard_links()

    def _warn_of_hard_links(self) -> None:
        """A database file with several names (hard links; a symlink is no such name) gets a
        lock file, and from SQLite a WAL, per name: two servers started by two of its names
        would both serve it and corrupt it. Refusing would stop a server whose file a backup
        tool hard-linked (rsync ``--link-dest``), so this is a warning."""
        database = sqlite_file(self._url)
        try:
            links = os.stat(database).st_nlink if database is not None else 1
        except OSError:
            return
        if links > 1:
            log.warning(
                "%s has %d names (hard links): a server started on another of them would not "
                "see this one's lock, and SQLite would keep a second WAL for it (a corrupt "
                "database); start every server with one name (a symlink to it is fine)",
                database, links,
            )  # fmt: skip

    # -- PostgreSQL, MySQL ----------------------------------------------------------------

    def _take(self) -> None:
        assert self._db is not None
        try:
            if self._url.engine == "postgresql":
                self._take_postgresql()
                self.session = self._one("SELECT pg_backend_pid()")
            else:
                self._take_mysql()
                self.session = self._one("SELECT CONNECTION_ID()")
        except (peewee.PeeweeException, OSError) as exc:
            raise StoreError(f"taking the database lock on {self._url.redacted} failed: {exc}") from None

    def _one(self, sql: str, params: tuple[Any, ...] = ()) -> Any:
        assert self._db is not None
        row = self._db.execute_sql(sql, params).fetchone()
        return row[0] if row else None

    def _take_postgresql(self) -> None:
        key = postgresql_key(self._one("SELECT current_schema()") or "", self._table)
        shared = "_shared" if self._node is not None else ""
        if self._one(f"SELECT pg_try_advisory_lock{shared}(%s, %s)", key):
            return
        exclusive_holder = self._node is not None or not self._one(
            "SELECT pg_try_advisory_lock_shared(%s, %s)", key
        )
        holder = self._postgresql_holder(key) if exclusive_holder else None
        raise self._refusal(exclusive_holder, None, "its advisory lock is held", holder)

    def _postgresql_holder(self, key: tuple[int, int]) -> str | None:
        """The session holding the exclusive advisory lock ``key``, as pg_stat_activity shows
        it (``PostgreSQL session <pid> from <address>``), or None when it cannot be seen."""
        try:
            row = self._db.execute_sql(  # type: ignore[union-attr]
                "SELECT a.pid, host(a.client_addr) FROM pg_locks l JOIN pg_stat_activity a "
                "ON a.pid = l.pid WHERE l.locktype = 'advisory' AND l.granted "
                "AND l.mode = 'ExclusiveLock' AND l.objsubid = 2 "
                "AND l.classid::bigint = %s AND l.objid::bigint = %s "
                "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())",
                (key[0] & 0xFFFFFFFF, key[1] & 0xFFFFFFFF),
            ).fetchone()
        except peewee.DatabaseError:
            return None
        if not row:
            return None
        return f"PostgreSQL session {row[0]}" + (f" from {row[1]}" if row[1] else "")

    def _mysql_holder(self, name: str) -> str | None:
        """The connection holding the named lock ``name`` (``MySQL connection <id> from
        <host:port>``, as SHOW PROCESSLIST shows it), or None when it cannot be seen."""
        try:
            connection = self._one("SELECT IS_USED_LOCK(%s)", (name,))
            if connection is None:
                return None
            host = self._one(
                "SELECT HOST FROM information_schema.PROCESSLIST WHERE ID = %s", (connection,)
            )
        except peewee.DatabaseError:
            return None
        return f"MySQL connection {connection}" + (f" from {host}" if host else "")

    def _take_mysql(self) -> None:
        alone = _mysql_name(self._url.database, self._table, None)
        if self._node is None:
            if not self._one("SELECT GET_LOCK(%s, 0)", (alone,)):
                raise self._refusal(True, None, "its named lock is held", self._mysql_holder(alone))
            if self._mysql_nodes_running():
                raise self._refusal(False, None, "nodes hold their named locks")
            return
        mine = _mysql_name(self._url.database, self._table, self._node)
        if not self._one("SELECT GET_LOCK(%s, 0)", (mine,)):
            raise DatabaseInUse(
                f"node {self._node!r} already runs on {self._url.redacted} (its named lock "
                "is held): give each node its own --node"
            )
        registered = self._mysql_register_node()
        if not self._one("SELECT IS_FREE_LOCK(%s)", (alone,)):
            if registered:  # no trace of a node that never ran
                self._db.execute_sql(  # type: ignore[union-attr]
                    f"DELETE FROM {self._node_table} WHERE name = %s AND heartbeat = 0",
                    (self._node,),
                )
            raise self._refusal(True, None, "its named lock is held", self._mysql_holder(alone))

    def _mysql_register_node(self) -> bool:
        """Put this node's name in the node table (as a retired node, heartbeat 0, unless it
        is there already) before looking for a process without a node name: one that takes
        its lock afterwards then finds the name, and the name's lock held. A node's first
        heartbeat comes later in its startup, and a server that started before it found no
        name to look at: both ran. True when the name was new."""
        assert self._db is not None
        try:
            cursor = self._db.execute_sql(
                f"INSERT IGNORE INTO {self._node_table} (name, addresses, heartbeat) "
                "VALUES (%s, '', 0)",
                (self._node,),
            )
        except peewee.DatabaseError:  # no node table (an embedder's own schema): as before
            return False
        return bool(cursor.rowcount)

    def _mysql_nodes_running(self) -> bool:
        try:
            rows = self._db.execute_sql(f"SELECT name FROM {self._node_table}").fetchall()  # type: ignore[union-attr]
        except peewee.DatabaseError:  # no node table yet: no node ever ran here
            return False
        return any(
            not self._one("SELECT IS_FREE_LOCK(%s)", (_mysql_name(self._url.database, self._table, n),))
            for (n,) in rows
        )

    def _refusal(
        self, exclusive_holder: bool, pid: int | None, how: str, session: str | None = None
    ) -> DatabaseInUse:
        """The refusal; ``pid`` (SQLite) or ``session`` (the database server's own name for
        the holder's connection) name who holds the lock."""
        where = self._url.redacted
        by = f" (pid {pid})" if pid else f" ({session})" if session else ""
        if pid == os.getpid():
            by = " (this one, in another conference)"
        if exclusive_holder and self._node is None:
            holder = f"another imc-actors process{by} serves {where} without a node name ({how})"
            advice = "stop it first; two would split every room between them"
        elif exclusive_holder:
            holder = f"an imc-actors process{by} serves {where} without a node name ({how})"
            advice = ("nodes cannot share the database with it; stop it, or start it with "
                      "--node NAME too")  # fmt: skip
        else:
            holder = f"nodes of a cluster serve {where} ({how})"
            advice = "a process without a node name would split their rooms; start this one with --node NAME as well"
        return DatabaseInUse(f"{holder}: {advice}", holder)

    def _close_db(self) -> None:
        if self._db is not None:
            db, self._db = self._db, None
            try:
                db.close()
            except Exception:  # noqa: BLE001 - a dead connection is gone either way
                pass


def _read_pid(fd: int) -> int | None:
    """The pid the lock file names, when that process is alive (a holder that could not write
    the file leaves an earlier holder's pid in it)."""
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    if not text.isdigit():
        return None
    try:
        os.kill(int(text), 0)
    except ProcessLookupError:
        return None
    except OSError:  # alive, another user's
        pass
    return int(text)


def _can_share(fd: int) -> bool:
    """Whether a shared lock on ``fd`` is free now (only nodes hold it); let go at once."""
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return False
    fcntl.flock(fd, fcntl.LOCK_UN)
    return True


def postgresql_key(schema: str, table: str) -> tuple[int, int]:
    """The two keys of the PostgreSQL advisory lock on the rooms table ``table`` in
    ``schema`` (the lock connection's ``current_schema()``: same-named tables in two schemas
    are two deployments)."""
    return _PG_CLASS, _signed32(zlib.crc32(f"{schema}.{table.lower()}".encode()))


def _signed32(value: int) -> int:
    return value - (1 << 32) if value >= 1 << 31 else value


def _mysql_name(database: str, table: str, node: str | None) -> str:
    """A MySQL lock name (at most 64 characters, server-wide): the database and rooms table,
    and the node name for a node's own lock."""
    digest = hashlib.sha1(f"{database}\0{table}\0{node or ''}".encode()).hexdigest()
    return f"imc-actors:{'node' if node is not None else 'alone'}:{digest}"
