"""Fault injection against the real supervisor and store (SQLite): containment and durability.

Every test uses :mod:`imc_actors.testing` (the toolkit users get) with a recorded seed.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

from imc_actors.actors.supervisor import ADOPT_SLICE
from imc_actors.conference import open_conference
from imc_actors.config import Config
from imc_actors.testing import Faults, live_tasks, members_of
from tests.faults.common import DOMAIN, MANAGER, ROOM_A, ROOM_B, Inbox, make_config, say, two_rooms

SEED = 20261126


@pytest.fixture
def config(tmp_path) -> Config:
    return make_config(tmp_path, mailbox_size=4)


async def test_apply_that_raises_restarts_only_that_room(config):
    faults = Faults(seed=SEED)
    inbox = Inbox()
    async with open_conference(config, **faults.hooks(config, sender=inbox)) as conf:
        await two_rooms(conf)
        before_a, before_b = members_of(conf.room(ROOM_A)), members_of(conf.room(ROOM_B))
        faults.fail_apply(room=ROOM_A, command="join")

        answer = await conf.handle(say(ROOM_A, "dave", "#join"))
        assert answer.code == 500, faults
        assert faults.fired == [("apply", f"room={ROOM_A},command=join")]
        assert members_of(conf.room(ROOM_A)) == before_a  # restarted from its last committed state
        assert conf.supervisor.statistics().restarts == 1
        # the other room never noticed, and the restarted room serves again
        assert (await conf.handle(say(ROOM_B, "erin", "#join"))).code == 200
        assert members_of(conf.room(ROOM_B)) == {**before_b, f"erin@{DOMAIN}": 0}
        assert (await conf.handle(say(ROOM_A, "dave", "#join"))).code == 200
        assert (await conf.handle(say(ROOM_A, "carol", "hello"))).code == 202


async def test_a_room_that_keeps_crashing_is_quarantined(config):
    faults = Faults(seed=SEED)
    async with open_conference(config, **faults.hooks(config)) as conf:
        await two_rooms(conf)
        faults.fail_apply(room=ROOM_A, times=None)
        codes = [(await conf.handle(say(ROOM_A, "carol", f"chat {i}"))).code for i in range(5)]
        assert codes == [500] * 5
        answer = await conf.handle(say(ROOM_A, "carol", "again"))
        assert answer.code == 503 and answer.retry_after and answer.retry_after > 0
        assert conf.supervisor.statistics().quarantined == 1
        assert (await conf.handle(say(ROOM_B, "bob", "fine here"))).code == 202


async def test_failed_delivery_is_counted_and_contained(config):
    faults = Faults(seed=SEED)
    inbox = Inbox()
    async with open_conference(config, **faults.hooks(config, sender=inbox)) as conf:
        await two_rooms(conf)
        faults.fail_delivery(to=f"sip:alice@{DOMAIN}", code=480)
        assert (await conf.handle(say(ROOM_A, "carol", "hi all"))).code == 202
        await trio.testing.wait_all_tasks_blocked()
        stats = conf.delivery.statistics()
        assert stats.failed == 1
        assert b"[carol]: hi all" not in inbox.bodies_to("alice")
        assert members_of(conf.room(ROOM_A)) == {f"alice@{DOMAIN}": 1, f"carol@{DOMAIN}": 0}


async def test_stalled_member_does_not_stall_the_room(config):
    faults = Faults(seed=SEED)
    inbox = Inbox()
    async with open_conference(config, **faults.hooks(config, sender=inbox)) as conf:
        await two_rooms(conf)
        release = faults.stall_delivery(to=f"sip:alice@{DOMAIN}")
        for i in range(3):
            assert (await conf.handle(say(ROOM_A, "carol", f"msg {i}"))).code == 202
        assert (await conf.handle(say(ROOM_A, "dave", "#join"))).code == 200
        await trio.testing.wait_all_tasks_blocked()
        assert b"*** [dave] has joined the room" in inbox.bodies_to("carol")
        stats = conf.delivery.statistics()  # alice's lane: one in flight, the rest behind it
        assert (stats.in_flight, stats.queued) == (1, 3)  # msg 1, msg 2, dave's join
        release.set()
        await trio.testing.wait_all_tasks_blocked()
        relays = [b for b in inbox.bodies_to("alice") if b.startswith(b"[carol]")]
        assert relays == [b"[carol]: msg 0", b"[carol]: msg 1", b"[carol]: msg 2"]  # in order
        assert conf.delivery.statistics().in_flight == 0


async def test_commit_failure_answers_500_and_keeps_state(config):
    faults = Faults(seed=SEED)
    async with open_conference(config, **faults.hooks(config)) as conf:
        await two_rooms(conf)
        before = members_of(conf.room(ROOM_A))
        faults.fail_commit(times=1)
        assert (await conf.handle(say(ROOM_A, "dave", "#join"))).code == 500
        assert members_of(conf.room(ROOM_A)) == before
        assert (await conf.handle(say(ROOM_A, "dave", "#join"))).code == 200
    # nothing acknowledged was lost, nothing refused was half-applied
    async with open_conference(config) as conf:
        assert members_of(conf.room(ROOM_A)) == {**before, f"dave@{DOMAIN}": 0}


async def test_refused_changes_are_logged_once_a_second_with_a_count(config, mock_clock, caplog):
    # A broken table refuses every command that writes to it: a tour saw 2,935 lines in 10 s.
    faults = Faults(seed=SEED)
    async with open_conference(config, **faults.hooks(config)) as conf:
        await two_rooms(conf)
        faults.fail_commit(room=ROOM_A, times=5)  # scoped: each change refused, no outage
        caplog.clear()
        for user in ("d1", "d2", "d3", "d4"):
            assert (await conf.handle(say(ROOM_A, user, "#join"))).code == 500
        mock_clock.jump(1.0)
        assert (await conf.handle(say(ROOM_A, "d5", "#join"))).code == 500
    lines = [r.getMessage() for r in caplog.records if "commit failed" in r.getMessage()]
    assert len(lines) == 2 and "(1 so far)" in lines[0] and "(5 so far)" in lines[1], lines


@pytest.mark.parametrize("history_max", [0, 1000], ids=["no-archive", "archive"])
async def test_database_outage_gives_503_then_recovers(tmp_path, autojump_clock, history_max):
    config = make_config(tmp_path, mailbox_size=4, history_max=history_max)
    faults = Faults(seed=SEED)
    inbox = Inbox()
    async with open_conference(config, **faults.hooks(config, sender=inbox)) as conf:
        await two_rooms(conf)
        faults.fail_commit(times=None)  # the database is down
        first = await conf.handle(say(ROOM_A, "dave", "#join"))
        assert first.code in (500, 503)
        answer = await conf.handle(say(ROOM_A, "erin", "#join"))
        assert answer.code == 503 and answer.retry_after
        # what needs no write is still served; with an archive a chat line is a write: it is
        # refused like any change and not relayed (acknowledged lines are always archived)
        chat = await conf.handle(say(ROOM_A, "carol", "still chatting"))
        await conf.flush_notices()
        relayed = b"[carol]: still chatting" in inbox.bodies_to("alice")
        if history_max:
            assert chat.code == 503 and chat.retry_after and not relayed
        else:
            assert chat.code == 202 and relayed
        assert (await conf.handle(say(ROOM_A, "carol", "#members"))).code == 200
        faults.clear()
        # the store pings once a (virtual) second in a worker thread; wait for the event it
        # sets when the database answers again, not for a guessed amount of virtual time
        await conf.supervisor.store.wait_available()
        assert (await conf.handle(say(ROOM_A, "erin", "#join"))).code == 200, faults
        assert f"erin@{DOMAIN}" in members_of(conf.room(ROOM_A))
        assert f"dave@{DOMAIN}" not in members_of(conf.room(ROOM_A))


async def test_full_mailbox_answers_503_and_loses_nothing(config):
    faults = Faults(seed=SEED)
    async with open_conference(config, **faults.hooks(config)) as conf, trio.open_nursery() as nursery:
        await two_rooms(conf)
        release = faults.hang_commit()
        answers: dict[str, int] = {}

        async def join(user: str) -> None:
            answers[user] = (await conf.handle(say(ROOM_A, user, "#join"))).code

        nursery.start_soon(join, "u0")  # takes the actor, its commit hangs
        await trio.testing.wait_all_tasks_blocked()
        for i in range(1, 5):  # fill the mailbox (mailbox_size = 4)
            nursery.start_soon(join, f"u{i}")
        await trio.testing.wait_all_tasks_blocked()
        overflow = await conf.handle(say(ROOM_A, "late", "#join"))
        assert overflow.code == 503 and overflow.retry_after == 1
        assert conf.supervisor.statistics().mailbox_full == 1
        release.set()
    assert answers == {f"u{i}": 200 for i in range(5)}
    async with open_conference(config) as conf:
        assert set(members_of(conf.room(ROOM_A))) >= {f"u{i}@{DOMAIN}" for i in range(5)}
        assert f"late@{DOMAIN}" not in members_of(conf.room(ROOM_A))


async def test_cancellation_mid_command_leaves_no_task_and_no_half_state(config):
    faults = Faults(seed=SEED)
    before_tasks = len(live_tasks())
    async with trio.open_nursery() as outer:
        release = faults.hang_commit(times=None)
        with trio.CancelScope() as scope:
            async with open_conference(config, **faults.hooks(config)) as conf:
                async def create() -> None:
                    await conf.handle(say(MANAGER, "alice", "#create a"))

                outer.start_soon(create)
                await trio.testing.wait_all_tasks_blocked()
                scope.cancel()

                async def release_when_blocked() -> None:
                    await trio.testing.wait_all_tasks_blocked()
                    release.set()  # the in-flight transaction finishes, shielded

                outer.start_soon(release_when_blocked)
    assert len(live_tasks()) == before_tasks
    # the transaction was in flight when cancelled: it either fully happened or not at all
    async with open_conference(config) as conf:
        room = conf.room(ROOM_A)
        assert room is None or members_of(room) == {f"alice@{DOMAIN}": 1}


class _UnreadableRepository:
    """A database that answers but cannot be read at startup."""

    def apply_batch(self, writes) -> None:
        raise AssertionError("nothing may be written")

    def ping(self) -> None:
        pass

    def load_rooms(self):
        from imc_actors.store.repository import StoreError

        raise StoreError("imc_rooms: permission denied")


async def test_a_store_that_cannot_load_stops_startup_with_the_error(config):
    from imc_actors.store.repository import StoreError

    before = len(live_tasks())
    with pytest.RaisesGroup(pytest.RaisesExc(StoreError, match="permission denied"), flatten_subgroups=True):
        async with open_conference(config, repository=_UnreadableRepository()):
            pytest.fail("the conference must not start without its rooms")
    assert len(live_tasks()) == before  # the store task it had started is gone too


class _Sizes:
    """The real store, recording how many writes each commit carries."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.sizes: list[int] = []

    async def commit(self, writes) -> None:
        self.sizes.append(len(writes))
        await self.inner.commit(writes)

    def __getattr__(self, name):
        return getattr(self.inner, name)


