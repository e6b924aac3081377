"""``db_url`` parsing: a peewee database URL becomes a configured peewee :class:`~peewee.Database`.

Accepted forms (spec §8, §11)::

    sqlite:///relative/path.db      sqlite:////absolute/path.db      sqlite:///:memory:
    postgresql://user:password@host:port/database      (also postgres://)
    mysql://user:password@host:port/database            (OpenSER's mysql://openser:openserrw@localhost/openser)

Query-string parameters are passed to the driver (``?connect_timeout=10``), as
:mod:`playhouse.db_url` does; user names and passwords may be percent-encoded.

Every database is opened with ``thread_safe=False``: the store uses it from one thread at a
time, but not always the same thread (Trio's worker-thread cache), so the connection must not be
thread-local. SQLite is opened in WAL mode with ``synchronous=FULL`` (a commit is on disk before
it returns; the store's commits on the event loop's thread use ``NORMAL`` and have the WAL
flushed by a helper process before they count as durable, see :mod:`.inline`). Every engine gets a lock timeout (``db_timeout``, see :func:`open_database`), so a
statement waiting for a lock another connection holds fails after that long and its transaction
rolls back, instead of hanging the writer thread.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import peewee
from playhouse import db_url as pw_db_url

Engine = Literal["sqlite", "postgresql", "mysql"]

_SCHEMES: dict[str, Engine] = {
    "sqlite": "sqlite",
    "postgres": "postgresql",
    "postgresql": "postgresql",
    "mysql": "mysql",
}

#: Seconds a statement waits for a lock held by another connection before it fails (the
#: default of ``db_timeout``).
LOCK_TIMEOUT = 5.0
#: Seconds a PostgreSQL or MySQL connection attempt may take.
CONNECT_TIMEOUT = 5
#: Seconds a MySQL socket read or write may block (a half-dead server must not hang the writer).
MYSQL_IO_TIMEOUT = 30


#: Query options a SQLite URL may carry: ``sqlite3.connect``'s keyword arguments.
_SQLITE_OPTIONS = frozenset({
    "timeout", "detect_types", "isolation_level", "check_same_thread", "cached_statements", "uri",
})


@dataclass(frozen=True, slots=True)
class DatabaseURL:
    """A parsed ``db_url``.

    ``engine`` is the database family, ``database`` the file name (SQLite) or database name,
    ``params`` the keyword arguments for the driver's ``connect`` (host, port, user, password and
    query-string options). ``redacted`` is the URL with the password replaced by ``***``, fit
    for logs and error messages.
    """

    engine: Engine
    database: str
    params: dict[str, Any] = field(default_factory=dict)
    redacted: str = ""

    @classmethod
    def parse(cls, url: str) -> DatabaseURL:
        """Parse ``url``; raise :class:`ValueError` with a readable message when it is unusable."""
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        engine = _SCHEMES.get(scheme)
        if engine is None:
            raise ValueError(
                f"unsupported database URL scheme {parts.scheme or '(none)'!r} in "
                f"{redact(url)!r}; use sqlite:///path, postgresql://… or mysql://…"
            )
        # playhouse.db_url does the splitting; we choose the class and the driver options.
        try:
            params: dict[str, Any] = pw_db_url.parse(
                url.replace(parts.scheme + ":", scheme + ":", 1),
                unquote_password=True,
                unquote_user=True,
            )
        except ValueError as exc:  # urllib's: "Port out of range 0-65535", …
            raise ValueError(f"{redact(url)!r}: {exc}") from None
        database = str(params.pop("database", "") or "")
        if "passwd" in params:  # playhouse spells it the MySQLdb way; PyMySQL wants "password"
            params["password"] = params.pop("passwd")
        if engine == "sqlite":
            if parts.netloc:
                raise ValueError(
                    f"{redact(url)!r}: a SQLite URL has no host; write sqlite:///relative.db "
                    "or sqlite:////absolute/path.db"
                )
            database = database or ":memory:"
            unknown = sorted(set(params) - _SQLITE_OPTIONS)
            if unknown:  # sqlite3.connect() would refuse it later, as a TypeError
                raise ValueError(
                    f"{redact(url)!r}: unknown SQLite option {unknown[0]!r}; a SQLite URL takes "
                    f"{', '.join(sorted(_SQLITE_OPTIONS))} (with uri=true, a file: name carries "
                    "SQLite's own ?mode=… options)"
                )
        elif not database:
            raise ValueError(
                f"{redact(url)!r} names no database; write {scheme}://user@host/database"
            )
        return cls(engine, database, params, redact(url))


def redact(url: str) -> str:
    """``url`` with its password (if any) replaced by ``***``."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        netloc = parts.netloc
        userinfo, _, hostport = netloc.rpartition("@")
        user = userinfo.split(":", 1)[0]
        return urlunsplit(parts._replace(netloc=f"{user}:***@{hostport}"))
    except ValueError:
        return "<unparsable database URL>"


