"""Every fault kind of :mod:`imc_actors.testing`, at a chosen place and at random with a seed,
against the real supervisor and store (SQLite); and the containment assertion helpers.

Every assertion message carries the plan (``Faults(seed=...)``) so a failure can be replayed.
"""

from __future__ import annotations

import time

import pytest
import trio
import trio.testing

from imc_actors import Config, open_conference
from imc_actors.imc.effects import MemberDelete
from imc_actors.store.repository import Repository
from imc_actors.testing import (
    SEED_ENV,
    Faults,
    InjectedFault,
    assert_contained,
    assert_durable,
    assert_no_leaked_tasks,
    members_of,
    rooms_of,
    snapshot,
)
from tests.faults.common import DOMAIN, MANAGER, ROOM_A, ROOM_B, Inbox, make_config, say, two_rooms

SEED = 20261126


@pytest.fixture
def config(tmp_path) -> Config:
    return make_config(tmp_path, mailbox_size=4, restart_limit=1000)


async def first_of(*waits) -> None:
    """Return as soon as one of the ``waits`` (async callables) returns."""
    async with trio.open_nursery() as nursery:
        for wait in waits:

            async def one(wait=wait) -> None:
                await wait()
                nursery.cancel_scope.cancel()

            nursery.start_soon(one)


# ---------------------------------------------------------------------- apply
async def crash_pattern(config, seed: int) -> list[int]:
    faults = Faults(seed=seed)
    async with faults.open_conference(config) as conf:
        await two_rooms(conf)
        before = snapshot(conf)
        faults.fail_apply(room=ROOM_A, command="chat", rate=0.5, times=None)
        codes = [(await conf.handle(say(ROOM_A, "carol", f"line {i}"))).code for i in range(12)]
        crashes = codes.count(500)
        assert set(codes) <= {202, 500} and 0 < crashes < 12, (faults, codes)
        assert len(faults.fired) == crashes, faults
        assert_contained(conf, ROOM_A, since=before, restarted=crashes, faults=faults)
        assert (await conf.handle(say(ROOM_B, "bob", "#members"))).code == 200, faults
        await assert_durable(conf, faults=faults)
    return codes


async def test_random_apply_faults_are_contained_and_reproducible(config, tmp_path):
    first = await crash_pattern(config, SEED)
    again = await crash_pattern(config.replace(db_url=f"sqlite:///{tmp_path}/again.db"), SEED)
    assert first == again, f"seed {SEED} did not replay: {first} != {again}"


async def test_apply_fault_at_a_chosen_command(config):
    faults = Faults(seed=SEED)
    async with faults.open_conference(config) as conf:
        await two_rooms(conf)
        faults.fail_apply(room=ROOM_A, command="leave")
        assert (await conf.handle(say(ROOM_A, "dave", "#join"))).code == 200, faults
        assert (await conf.handle(say(ROOM_A, "carol", "#exit"))).code == 500, faults  # alias of leave
        assert faults.fired == [("apply", f"room={ROOM_A},command=leave")], faults
        assert f"carol@{DOMAIN}" in members_of(conf.room(ROOM_A)), faults


# ---------------------------------------------------------------------- delivery
async def test_random_delivery_failures(config):
    faults = Faults(seed=SEED)
    inbox = Inbox()
    async with faults.open_conference(config, sender=inbox) as conf:
        await two_rooms(conf)
        faults.fail_delivery(room=ROOM_A, code=480, rate=0.5)
        for i in range(10):
            assert (await conf.handle(say(ROOM_A, "carol", f"msg {i}"))).code == 202, faults
        await conf.flush_notices()
        failed = len(faults.fired)
        delivered = [b for b in inbox.bodies_to("alice") if b.startswith(b"[carol]")]
        assert 0 < failed < 10 and len(delivered) == 10 - failed, (faults, delivered)
        assert conf.delivery.statistics().failed == failed, faults
        assert {kind for kind, _ in faults.fired} == {"deliver"}, faults
        assert (await conf.handle(say(ROOM_B, "bob", "#members"))).code == 200, faults


