"""A failed commit fails only the commands whose changes it held (issue 15, item 7).

A room actor applies the commands queued in its mailbox together and commits their writes in
one transaction. When that commit fails, chat (without an archive, ``history_max = 0``) and
``#members`` in the same batch, which need no write, still get their own answers; those that came after the failed change are run again on
the room's committed state (so the change that was not stored leaves no trace in them).
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

from imc_actors import Answer
from imc_actors.conference import Conference, open_conference
from imc_actors.config import Config
from imc_actors.testing import Faults, members_of
from tests.faults.common import DOMAIN, ROOM_A, Inbox, make_config, say, two_rooms

SEED = 20261127

#: The batch queued behind the blocked commit: a chat, a change, a chat, a read.
BATCH = [("carol", "before"), ("erin", "#join"), ("carol", "after"), ("carol", "#members")]


@pytest.fixture
def config(tmp_path) -> Config:
    # No archive: chat is then a command without writes (with one, each line is a write and
    # fails with the batch like any change: test_supervision's outage test covers that).
    return make_config(tmp_path, history_max=0)


async def queue_batch_behind(
    conf: Conference, nursery: trio.Nursery, blocker: tuple[str, str]
) -> dict[str, Answer]:
    """Send ``blocker`` (its commit is held by a fault), then queue :data:`BATCH` behind it in
    the room's mailbox; the answers fill the returned dict (keyed ``user body``)."""
    answers: dict[str, Answer] = {}

    async def send(user: str, body: str) -> None:
        answers[f"{user} {body}"] = await conf.handle(say(ROOM_A, user, body))

    nursery.start_soon(send, *blocker)
    await trio.testing.wait_all_tasks_blocked()
    for user, body in BATCH:
        nursery.start_soon(send, user, body)
    await trio.testing.wait_all_tasks_blocked()
    assert not answers  # all of them wait: one batch behind the blocked commit
    return answers


def assert_served_without_erin(answers: dict[str, Answer], inbox: Inbox, conf: Conference) -> None:
    assert answers["carol before"].code == 202
    assert answers["carol after"].code == 202
    members = answers["carol #members"]
    assert members.code == 200 and members.body is not None
    assert b"erin" not in members.body and b"alice" in members.body  # the committed state
    assert not any(b"[carol]" in body for body in inbox.bodies_to("erin"))
    assert b"[carol]: after" in inbox.bodies_to("alice")
    assert f"erin@{DOMAIN}" not in members_of(conf.room(ROOM_A))


async def test_an_unavailable_store_fails_only_the_writes_of_a_batch(config):
    faults = Faults(seed=SEED)
    inbox = Inbox()
    async with open_conference(config, **faults.hooks(config, sender=inbox)) as conf:
        await two_rooms(conf)
        async with trio.open_nursery() as nursery:
            release = faults.hang_commit(room=ROOM_A)  # dave's commit waits in the room
            answers = await queue_batch_behind(conf, nursery, ("dave", "#join"))
            faults.fail_commit(times=None)  # meanwhile the database goes down
            release.set()
        await conf.flush_notices()
        for key in ("dave #join", "erin #join"):
            assert answers[key].code == 503 and answers[key].retry_after, (key, answers[key])
        assert_served_without_erin(answers, inbox, conf)
        assert f"dave@{DOMAIN}" not in members_of(conf.room(ROOM_A))


async def test_a_refused_change_gets_500_and_the_rest_of_its_batch_is_served(config):
    faults = Faults(seed=SEED)
    inbox = Inbox()
    async with open_conference(config, **faults.hooks(config, sender=inbox)) as conf:
        await two_rooms(conf)
        async with trio.open_nursery() as nursery:
            release = faults.hang_commit(room=ROOM_A, command="invite")
            faults.fail_commit(room=ROOM_A, command="join")  # erin's change cannot be stored
            answers = await queue_batch_behind(conf, nursery, ("alice", f"#invite frank@{DOMAIN}"))
            release.set()
        await conf.flush_notices()
        assert answers[f"alice #invite frank@{DOMAIN}"].code == 200
        assert answers["erin #join"].code == 500
        assert_served_without_erin(answers, inbox, conf)
        # the failed change does not come back after a restart either
    async with open_conference(config) as conf:
        assert f"erin@{DOMAIN}" not in members_of(conf.room(ROOM_A))
