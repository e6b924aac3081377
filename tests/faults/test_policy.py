"""The supervision policy (README "Supervision policy"): what a restarted or quarantined room
answers, what is logged, and how ``restart_limit``/``restart_window`` shape it."""

from __future__ import annotations

import logging

import pytest
import trio
import trio.testing

from imc_actors.testing import Faults, members_of, snapshot
from tests.faults.common import DOMAIN, ROOM_A, ROOM_B, make_config, say, two_rooms

SEED = 7331


def supervisor_errors(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "imc_actors.supervisor" and r.levelno == logging.ERROR]


async def test_a_crash_answers_500_is_logged_and_the_queued_commands_survive(tmp_path, caplog):
    faults = Faults(seed=SEED)
    async with faults.open_conference(make_config(tmp_path)) as conf, trio.open_nursery() as nursery:
        await two_rooms(conf, joiner=None)
        answers: dict[str, int] = {}
        all_answered = trio.Event()

        async def join(user: str) -> None:
            answers[user] = (await conf.handle(say(ROOM_A, user, "#join"))).code
            if len(answers) == 3:
                all_answered.set()

        release = faults.stall_room(room=ROOM_A, command="join")  # hold the actor at carol's join
        nursery.start_soon(join, "carol")
        await faults.wait_fired()
        faults.fail_apply(room=ROOM_A, command="join")  # the next join applied raises
        nursery.start_soon(join, "dave")
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(join, "erin")  # queued behind the crash
        await trio.testing.wait_all_tasks_blocked()
        release.set()
        await all_answered.wait()
        assert answers == {"carol": 200, "dave": 500, "erin": 200}, faults
        assert set(members_of(conf.room(ROOM_A))) == {f"alice@{DOMAIN}", f"carol@{DOMAIN}", f"erin@{DOMAIN}"}
        assert conf.room_status(ROOM_A).restarts == 1 and not conf.room_status(ROOM_A).quarantined
    [message] = supervisor_errors(caplog)
    assert message.startswith(f"room={ROOM_A} actor crashed (InjectedFault(")
    assert message.endswith("restarted from its last committed state (restart 1)")
    record = next(r for r in caplog.records if r.name == "imc_actors.supervisor")
    assert record.exc_info is not None  # the traceback is logged


async def test_quarantine_after_restart_limit_crashes_then_recovery(tmp_path, caplog, autojump_clock):
    faults = Faults(seed=SEED)
    config = make_config(tmp_path, restart_limit=3, restart_window=30)
    async with faults.open_conference(config) as conf:
        await two_rooms(conf, joiner=None)
        before = snapshot(conf)
        faults.fail_apply(room=ROOM_A, times=None)
        codes = [(await conf.handle(say(ROOM_A, "alice", f"crash {i}"))).code for i in range(3)]
        assert codes == [500, 500, 500], faults
        refused = await conf.handle(say(ROOM_A, "alice", "#members"))
        assert (refused.code, refused.retry_after) == (503, 30), faults
        status = conf.room_status(ROOM_A)
        assert (status.quarantined, status.retry_after, status.restarts) == (True, 30, 3), faults
        assert conf.supervisor.statistics().quarantined == 1
        assert (await conf.handle(say(ROOM_B, "bob", "#members"))).code == 200, faults  # B is fine
        assert conf.room_status(ROOM_B).restarts == 0
        errors = supervisor_errors(caplog)
        assert len(errors) == 3 and "quarantined for 30s" in errors[-1], errors
        assert errors[-1].startswith(f"room={ROOM_A} crashed 3 times in 30s")

        await trio.sleep(10)
        later = await conf.handle(say(ROOM_A, "alice", "#members"))
        assert (later.code, later.retry_after) == (503, 20), faults  # the seconds left
        faults.clear()
        await trio.sleep(20)  # the window has passed: a fresh actor, from the committed state
        assert (await conf.handle(say(ROOM_A, "alice", "#members"))).code == 200, faults
        assert members_of(conf.room(ROOM_A)) == before.rooms[ROOM_A]
        assert not conf.room_status(ROOM_A).quarantined


async def test_commands_queued_when_a_room_is_quarantined_get_503(tmp_path):
    faults = Faults(seed=SEED)
    config = make_config(tmp_path, restart_limit=1, restart_window=45)
    async with faults.open_conference(config) as conf, trio.open_nursery() as nursery:
        await two_rooms(conf, joiner=None)
        answers: dict[str, tuple[int, int | None]] = {}
        done = trio.Event()

        async def send(user: str, body: str) -> None:
            answer = await conf.handle(say(ROOM_A, user, body))
            answers[user] = (answer.code, answer.retry_after)
            if len(answers) == 3:
                done.set()

        release = faults.stall_room(room=ROOM_A)
        nursery.start_soon(send, "alice", "first")
        await faults.wait_fired()
        faults.fail_apply(room=ROOM_A, command="join")
        for user in ("dave", "erin"):  # dave's join crashes the room; erin's waits behind it
            nursery.start_soon(send, user, "#join")
            await trio.testing.wait_all_tasks_blocked()
        release.set()
        await done.wait()
        assert answers == {"alice": (202, None), "dave": (500, None), "erin": (503, 45)}, faults


async def test_crashes_further_apart_than_the_window_never_quarantine(tmp_path, autojump_clock):
    faults = Faults(seed=SEED)
    config = make_config(tmp_path, restart_limit=2, restart_window=10)
    async with faults.open_conference(config) as conf:
        await two_rooms(conf, joiner=None)
        for _ in range(4):
            faults.fail_apply(room=ROOM_A)
            assert (await conf.handle(say(ROOM_A, "alice", "boom"))).code == 500, faults
            await trio.sleep(11)
        assert (await conf.handle(say(ROOM_A, "alice", "fine"))).code == 202, faults
        status = conf.room_status(ROOM_A)
        assert (status.restarts, status.quarantined) == (4, False), faults


@pytest.mark.parametrize("limit", [1, 2])
async def test_restart_limit_is_the_number_of_crashes_tolerated(tmp_path, limit, autojump_clock):
    faults = Faults(seed=SEED)
    async with faults.open_conference(make_config(tmp_path, restart_limit=limit)) as conf:
        await two_rooms(conf, joiner=None)
        faults.fail_apply(room=ROOM_A, times=limit)
        codes = [(await conf.handle(say(ROOM_A, "alice", f"boom {i}"))).code for i in range(limit + 1)]
        assert codes == [500] * limit + [503], (faults, codes)
