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


async def test_an_owner_whose_port_is_closed_is_no_answer_from_it(nursery: trio.Nursery) -> None:
    # a tour: after kill -9 of the owner, the ICMP port unreachable our own transport made
    # (503 Destination Unreachable) was passed on as the owner's answer: the client got a
    # bare 503 and no notice, and nothing was logged
    server = await start_core(nursery)
    closed = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    await closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there now: the kernel answers ICMP port unreachable
    forward = Forwarder(server.transport, "n1", lease_ttl=5.0)
    location = RoomLocation("chat@example.org", "n2", 1, (f"udp:127.0.0.1:{port}",))
    with trio.fail_after(4):  # safety net: ICMP comes back at once, long before lease_ttl
        answer = await forward("sip:chat@example.org", "sip:alice@example.org", b"hi",
                               "text/plain", "call-1@127.0.0.1", location)  # fmt: skip
    assert answer is None  # the conference answers 503 + Retry-After with its *** notice
    assert (forward.forwarded, forward.timeouts) == (1, 1)


async def test_forged_forwarded_by_headers_cost_no_read_each(nursery, tmp_path, monkeypatch) -> None:
    # A flood of MESSAGEs claiming to come from another node: each gets 403, and the node
    # table is read once a second at most, not once each on the store's thread (which
    # commits too), as a flood of bad passwords once stalled it.
    from imc_actors.server import NODES_REFRESH, open_server
    from imc_actors.sip import parse
    from imc_actors.store.repository import Repository
    from tests.integration.conftest import DOMAIN, make_config
    from tests.support import TestUA

    reads = []
    real = Repository.nodes

    def counted(self):  # type: ignore[no-untyped-def]
        reads.append(1)  # in the store's thread
        return real(self)

    monkeypatch.setattr(Repository, "nodes", counted)
    async with open_server(make_config(tmp_path, node="n1")) as server:
        address = next((a.host, a.port) for a in server.addresses if a.transport == "udp")
        mallory = await TestUA.open(nursery, "mallory", DOMAIN, address)
        room = f"sip:chat@{DOMAIN}"
        forged = [
            mallory.build("MESSAGE", room, body=b"#join", content_type="text/plain",
                          headers=[("X-IMC-Forwarded-By", "n2"), ("X-IMC-Request-URI", room)])
            for _ in range(50)
        ]  # fmt: skip
        before = len(reads)
        started = trio.current_time()
        for data in forged:
            await mallory.send_raw(data)
        with trio.fail_after(10):  # safety net only
            answers = [parse(await mallory.recv_raw()) for _ in forged]
        assert {(a.code, a.reason) for a in answers} == {(403, "Not Forwarded By A Known Node")}
        elapsed = trio.current_time() - started
        assert len(reads) - before <= 1 + elapsed / NODES_REFRESH
        # and a node forwarding as this very node is refused without a read at all
        before = len(reads)
        itself = mallory.build("MESSAGE", room, body=b"hi", content_type="text/plain",
                               headers=[("X-IMC-Forwarded-By", "n1")])  # fmt: skip
        await mallory.send_raw(itself)
        with trio.fail_after(10):
            assert parse(await mallory.recv_raw()).code == 403
        assert len(reads) == before
        mallory.close()


async def test_a_forged_management_action_is_refused_and_changes_nothing(nursery, tmp_path) -> None:
    # X-IMC-Admin (an imc.kick/ban/destroy_room another node hands over) is taken only from a
    # node's own address, as a forwarded MESSAGE is
    from imc_actors.conference import IncomingMessage
    from imc_actors.server import open_server
    from imc_actors.sip import parse
    from tests.integration.conftest import DOMAIN, MANAGER, make_config
    from tests.support import TestUA

    async with open_server(make_config(tmp_path, node="n1")) as server:
        room = f"sip:chat@{DOMAIN}"
        made = await server.conference.handle(
            IncomingMessage(MANAGER, f"sip:alice@{DOMAIN}", b"#create chat", None, "c1")
        )
        assert made.code == 200
        address = next((a.host, a.port) for a in server.addresses if a.transport == "udp")
        mallory = await TestUA.open(nursery, "mallory", DOMAIN, address)
        forged = mallory.build(
            "MESSAGE", room, body=b'{"user": null, "reason": ""}', content_type="application/json",
            headers=[("X-IMC-Forwarded-By", "n2"), ("X-IMC-Request-URI", room), ("X-IMC-Admin", "destroy")],
        )  # fmt: skip
        await mallory.send_raw(forged)
        with trio.fail_after(10):  # safety net only
            answer = parse(await mallory.recv_raw())
        assert (answer.code, answer.reason) == (403, "Not Forwarded By A Known Node")
        assert server.conference.room(room) is not None  # still there
        mallory.close()