def open_database(url: DatabaseURL, *, lock_timeout: float = LOCK_TIMEOUT) -> peewee.Database:
    """A peewee database for ``url``, not yet connected (peewee connects on first use).

    ``lock_timeout`` (seconds) bounds how long a statement waits for a lock another connection
    holds; then it fails with the driver's error and the transaction rolls back. SQLite: the
    busy timeout (a ``?timeout=`` in the URL wins). PostgreSQL: ``lock_timeout``. MySQL and
    MariaDB: ``lock_wait_timeout`` (table and metadata locks) and ``innodb_lock_wait_timeout``
    (row locks), whole seconds, at least 1.
    """
    params = dict(url.params)
    if url.engine == "sqlite":
        timeout = float(params.pop("timeout", lock_timeout))
        pragmas = [
            ("journal_mode", "wal"),
            ("synchronous", "full"),
            ("busy_timeout", int(timeout * 1000)),
        ]
        params.setdefault("check_same_thread", False)
        return peewee.SqliteDatabase(
            url.database,
            pragmas=pragmas,
            timeout=timeout,
            lock_type="IMMEDIATE",  # take the write lock at BEGIN: no deadlock on upgrade
            thread_safe=False,
            **params,
        )
    if url.engine == "postgresql":
        params.setdefault("connect_timeout", CONNECT_TIMEOUT)
        params.setdefault("application_name", "imc-actors")
        milliseconds = max(1, round(lock_timeout * 1000))
        return _PostgresqlDatabase(
            url.database,
            thread_safe=False,
            session_sql=(f"SET lock_timeout = {milliseconds}",),
            **params,
        )
    params.setdefault("connect_timeout", CONNECT_TIMEOUT)
    params.setdefault("read_timeout", MYSQL_IO_TIMEOUT)
    params.setdefault("write_timeout", MYSQL_IO_TIMEOUT)
    seconds = max(1, math.ceil(lock_timeout))
    return _MySQLDatabase(
        url.database,
        thread_safe=False,
        session_sql=(
            f"SET SESSION lock_wait_timeout = {seconds}",
            f"SET SESSION innodb_lock_wait_timeout = {seconds}",
        ),
        **params,
    )


class _SessionSettings(peewee.Database):
    """Runs ``session_sql`` on every new connection (peewee's connection hook), so a reconnect
    gets the same settings."""

    def __init__(self, database: str, *, session_sql: tuple[str, ...] = (), **kwargs: Any) -> None:
        self.session_sql = session_sql
        super().__init__(database, **kwargs)

    def _initialize_connection(self, conn: Any) -> None:
        super()._initialize_connection(conn)
        cursor = conn.cursor()
        try:
            for sql in self.session_sql:
                cursor.execute(sql)
        finally:
            cursor.close()


class _PostgresqlDatabase(_SessionSettings, peewee.PostgresqlDatabase):
    pass


class _MySQLDatabase(_SessionSettings, peewee.MySQLDatabase):
    pass
