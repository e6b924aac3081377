"""Delivery over real sockets: no loops, isolation, store and forward, answer first.

The loop tests run the server on port 5060 (of 127.0.0.5, so nothing collides) with the
default settings otherwise: the self-loop of an unregistered sender only showed there.
"""

from __future__ import annotations

import socket

import pytest
import trio
import trio.testing

from imc_actors.config import Config
from imc_actors.server import Server, open_server
from imc_actors.sip import Request, Response, parse
from tests.integration.conftest import DOMAIN, MANAGER, expect, udp_address
from tests.support.ua import TestUA

HOST5060 = "127.0.0.5"
CHAT = f"sip:chat@{DOMAIN}"


async def eventually(condition, what: str) -> None:
    """Poll ``condition()`` until it holds (a safety net of 10 s, not a timing assertion)."""
    with trio.fail_after(10):
        while not condition():
            await trio.sleep(0.01)


async def settle(server: Server) -> None:
    """Every notice queued so far has been delivered, has failed or is stored."""
    with trio.fail_after(10):
        await server.conference.flush_notices()
        await trio.testing.wait_all_tasks_blocked()
        await server.conference.flush_notices()


@pytest.fixture
async def server5060(tmp_path):
    config = Config.from_sources(
        environ={},
        overrides={
            "listen": [f"udp:{HOST5060}:5060", f"tcp:{HOST5060}:5060"],
            "db_url": f"sqlite:///{tmp_path}/imc.db",
        },
    )
    async with open_server(config) as server:
        yield server


async def open_ua(
    nursery, server: Server, user: str, domain: str, *, register: bool = True, answer: int = 200
) -> TestUA:
    agent = await TestUA.open(nursery, user, domain, udp_address(server), answer=answer)
    if register:
        assert (await agent.register()).code == 200
    return agent


async def test_default_port_unregistered_sender_starts_no_loop(nursery, server5060) -> None:
    server = server5060
    domain = HOST5060
    ghost = await open_ua(nursery, server, "ghost", domain, register=False)
    manager = f"sip:imc-manager@{domain}"
    assert (await ghost.message(f"sip:nosuch@{domain}", "hello?")).code == 404
    assert (await ghost.message(manager, "#help")).code == 200
    assert (await ghost.message(manager, "#create lobby")).code == 200
    assert (await ghost.message(f"sip:lobby@{domain}", "#invite offline")).code == 200
    await settle(server)
    stats = server.transport.statistics()
    assert stats.requests == 4  # the four above: no notice came back to us as a request
    assert (stats.loops, stats.self_targets) == (0, 0)
    # ghost and offline are users of our domain without a binding: 480 here, nothing sent
    assert stats.client_ok == 0 and stats.sent == 4  # only the four responses left the socket

    def withdrawn() -> bool:  # the undeliverable invitation is withdrawn by the room
        room = server.conference.room(f"sip:lobby@{domain}")
        return room is not None and [m.uri for m in room.members] == [f"sip:ghost@{domain}"]

    await eventually(withdrawn, "invitation withdrawn")
    await settle(server)
    assert server.transport.statistics().requests == 4
    assert ghost.pending_messages() == []


async def test_a_contact_that_is_this_server_is_refused_at_register(nursery, server5060) -> None:
    # was: 200, then every notice for that member was refused at the send ("is this server"),
    # one WARNING each
    mallory = await open_ua(nursery, server5060, "mallory", HOST5060, register=False)
    for contact in (f"sip:mallory@{HOST5060}:5060", f"sip:mallory@{HOST5060}:5060;transport=tcp",
                    f"sip:mallory@{HOST5060}",
                    f"sip:mallory@[::ffff:{HOST5060}]:5060"):  # the IPv4-mapped spelling too  # fmt: skip
        reply = await mallory.register(contact=contact)
        assert (reply.code, reply.reason) == (400, "Invalid Contact"), contact
        assert b"is this server" in reply.body
    assert server5060.registrar is not None
    assert server5060.registrar.lookup(f"mallory@{HOST5060}", trio.current_time()) == []
    assert (await mallory.register()).code == 200  # its own address is fine
    assert (await mallory.register(contact=f"sip:mallory@{HOST5060}:5099")).code == 200  # another port


