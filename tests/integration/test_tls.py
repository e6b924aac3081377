"""SIP over TLS (``tls:`` listen addresses) over real sockets, with certificates made at test
time by ``trustme``: REGISTER over TLS, notices delivered back over the connection the member
registered on (and over a new verified TLS connection once it has closed), TCP doing the same,
and handshakes that fail or never happen closing the connection without crashing or leaking,
within the ``tcp_*`` limits."""

from __future__ import annotations

import ssl

import pytest
import trio
import trio.testing

from imc_actors.server import Server, open_server
from tests.integration.conftest import DOMAIN, MANAGER, expect, make_config, udp_address
from tests.support import TestUA, response_of
from tests.support.tls import TlsFiles, make_tls

CHAT = f"sip:chat@{DOMAIN}"


@pytest.fixture
def tls(tmp_path) -> TlsFiles:
    return make_tls(tmp_path)


def address(server: Server, transport: str) -> tuple[str, int]:
    for bound in server.addresses:
        if bound.transport == transport:
            return bound.host, bound.port
    raise AssertionError(f"server has no {transport} listener")


@pytest.fixture
async def tls_server(tmp_path, tls) -> Server:
    config = make_config(
        tmp_path, listen=["udp:127.0.0.1:0", "tcp:127.0.0.1:0", "tls:127.0.0.1:0"], **tls.config()
    )
    async with open_server(config) as server:
        yield server


async def eventually(condition, what: str) -> None:
    """Poll ``condition()`` until it holds (a safety net of 10 s, not a timing assertion)."""
    with trio.fail_after(10):
        while not condition():
            await trio.testing.wait_all_tasks_blocked()
            await trio.sleep(0.01)


async def tls_ua(nursery, server: Server, tls: TlsFiles, user: str) -> TestUA:
    agent = await TestUA.open(
        nursery, user, DOMAIN, address(server, "tls"), transport="tls", tls=tls.ua
    )
    assert (await agent.register()).code == 200
    return agent


async def test_register_over_tls_and_notices_come_back_over_the_same_connection(
    tls_server, tls, nursery
):
    alice = await tls_ua(nursery, tls_server, tls, "alice")
    assert tls_server.registrar.lookup(f"alice@{DOMAIN}", trio.current_time()) == [alice.contact]
    assert tls_server.transport.statistics().tls_connections == 1
    assert (await alice.message(MANAGER, "#create chat")).code == 200
    notice = await expect(alice, "*** Room was created", sender=CHAT)
    assert notice.uri == alice.contact
    via = notice.header("Via") or ""
    tls_port = address(tls_server, "tls")[1]
    assert via.startswith(f"SIP/2.0/TLS 127.0.0.1:{tls_port};branch=z9hG4bK"), via
    # it came over the connection alice opened: her own TLS listener was never connected to
    assert alice.accepted == 0
    assert tls_server.transport.statistics().tls_connections == 1


async def test_a_room_line_from_a_udp_member_reaches_the_tls_member_over_its_connection(
    tls_server, tls, nursery
):
    alice = await tls_ua(nursery, tls_server, tls, "alice")
    bob = await TestUA.open(nursery, "bob", DOMAIN, udp_address(tls_server))
    assert (await bob.register()).code == 200
    assert (await alice.message(MANAGER, "#create chat")).code == 200
    await expect(alice, "*** Room was created")
    assert (await bob.message(CHAT, "#join")).code == 200
    await expect(alice, "*** [bob] has joined the room")
    await expect(bob, "*** [bob] has joined the room")
    assert (await bob.message(CHAT, "hello over tls")).code == 202
    await expect(alice, "[bob]: hello over tls", sender=CHAT)
    assert (await alice.message(CHAT, "hello over udp")).code == 202
    await expect(bob, "[alice]: hello over udp", sender=CHAT)
    assert alice.accepted == 0


async def test_once_the_registering_connection_closed_a_new_verified_tls_one_is_opened(
    tls_server, tls, nursery
):
    alice = await tls_ua(nursery, tls_server, tls, "alice")
    assert (await alice.message(MANAGER, "#create chat")).code == 200
    await expect(alice, "*** Room was created")
    await alice.close_connection()
    await eventually(lambda: tls_server.transport.statistics().tls_connections == 0, "closed")

    bob = await TestUA.open(nursery, "bob", DOMAIN, udp_address(tls_server))
    assert (await bob.register()).code == 200
    assert (await bob.message(CHAT, "#join")).code == 200
    # the contact alice registered: sip:alice@127.0.0.1:<port>;transport=tls, verified with tls_ca
    notice = await expect(alice, "*** [bob] has joined the room")
    assert alice.accepted == 1
    assert (notice.header("Via") or "").startswith("SIP/2.0/TLS ")


