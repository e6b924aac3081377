"""A contact given by DNS name is looked up again for each delivery: when the name moves, the
next notice goes to its new address.

Was: ``getaddrinfo``'s results were memoised for the life of the process (a decorator meant
for ``is_ip`` had slid onto the lookup), so a phone whose name moved never got another notice
until the server restarted. The server runs in a mount namespace of its own whose
``/etc/resolv.conf`` names the test's name server on loopback (as in test_dns_timeout.py);
its answers carry TTL 0, and the server keeps no cache of its own.
"""

from __future__ import annotations

import socket

import trio

from imc_actors.sip.message import Request
from imc_actors.sip.parse import parse
from tests.support import TestUA
from tests.support.dns import a_answer, needs_own_resolv, resolv_wrapper
from tests.support.serve import serve_process

NAME_SERVER = ("127.0.0.76", 53)
SERVER_HOST = "127.0.0.77"
MOVED_TO = "127.0.0.78"
NAME = "bob.dns-move.example"
ROOM = "sip:moveroom@127.0.0.1"

pytestmark = needs_own_resolv


async def test_a_contact_name_that_moves_gets_the_next_notice_at_its_new_address(
    tmp_path, nursery: trio.Nursery
) -> None:
    addresses = {NAME: "127.0.0.1"}
    asked: list[str] = []
    dns = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    await dns.bind(NAME_SERVER)

    async def answer() -> None:
        while True:
            query, peer = await dns.recvfrom(4096)
            response = a_answer(query, addresses)
            if response is not None:
                asked.append(addresses[NAME])
                await dns.sendto(response, peer)

    nursery.start_soon(answer)  # cancelled with the test's nursery
    resolv = tmp_path / "resolv.conf"
    resolv.write_text(f"nameserver {NAME_SERVER[0]}\noptions timeout:2 attempts:3\n")
    async with serve_process(
        f"sqlite:///{tmp_path}/imc.db", host=SERVER_HOST, wrapper=resolv_wrapper(resolv)
    ) as server:
        alice = await TestUA.open(nursery, "alice", "127.0.0.1", server.udp)
        bob = await TestUA.open(nursery, "bob", "127.0.0.1", server.udp)
        # where bob's name moves to: the same port on another loopback address
        moved = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        await moved.bind((MOVED_TO, bob.port))
        assert (await alice.register()).code == 200
        assert (await bob.register(contact=f"sip:bob@{NAME}:{bob.port}")).code == 200
        assert (await alice.message(ROOM, "#create moveroom")).code == 200
        await alice.next_message()  # *** Room was created
        assert (await bob.message(ROOM, "#join")).code == 200
        with trio.fail_after(20):  # safety net only
            assert (await bob.next_message()).body.startswith(b"*** ")  # joined, at 127.0.0.1
            assert (await alice.message(ROOM, "one")).code == 202
            assert (await bob.next_message()).body.endswith(b"one")
            addresses[NAME] = MOVED_TO
            assert (await alice.message(ROOM, "two")).code == 202
            data = await moved.recv(65536)  # the next notice: at the new address
        notice = parse(data)
        assert isinstance(notice, Request)
        assert notice.method == "MESSAGE" and notice.body.endswith(b"two"), data[:200]
        assert MOVED_TO in asked
        assert bob.pending_messages() == []  # nothing more at the old address
        moved.close()