async def test_two_unregistered_members_make_nothing_up(nursery, server5060) -> None:
    server, domain = server5060, HOST5060
    room = f"sip:chat@{domain}"
    alice = await open_ua(nursery, server, "alice", domain)
    assert (await alice.message(f"sip:imc-manager@{domain}", "#create chat")).code == 200
    assert (await alice.message(room, "#add bob")).code == 200
    assert (await alice.message(room, "#add carol")).code == 200
    for i in range(3):
        assert (await alice.message(room, f"line {i}")).code == 202
    await settle(server)
    bodies = [m.body for m in alice.pending_messages()]
    assert bodies == [
        b"*** Room was created", b"*** [bob] has joined the room", b"*** [carol] has joined the room",
    ]  # fmt: skip
    stats = server.conference.delivery.statistics()
    assert stats.pending == 5 + 4  # bob: his join, carol's join, 3 lines; carol: hers, 3 lines
    assert server.transport.statistics().requests == 7  # her REGISTER and six MESSAGEs


class StandInProxy:
    """What Kamailio does for a user of the rooms' domain it has no registration for, in the
    example setup: it proxies the request back to imc-actors (adding its own Via), and relays
    responses back down the Via path."""

    def __init__(self, sock: trio.socket.SocketType, imc: tuple[str, int]) -> None:
        self.sock = sock
        self.imc = imc
        self.requests: list[Request] = []
        self.responses: list[int] = []
        self.port = sock.getsockname()[1]
        self.scope = trio.CancelScope()

    async def run(self) -> None:
        with self.scope:
            await self._forward()

    async def _forward(self) -> None:
        count = 0
        while True:
            data, _ = await self.sock.recvfrom(70000)
            message = parse(data)
            head, _, rest = data.partition(b"\r\n")
            if isinstance(message, Response):
                self.responses.append(message.code)
                first, _, after = rest.partition(b"\r\n")  # our Via is the top one
                assert first.startswith(b"Via: SIP/2.0/UDP 127.0.0.1:%d" % self.port), first
                await self.sock.sendto(head + b"\r\n" + after, self.imc)
            else:
                self.requests.append(message)
                count += 1
                via = b"Via: SIP/2.0/UDP 127.0.0.1:%d;branch=z9hG4bKstandin%d\r\n" % (
                    self.port,
                    count,
                )
                await self.sock.sendto(head + b"\r\n" + via + rest, self.imc)


async def test_invite_through_a_proxy_that_routes_back_to_us_stops_at_once(
    nursery, tmp_path
) -> None:
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    await sock.bind(("127.0.0.1", 0))
    config = Config.from_sources(
        environ={},
        overrides={
            "listen": ["udp:127.0.0.1:0"], "db_url": f"sqlite:///{tmp_path}/imc.db",
            "domains": ["127.0.0.1"], "registrar": False,
            "outbound_proxy": f"sip:127.0.0.1:{sock.getsockname()[1]}",
        },
    )  # fmt: skip
    async with open_server(config) as server:
        proxy = StandInProxy(sock, udp_address(server))
        nursery.start_soon(proxy.run)
        alice = await TestUA.open(nursery, "alice", "127.0.0.1", udp_address(server))
        assert (await alice.message(MANAGER, "#create chat")).code == 200
        assert (await alice.message(CHAT, "#invite carol")).code == 200
        await eventually(lambda: len(proxy.responses) == 3, "three notices refused")
        await settle(server)
        stats = server.transport.statistics()
        # each notice went out once, came back once and was refused 482 at once:
        # "Room was created", the invitation, and alice's "invitation failed" notice
        assert len(proxy.requests) == 3 and proxy.responses == [482, 482, 482]
        assert stats.loops == 3 and stats.requests == 2  # only alice's two reached a handler
        room = server.conference.room(CHAT)
        assert room is not None and [m.uri for m in room.members] == ["sip:alice@127.0.0.1"]
        proxy.scope.cancel()


