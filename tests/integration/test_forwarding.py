"""The forwarding node waits for the owner's answer at most ``lease_ttl`` (issue 13 item 2):
an owner that hangs (stopped, not dead: its sockets still take datagrams) must not hold the
client until its own Timer F. Real UDP on 127.0.0.1; the clock jumps (``autojump_clock``)."""

from __future__ import annotations

import socket

import trio
import trio.testing

from imc_actors.forwarding import Forwarder
from imc_actors.store.nodes import RoomLocation
from tests.support import start_core


async def test_an_owner_that_does_not_answer_is_given_up_after_lease_ttl(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    server = await start_core(nursery)
    silent = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # takes datagrams, answers none
    await silent.bind(("127.0.0.1", 0))
    port = silent.getsockname()[1]
    forward = Forwarder(server.transport, "n1", lease_ttl=5.0)
    location = RoomLocation("chat@example.org", "n2", 1, (f"udp:127.0.0.1:{port}",))
    started = trio.current_time()
    answer = await forward("sip:chat@example.org", "sip:alice@example.org", b"hi", "text/plain",
                           "call-1@127.0.0.1", location)  # fmt: skip
    assert answer is None  # the conference then answers 503 + Retry-After with a notice
    assert trio.current_time() - started == 5.0  # lease_ttl, not Timer F's 32 s
    assert (forward.forwarded, forward.timeouts) == (1, 1)
    data, _ = await silent.recvfrom(65536)
    assert data.startswith(b"MESSAGE sip:127.0.0.1:") and b"X-IMC-Forwarded-By: n1" in data
    assert server.transport.statistics().client_transactions == 0  # abandoned, nothing left
    silent.close()
