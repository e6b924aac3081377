"""Reads and writes of imc-actors' own tables: pending notices, registrar bindings, the bans
and member limits of rooms (moderation), the archive of chat lines and the rooms' topics.

Called by :class:`~imc_actors.store.repository.Repository` inside its transactions and its
reconnect-and-retry wrapper; every function here takes the bound models and runs plain
peewee queries. Each write is idempotent or harmless to replay (a replayed batch after a
lost connection must not duplicate anything that matters): a binding is replaced by
(AOR, contact), deletes by id or key. An archived line replayed after a lost connection may
be stored twice (under the next number): the archive is at least once, like the pending
notices.

The archive keeps about ``history_max`` lines per room: each :class:`HistoryAppend` numbers its
line (``seq``, one more than the room's last, which the repository remembers between batches)
and, every ``keep // 10`` lines, deletes the room's lines more than ``keep`` behind, so a room
has at most ``keep + keep // 10`` rows; :class:`HistoryExpire` drops lines by age.
"""

from __future__ import annotations

import datetime as dt
import functools
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import peewee

from ..imc.effects import BanDelete, BanSet, HistoryAppend, LimitSet, RoomInfoSet
from ..imc.history import HistoryLine
from ..imc.state import Ban, RoomInfo, RoomState
from .models import (
    MAX_ADDRESS,
    MAX_CALL_ID,
    MAX_CONTACT,
    MAX_CONTENT_TYPE,
    MAX_LENGTH,
    MAX_REASON,
    MAX_TOPIC,
    MAX_USER_AGENT,
    Models,
)
from .records import (
    Binding,
    BindingClear,
    BindingDelete,
    BindingExpire,
    BindingSet,
    HistoryExpire,
    PendingAdd,
    PendingDelete,
    PendingExpire,
    PendingRow,
    PendingTrim,
)

#: The records handled here (see :data:`~imc_actors.store.records.StoreWrite`).
OWN_WRITES = (
    PendingAdd,
    PendingDelete,
    PendingTrim,
    PendingExpire,
    BindingSet,
    BindingDelete,
    BindingClear,
    BindingExpire,
    # moderation: records of the room logic (imc.effects), kept in our own tables
    BanSet,
    BanDelete,
    LimitSet,
    HistoryAppend,
    HistoryExpire,
    RoomInfoSet,
)
OwnWrite = (
    PendingAdd
    | PendingDelete
    | PendingTrim
    | PendingExpire
    | BindingSet
    | BindingDelete
    | BindingClear
    | BindingExpire
    | BanSet
    | BanDelete
    | LimitSet
    | HistoryAppend
    | HistoryExpire
    | RoomInfoSet
)


class _Invalid(Exception):
    pass


def _key(member: str) -> tuple[str, str]:
    """``user@host`` -> (user, host), both lower case."""
    user, sep, host = member.lower().rpartition("@")
    if not sep or not user or not host:
        raise _Invalid(f"{member!r} is not user@host")
    return user, host


def _fits(value: str | None, limit: int, what: str) -> None:
    if value is not None and len(value) > limit:
        raise _Invalid(f"{what} is {len(value)} characters long; the column holds {limit}")