async def test_a_tls_contact_whose_certificate_is_not_trusted_gets_nothing_and_is_stored(
    tmp_path, tls, nursery
):
    config = make_config(
        tmp_path, listen=["udp:127.0.0.1:0", "tls:127.0.0.1:0"],
        tls_cert=tls.cert, tls_key=tls.key,  # no tls_ca: the test CA is not trusted
    )  # fmt: skip
    async with open_server(config) as server:
        alice = await tls_ua(nursery, server, tls, "alice")
        assert (await alice.message(MANAGER, "#create chat")).code == 200
        await expect(alice, "*** Room was created")
        await alice.close_connection()
        await eventually(lambda: server.transport.statistics().tls_connections == 0, "closed")
        delivery = server.conference.delivery
        stored = delivery.statistics().stored
        bob = await TestUA.open(nursery, "bob", DOMAIN, udp_address(server))
        assert (await bob.register()).code == 200
        assert (await bob.message(CHAT, "#join")).code == 200
        await eventually(lambda: delivery.statistics().stored > stored, "stored")
        assert alice.pending_messages() == []
        # the handshake reached alice's listener and was refused by the server's check
        assert server.transport.statistics().tls_connections == 0


async def test_tcp_deliveries_also_go_over_the_registering_connection(tls_server, nursery):
    alice = await TestUA.open(
        nursery, "alice", DOMAIN, address(tls_server, "tcp"), transport="tcp"
    )
    # the contact names a port where alice has a TCP listener, but nothing should connect to it
    assert (await alice.register(contact=f"sip:alice@127.0.0.1:{alice.port};transport=tcp")).code == 200
    assert (await alice.message(MANAGER, "#create chat")).code == 200
    notice = await expect(alice, "*** Room was created")
    assert alice.accepted == 0
    assert (notice.header("Via") or "").startswith("SIP/2.0/TCP ")
    await alice.close_connection()
    await eventually(lambda: tls_server.transport.statistics().tcp_connections == 0, "closed")
    bob = await TestUA.open(nursery, "bob", DOMAIN, udp_address(tls_server))
    assert (await bob.register()).code == 200
    assert (await bob.message(CHAT, "#join")).code == 200
    await expect(alice, "*** [bob] has joined the room")  # over a new connection to the contact
    assert alice.accepted == 1


# ---------------------------------------------------------------------- bad handshakes
async def closed_by_peer(stream: trio.abc.Stream) -> bool:
    with trio.fail_after(10):
        try:
            return await stream.receive_some(65536) == b""
        except trio.BrokenResourceError:
            return True


async def test_plain_sip_to_the_tls_port_is_closed_and_counted(tls_server, tls, nursery):
    stream = await trio.open_tcp_stream(*address(tls_server, "tls"))
    await stream.send_all(b"OPTIONS sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP x\r\n\r\n")
    assert await closed_by_peer(stream)
    await stream.aclose()
    stats = tls_server.transport.statistics()
    assert stats.tls_handshake_failures == 1
    exposition = tls_server.metrics.exposition().decode()
    assert 'imc_sip_tls_handshake_failures_total{node=""} 1.0' in exposition
    await eventually(lambda: tls_server.transport.statistics().tcp_connections == 0, "gone")
    alice = await tls_ua(nursery, tls_server, tls, "alice")  # the listener still serves
    assert (await alice.message(MANAGER, "#rooms")).code == 200


async def test_a_client_that_rejects_our_certificate_leaves_nothing_behind(tls_server, tls):
    untrusting = ssl.create_default_context()  # the system CAs: not our test CA
    plain = await trio.open_tcp_stream(*address(tls_server, "tls"))
    stream = trio.SSLStream(plain, untrusting, server_hostname="127.0.0.1")
    with pytest.raises(trio.BrokenResourceError) as caught:
        with trio.fail_after(10):
            await stream.do_handshake()
    assert isinstance(caught.value.__cause__, ssl.SSLCertVerificationError)
    await trio.aclose_forcefully(stream)
    await eventually(lambda: tls_server.transport.statistics().tls_handshake_failures == 1, "counted")
    await eventually(lambda: tls_server.transport.statistics().tcp_connections == 0, "gone")
    assert tls_server.transport.statistics().handler_errors == 0
    assert len(tls_server.transport._bindings) == 0  # nothing left in the connection registry