async def test_a_message_from_one_of_our_rooms_gets_482_and_causes_nothing(server, ua) -> None:
    alice = await ua("alice")
    assert (await alice.message(MANAGER, "#create chat")).code == 200
    await expect(alice, "*** Room was created")
    forged = alice.build("MESSAGE", CHAT, body=b"#destroy", content_type="text/plain")
    forged = forged.replace(b"From: <sip:alice@127.0.0.1>", b"From: <sip:chat@127.0.0.1>")
    assert b"From: <sip:chat@127.0.0.1>" in forged
    await alice.send_raw(forged)
    with trio.fail_after(5):
        answer = await alice.recv_raw()
    assert answer.startswith(b"SIP/2.0 482 ")
    await settle(server)
    assert server.conference.room(CHAT) is not None and alice.pending_messages() == []


async def test_a_dead_member_delays_only_its_own_notices(nursery, server, ua) -> None:
    blackhole = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    await blackhole.bind(("127.0.0.1", 0))  # never read: nothing is ever answered
    port = blackhole.getsockname()[1]
    dead = await ua("dead")
    for contact in (f"sip:dead@127.0.0.1:{port}", f"sip:dead@127.0.0.1:{port};line=2"):
        assert (await dead.register(contact=contact)).code == 200
    assert (await dead.register(contact=dead.contact, expires=0)).code == 200  # only the holes
    alice, bob = await ua("alice"), await ua("bob")
    assert (await alice.message(MANAGER, "#create chat")).code == 200
    assert (await bob.message(CHAT, "#join")).code == 200
    await expect(bob, "*** [bob] has joined the room")
    for _ in range(30):  # replies for dead pile up in dead's own lane
        assert (await dead.message(MANAGER, "#help")).code == 200
    for i in range(20):
        assert (await alice.message(CHAT, f"line {i}")).code == 202
        await expect(bob, f"[alice]: line {i}")  # at once, not after dead's Timer F
    stats = server.conference.delivery.statistics()
    assert stats.in_flight == 1 and stats.queued == 29  # dead: one in flight, the rest queued
    blackhole.close()


async def test_an_absent_member_gets_what_it_missed_in_order_when_it_registers(server, ua) -> None:
    alice, bob = await ua("alice"), await ua("bob")
    assert (await alice.message(MANAGER, "#create chat")).code == 200
    assert (await bob.message(CHAT, "#join")).code == 200
    assert (await bob.register(expires=0)).code == 200  # bob goes away
    bob.pending_messages()
    for i in range(3):
        assert (await alice.message(CHAT, f"missed {i}")).code == 202
    await settle(server)
    assert bob.pending_messages() == []
    assert server.conference.delivery.statistics().pending == 3
    assert (await bob.register()).code == 200  # back: the stored lines follow the 200
    missed = [await expect(bob, f"[alice]: missed {i}") for i in range(3)]
    assert all(m.header("Date") and m.header("Date").endswith("GMT") for m in missed)
    assert (await alice.message(CHAT, "live")).code == 202
    await expect(bob, "[alice]: live")  # after them
    assert server.conference.delivery.statistics().flushed >= 3


async def test_a_member_that_answered_480_gets_its_lines_on_its_next_message(server, ua) -> None:
    alice, bob = await ua("alice"), await ua("bob")
    assert (await alice.message(MANAGER, "#create chat")).code == 200
    assert (await bob.message(CHAT, "#join")).code == 200
    await settle(server)
    bob.pending_messages()
    bob.answer = 480  # do not disturb
    assert (await alice.message(CHAT, "while away")).code == 202
    await settle(server)
    assert [m.body for m in bob.pending_messages()] == [b"[alice]: while away"]  # refused once
    bob.answer = 200
    assert (await bob.message(CHAT, "#members")).code == 200
    await expect(bob, "[alice]: while away")  # first what it missed, then the reply
    await expect(bob, "Members:\n*[alice]\n[bob]")


