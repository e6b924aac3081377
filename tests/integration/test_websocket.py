"""SIP over WebSocket (RFC 7118) over real sockets, trio-websocket as the client: REGISTER and
MESSAGE take the same path as over UDP/TCP, notices reach a member over the connection that
registered it, and once that connection has closed delivery fails at once and stores."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from trio_websocket import ConnectionClosed, ConnectionRejected, connect_websocket

from imc_actors.server import Server, open_server
from tests.integration.conftest import DOMAIN, MANAGER, expect, make_config
from tests.support.ws import WsUA

CHAT = f"sip:chat@{DOMAIN}"


@pytest.fixture
def config_overrides() -> dict:
    return {"listen": ["udp:127.0.0.1:0", "ws:127.0.0.1:0"]}


def ws_address(server: Server) -> tuple[str, int]:
    for addr in server.addresses:
        if addr.transport == "ws":
            return addr.host, addr.port
    raise AssertionError("server has no WebSocket listener")


async def eventually(condition, what: str) -> None:
    """Poll ``condition()`` until it holds (a safety net of 10 s, not a timing assertion)."""
    with trio.fail_after(10):
        while not condition():
            await trio.sleep(0.01)


async def test_register_over_websocket_gets_200_with_the_contact(server):
    async with WsUA.connect(ws_address(server), "alice", DOMAIN) as alice:
        response = await alice.register()
        assert response.code == 200
        assert response.header("Contact").startswith(f"<{alice.contact}>;expires=")
        assert server.registrar.lookup(f"alice@{DOMAIN}", trio.current_time()) == [alice.contact]
        assert server.transport.statistics().ws_connections == 1
    await eventually(lambda: server.transport.statistics().ws_connections == 0, "closed")


async def test_a_command_to_the_manager_and_its_notice_over_the_websocket(server):
    async with WsUA.connect(ws_address(server), "alice", DOMAIN) as alice:
        assert (await alice.register()).code == 200
        assert (await alice.message(MANAGER, "#create chat")).code == 200
        notice = await alice.next_message()
        assert notice.body == b"*** Room was created"
        assert notice.from_uri == CHAT
        assert notice.uri == alice.contact  # retargeted to the registered contact
        via = notice.header("Via")
        assert via.startswith("SIP/2.0/WS ") and ".invalid;branch=z9hG4bK" in via
        assert [room.uri for room in server.conference.rooms()] == [CHAT]


async def test_room_notices_and_chat_reach_a_websocket_member_and_a_udp_one(server, ua):
    bob = await ua("bob")
    assert (await bob.message(MANAGER, "#create chat")).code == 200
    await expect(bob, "*** Room was created")
    async with WsUA.connect(ws_address(server), "alice", DOMAIN) as alice:
        assert (await alice.register()).code == 200
        assert (await alice.message(CHAT, "#join")).code == 200
        assert (await alice.next_message()).body == b"*** [alice] has joined the room"
        await expect(bob, "*** [alice] has joined the room")
        assert (await bob.message(CHAT, "hello browser")).code == 202
        assert (await alice.next_message()).body == b"[bob]: hello browser"
        assert (await alice.message(CHAT, "hello phone")).code == 202
        await expect(bob, "[alice]: hello phone", sender=CHAT)


async def test_after_the_websocket_closed_delivery_fails_at_once_and_stores(server, ua):
    bob = await ua("bob")
    assert (await bob.message(MANAGER, "#create chat")).code == 200
    await expect(bob, "*** Room was created")
    async with WsUA.connect(ws_address(server), "alice", DOMAIN) as alice:
        assert (await alice.register()).code == 200
        assert (await alice.message(CHAT, "#join")).code == 200
        await alice.next_message()
        await expect(bob, "*** [alice] has joined the room")
        contact = alice.contact
    await eventually(lambda: server.transport.statistics().ws_connections == 0, "closed")
    # the binding is still there (it has not expired), but its connection is gone
    assert server.registrar.lookup(f"alice@{DOMAIN}", trio.current_time()) == [contact]

    delivery = server.conference.delivery
    before = delivery.statistics().stored
    with trio.fail_after(5):  # far below Timer F (32 s): nothing waits for a timeout
        assert (await bob.message(CHAT, "are you there?")).code == 202
        while delivery.statistics().stored == before:
            await trio.testing.wait_all_tasks_blocked()
            await trio.sleep(0.01)
    assert delivery.statistics().stored == before + 1

    # back on a new connection: the stored line arrives with its original Date
    async with WsUA.connect(ws_address(server), "alice", DOMAIN) as again:
        assert (await again.register()).code == 200
        late = await again.next_message()
        assert late.body == b"[bob]: are you there?"
        assert late.uri == again.contact
        assert late.header("Date")


async def test_unregistering_over_the_websocket_takes_the_contact_off_it(server):
    async with WsUA.connect(ws_address(server), "alice", DOMAIN) as alice:
        assert (await alice.register()).code == 200
        assert (await alice.register(expires=0)).code == 200
        assert server.registrar.lookup(f"alice@{DOMAIN}", trio.current_time()) == []
        assert server.transport._bindings.connection(f"alice@{DOMAIN}", alice.contact) is None


async def test_a_handshake_without_the_sip_subprotocol_is_refused(server):
    with pytest.raises(ConnectionRejected) as caught:
        async with WsUA.connect(ws_address(server), "alice", DOMAIN, subprotocols=("chat",)):
            pass
    assert caught.value.status_code == 400
    assert b"subprotocol 'sip'" in caught.value.body


async def test_malformed_sip_over_websocket_gets_a_400_and_the_connection_stays(server):
    async with WsUA.connect(ws_address(server), "alice", DOMAIN) as alice:
        await alice.send_raw(
            "MESSAGE sip:chat@127.0.0.1 SIP/2.0\r\n"
            f"Via: SIP/2.0/WS {alice.host};branch=z9hG4bKbad\r\n"
            "From: <sip:alice@127.0.0.1>;tag=1\r\nTo: <sip:chat@127.0.0.1>\r\n"
            "Call-ID: bad@x\r\nCSeq: 1 MESSAGE\r\nContent-Length: 99\r\n\r\nshort"
        )
        answer = await alice.next_raw()
        assert answer.startswith(b"SIP/2.0 400 ")
        await alice.send_raw("\r\n\r\n")  # a keep-alive: ignored
        assert (await alice.register()).code == 200
    assert server.transport.statistics().malformed == 1


async def test_the_server_stops_with_a_websocket_open(tmp_path, nursery):
    config = make_config(tmp_path, listen=["ws:127.0.0.1:0"])
    with trio.fail_after(5):  # the closing handshake is bounded: shutdown never waits on it
        async with open_server(config) as server:
            host, port = ws_address(server)
            ws = await connect_websocket(
                nursery, host, port, "/", use_ssl=False, subprotocols=["sip"]
            )
            assert ws.subprotocol == "sip"
            await eventually(lambda: server.transport.statistics().ws_connections == 1, "open")
        with pytest.raises(ConnectionClosed):
            await ws.get_message()