async def test_a_silent_connection_is_closed_after_the_handshake_timeout(
    tmp_path, tls, autojump_clock
):
    config = make_config(
        tmp_path, listen=["tls:127.0.0.1:0"], tcp_idle_timeout=7.0, **tls.config()
    )
    async with open_server(config) as server:
        stream = await trio.open_tcp_stream(*address(server, "tls"))
        start = trio.current_time()
        with trio.fail_after(60):
            assert await stream.receive_some(65536) == b""
        assert 7.0 <= trio.current_time() - start < 8.0  # min(10 s, tcp_idle_timeout)
        assert server.transport.statistics().tls_handshake_failures == 1
        await stream.aclose()


async def test_tls_connections_count_against_tcp_max_per_ip(tmp_path, tls, nursery):
    config = make_config(
        tmp_path, listen=["udp:127.0.0.1:0", "tls:127.0.0.1:0"], tcp_max_per_ip=1, **tls.config()
    )
    async with open_server(config) as server:
        alice = await tls_ua(nursery, server, tls, "alice")
        extra = await trio.open_tcp_stream(*address(server, "tls"))
        assert await closed_by_peer(extra)  # closed before any handshake
        await extra.aclose()
        stats = server.transport.statistics()
        assert (stats.tcp_refused, stats.tls_handshake_failures) == (1, 0)
        assert (await alice.message(MANAGER, "#rooms")).code == 200


async def test_tcp_max_buffer_holds_over_tls(tmp_path, tls, nursery):
    config = make_config(
        tmp_path, listen=["udp:127.0.0.1:0", "tls:127.0.0.1:0"], tcp_max_buffer=2048, **tls.config()
    )
    async with open_server(config) as server:
        alice = await tls_ua(nursery, server, tls, "alice")
        head = alice.build("MESSAGE", CHAT, body=b"x").split(b"\r\n\r\n")[0]
        endless = head + b"\r\n" + b"".join(b"X-Pad-%d: %s\r\n" % (i, b"p" * 50) for i in range(60))
        await alice.send_raw(endless, tcp=True)
        with trio.fail_after(10):
            refused = response_of(await alice.recv_raw())
        assert (refused.code, refused.reason) == (513, "Message too large")
        await eventually(lambda: server.transport.statistics().tcp_connections == 0, "closed")


# ---------------------------------------------------------------------- configuration
def test_a_tls_listen_address_needs_a_certificate_and_key(tmp_path, tls):
    from imc_actors.config import ConfigError

    with pytest.raises(ConfigError, match="invalid tls_cert: a tls: listen address needs"):
        make_config(tmp_path, listen=["tls:127.0.0.1:0"])
    with pytest.raises(ConfigError, match="invalid tls_key: no such file: /nonexistent.key"):
        make_config(tmp_path, listen=["tls:127.0.0.1:0"], tls_cert=tls.cert, tls_key="/nonexistent.key")
    with pytest.raises(ConfigError, match=f"invalid tls_cert: {tmp_path} is a directory, not a PEM file"):
        make_config(tmp_path, listen=["tls:127.0.0.1:0"], tls_cert=str(tmp_path), tls_key=tls.key)  # was: "no such file"
    with pytest.raises(ConfigError, match="invalid tls_cert: .* are not a PEM certificate"):
        make_config(tmp_path, listen=["tls:127.0.0.1:0"], tls_cert=tls.ca, tls_key=tls.key)
    with pytest.raises(ConfigError, match="invalid tls_ca: .* holds no PEM CA certificate"):
        make_config(tmp_path, tls_ca=tls.key)


async def test_a_sips_contact_goes_over_tls_only(tls_server, tls, nursery):
    # registered over plain TCP: that connection is not used for a sips: contact
    alice = await TestUA.open(
        nursery, "alice", DOMAIN, address(tls_server, "tcp"), transport="tls", tls=tls.ua
    )
    alice.transport = "tcp"  # its requests go over plain TCP; its listener speaks TLS
    sips = f"sips:alice@127.0.0.1:{alice.port}"
    assert (await alice.register(contact=sips)).code == 200
    assert (await alice.message(MANAGER, "#create chat")).code == 200
    notice = await expect(alice, "*** Room was created")
    assert notice.uri == sips
    assert alice.accepted == 1  # a new TLS connection to the contact, verified with tls_ca
    assert (notice.header("Via") or "").startswith("SIP/2.0/TLS ")
