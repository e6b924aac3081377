"""Room leases: which node serves a room, under which epoch, until when (issue 13).

One row of the lease table (:func:`~imc_actors.store.models.bind_models`, ``lease_table``) per
room: the owner ``node``, an ``epoch`` that every acquisition raises by one, and ``expires``
(milliseconds since the epoch). :class:`LeaseTable` holds the SQL; the
:class:`~imc_actors.store.repository.Repository` runs it in its transactions:

- :meth:`LeaseTable.acquire`: a free room (no row) is taken with epoch 1; a held one only once
  its lease has expired, or by its own owner, and then with epoch + 1. Atomic under
  concurrency on every engine: an insert that ignores a conflict, then one conditional
  ``UPDATE`` (a row lock: of two racing acquirers exactly one changes the row, the other
  re-reads it after the first committed and finds it taken);
- :meth:`LeaseTable.renew`: every lease of a node, one statement;
- :meth:`LeaseTable.release`: a clean shutdown expires them at once;
- :meth:`LeaseTable.owner_of`: who serves a room now;
- :meth:`LeaseTable.fence`: inside a write transaction, the rooms it writes for that this node
  does not hold with the epoch it acquired (a locking read, so a takeover either committed
  before it, and is seen, or waits until the write transaction has ended).

**The clock.** Times are the node's wall clock (``time.time``, injectable for tests), not the
database's: SQLite has no server clock, and safety does not depend on any clock. A write is
fenced by (node, epoch) alone, which only an acquisition changes, so a node whose lease was
taken over can never write for that room again, however wrong any clock is. The clocks decide
only *when* a takeover may happen: a node's lease counts as expired for another node once that
node's clock passes ``expires``. Assumption: the nodes' clocks agree to well within
``lease_ttl`` (NTP keeps them within milliseconds); a node whose clock runs ahead by ``d``
takes leases over ``d`` early, and while the old owner still serves from memory (it renews
every ``lease_ttl / 3``) its reads may be stale for up to that long, never its writes.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import peewee

from ..imc.effects import (
    BanDelete,
    BanSet,
    HistoryAppend,
    LimitSet,
    MemberDelete,
    MemberUpsert,
    RoomDelete,
    RoomInfoSet,
    RoomUpsert,
)
from ..imc.state import member_key

__all__ = ["Clock", "Lease", "LeaseTable", "millis", "room_of", "rooms_of", "wall_clock"]

#: The wall clock: seconds since the epoch (``time.time``; tests pass their own).
Clock = Callable[[], float]

#: Rooms per ``IN (...)`` list (well below every engine's parameter limit).
_CHUNK = 500


@dataclass(frozen=True, slots=True)
class Lease:
    """One room's lease as stored: ``expires`` in seconds since the epoch."""

    room: str
    node: str
    epoch: int
    expires: float

    def live(self, now: float) -> bool:
        """True while the lease has not expired at ``now`` (seconds since the epoch)."""
        return now < self.expires


def millis(seconds: float) -> int:
    """Seconds since the epoch -> the table's milliseconds (rounded down)."""
    return math.floor(seconds * 1000)


def room_of(write: object) -> str | None:
    """The room key (``name@domain``, lower case) a write changes, or None for writes that
    belong to no room (pending notices, bindings: not fenced)."""
    if isinstance(write, RoomUpsert | RoomDelete):
        return f"{write.name}@{write.domain}".lower()
    if isinstance(
        write, MemberUpsert | MemberDelete | BanSet | BanDelete | LimitSet | HistoryAppend | RoomInfoSet
    ):
        return member_key(write.room)
    return None


def rooms_of(writes: Iterable[object]) -> set[str]:
    """Every room key that ``writes`` change."""
    rooms = {room_of(write) for write in writes}
    rooms.discard(None)
    return rooms  # type: ignore[return-value]