async def test_random_delivery_stalls_do_not_stall_the_room(config):
    faults = Faults(seed=SEED)
    inbox = Inbox()
    async with faults.open_conference(config, sender=inbox) as conf:
        await two_rooms(conf)
        earlier = len(inbox.bodies_to("alice"))
        release = faults.stall_delivery(to=f"sip:alice@{DOMAIN}", rate=0.5)
        for i in range(10):
            assert (await conf.handle(say(ROOM_A, "carol", f"msg {i}"))).code == 202, faults
        await trio.testing.wait_all_tasks_blocked()
        # alice's lane waits behind its first stalled notice (per-member order)
        assert len(faults.fired) == 1, faults
        assert conf.delivery.statistics().in_flight == 1, faults
        before = len(inbox.bodies_to("alice")) - earlier
        assert 0 <= before < 10, faults
        assert (await conf.handle(say(ROOM_B, "bob", "#members"))).code == 200, faults
        release.set()
        await conf.flush_notices()
        lines = [b for b in inbox.bodies_to("alice")[earlier:] if b.startswith(b"[carol]")]
        assert lines == [f"[carol]: msg {i}".encode() for i in range(10)], faults


# ---------------------------------------------------------------------- commits
async def test_random_commit_failures_in_one_room(config):
    faults = Faults(seed=SEED)
    acknowledged: set[str] = set()
    async with faults.open_conference(config) as conf:
        await two_rooms(conf)
        before = snapshot(conf)
        faults.fail_commit(room=ROOM_A, command="join", rate=0.5, times=None)
        for i in range(10):
            answer = await conf.handle(say(ROOM_A, f"user{i}", "#join"))
            assert answer.code in (200, 500), (faults, answer)
            if answer.code == 200:
                acknowledged.add(f"user{i}@{DOMAIN}")
        assert 0 < len(faults.fired) < 10 and len(acknowledged) == 10 - len(faults.fired), faults
        assert (await conf.handle(say(ROOM_B, "erin", "#join"))).code == 200, faults  # B commits fine
        assert_contained(conf, ROOM_A, since=before, restarted=False, changed=[ROOM_B], faults=faults)
        await assert_durable(conf, faults=faults)
    async with open_conference(config) as conf:  # a new process: exactly the acknowledged joins
        assert set(members_of(conf.room(ROOM_A))) == {f"alice@{DOMAIN}", f"carol@{DOMAIN}", *acknowledged}, faults


async def test_a_failed_creation_leaves_no_room(config):
    faults = Faults(seed=SEED)
    async with faults.open_conference(config) as conf:
        faults.fail_commit(command="create")
        assert (await conf.handle(say(MANAGER, "alice", "#create x"))).code == 500, faults
        assert conf.room(f"sip:x@{DOMAIN}") is None, faults
        assert (await conf.handle(say(MANAGER, "alice", "#create x"))).code == 200, faults
        await assert_durable(conf, faults=faults)


async def test_an_unscoped_commit_failure_fails_one_commit_by_default(config):
    # README's table said "down until clear()": that is times=None; the default is once
    faults = Faults(seed=SEED)
    async with faults.open_conference(config) as conf:
        await two_rooms(conf)
        faults.fail_commit()
        assert (await conf.handle(say(ROOM_A, "dave", "#join"))).code == 500, faults
        assert (await conf.handle(say(ROOM_A, "erin", "#join"))).code == 200, faults
        stats = conf.supervisor.store.statistics()
        assert stats.available and stats.outages == 0, (faults, stats)


async def test_a_hung_database_gives_503_after_db_timeout_of_wall_clock_time(tmp_path, autojump_clock):
    # The first commit hangs: no setup commits before it, which a loaded machine could make
    # slower than this short db_timeout of real time (a 503 before the test began).
    faults = Faults(seed=SEED)
    config = make_config(tmp_path, db_timeout=0.5)
    async with faults.open_conference(config) as conf:
        release = faults.hang_commit(times=1)
        wall, virtual = time.monotonic(), trio.current_time()
        answer = await conf.handle(say(MANAGER, "alice", "#create a"))
        assert answer.code == 503 and answer.retry_after, (faults, answer)
        assert time.monotonic() - wall >= 0.5, faults  # real seconds, however far ...
        assert trio.current_time() - virtual > 0.5, faults  # ... the virtual clock jumped
        release.set()
        await conf.supervisor.store.wait_available()
        assert conf.rooms() == []  # the hung creation was not stored