def validate(write: OwnWrite) -> None:
    """Raise the repository's StoreError when ``write`` cannot be stored as it is."""
    from .repository import StoreError

    try:
        if isinstance(write, PendingAdd):
            user, host = _key(write.member)
            _fits(user, MAX_LENGTH, "member user")
            _fits(host, MAX_LENGTH, "member domain")
            _fits(write.recipient, MAX_ADDRESS, "recipient")
            _fits(write.sender, MAX_ADDRESS, "sender")
            _fits(write.content_type, MAX_CONTENT_TYPE, "content type")
            _fits(write.in_reply_to, MAX_CALL_ID, "In-Reply-To")
        elif isinstance(write, PendingTrim):
            _key(write.member)
        elif isinstance(write, BindingSet):
            user, host = _key(write.aor)
            _fits(user, MAX_LENGTH, "AOR user")
            _fits(host, MAX_LENGTH, "AOR domain")
            _fits(write.contact, MAX_CONTACT, "contact")
            _fits(write.call_id, MAX_CALL_ID, "Call-ID")
            _fits(write.user_agent, MAX_USER_AGENT, "User-Agent")
        elif isinstance(write, BindingDelete | BindingClear):
            _key(write.aor)
        elif isinstance(write, BanSet | BanDelete | LimitSet):
            _validate_moderation(write)
        elif isinstance(write, HistoryAppend):
            _fits(write.room, MAX_LENGTH, "room")
            _fits(write.sender, MAX_ADDRESS, "sender")
            _fits(write.content_type, MAX_CONTENT_TYPE, "content type")
            if write.keep < 1:
                raise _Invalid(f"keep must be positive, not {write.keep}")
        elif isinstance(write, RoomInfoSet):
            _fits(write.room, MAX_LENGTH, "room")
            _fits(write.topic, MAX_TOPIC, "topic")
            _fits(write.topic_by, MAX_ADDRESS, "topic setter")
    except _Invalid as exc:
        raise StoreError(f"cannot store {type(write).__name__}: {exc}") from None


def _utc(epoch: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).replace(tzinfo=None, microsecond=0)


def _epoch(value: Any) -> float:
    if isinstance(value, str):  # SQLite hands DATETIME back as text
        value = dt.datetime.fromisoformat(value)
    return value.replace(tzinfo=dt.UTC).timestamp()


def apply(db: peewee.Database, models: Models, write: OwnWrite) -> None:
    """Carry out one write (inside the caller's transaction); the :data:`RUN_WRITES` go
    through :func:`apply_run` instead."""
    pending, location = models.pending, models.location
    if isinstance(write, HistoryExpire):
        models.history.delete().where(models.history.inc_time < int(write.before)).execute()
    elif isinstance(write, RoomInfoSet):
        info = models.room_info
        info.delete().where(info.room == write.room).execute()
        info.insert(
            room=write.room, topic=write.topic, topic_by=write.topic_by,
            topic_time=write.topic_time, created=write.created,
        ).execute()  # fmt: skip
    elif isinstance(write, PendingDelete):
        ids = list(write.ids)
        for start in range(0, len(ids), 500):
            pending.delete().where(pending.id.in_(ids[start : start + 500])).execute()
    elif isinstance(write, PendingTrim):
        user, host = _key(write.member)
        mine = (pending.username == user) & (pending.domain == host)
        if write.keep <= 0:
            pending.delete().where(mine).execute()
            return
        oldest_kept = (
            pending.select(pending.id).where(mine).order_by(pending.id.desc())
            .offset(write.keep - 1).limit(1).scalar()
        )  # fmt: skip
        if oldest_kept is not None:
            pending.delete().where(mine & (pending.id < oldest_kept)).execute()
    elif isinstance(write, PendingExpire):
        pending.delete().where(pending.exp_time <= int(write.now)).execute()
    elif isinstance(write, BindingSet):
        user, host = _key(write.aor)
        where = (location.username == user) & (location.domain == host)
        location.delete().where(where & (location.contact == write.contact)).execute()
        now = dt.datetime.now(dt.UTC).replace(tzinfo=None, microsecond=0)
        location.insert(
            ruid=_ruid(), username=user, domain=host, contact=write.contact,
            received=write.received, expires=_utc(write.expires), q=round(write.q, 2),
            callid=write.call_id, cseq=write.cseq, last_modified=now,
            user_agent=write.user_agent,
        ).execute()  # fmt: skip
    elif isinstance(write, BindingDelete):
        user, host = _key(write.aor)
        location.delete().where(
            (location.username == user) & (location.domain == host)
            & (location.contact == write.contact)
        ).execute()  # fmt: skip
    elif isinstance(write, BindingClear):
        user, host = _key(write.aor)
        location.delete().where((location.username == user) & (location.domain == host)).execute()
    elif isinstance(write, BindingExpire):
        location.delete().where(location.expires <= _utc(write.now)).execute()
    elif isinstance(write, BanSet | BanDelete | LimitSet):
        _apply_moderation(models, write)


def _ruid() -> str:
    import secrets

    return "imc-" + secrets.token_hex(12)


