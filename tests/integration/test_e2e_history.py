"""#history, replay on join, #topic and #info end to end: real SIP over UDP on 127.0.0.1."""

from __future__ import annotations

import email.utils
import time

import pytest

from imc_actors.imc import texts
from tests.integration.conftest import DOMAIN, MANAGER, expect
from tests.integration.test_e2e_commands import no_more_messages

ROOM = f"sip:chat@{DOMAIN}"
#: The SIP-only tests also run against `serve --workers 2` (see conftest.py).
TWO_WORKERS = True
#: `#rooms` shows one node's rooms until item 3 of issue 13 makes it cluster-wide.
ONE_SERVER_ONLY = {"test_topic_and_info"}


async def room_with(ua, *users):
    """alice creates chat; ``users`` join it; every notice so far is read."""
    agents = {"alice": await ua("alice")}
    assert (await agents["alice"].message(MANAGER, "#create chat")).code == 200
    await expect(agents["alice"], "*** Room was created")
    for user in users:
        agents[user] = await ua(user)
        assert (await agents[user].message(ROOM, "#join")).code == 200
        for agent in agents.values():
            await expect(agent, f"*** [{user}] has joined the room")
    return agents


async def test_a_joiner_gets_the_topic_and_the_last_lines_with_their_dates(ua):
    agents = await room_with(ua, "bob")
    alice, bob = agents["alice"], agents["bob"]
    assert (await alice.message(ROOM, "#topic Friday: pizza")).code == 200
    for agent in (alice, bob):
        await expect(agent, "*** [alice] set the topic: Friday: pizza")
    before = int(time.time())
    assert (await bob.message(ROOM, "first line", content_type="text/x-chat")).code == 202
    await expect(alice, "[bob]: first line")
    assert (await alice.message(ROOM, "second line")).code == 202
    await expect(bob, "[alice]: second line")
    after = int(time.time()) + 1

    carol = await ua("carol")
    assert (await carol.message(ROOM, "#join")).code == 200
    for agent in (alice, bob, carol):
        await expect(agent, "*** [carol] has joined the room")
    await expect(carol, "*** Topic: Friday: pizza", sender=ROOM)
    first = await expect(carol, "[bob]: first line", sender=ROOM)
    second = await expect(carol, "[alice]: second line", sender=ROOM)
    assert first.header("Content-Type") == "text/x-chat"
    for replayed in (first, second):
        when = email.utils.parsedate_to_datetime(replayed.header("Date")).timestamp()
        assert before <= when <= after, (replayed.header("Date"), before, after)
    assert (await bob.message(ROOM, "live again")).code == 202  # relayed, not replayed twice
    await expect(carol, "[bob]: live again")
    await expect(alice, "[bob]: live again")
    await no_more_messages(alice, bob, carol)


async def test_history_pages_and_refusals(ua):
    agents = await room_with(ua, "bob")
    alice, bob = agents["alice"], agents["bob"]
    for i in range(3):
        assert (await bob.message(ROOM, f"line {i}")).code == 202
        await expect(alice, f"[bob]: line {i}")
    assert (await alice.message(ROOM, "#history 2")).code == 200
    page = (await alice.next_message()).body.decode()
    lines = page.split("\n")
    assert lines[0] == "History:" and len(lines) == 3
    assert lines[1].endswith(" UTC [bob]: line 1") and lines[2].endswith(" UTC [bob]: line 2")
    assert (await bob.message(ROOM, "x" * 3000)).code == 202  # a line larger than a page
    await expect(alice, "[bob]: " + "x" * 3000)
    assert (await bob.message(ROOM, "#history 1")).code == 200
    long_page = (await bob.next_message()).body.decode()
    assert long_page.startswith("History:\n") and long_page.endswith("[bob]: " + "x" * 3000)

    eve = await ua("eve")
    assert (await eve.message(ROOM, "#history")).code == 403
    await expect(eve, texts.NOT_A_MEMBER, sender=ROOM)
    assert (await alice.message(ROOM, "#history 101")).code == 400
    await expect(alice, "*** The number of lines must be from 1 to 100", sender=ROOM)
    assert (await alice.message(MANAGER, "#history")).code == 400
    await expect(alice, "*** Missing room name", sender=MANAGER)
    assert (await alice.message(MANAGER, "#history 1 chat")).code == 200
    await expect(alice, "History:\n" + long_page.split("\n", 1)[1], sender=ROOM)
    await no_more_messages(alice, bob, eve)


async def test_topic_and_info(ua):
    agents = await room_with(ua, "bob")
    alice, bob = agents["alice"], agents["bob"]
    assert (await bob.message(ROOM, "#topic mine")).code == 403
    await expect(bob, "*** You don't have the permission to change the topic of this room")
    assert (await bob.message(ROOM, "#topic")).code == 200
    await expect(bob, "*** No topic is set")
    assert (await alice.message(ROOM, "#topic  Plans  for Friday")).code == 200
    for agent in (alice, bob):
        await expect(agent, "*** [alice] set the topic: Plans  for Friday")
    assert (await bob.message(ROOM, "#topic")).code == 200
    await expect(bob, "*** Topic: Plans  for Friday")
    assert (await bob.message(MANAGER, "#rooms")).code == 200
    await expect(bob, "Rooms:\n[chat] - Plans  for Friday")
    assert (await bob.message(ROOM, "#info")).code == 200
    info = (await bob.next_message()).body.decode().split("\n")
    assert info[:6] == [
        "Info:", f"Room: {ROOM}", "Topic: Plans  for Friday", "Type: public", "Owners: [alice]",
        "Members: 2",
    ]  # fmt: skip
    assert info[6].startswith("Created: ") and info[6].endswith(" UTC")
    assert (await alice.message(ROOM, "#topic " + "t" * 256)).code == 400
    await expect(alice, "*** Topic too long (at most 255 characters)")
    assert (await alice.message(ROOM, "#topic -")).code == 200
    for agent in (alice, bob):
        await expect(agent, "*** [alice] cleared the topic")
    await no_more_messages(alice, bob)


@pytest.fixture
def config_overrides(request) -> dict:
    return getattr(request, "param", {})


@pytest.mark.parametrize("config_overrides", [{"history_max": 0}], indirect=True)
async def test_without_an_archive_history_is_refused_and_nothing_is_replayed(ua):
    agents = await room_with(ua, "bob")
    alice, bob = agents["alice"], agents["bob"]
    assert (await bob.message(ROOM, "not kept")).code == 202
    await expect(alice, "[bob]: not kept")
    assert (await bob.message(ROOM, "#history")).code == 403
    await expect(bob, "*** This server keeps no history (history_max = 0)")
    carol = await ua("carol")
    assert (await carol.message(ROOM, "#join")).code == 200
    for agent in (alice, bob, carol):
        await expect(agent, "*** [carol] has joined the room")
    await no_more_messages(alice, bob, carol)