async def test_random_commit_hang_stops_one_room_only(config):
    faults = Faults(seed=SEED)
    async with faults.open_conference(config) as conf, trio.open_nursery() as nursery:
        await two_rooms(conf)
        before = snapshot(conf)
        release = faults.hang_commit(room=ROOM_A, rate=0.5, times=1)
        answers: dict[int, int] = {}
        answered = {i: trio.Event() for i in range(10)}

        async def join(i: int) -> None:
            answers[i] = (await conf.handle(say(ROOM_A, f"user{i}", "#join"))).code
            answered[i].set()

        hung = None
        for i in range(10):  # one at a time until the seeded draw hangs one
            nursery.start_soon(join, i)
            await first_of(answered[i].wait, faults.wait_fired)
            if faults.fired:
                hung = i
                break
        assert hung is not None and hung not in answers, faults  # its commit waits ...
        assert (await conf.handle(say(ROOM_B, "erin", "#join"))).code == 200, faults  # ... not B's
        assert_contained(conf, ROOM_A, since=before, restarted=False, changed=[ROOM_B], faults=faults)
        release.set()
        await answered[hung].wait()
        assert set(answers.values()) == {200}, faults
        await assert_durable(conf, faults=faults)


async def test_the_database_hanging_holds_every_room(config):
    faults = Faults(seed=SEED)
    async with faults.open_conference(config) as conf, trio.open_nursery() as nursery:
        await two_rooms(conf)
        release = faults.hang_commit()  # unscoped: the database itself hangs
        answers: list[int] = []
        both = trio.Event()

        async def join(room: str, user: str) -> None:
            answers.append((await conf.handle(say(room, user, "#join"))).code)
            if len(answers) == 2:
                both.set()

        nursery.start_soon(join, ROOM_A, "dave")
        await faults.wait_fired()
        nursery.start_soon(join, ROOM_B, "erin")
        await trio.testing.wait_all_tasks_blocked()
        assert answers == [], faults  # B's write waits behind A's, in the one database
        assert (await conf.handle(say(MANAGER, "carol", "#rooms"))).code == 200, faults  # no write
        release.set()
        await both.wait()
        assert answers == [200, 200], faults


# ---------------------------------------------------------------------- mailboxes
async def test_fill_mailbox_answers_503_and_leaves_other_rooms_alone(config):
    faults = Faults(seed=SEED)
    async with faults.open_conference(config) as conf, trio.open_nursery() as nursery:
        await two_rooms(conf)
        before = snapshot(conf)
        filled = await faults.fill_mailbox(conf, ROOM_A, nursery=nursery)
        assert conf.room_status(ROOM_A).mailbox_depth == config.mailbox_size, faults
        overflow = await conf.handle(say(ROOM_A, "carol", "anyone?"))
        assert (overflow.code, overflow.retry_after) == (503, 1), (faults, overflow)
        assert (await conf.handle(say(ROOM_B, "bob", "#members"))).code == 200, faults
        assert_contained(conf, ROOM_A, since=before, restarted=False, faults=faults)
        answers = await filled.drain()
        assert [a.code for a in answers] == [200] * (1 + config.mailbox_size), faults
        assert conf.supervisor.statistics().mailbox_full == 1, faults