def pending_counts(models: Models) -> dict[str, int]:
    pending = models.pending
    counts: Counter[str] = Counter()
    query = pending.select(pending.username, pending.domain, peewee.fn.COUNT(pending.id)).group_by(
        pending.username, pending.domain
    )
    for user, host, count in query.tuples():
        counts[f"{user}@{host}".lower()] += int(count)
    return dict(counts)


def pending_count(models: Models, member: str) -> int:
    pending = models.pending
    user, host = _key(member)
    return int(pending.select().where((pending.username == user) & (pending.domain == host)).count())


def pending_total(models: Models) -> int:
    return int(models.pending.select().count())


def load_pending(models: Models, member: str, limit: int) -> list[PendingRow]:
    pending = models.pending
    user, host = _key(member)
    query = (
        pending.select(
            pending.id,
            pending.dst_addr,
            pending.src_addr,
            pending.body,
            pending.kind,
            pending.ctype,
            pending.callid,
            pending.inc_time,
            pending.exp_time,
        )  # fmt: skip
        .where((pending.username == user) & (pending.domain == host))
        .order_by(pending.id)
        .limit(limit)
    )
    return [
        PendingRow(
            int(row_id),
            recipient,
            sender,
            bytes(body),
            kind,
            ctype or None,
            callid or "",
            float(inc),
            float(exp),
        )  # fmt: skip
        for row_id, recipient, sender, body, kind, ctype, callid, inc, exp in query.tuples()
    ]


def load_bindings(
    db: peewee.Database, models: Models, now: float, since: float | None = None,
    aor: str | None = None,
) -> list[Binding]:
    """Unexpired bindings, oldest first; expired rows are deleted. With ``since`` (wall
    clock): only the rows written from a second before it on, and nothing is deleted. With
    ``aor`` (``user@host``): only that AOR's unexpired rows, nothing deleted."""
    location = models.location
    with db.atomic():
        query = location.select(
            location.username, location.domain, location.contact, location.expires,
            location.callid, location.cseq, location.user_agent, location.received, location.q,
        ).order_by(location.last_modified, location.id)  # fmt: skip
        if aor is not None:
            user, host = _key(aor)
            query = query.where(
                (location.username == user) & (location.domain == host)
                & (location.expires > _utc(now))
            )  # fmt: skip
        elif since is None:
            location.delete().where(location.expires <= _utc(now)).execute()
        else:  # last_modified has whole seconds: a second of overlap misses nothing
            query = query.where(
                (location.last_modified >= _utc(since - 1)) & (location.expires > _utc(now))
            )
        rows = list(query.tuples())
    return [
        Binding(
            f"{user}@{host}",
            contact,
            _epoch(expires),
            callid,
            int(cseq),
            user_agent or "",
            received,
            float(q),
        )  # fmt: skip
        for user, host, contact, expires, callid, cseq, user_agent, received, q in rows
    ]


# ---------------------------------------------------------------------- moderation
# Rows name their room as ``sip:name@domain`` lower case (rooms compare case-insensitively);
# a ban's username/domain are the ban key's (``*`` for a whole domain).


def _validate_moderation(write: BanSet | BanDelete | LimitSet) -> None:
    _fits(write.room, MAX_LENGTH, "room URI")
    if isinstance(write, BanSet | BanDelete):
        user, host = _key(write.pattern)
        _fits(user, MAX_LENGTH, "banned user")
        _fits(host, MAX_LENGTH, "banned domain")
    if isinstance(write, BanSet):
        _fits(write.reason, MAX_REASON, "ban reason")
        _fits(write.by, MAX_ADDRESS, "banned by")
    if isinstance(write, LimitSet) and write.max_members is not None:
        if not 0 < write.max_members < 2**31:
            raise _Invalid(f"member limit {write.max_members} is out of range")


def _apply_moderation(models: Models, write: BanSet | BanDelete | LimitSet) -> None:
    ban, limit = models.ban, models.limit
    room = write.room.lower()
    if isinstance(write, LimitSet):
        limit.delete().where(limit.room == room).execute()
        if write.max_members is not None:
            limit.insert(room=room, max_members=write.max_members).execute()
        return
    user, host = _key(write.pattern)
    ban.delete().where((ban.room == room) & (ban.username == user) & (ban.domain == host)).execute()
    if isinstance(write, BanSet):
        ban.insert(
            room=room, username=user, domain=host, reason=write.reason, banned_by=write.by,
            ban_time=int(time.time()),
        ).execute()  # fmt: skip


