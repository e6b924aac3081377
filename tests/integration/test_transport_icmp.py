"""ICMP port unreachable over real sockets: a request to a closed UDP port fails at once.

On Linux the transport reads ICMP errors off its UDP sockets (``IP_RECVERR``): a request to a
port nobody listens on ends with 503 ``Destination Unreachable`` as soon as the kernel reports
it, not at Timer F (32 s); requests to anyone else go on undisturbed, even when the socket's
stale error would have refused their datagram. Every ``fail_after`` here is a safety net far
below Timer F, not a timing assertion.
"""

from __future__ import annotations

import socket
import sys

import pytest
import trio
import trio.testing

from imc_actors.transport import ClientResult
from tests.integration.conftest import MANAGER, expect
from tests.support import TestUA, free_port, start_core

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="ICMP errors on UDP sockets are read on Linux"
)

DOMAIN = "example.org"
ROOM = "sip:room@example.org"
UNREACHABLE = ClientResult(503, "Destination Unreachable")
OK = ClientResult(200, "OK")


def has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


class Outcomes:
    """What ``on_result`` is called with, by name; ``wait(n)`` until ``n`` came."""

    def __init__(self) -> None:
        self.results: dict[str, ClientResult] = {}
        self._changed = trio.Event()

    def on_result(self, name: str):
        def record(result: ClientResult) -> None:
            assert name not in self.results, f"{name}: called twice"
            self.results[name] = result
            self._changed.set()

        return record

    async def wait(self, n: int) -> None:
        while len(self.results) < n:
            self._changed = trio.Event()
            await self._changed.wait()


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        pytest.param(
            "::1", marks=pytest.mark.skipif(not has_ipv6_loopback(), reason="no ::1 here")
        ),
    ],
)
async def test_send_request_to_a_closed_port_fails_at_once(nursery: trio.Nursery, host) -> None:
    uri_host = f"[{host}]" if ":" in host else host
    server = await start_core(nursery, listen=(f"udp:{uri_host}:0",))
    dead = free_port(host=host)
    with trio.fail_after(5):  # Timer F would be 32 s
        result = await server.transport.send_request(
            "MESSAGE", f"sip:ghost@{uri_host}:{dead}", from_uri=ROOM,
            to_uri="sip:ghost@example.org", body=b"anyone?",
        )  # fmt: skip
    assert result == UNREACHABLE
    stats = server.transport.statistics()
    assert (stats.client_unreachable, stats.client_failed, stats.client_timeouts) == (1, 1, 0)
    assert stats.client_transactions == 0  # gone at once: no Timer K, no Timer F left


async def test_start_request_to_a_closed_port_fails_at_once(nursery: trio.Nursery) -> None:
    server = await start_core(nursery)
    dead = f"sip:ghost@127.0.0.1:{free_port()}"
    outcomes = Outcomes()
    assert server.transport.start_request(
        "MESSAGE", dead, from_uri=ROOM, to_uri=dead, body=b"x", on_result=outcomes.on_result("dead")
    )  # fmt: skip
    with trio.fail_after(5):
        await outcomes.wait(1)
    assert outcomes.results == {"dead": UNREACHABLE}
    stats = server.transport.statistics()
    assert (stats.client_unreachable, stats.client_failed, stats.client_transactions) == (1, 1, 0)


async def test_a_live_destination_is_unaffected_by_an_unreachable_one(
    nursery: trio.Nursery,
) -> None:
    server = await start_core(nursery)
    ua = await TestUA.open(nursery, "alice", DOMAIN, server.address())
    dead = f"sip:ghost@127.0.0.1:{free_port()}"
    results: dict[tuple[str, int], ClientResult] = {}

    async def send(name: str, index: int, uri: str) -> None:
        results[name, index] = await server.transport.send_request(
            "MESSAGE", uri, from_uri=ROOM, to_uri=uri, body=f"{name} {index}".encode()
        )

    with trio.fail_after(5):
        async with trio.open_nursery() as both:
            for index in range(3):
                both.start_soon(send, "dead", index, dead)
                both.start_soon(send, "live", index, ua.contact)
    assert results == {
        **{("dead", i): UNREACHABLE for i in range(3)},
        **{("live", i): OK for i in range(3)},
    }
    assert sorted(m.body for m in ua.received) == [b"live 0", b"live 1", b"live 2"]
    stats = server.transport.statistics()
    assert (stats.client_unreachable, stats.client_ok, stats.client_failed) == (3, 3, 3)
    assert stats.send_errors == 0


