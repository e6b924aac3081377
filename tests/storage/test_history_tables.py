"""The archive (imc_history) and the rooms' info (imc_room_info) on each of the three engines."""

from __future__ import annotations

import pytest

from imc_actors.imc.effects import (
    OWNER,
    HistoryAppend,
    MemberUpsert,
    RoomDelete,
    RoomInfoSet,
    RoomUpsert,
)
from imc_actors.imc.state import RoomInfo
from imc_actors.store.own_tables import LINES_PER_INSERT
from imc_actors.store.records import HistoryExpire
from imc_actors.store.repository import Repository, StoreError

ROOM = "sip:chat@example.com"
T0 = 1_700_000_000.0


def line(n: int, *, room: str = ROOM, keep: int = 1000, time: float = T0) -> HistoryAppend:
    ctype = "text/plain" if n % 2 else None
    return HistoryAppend(room, "sip:Alice@example.com", time + n, ctype, f"line {n} é".encode(), keep)


def bodies(repository: Repository, room: str = ROOM, limit: int = 100, **kw: int) -> list[bytes]:
    return [entry.body for entry in repository.load_history(room, limit, **kw)]


def test_lines_come_back_newest_last_numbered_per_room(repository: Repository) -> None:
    repository.apply_batch([line(i) for i in range(5)])
    repository.apply_batch([line(9, room="sip:other@example.com")])
    lines = repository.load_history("sip:CHAT@Example.com", 3)  # any case names the room
    assert [entry.seq for entry in lines] == [3, 4, 5]
    assert [entry.body for entry in lines] == [f"line {i} é".encode() for i in (2, 3, 4)]
    first = lines[0]
    assert (first.sender, first.time, first.content_type) == ("sip:Alice@example.com", T0 + 2, None)
    assert lines[1].content_type == "text/plain"
    assert [e.seq for e in repository.load_history("sip:other@example.com", 10)] == [1]
    assert bodies(repository, limit=2, before=3) == [b"line 0 \xc3\xa9", b"line 1 \xc3\xa9"]


def test_numbering_goes_on_after_a_restart(repository: Repository, tables, db_url: str) -> None:
    repository.apply_batch([line(i) for i in range(3)])
    with tables.repository(db_url) as again:  # a new process: nothing remembered
        again.apply_batch([line(3)])
        assert [e.seq for e in again.load_history(ROOM, 10)] == [1, 2, 3, 4]


def test_a_rolled_back_batch_archives_nothing_and_takes_no_number(repository: Repository) -> None:
    repository.apply_batch([line(0)])
    bad = MemberUpsert(ROOM, "not-a-member-uri", 0)
    with pytest.raises(StoreError):
        repository.apply_batch([line(1), bad])
    repository.apply_batch([line(2)])
    assert [(e.seq, e.body) for e in repository.load_history(ROOM, 10)] == [
        (1, b"line 0 \xc3\xa9"), (2, b"line 2 \xc3\xa9"),
    ]  # fmt: skip


def test_the_count_limit_keeps_the_newest_lines(repository: Repository) -> None:
    repository.apply_batch([line(i, keep=10) for i in range(25)])  # trims every 10 // 10 = 1
    assert [e.seq for e in repository.load_history(ROOM, 100)] == list(range(16, 26))
    repository.apply_batch([line(i, keep=100, room="sip:big@example.com") for i in range(125)])
    kept = [e.seq for e in repository.load_history("sip:big@example.com", 1000)]
    assert kept[-1] == 125 and 100 <= len(kept) <= 110  # trimmed every 10 lines


def test_a_long_batch_of_lines_of_two_rooms_is_stored_whole_in_order(repository: Repository) -> None:
    """A batch is archived several lines per INSERT (LINES_PER_INSERT): two rooms' lines
    interleaved, other writes between them, more lines than one statement takes."""
    other = "sip:other@example.com"
    count = 2 * LINES_PER_INSERT + 7
    batch = [line(i, room=ROOM if i % 3 else other) for i in range(count)]
    batch.insert(40, RoomInfoSet(ROOM, "topic", "sip:Alice@example.com", T0, T0))
    repository.apply_batch(batch)
    mine = repository.load_history(ROOM, 1000)
    theirs = repository.load_history(other, 1000)
    assert [e.seq for e in mine] == list(range(1, len(mine) + 1))
    assert [e.body for e in mine] == [f"line {i} é".encode() for i in range(count) if i % 3]
    assert [e.body for e in theirs] == [f"line {i} é".encode() for i in range(count) if not i % 3]
    repository.apply_batch([line(i, keep=20) for i in range(count, count + 30)])  # trims in-batch
    assert [e.seq for e in repository.load_history(ROOM, 1000)][-1] == len(mine) + 30
    assert 20 <= len(repository.load_history(ROOM, 1000)) <= 22


def test_the_age_limit_drops_old_lines(repository: Repository) -> None:
    repository.apply_batch([line(i) for i in range(4)])
    repository.apply_batch([HistoryExpire(T0 + 2)])  # lines at T0+0 and T0+1 are older
    assert bodies(repository) == [b"line 2 \xc3\xa9", b"line 3 \xc3\xa9"]


def test_room_info_comes_back_with_the_room_and_goes_with_it(repository: Repository) -> None:
    topic = "Plans for Friday — all welcome"
    repository.apply_batch([
        RoomUpsert("Chat", "Example.com", 0),
        MemberUpsert("sip:Chat@Example.com", "sip:alice@example.com", OWNER),
        RoomInfoSet(ROOM, "", "", None, 1_700_000_000),
        line(0),
        line(1),
    ])  # fmt: skip
    repository.apply_batch([RoomInfoSet(ROOM, topic, "sip:alice@example.com", 1_700_000_100, 1_700_000_000)])
    (room,) = repository.load_rooms()
    assert room.info == RoomInfo(topic, "sip:alice@example.com", 1_700_000_100, 1_700_000_000)
    # one room loaded alone (a takeover after failover) keeps its topic too
    taken = repository.load_room("chat@example.com")
    assert taken is not None and taken.info == room.info
    repository.apply_batch([RoomDelete("chat", "example.com")])  # the room, its lines, its info
    assert repository.load_rooms() == [] and bodies(repository) == []
    repository.apply_batch([RoomUpsert("chat", "example.com", 0), line(7)])
    (room,) = repository.load_rooms()
    assert room.info == RoomInfo() and [e.seq for e in repository.load_history(ROOM, 10)] == [1]


def test_values_that_do_not_fit_are_refused(repository: Repository) -> None:
    with pytest.raises(StoreError, match="topic"):
        repository.apply_batch([RoomInfoSet(ROOM, "x" * 256, "", None, None)])
    with pytest.raises(StoreError, match="content type"):
        repository.apply_batch([HistoryAppend(ROOM, "sip:a@b", T0, "x" * 300, b"", 10)])
    assert bodies(repository) == []