async def test_what_queued_behind_a_slow_commit_goes_in_the_next_one(tmp_path):
    """A room's next transaction takes its whole mailbox (not a fixed 64): under load the
    commit waits for the writer thread, and the more queued meanwhile, the fewer commits."""
    config = make_config(tmp_path, mailbox_size=200)
    faults = Faults(seed=SEED)
    store: list[_Sizes] = []

    def wrap(inner):
        store.append(_Sizes(inner))
        return faults.wrap_store(store[0])

    hooks = {**faults.hooks(config), "wrap_store": wrap}
    async with open_conference(config, **hooks) as conf:
        await two_rooms(conf)
        sizes = store[0].sizes
        sizes.clear()
        gate = faults.stall_room(room=ROOM_A)  # line 0's commit waits for it
        codes: list[int] = []

        async def chat(i: int) -> None:
            codes.append((await conf.handle(say(ROOM_A, "carol", f"line {i}"))).code)

        seen: list[int] = []  # commands answered, as another task saw it run after run

        async def watch() -> None:
            while len(codes) < 151:
                seen.append(conf.supervisor.statistics().processed)
                await trio.lowlevel.checkpoint()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(chat, 0)
            await trio.testing.wait_all_tasks_blocked()
            for i in range(1, 151):
                nursery.start_soon(chat, i)
            await trio.testing.wait_all_tasks_blocked()
            before = conf.supervisor.statistics().processed
            gate.set()
            nursery.start_soon(watch)
        assert codes == [202] * 151
        assert sizes == [1, 150]  # one archived line each: 150 in one transaction
        # the 150 are answered in slices of ADOPT_SLICE, other tasks running in between
        steps = sorted({n - before - 1 for n in seen if before + 1 < n < before + 151})
        assert steps and all(step % ADOPT_SLICE == 0 for step in steps), seen
        history = await conf.store.read(lambda repository: repository.load_history(ROOM_A, 200))
        assert sorted(line.body for line in history) == sorted(f"line {i}".encode() for i in range(151))
