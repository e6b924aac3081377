"""A sender's lines sent back to back reach the room, and its members, in the order sent.

RFC 3428 lets a UA send a MESSAGE before the last one is answered, so a bot (or a fast typist
behind a proxy) has several requests in flight. Over UDP the network may reorder them, but
over a connection they arrive in order, and the server must not reorder them itself: each is
taken on the transport's task-free path as it is read (Trio runs a batch of handler tasks in
either order). With digest authentication the same holds: tests/integration/test_auth.py.
"""

from __future__ import annotations

import pytest
import trio

from imc_actors.server import open_server
from imc_actors.sip import parse
from tests.integration.conftest import DOMAIN, MANAGER, expect, make_config
from tests.support import TestUA

ROOM = f"sip:chat@{DOMAIN}"
LINES = 40


def _address(server, transport: str) -> tuple[str, int]:
    return next((a.host, a.port) for a in server.addresses if a.transport == transport)


async def _chat(nursery, server, transport: str = "udp") -> tuple[TestUA, TestUA]:
    """alice (over UDP) owns room chat, bob (over ``transport``) has joined it; both notices
    of the join are read."""
    alice = await TestUA.open(nursery, "alice", DOMAIN, _address(server, "udp"))
    bob = await TestUA.open(nursery, "bob", DOMAIN, _address(server, transport), transport=transport)
    for agent in (alice, bob):
        assert (await agent.register()).code == 200
    assert (await alice.message(MANAGER, "#create chat")).code == 200
    await expect(alice, "*** Room was created")
    assert (await bob.message(ROOM, "#join")).code == 200
    await expect(alice, "*** [bob] has joined the room")
    await expect(bob, "*** [bob] has joined the room")
    return alice, bob


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_back_to_back_lines_reach_the_members_in_the_order_sent(nursery, tmp_path, transport):
    async with open_server(make_config(tmp_path)) as server:
        alice, bob = await _chat(nursery, server, transport)
        requests = [
            bob.build("MESSAGE", ROOM, body=f"line {index}".encode(), content_type="text/plain")
            for index in range(LINES)
        ]
        if transport == "tcp":
            await bob.send_raw(b"".join(requests), tcp=True)  # read in one go, as a busy link does
        else:
            for data in requests:
                await bob.send_raw(data)
        with trio.fail_after(10):  # safety net only
            codes = [parse(await bob.recv_raw()).code for _ in range(LINES)]
        assert codes == [202] * LINES
        for index in range(LINES):
            await expect(alice, f"[bob]: line {index}")
        alice.close()
        bob.close()


async def test_a_clean_stop_delivers_what_is_in_flight_before_the_transport_closes(nursery, tmp_path):
    # bob ignores the first copy of the line, so it is in flight (Timer E) when the server
    # is told to stop: it must go out while the transport still runs, not fail 503 and be
    # stored for a member who is there.
    config = make_config(tmp_path)
    async with open_server(config) as server:
        alice, bob = await _chat(nursery, server)
        bob.drop_next = 1
        assert (await alice.message(ROOM, "last words")).code == 202
        delivery = server.conference.delivery
        with trio.fail_after(10):  # safety net only
            while not bob.ignored:  # the copy bob ignored has arrived: the line is in flight
                await trio.sleep(0.01)
    await expect(bob, "[alice]: last words")  # the retransmission, answered this time
    assert (bob.ignored and bob.ignored[0].body) == b"[alice]: last words"
    stats = delivery.statistics()
    assert stats.stored == 0 and stats.in_flight == 0
    from imc_actors.conference import repository_of

    repository = repository_of(config)
    try:
        assert repository.pending_counts() == {}  # nothing stored for bob
    finally:
        repository.close()