async def test_the_final_response_goes_out_before_the_notices_it_caused(server, ua) -> None:
    alice, mallory = await ua("alice"), await ua("mallory")
    assert (await alice.message(MANAGER, "#create chat")).code == 200
    await expect(alice, "*** Room was created")
    mallory.arrivals.clear()
    assert (await mallory.message(CHAT, "let me in")).code == 403
    await expect(mallory, "*** You are not a member of this room")
    assert mallory.arrivals == [("response", 403), ("request", "MESSAGE")]
    alice.arrivals.clear()
    assert (await alice.message(CHAT, "#members")).code == 200  # the task-free path, too
    await expect(alice, "Members:\n*[alice]")
    assert alice.arrivals[:2] == [("response", 200), ("request", "MESSAGE")]


async def test_a_merged_request_is_relayed_once_and_the_copy_gets_482(server, ua) -> None:
    alice, bob = await ua("alice"), await ua("bob")
    assert (await alice.message(MANAGER, "#create chat")).code == 200
    assert (await bob.message(CHAT, "#join")).code == 200
    await settle(server)
    alice.pending_messages()
    first = bob.build(
        "MESSAGE", CHAT, body=b"only once", content_type="text/plain", branch="z9hG4bKpath1"
    )
    copy = first.replace(b"z9hG4bKpath1", b"z9hG4bKpath2")  # the same request by a second path
    await bob.send_raw(first)
    await bob.send_raw(copy)
    with trio.fail_after(5):
        answers = sorted([(await bob.recv_raw())[:12], (await bob.recv_raw())[:12]])
    assert answers == [b"SIP/2.0 202 ", b"SIP/2.0 482 "]
    await expect(alice, "[bob]: only once")
    await settle(server)
    assert alice.pending_messages() == []
    assert server.transport.statistics().merged == 1


async def test_a_message_that_requires_an_extension_is_420_and_relays_nothing(server, ua) -> None:
    alice, bob = await ua("alice"), await ua("bob")
    assert (await alice.message(MANAGER, "#create chat")).code == 200
    assert (await bob.message(CHAT, "#join")).code == 200
    await settle(server)
    alice.pending_messages(), bob.pending_messages()
    data = alice.build("MESSAGE", CHAT, body=b"needs 100rel").replace(
        b"Max-Forwards: 70", b"Max-Forwards: 70\r\nRequire: 100rel"
    )
    await alice.send_raw(data)
    with trio.fail_after(5):
        answer = parse(await alice.recv_raw())
    assert (answer.code, answer.header("Unsupported")) == (420, "100rel")
    assert (await alice.message(CHAT, "plain")).code == 202
    with trio.fail_after(5):
        assert (await bob.next_message()).body.endswith(b"plain")  # the first was not relayed


@pytest.mark.parametrize("config_overrides", [{"rpc_listen": "127.0.0.1:0"}])
async def test_the_loop_guards_are_counted_in_metrics(server, ua) -> None:
    from tests.integration.test_control_metrics import scrape, value

    alice = await ua("alice")
    looped = alice.build("OPTIONS", f"sip:{DOMAIN}")
    own = "z9hG4bK" + server.transport.mark + "0123456789abcdef"
    looped = looped.replace(
        b"\r\nMax-Forwards",
        f"\r\nVia: SIP/2.0/UDP 127.0.0.1:1;branch={own}\r\nMax-Forwards".encode(),
        1,
    )
    await alice.send_raw(looped)
    with trio.fail_after(5):
        assert (await alice.recv_raw()).startswith(b"SIP/2.0 482 ")
    samples = await scrape(server)
    assert value(samples, "imc_sip_loops_total") == 1
    assert value(samples, "imc_sip_merged_total") == 0