async def test_random_room_stalls_fill_the_mailbox(tmp_path):
    # Without an archive chat writes nothing, so each line is answered without the writer
    # thread and wait_all_tasks_blocked() below sees every answer that is not stalled.
    config = make_config(tmp_path, mailbox_size=4, restart_limit=1000, history_max=0)
    faults = Faults(seed=SEED)
    async with faults.open_conference(config) as conf, trio.open_nursery() as nursery:
        await two_rooms(conf)
        release = faults.stall_room(room=ROOM_A, command="chat", rate=0.3)
        codes: list[int] = []

        async def chat(i: int) -> None:
            codes.append((await conf.handle(say(ROOM_A, "carol", f"burst {i}"))).code)

        sent = 0
        while not faults.fired:  # one line at a time until the seeded draw stalls the room
            assert sent < 30, faults
            nursery.start_soon(chat, sent)
            sent += 1
            await trio.testing.wait_all_tasks_blocked()  # answered (chat writes nothing), or stalled
        assert len(codes) == sent - 1, (faults, codes)
        for i in range(sent, sent + config.mailbox_size + 2):  # a burst while it is stopped
            nursery.start_soon(chat, i)
        await trio.testing.wait_all_tasks_blocked()
        assert codes.count(503) == 2, (faults, codes)  # the mailbox holds mailbox_size
        release.set()
        await trio.testing.wait_all_tasks_blocked()
        assert len(codes) == sent + config.mailbox_size + 2, (faults, codes)
        assert codes.count(202) == sent + config.mailbox_size, (faults, codes)


# ---------------------------------------------------------------------- the helpers
async def test_assert_contained_notices_a_second_room_failing(config):
    faults = Faults(seed=SEED)
    async with faults.open_conference(config) as conf:
        await two_rooms(conf)
        before = snapshot(conf)
        faults.fail_apply(room=ROOM_A)
        faults.fail_apply(room=ROOM_B)
        assert (await conf.handle(say(ROOM_A, "carol", "x"))).code == 500
        assert (await conf.handle(say(ROOM_B, "bob", "y"))).code == 500
        with pytest.raises(AssertionError, match=rf"seed={SEED}.*{ROOM_B} was restarted too"):
            assert_contained(conf, ROOM_A, since=before, faults=faults)
        with pytest.raises(AssertionError, match=f"{ROOM_A} was restarted"):
            assert_contained(conf, ROOM_A, since=before, restarted=False, changed=[ROOM_B])


async def test_assert_contained_notices_a_changed_room(config):
    async with open_conference(config) as conf:
        await two_rooms(conf)
        before = snapshot(conf)
        assert (await conf.handle(say(ROOM_B, "erin", "#join"))).code == 200
        with pytest.raises(AssertionError, match=f"{ROOM_B} changed"):
            assert_contained(conf, ROOM_A, since=before, restarted=False)
        assert_contained(conf, ROOM_A, since=before, restarted=False, changed=[ROOM_B])


async def test_assert_durable_notices_a_lost_change(config):
    faults = Faults(seed=SEED)
    async with faults.open_conference(config) as conf:
        await two_rooms(conf)
        await assert_durable(conf, faults=faults)
        assert rooms_of(conf)[ROOM_A] == {f"alice@{DOMAIN}": 1, f"carol@{DOMAIN}": 0}

        def lose_carol() -> None:  # behind the conference's back
            repository = Repository(config.db_url, config.rooms_table, config.members_table)
            repository.apply_batch([MemberDelete(ROOM_A, f"sip:carol@{DOMAIN}")])
            repository.close()

        await trio.to_thread.run_sync(lose_carol)
        with pytest.raises(AssertionError, match=rf"seed={SEED}.*differ"):
            await assert_durable(conf, faults=faults)


async def test_assert_no_leaked_tasks_notices_a_leak():
    async with trio.open_nursery() as nursery:
        with pytest.raises(AssertionError, match="still running: .*sleep_forever"):
            with assert_no_leaked_tasks():
                nursery.start_soon(trio.sleep_forever)
                await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    with assert_no_leaked_tasks():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.sleep, 0)


def test_a_random_plan_takes_its_seed_from_the_environment(monkeypatch):
    monkeypatch.setenv(SEED_ENV, "4242")
    assert Faults.random().seed == 4242
    assert repr(Faults.random()) == "Faults(seed=4242, fired=0)"
    monkeypatch.delenv(SEED_ENV)
    assert len({Faults.random().seed for _ in range(4)}) > 1


def test_rules_are_checked():
    with pytest.raises(ValueError):
        Faults().fail_apply(rate=1.5)
    assert issubclass(InjectedFault, RuntimeError)
