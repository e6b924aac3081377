"""imc-actors' own tables (pending notices, registrar bindings) on each of the three engines."""

from __future__ import annotations

import time

import pytest

from imc_actors.store.own_tables import PENDING_PER_INSERT
from imc_actors.store.records import (
    BindingClear,
    BindingDelete,
    BindingExpire,
    BindingSet,
    PendingAdd,
    PendingDelete,
    PendingExpire,
    PendingTrim,
)
from imc_actors.store.repository import Repository, StoreError

ROOM = "sip:chat@example.com"


def pending(
    member: str, n: int, *, created: float = 1_700_000_000.0, ttl: float = 3600
) -> PendingAdd:
    return PendingAdd(
        member=member, recipient=f"sip:{member}", sender=ROOM, body=f"line {n}".encode(),
        kind="relay", content_type="text/plain" if n % 2 else None, in_reply_to=f"cid-{n}",
        created=created + n, expires=created + n + ttl,
    )  # fmt: skip


def test_pending_rows_come_back_in_order_per_member(repository: Repository) -> None:
    repository.apply_batch([pending("alice@example.com", i) for i in range(5)])
    repository.apply_batch([pending("Bob@Example.com", 9)])
    assert repository.pending_counts() == {"alice@example.com": 5, "bob@example.com": 1}
    assert repository.pending_total() == 6  # one COUNT, for pending_total_max
    rows = repository.load_pending("ALICE@example.com", 3)
    assert [r.body for r in rows] == [b"line 0", b"line 1", b"line 2"]
    first = rows[0]
    assert (first.recipient, first.sender, first.kind, first.in_reply_to) == (
        "sip:alice@example.com", ROOM, "relay", "cid-0",
    )  # fmt: skip
    assert first.content_type is None and rows[1].content_type == "text/plain"
    assert first.created == 1_700_000_000.0 and first.expires == 1_700_003_600.0
    repository.apply_batch([PendingDelete((rows[0].id, rows[1].id))])
    assert [r.body for r in repository.load_pending("alice@example.com", 10)] == [
        b"line 2", b"line 3", b"line 4",
    ]  # fmt: skip
    (bob,) = repository.load_pending("bob@example.com", 10)
    assert bob.recipient == "sip:Bob@Example.com"


def test_a_long_batch_of_notices_keeps_each_members_order(repository: Repository) -> None:
    """Stored notices go several per INSERT (PENDING_PER_INSERT); ids still ascend in the
    batch's order, which is the order a member gets them in."""
    count = 2 * PENDING_PER_INSERT + 5
    batch = [pending("alice@example.com" if i % 2 else "bob@example.com", i) for i in range(count)]
    batch.insert(10, PendingTrim("carol@example.com", 0))  # another kind of write in between
    repository.apply_batch(batch)
    alice = repository.load_pending("alice@example.com", 1000)
    assert [r.body for r in alice] == [f"line {i}".encode() for i in range(count) if i % 2]
    assert [r.id for r in alice] == sorted(r.id for r in alice)
    assert repository.pending_counts()["bob@example.com"] == (count + 1) // 2


def test_pending_trim_keeps_the_newest(repository: Repository) -> None:
    repository.apply_batch([pending("alice@example.com", i) for i in range(6)])
    repository.apply_batch([pending("bob@example.com", 0)])
    repository.apply_batch([PendingTrim("alice@example.com", 2)])
    assert [r.body for r in repository.load_pending("alice@example.com", 10)] == [
        b"line 4",
        b"line 5",
    ]
    repository.apply_batch([PendingTrim("alice@example.com", 0)])
    assert repository.pending_counts() == {"bob@example.com": 1}


def test_pending_expire_drops_only_expired_rows(repository: Repository) -> None:
    repository.apply_batch([pending("alice@example.com", i, ttl=10) for i in range(3)])
    repository.apply_batch([PendingExpire(1_700_000_000.0 + 11)])  # rows 0 and 1 expire at 10, 11
    assert [r.body for r in repository.load_pending("alice@example.com", 10)] == [b"line 2"]


def test_pending_values_that_do_not_fit_are_refused(repository: Repository) -> None:
    too_long = PendingAdd(
        member="alice@example.com", recipient="sip:alice@example.com", sender=ROOM, body=b"x",
        kind="relay", content_type="x" * 300, in_reply_to="", created=1.0, expires=2.0,
    )  # fmt: skip
    with pytest.raises(StoreError, match="content type"):
        repository.apply_batch([too_long])
    assert repository.pending_counts() == {}


