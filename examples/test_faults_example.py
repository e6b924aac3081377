"""Fault-injection tests a user of imc-actors would write for their own application.

Run them with one command, from the repository root::

    python -m pytest examples/test_faults_example.py

(needs pytest and pytest-trio: ``pip install -e '.[test]'``). Each test opens a conference
through a :class:`imc_actors.testing.Faults` plan, makes something go wrong, and checks that
the failure stayed contained. Random faults use a seed that is printed in every assertion
message; to replay a failing run, set it: ``IMC_FAULT_SEED=1234 python -m pytest ...``.
"""

from __future__ import annotations

import pytest
import trio

from imc_actors import Config, Delivered, IncomingMessage
from imc_actors.testing import (
    Faults,
    assert_contained,
    assert_durable,
    assert_no_leaked_tasks,
    members_of,
    snapshot,
)

pytestmark = pytest.mark.trio

DOMAIN = "example.com"
MANAGER = f"sip:imc-manager@{DOMAIN}"
SUPPORT = f"sip:support@{DOMAIN}"
SALES = f"sip:sales@{DOMAIN}"


def say(room: str, user: str, body: str) -> IncomingMessage:
    return IncomingMessage(room, f"sip:{user}@{DOMAIN}", body.encode(), "text/plain")


@pytest.fixture
def config(tmp_path) -> Config:
    return Config(db_url=f"sqlite:///{tmp_path}/rooms.db", domains=[DOMAIN])


async def open_two_rooms(conference) -> None:
    for owner, name in (("alice", "support"), ("bob", "sales")):
        assert (await conference.handle(say(MANAGER, owner, f"#create {name}"))).code == 200
    assert (await conference.handle(say(SUPPORT, "carol", "#join"))).code == 200


async def test_a_crashing_room_does_not_take_the_others_down(config):
    faults = Faults.random()  # the seed is in every assertion message below
    # By default a room that crashes 5 times within 60 s is quarantined (503); allow more here.
    config = config.replace(restart_limit=100)
    with assert_no_leaked_tasks(faults):
        async with faults.open_conference(config) as conference:
            await open_two_rooms(conference)
            before = snapshot(conference)
            faults.fail_apply(room=SUPPORT, rate=0.5, times=None)  # support's actor crashes at random

            answers = [(await conference.handle(say(SUPPORT, "carol", f"line {i}"))).code for i in range(8)]
            assert set(answers) <= {202, 500}, faults
            crashes = answers.count(500)
            faults.clear()

            # the other room never noticed; support restarted once per crash and still works
            assert_contained(conference, SUPPORT, since=before, restarted=crashes, faults=faults)
            assert (await conference.handle(say(SALES, "bob", "still here"))).code == 202, faults
            assert (await conference.handle(say(SUPPORT, "carol", "back again"))).code == 202, faults
            await assert_durable(conference, faults=faults)


async def test_an_unreachable_invitee_is_withdrawn_and_the_inviter_told(config):
    faults = Faults(seed=7)
    faults.fail_delivery(to=f"sip:dave@{DOMAIN}", code=480)  # dave's phone is off
    async with faults.open_conference(config) as conference:
        await open_two_rooms(conference)
        with conference.subscribe(f"sip:alice@{DOMAIN}") as alice, trio.fail_after(10):
            assert (await conference.handle(say(SUPPORT, "alice", "#invite dave"))).code == 200
            while True:  # the failed delivery goes back to the room, which withdraws the invitation
                delivered: Delivered = await alice.receive()
                if delivered.notice.body.startswith(b"*** Invitation to [dave] failed: 480"):
                    break
        assert f"dave@{DOMAIN}" not in members_of(conference.room(SUPPORT)), faults
        await assert_durable(conference, faults=faults)


async def test_nothing_acknowledged_is_lost_when_commits_fail(config):
    faults = Faults.random()
    acknowledged: set[str] = set()
    async with faults.open_conference(config) as conference:
        await open_two_rooms(conference)
        faults.fail_commit(room=SUPPORT, command="join", rate=0.3, times=None)  # fail at random
        for i in range(10):
            answer = await conference.handle(say(SUPPORT, f"user{i}", "#join"))
            assert answer.code in (200, 500), faults
            if answer.code == 200:
                acknowledged.add(f"user{i}@{DOMAIN}")
    # a new conference on the same database: every acknowledged join is there, no other one
    async with faults.open_conference(config) as conference:
        joined = set(members_of(conference.room(SUPPORT))) - {f"alice@{DOMAIN}", f"carol@{DOMAIN}"}
        assert joined == acknowledged, faults


async def test_a_full_mailbox_answers_503_and_other_rooms_go_on(config):
    faults = Faults(seed=11)
    async with faults.open_conference(config.replace(mailbox_size=3)) as conference, trio.open_nursery() as nursery:
        await open_two_rooms(conference)
        filled = await faults.fill_mailbox(conference, SUPPORT, nursery=nursery)
        overflow = await conference.handle(say(SUPPORT, "carol", "anyone?"))
        assert overflow.code == 503 and overflow.retry_after, (faults, overflow)
        assert (await conference.handle(say(SALES, "bob", "#members"))).code == 200, faults
        answers = await filled.drain()
        assert {answer.code for answer in answers} == {200}, faults
