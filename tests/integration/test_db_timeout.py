"""A hung database does not stall a room (issue 15, item 7), end to end over SIP on 127.0.0.1.

Another client holds SQLite's write lock (``BEGIN EXCLUSIVE``). A write in the room gets 503 with
``Retry-After`` after ``db_timeout``, and a write queued behind it too; ``#members`` in that
room is answered as usual, and so is chat without an archive (with one, a chat line is a write
and gets 503 like the rest, unrelayed); nothing refused is stored, and once the lock is gone the
room writes again.
"""

from __future__ import annotations

import sqlite3

import pytest
import trio

from imc_actors.sip import Response
from tests.integration.conftest import DOMAIN, MANAGER, expect

ROOM = f"sip:chat@{DOMAIN}"
SAFETY = 20  # seconds; never reached unless something hangs


@pytest.fixture(params=[0, 1000], ids=["no-archive", "archive"])
def config_overrides(request) -> dict:
    return {"db_timeout": 0.5, "history_max": request.param}


async def test_a_locked_database_fails_the_write_and_the_room_goes_on(ua, server, tmp_path, config_overrides):
    alice, carol, dave, erin = [await ua(name) for name in ("alice", "carol", "dave", "erin")]
    assert (await alice.message(MANAGER, "#create chat")).code == 200
    await expect(alice, "*** Room was created")
    assert (await carol.message(ROOM, "#join")).code == 200
    await expect(alice, "*** [carol] has joined the room")
    await expect(carol, "*** [carol] has joined the room")
    store = server.conference.store
    assert store is not None

    lock = sqlite3.connect(tmp_path / "imc.db", isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")  # the tables are locked by another client
    answers: dict[str, Response] = {}

    async def send(agent, body: str) -> None:
        answers[f"{agent.user} {body}"] = await agent.message(ROOM, body)

    try:
        with trio.fail_after(SAFETY):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(send, dave, "#join")
                while store.statistics().pending == 0:  # dave's change is being written
                    await trio.sleep(0.01)
                nursery.start_soon(send, erin, "#join")
                nursery.start_soon(send, carol, "still here?")
                nursery.start_soon(send, carol, "#members")
    finally:
        lock.execute("ROLLBACK")
        lock.close()

    for key in ("dave #join", "erin #join"):
        assert answers[key].code == 503, (key, answers[key])
        assert int(answers[key].header("Retry-After") or 0) >= 1
    assert answers["carol #members"].code == 200
    if config_overrides["history_max"]:
        assert answers["carol still here?"].code == 503  # not archived, so not relayed either
    else:
        assert answers["carol still here?"].code == 202
        await expect(alice, "[carol]: still here?", sender=ROOM)
    await expect(carol, "Members:\n*[alice]\n[carol]", sender=ROOM)  # nobody half-joined
    assert alice.pending_messages() == []
    assert dave.pending_messages() == [] and erin.pending_messages() == []

    with trio.fail_after(SAFETY):
        await store.wait_available()  # the store resumes by itself once the database answers
    assert (await erin.message(ROOM, "#join")).code == 200
    await expect(erin, "*** [erin] has joined the room")