def test_bindings_survive_a_reopen_and_expired_ones_are_dropped(
    repository: Repository, db_url: str, tables
) -> None:
    now = time.time()
    repository.apply_batch(
        [
            BindingSet(
                "alice@example.com", "sip:alice@127.0.0.1:5070", now + 600, "c1", 1, "phone/1"
            ),
            BindingSet("alice@example.com", "sip:alice@127.0.0.1:5071", now + 600, "c2", 4),
            BindingSet("bob@example.com", "sip:bob@127.0.0.1:5072", now - 5, "c3", 1),
        ]
    )
    repository.apply_batch(
        [BindingSet("alice@example.com", "sip:alice@127.0.0.1:5070", now + 900, "c1", 2, "phone/2")]
    )
    with tables.repository(db_url) as reopened:
        bindings = reopened.load_bindings(now)
    assert sorted((b.aor, b.contact, b.call_id, b.cseq) for b in bindings) == [
        ("alice@example.com", "sip:alice@127.0.0.1:5070", "c1", 2),
        ("alice@example.com", "sip:alice@127.0.0.1:5071", "c2", 4),
    ]
    refreshed = next(b for b in bindings if b.call_id == "c1")
    assert refreshed.user_agent == "phone/2" and abs(refreshed.expires - (now + 900)) <= 1.5
    repository.apply_batch([BindingDelete("alice@example.com", "sip:alice@127.0.0.1:5071")])
    assert [b.contact for b in repository.load_bindings(now)] == ["sip:alice@127.0.0.1:5070"]
    repository.apply_batch([BindingClear("Alice@Example.com")])
    assert repository.load_bindings(now) == []


def test_binding_expire_deletes_only_expired_rows(repository: Repository) -> None:
    now = time.time()
    repository.apply_batch(
        [
            BindingSet("alice@example.com", "sip:alice@127.0.0.1:5070", now + 600, "c1", 1),
            BindingSet("bob@example.com", "sip:bob@127.0.0.1:5072", now - 5, "c3", 1),
            BindingExpire(now),
        ]
    )
    rows = repository._models.location.select().count()  # the expired row is gone
    assert rows == 1


# -- moderation: bans and member limits --------------------------------------------------------
def test_bans_and_limits_come_back_with_their_room(repository: Repository) -> None:
    from imc_actors.imc.effects import OWNER, BanDelete, BanSet, LimitSet, MemberUpsert, RoomUpsert
    from imc_actors.imc.state import Ban, Member, RoomState

    repository.apply_batch([
        RoomUpsert("Chat", "Example.com", 0), MemberUpsert("sip:Chat@Example.com", "sip:alice@example.com", OWNER),
        RoomUpsert("other", "example.com", 0),
        BanSet("sip:Chat@Example.com", "bob@example.com", "spam " * 20, "sip:alice@example.com"),
        BanSet("sip:Chat@Example.com", "*@evil.org", ""),
        BanSet("sip:other@example.com", "carol@example.com", "x"),
        LimitSet("sip:Chat@Example.com", 20),
    ])  # fmt: skip
    # replayed and updated writes are harmless (a retried batch), names compare ignoring case
    repository.apply_batch([
        BanSet("sip:chat@example.com", "bob@example.com", "spam"), LimitSet("sip:CHAT@example.com", 10),
        BanDelete("sip:other@example.com", "carol@example.com"),
        BanDelete("sip:other@example.com", "carol@example.com"),
    ])  # fmt: skip
    chat, other = repository.load_rooms()
    assert chat == RoomState(
        "Chat", "Example.com", 0, (Member("sip:alice@example.com", OWNER),),
        bans=(Ban("*@evil.org"), Ban("bob@example.com", "spam")), max_members=10,
    )  # fmt: skip
    assert (other.bans, other.max_members) == ((), None)
    repository.apply_batch([LimitSet("sip:chat@example.com", None)])
    assert repository.load_rooms()[0].max_members is None


def test_a_deleted_room_takes_its_bans_and_limit_along(repository: Repository) -> None:
    from imc_actors.imc.effects import BanSet, LimitSet, RoomDelete, RoomUpsert

    repository.apply_batch([
        RoomUpsert("chat", "example.com", 0), BanSet("sip:chat@example.com", "bob@example.com", ""),
        LimitSet("sip:chat@example.com", 5),
    ])  # fmt: skip
    repository.apply_batch([RoomDelete("Chat", "example.com"), RoomUpsert("chat", "example.com", 0)])
    (room,) = repository.load_rooms()
    assert (room.bans, room.max_members) == ((), None)


def test_ban_values_that_do_not_fit_are_refused(repository: Repository) -> None:
    from imc_actors.imc.effects import BanSet, LimitSet

    for write, what in (
        (BanSet("sip:chat@example.com", "bob@example.com", "x" * 256), "ban reason"),
        (BanSet("sip:chat@example.com", "b" * 65 + "@example.com", ""), "banned user"),
        (BanSet("sip:chat@example.com", "nobody", ""), "not user@host"),
        (LimitSet("sip:chat@example.com", 0), "member limit"),
    ):
        with pytest.raises(StoreError, match=what):
            repository.apply_batch([write])


def test_a_new_room_does_not_inherit_rows_left_by_a_deleted_namesake(
    repository: Repository, raw_db, tables
) -> None:
    from imc_actors.imc.effects import BanSet, LimitSet, RoomUpsert

    repository.apply_batch([
        RoomUpsert("chat", "example.com", 0), BanSet("sip:chat@example.com", "bob@example.com", ""),
        LimitSet("sip:chat@example.com", 5),
    ])  # fmt: skip
    left, right = raw_db.quote[0], raw_db.quote[-1]
    raw_db.execute_sql(f"DELETE FROM {left}{tables.rooms}{right}")  # as Kamailio would
    assert repository.load_rooms() == []
    repository.apply_batch([RoomUpsert("Chat", "example.com", 0)])
    (room,) = repository.load_rooms()
    assert (room.bans, room.max_members) == ((), None)