def delete_room(models: Models, room_uri: str) -> None:
    """A room was deleted: its bans and limit go with it (inside the caller's transaction)."""
    room = room_uri.lower()
    models.ban.delete().where(models.ban.room == room).execute()
    models.limit.delete().where(models.limit.room == room).execute()


def with_moderation(
    models: Models, rooms: list[RoomState], only: str | None = None
) -> list[RoomState]:
    """``rooms`` with their bans (in banning order) and member limits from our own tables.

    Two full scans, or with ``only`` (a lower-case room URI, the one room of ``rooms``) two
    lookups of its rows; a row naming no loaded room is ignored (its room was deleted by a
    Kamailio that knows nothing of these tables).
    """
    ban, limit = models.ban, models.limit
    bans: dict[str, list[Ban]] = {}
    query = ban.select(ban.room, ban.username, ban.domain, ban.reason).order_by(ban.id)
    limit_query = limit.select(limit.room, limit.max_members)
    if only is not None:  # rows are written lower case (see _apply_moderation)
        query, limit_query = query.where(ban.room == only), limit_query.where(limit.room == only)
    for room, user, host, reason in query.tuples():
        bans.setdefault(str(room).lower(), []).append(Ban(f"{user}@{host}".lower(), reason or ""))
    limits = {str(room).lower(): int(number) for room, number in limit_query.tuples()}
    if not bans and not limits:
        return rooms
    out: list[RoomState] = []
    for state in rooms:
        key = "sip:" + state.key
        found, number = bans.get(key), limits.get(key)
        if found is not None or number is not None:
            state = replace(state, bans=tuple(found or ()), max_members=number)
        out.append(state)
    return out


# ---------------------------------------------------------------------- the archive
class HistorySeqs:
    """The last line number of each room during one transaction.

    ``known`` is what the repository remembers from committed transactions (room -> last
    ``seq``); numbers taken in this transaction go to ``taken`` and become known only once it
    committed (:meth:`settle`), so a rolled-back batch leaves nothing behind.
    """

    def __init__(self, known: dict[str, int]) -> None:
        self.known = known
        self.taken: dict[str, int] = {}

    def next(self, models: Models, room: str) -> int:
        last = self.taken.get(room)
        if last is None:
            last = self.known.get(room)
        if last is None:
            history = models.history
            found = history.select(peewee.fn.MAX(history.seq)).where(history.room == room).scalar()
            last = int(found or 0)
        self.taken[room] = last + 1
        return last + 1

    def cleared(self, room: str) -> None:
        """The room's lines were deleted in this transaction: numbering starts again."""
        self.taken[room] = 0

    def settle(self, committed: bool) -> None:
        """After the transaction: remember its numbers, or forget the rooms it touched (a
        failed COMMIT may have been durable, so their last number is read again)."""
        for room, last in self.taken.items():
            if committed and last:
                self.known[room] = last
            else:  # failed, or the room's lines are gone (destroyed): nothing to remember
                self.known.pop(room, None)
        self.taken = {}


#: Writes that :func:`apply_run` takes several at a time, in one statement.
RUN_WRITES = (HistoryAppend, PendingAdd)
#: Rows per INSERT statement: the parameters of one stay within old SQLite's limit of 999.
LINES_PER_INSERT = 150  # six parameters each
PENDING_PER_INSERT = 90  # ten


def apply_run(models: Models, writes: Sequence[Any], seqs: HistorySeqs) -> None:
    """Carry out ``writes``, consecutive writes of one kind of :data:`RUN_WRITES`, in as few
    statements as they fit. Each statement is a round trip to the database, and in the store's
    writer thread a wait for the GIL while the event loop is busy: one statement per chat
    line or stored notice made a busy room's commits several times slower."""
    if isinstance(writes[0], HistoryAppend):
        append_lines(models, writes, seqs)
    else:
        add_pending(models, writes)