async def test_a_stale_icmp_error_does_not_cost_the_next_datagram(nursery: trio.Nursery) -> None:
    """On loopback the ICMP error is queued while the send to the closed port returns, so the
    very next ``sendto`` on that socket (here: to a live UA, without a checkpoint in between)
    meets the stale ECONNREFUSED; it is retried, and every request goes out once."""
    server = await start_core(nursery)
    ua = await TestUA.open(nursery, "alice", DOMAIN, server.address())
    outcomes = Outcomes()
    started = []
    for index in range(3):
        dead = f"sip:ghost@127.0.0.1:{free_port()}"
        for name, uri in ((f"dead {index}", dead), (f"live {index}", ua.contact)):
            taken = server.transport.start_request(
                "MESSAGE", uri, from_uri=ROOM, to_uri=uri, body=name.encode(),
                on_result=outcomes.on_result(name),
            )  # fmt: skip
            started.append(taken)
    assert started == [True] * 6  # without the retry every live one would be declined
    with trio.fail_after(5):
        await outcomes.wait(6)
    for index in range(3):
        assert outcomes.results[f"dead {index}"] == UNREACHABLE
        assert outcomes.results[f"live {index}"] == OK
    stats = server.transport.statistics()
    assert (stats.client_unreachable, stats.client_ok, stats.send_errors) == (3, 3, 0)
    assert ua.retransmissions == 0  # each live request arrived at its first sending
    with trio.fail_after(5):  # an undrained error queue keeps the socket "ready": a busy loop
        await trio.testing.wait_all_tasks_blocked()


async def test_a_server_whose_answers_drew_icmp_errors_still_answers(
    nursery: trio.Nursery,
) -> None:
    server = await start_core(nursery)
    ua = await TestUA.open(nursery, "alice", DOMAIN, server.address())
    for _ in range(3):
        dead = free_port()
        # Via without rport names a closed port: the server's 200 draws an ICMP error
        misdirected = (
            ua.build("OPTIONS", f"sip:{DOMAIN}")
            .replace(f"127.0.0.1:{ua.port};".encode(), f"127.0.0.1:{dead};".encode())
            .replace(b";rport", b"")
        )  # fmt: skip
        await ua.send_raw(misdirected)
        with trio.fail_after(5):
            assert (await ua.request("OPTIONS", f"sip:{DOMAIN}")).code == 200
    stats = server.transport.statistics()
    assert stats.requests == 6 and stats.send_errors == 0
    assert stats.retransmissions_absorbed == 0  # each answer came at the first asking
    assert stats.client_unreachable == 0  # answers are no client transactions


# ------------------------------------------------------------------ the whole server
CHAT = "sip:chat@127.0.0.1"


@pytest.mark.parametrize("contacts", [1, 2])
async def test_a_member_at_a_closed_port_has_its_notice_stored_at_once(
    server, ua, contacts: int
) -> None:
    alice, dead = await ua("alice"), await ua("dead")
    assert (await alice.message(MANAGER, "#create chat")).code == 200
    assert (await dead.message(CHAT, "#join")).code == 200
    await expect(dead, "*** [dead] has joined the room")
    for line in range(contacts):  # the phone is gone: only closed ports are registered
        contact = f"sip:dead@127.0.0.1:{free_port()};line={line}"
        assert (await dead.register(contact=contact)).code == 200
    assert (await dead.register(contact=dead.contact, expires=0)).code == 200
    delivery = server.conference.delivery
    assert delivery.statistics().stored == 0
    with trio.fail_after(5):  # Timer F would be 32 s
        assert (await alice.message(CHAT, "are you there?")).code == 202
        while delivery.statistics().stored < 1:
            await trio.sleep(0.01)
    assert delivery.statistics().stored == 1 and delivery.statistics().pending == 1
    stats = server.transport.statistics()
    assert stats.client_unreachable == contacts and stats.client_timeouts == 0
    assert dead.pending_messages() == []  # nothing reached its old contact