class LeaseTable:
    """The lease statements for one table in one database (rendered once).

    No method opens a transaction: the caller runs :meth:`acquire` in one of its own (it is
    two statements) and :meth:`fence` inside the write transaction it guards.
    """

    def __init__(self, db: peewee.Database, table: str) -> None:
        left, right = db.quote[0], db.quote[-1]
        p = db.param
        t = f"{left}{table}{right}"
        engine = (
            "mysql" if isinstance(db, peewee.MySQLDatabase)
            else "postgresql" if isinstance(db, peewee.PostgresqlDatabase) else "sqlite"
        )  # fmt: skip
        columns = f"{t} (room, node, epoch, expires) VALUES ({p}, {p}, 1, {p})"
        self._db = db
        self._p = p
        self._t = t
        self._insert = {
            "sqlite": f"INSERT OR IGNORE INTO {columns}",
            "postgresql": f"INSERT INTO {columns} ON CONFLICT (room) DO NOTHING",
            "mysql": f"INSERT IGNORE INTO {columns}",
        }[engine]
        # Taken over once expired; re-acquired by its owner at any time (a restarted node
        # fences whatever an earlier process of the same name may still try to write).
        self._take = (
            f"UPDATE {t} SET node = {p}, epoch = epoch + 1, expires = {p} "
            f"WHERE room = {p} AND (expires <= {p} OR node = {p})"
        )
        self._epoch = f"SELECT epoch FROM {t} WHERE room = {p}"
        self._renew = f"UPDATE {t} SET expires = {p} WHERE node = {p}"
        self._release = f"UPDATE {t} SET expires = 0 WHERE node = {p}"
        self._owner = f"SELECT room, node, epoch, expires FROM {t} WHERE room = {p}"
        self._held = f"SELECT room, epoch FROM {t} WHERE node = {p}"
        self._live = f"SELECT room, node FROM {t} WHERE expires > {p}"
        self._forget = f"DELETE FROM {t} WHERE node = {p} AND room = {p}"
        # A locking read: it sees the latest committed row (also under MySQL's REPEATABLE
        # READ) and keeps a takeover waiting until this transaction ends. SQLite needs none:
        # the store's transactions take the database's write lock at BEGIN (IMMEDIATE).
        self._lock = {"sqlite": "", "postgresql": " FOR SHARE", "mysql": " LOCK IN SHARE MODE"}[
            engine
        ]

    def _execute(self, sql: str, params: tuple[object, ...]) -> Any:
        return self._db.execute_sql(sql, params)

    def acquire(self, room: str, node: str, ttl: float, now: float) -> int | None:
        """Take ``room`` for ``node`` until ``now + ttl``; its new epoch, or None when another
        node holds an unexpired lease. Run it in a transaction of its own."""
        expires = millis(now + ttl)
        if self._execute(self._insert, (room, node, expires)).rowcount == 1:
            return 1
        taken = self._execute(self._take, (node, expires, room, millis(now), node)).rowcount
        if taken != 1:
            return None
        row = self._execute(self._epoch, (room,)).fetchone()
        return int(row[0])

    def renew(self, node: str, ttl: float, now: float) -> int:
        """Extend every lease ``node`` holds to ``now + ttl``; how many there are."""
        return int(self._execute(self._renew, (millis(now + ttl), node)).rowcount)

    def release(self, node: str, rooms: Iterable[str] | None = None) -> int:
        """Expire ``node``'s leases (of ``rooms``, or all) at once; how many there were."""
        if rooms is None:
            return int(self._execute(self._release, (node,)).rowcount)
        count = 0
        for chunk in _chunks(rooms):
            marks = ", ".join([self._p] * len(chunk))
            sql = f"{self._release} AND room IN ({marks})"
            count += int(self._execute(sql, (node, *chunk)).rowcount)
        return count

    def epochs_of(self, node: str) -> dict[str, int]:
        """Room key -> epoch of every lease ``node`` holds in the table (expired or not)."""
        rows = self._execute(self._held, (node,)).fetchall()
        return {str(room).lower(): int(epoch) for room, epoch in rows}

    def live_owners(self, now: float) -> dict[str, str]:
        """Room key -> node of every lease that has not expired at ``now`` (one scan)."""
        rows = self._execute(self._live, (millis(now),)).fetchall()
        return {str(room).lower(): str(node) for room, node in rows}

    def orphans(self, node: str, node_table: str, now: float, stale: float, limit: int) -> list[str]:
        """Rooms of other nodes whose lease has expired at ``now`` and whose node's last
        heartbeat is at or before ``stale`` (or that never heartbeat)."""
        left, right = self._db.quote[0], self._db.quote[-1]
        p = self._p
        sql = (
            f"SELECT l.room FROM {self._t} l LEFT JOIN {left}{node_table}{right} n "
            f"ON n.name = l.node WHERE l.expires <= {p} AND l.node <> {p} "
            f"AND (n.heartbeat IS NULL OR n.heartbeat <= {p}) ORDER BY l.room LIMIT {int(limit)}"
        )
        rows = self._execute(sql, (millis(now), node, millis(stale))).fetchall()
        return [str(row[0]) for row in rows]

    def owner_of(self, room: str) -> Lease | None:
        """The stored lease of ``room`` (expired or not; see :meth:`Lease.live`), or None."""
        row = self._execute(self._owner, (room,)).fetchone()
        if row is None:
            return None
        key, node, epoch, expires = row
        return Lease(str(key), str(node), int(epoch), int(expires) / 1000)

    def fence(
        self, node: str, held: Mapping[str, int | None], ttl: float, now: float
    ) -> tuple[set[str], dict[str, int]]:
        """Check, inside the caller's write transaction, that ``node`` holds every room of
        ``held`` with the epoch given there.

        A room given with None (never held by this process) that has no lease row at all is
        new: its first lease is taken here, in the same transaction (epoch 1). Returns the
        rooms that fail the check (the caller rolls back) and the leases taken (the caller
        records them once the transaction has committed).
        """
        taken: dict[str, int] = {}
        expires = millis(now + ttl)
        for room, epoch in held.items():
            if epoch is None and self._execute(self._insert, (room, node, expires)).rowcount == 1:
                taken[room] = 1
        found: dict[str, tuple[str, int]] = {}
        for chunk in _chunks(held):
            marks = ", ".join([self._p] * len(chunk))
            sql = f"SELECT room, node, epoch FROM {self._t} WHERE room IN ({marks}){self._lock}"
            for key, owner, epoch in self._execute(sql, tuple(chunk)).fetchall():
                found[str(key).lower()] = (str(owner), int(epoch))
        fenced = {
            room for room, epoch in held.items()
            if found.get(room) != (node, epoch if epoch is not None else taken.get(room))
        }  # fmt: skip
        return fenced, taken

    def forget(self, node: str, room: str) -> None:
        """Delete ``node``'s lease of a destroyed room (a new room of that name starts over)."""
        self._execute(self._forget, (node, room))


def _chunks(rooms: Iterable[str]) -> Iterable[list[str]]:
    batch = list(rooms)
    for start in range(0, len(batch), _CHUNK):
        yield batch[start : start + _CHUNK]


def wall_clock() -> float:
    """The default :data:`Clock`."""
    return time.time()
