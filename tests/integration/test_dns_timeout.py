"""A name server that does not answer: ``dns_timeout`` and ``dns_lookups_max``.

The server runs as a subprocess in a mount namespace of its own (``unshare -m``) whose
``/etc/resolv.conf`` names a "name server" on loopback that reads every query and answers
none, with a resolver timeout far longer than ``dns_timeout``. Needs root and ``unshare``
(CI runs as root); skipped elsewhere.
"""

from __future__ import annotations

import socket

import trio

from tests.support import TestUA
from tests.support.dns import needs_own_resolv, resolv_wrapper
from tests.support.serve import serve_process

DEAD_DNS = ("127.0.0.71", 53)
SERVER_HOST = "127.0.0.72"
ROOM = "sip:dnsroom@127.0.0.1"


pytestmark = needs_own_resolv


async def test_a_name_server_that_never_answers_costs_a_member_dns_timeout_and_nobody_else(
    tmp_path, nursery: trio.Nursery
) -> None:
    # was: each notice to a member whose contact is a DNS name waited for the resolver's own
    # timeout (here 30 s; glibc's default 5 s x 2 attempts per name server), in a thread of
    # trio's shared pool
    queries: list[bytes] = []
    dead = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    await dead.bind(DEAD_DNS)

    async def swallow() -> None:
        while True:
            data, _ = await dead.recvfrom(4096)
            queries.append(data)

    nursery.start_soon(swallow)  # cancelled with the test's nursery; the socket closed then
    resolv = tmp_path / "resolv.conf"
    resolv.write_text(f"nameserver {DEAD_DNS[0]}\noptions timeout:30 attempts:1\n")
    wrapper = resolv_wrapper(resolv)
    env = {"IMC_DNS_TIMEOUT": "1", "IMC_DNS_LOOKUPS_MAX": "1"}
    async with serve_process(
        f"sqlite:///{tmp_path}/imc.db", host=SERVER_HOST, env=env, wrapper=wrapper
    ) as server:
        alice = await TestUA.open(nursery, "alice", "127.0.0.1", server.udp)
        bob = await TestUA.open(nursery, "bob", "127.0.0.1", server.udp)
        carol = await TestUA.open(nursery, "carol", "127.0.0.1", server.udp)
        assert (await alice.register()).code == 200
        # bob and carol registered contacts by name: only the dead name server knows them
        assert (await bob.register(contact="sip:bob@bob.dns-test.example:5070")).code == 200
        assert (await carol.register(contact="sip:carol@carol.dns-test.example:5070")).code == 200
        assert (await alice.message(ROOM, "#create dnsroom")).code == 200
        await alice.next_message()  # *** Room was created
        assert (await bob.message(ROOM, "#join")).code == 200
        assert (await carol.message(ROOM, "#join")).code == 200
        with trio.fail_after(20):  # safety net only: without dns_timeout this takes 30 s
            first = await server.logged(b"no answer within dns_timeout (1 s)")
            # the one lookup thread is still held by the first name's hung getaddrinfo: the
            # next name waits for it, within its own dns_timeout
            queued = await server.logged(b"waiting behind 1 lookups (dns_lookups_max)")
            # alice, reached at an IP address, got both joins meanwhile
            joined = [(await alice.next_message()).body for _ in range(2)]
        assert b"waiting behind" not in first, first
        assert b"dns-test.example" in queued
        assert joined == [b"*** [bob] has joined the room", b"*** [carol] has joined the room"]
        assert any(b"dns-test" in query for query in queries)  # it did ask the name server
        # the server goes on answering at once
        assert (await alice.message(ROOM, "still here")).code == 202
        assert (await alice.request("OPTIONS", "sip:127.0.0.1")).code == 200