def add_pending(models: Models, writes: Sequence[PendingAdd]) -> None:
    """Store ``writes`` in order, :data:`PENDING_PER_INSERT` notices per INSERT (their ids
    ascend in that order: a member's notices are delivered by id)."""
    rows = []
    for write in writes:
        user, host = _key(write.member)
        rows.append({
            "src_addr": write.sender, "dst_addr": write.recipient, "username": user, "domain": host,
            "inc_time": int(write.created), "exp_time": int(write.expires),
            "ctype": write.content_type or "", "body": write.body, "callid": write.in_reply_to,
            "kind": write.kind,
        })  # fmt: skip
    for start in range(0, len(rows), PENDING_PER_INSERT):
        models.pending.insert_many(rows[start : start + PENDING_PER_INSERT]).execute()


@functools.cache
def _insert_lines_sql(table: str, quote: str, param: str, count: int) -> str:
    """The archive's INSERT of ``count`` lines, rendered once per table and count (it runs for
    every batch of chat lines, and peewee's query builder costs more than the statement)."""
    left, right = quote[0], quote[-1]
    columns = ", ".join(f"{left}{c}{right}" for c in ("room", "seq", "sender", "inc_time", "ctype", "body"))
    row = f"({', '.join([param] * 6)})"
    return f"INSERT INTO {left}{table}{right} ({columns}) VALUES {', '.join([row] * count)}"


def append_lines(models: Models, writes: Sequence[HistoryAppend], seqs: HistorySeqs) -> None:
    """Archive ``writes`` in order, :data:`LINES_PER_INSERT` lines per INSERT, then trim their
    rooms (after all the inserts: each trim deletes only lines ``keep`` or more behind)."""
    history = models.history
    db = history._meta.database
    rows: list[tuple[Any, ...]] = []
    trims: list[tuple[str, int]] = []
    for write in writes:
        seq = seqs.next(models, write.room)
        rows.append((write.room, seq, write.sender, int(write.time), write.content_type or "", write.body))
        step = max(1, write.keep // 10)
        if seq > write.keep and seq % step == 0:
            trims.append((write.room, seq - write.keep))
    table = history._meta.table_name
    for start in range(0, len(rows), LINES_PER_INSERT):
        chunk = rows[start : start + LINES_PER_INSERT]
        sql = _insert_lines_sql(table, db.quote, db.param, len(chunk))
        db.execute_sql(sql, [value for row in chunk for value in row])
    for room, upto in trims:
        history.delete().where((history.room == room) & (history.seq <= upto)).execute()


def clear_room(models: Models, room: str, seqs: HistorySeqs) -> None:
    """Delete the archive and the info row of ``room`` (lower-case URI): the room is gone."""
    models.history.delete().where(models.history.room == room).execute()
    models.room_info.delete().where(models.room_info.room == room).execute()
    seqs.cleared(room)


def load_history(models: Models, room: str, limit: int, before: int | None = None) -> list[HistoryLine]:
    """The newest ``limit`` lines of ``room`` (numbered below ``before``, when given), oldest first."""
    history = models.history
    where = history.room == room
    if before is not None:
        where &= history.seq < before
    query = (
        history.select(history.seq, history.sender, history.inc_time, history.ctype, history.body)
        .where(where).order_by(history.seq.desc()).limit(limit)
    )  # fmt: skip
    lines = [
        HistoryLine(int(seq), sender, float(inc), ctype or None, bytes(body))
        for seq, sender, inc, ctype, body in query.tuples()
    ]
    lines.reverse()
    return lines


def load_room_info(models: Models, room: str | None = None) -> dict[str, RoomInfo]:
    """Room (lower-case URI) -> its :class:`RoomInfo`, for every row of the info table (only
    ``room``'s, a lower-case URI, when given)."""
    info = models.room_info
    query = info.select(info.room, info.topic, info.topic_by, info.topic_time, info.created)
    if room is not None:
        query = query.where(info.room == room)
    return {
        room.lower(): RoomInfo(
            topic or "", topic_by or "",
            int(topic_time) if topic_time is not None else None,
            int(created) if created is not None else None,
        )  # fmt: skip
        for room, topic, topic_by, topic_time, created in query.tuples()
    }
