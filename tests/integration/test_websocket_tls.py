"""SIP over secure WebSocket (``wss:``, RFC 7118 over TLS) on real sockets: the listener speaks
TLS with the ``tls_cert``/``tls_key`` certificate, REGISTER and MESSAGE work as over ``ws:``,
notices go back over the same connection with ``WSS`` in their Via, and a client that does not
speak TLS (or does not trust the certificate) costs only its own connection."""

from __future__ import annotations

import ssl

import pytest
import trio

from imc_actors.config import Config, ConfigError
from imc_actors.server import Server, open_server
from imc_actors.transport.websocket import HANDSHAKE_TIMEOUT
from tests.integration.conftest import DOMAIN, MANAGER, make_config
from tests.support.tls import TlsFiles, make_tls
from tests.support.ws import WsUA

CHAT = f"sip:chat@{DOMAIN}"


@pytest.fixture
def tls(tmp_path) -> TlsFiles:
    return make_tls(tmp_path)


def wss_address(server: Server) -> tuple[str, int]:
    for addr in server.addresses:
        if addr.transport == "wss":
            return addr.host, addr.port
    raise AssertionError("server has no wss: listener")


async def test_register_and_a_notice_over_wss(tmp_path, tls):
    config = make_config(tmp_path, listen=["udp:127.0.0.1:0", "wss:127.0.0.1:0"], **tls.config())
    async with open_server(config) as server:
        client_context, _ = tls.ua
        async with WsUA.connect(wss_address(server), "alice", DOMAIN, ssl_context=client_context) as alice:
            assert (await alice.register()).code == 200
            assert server.registrar.lookup(f"alice@{DOMAIN}", trio.current_time()) == [alice.contact]
            assert (await alice.message(MANAGER, "#create chat")).code == 200
            notice = await alice.next_message()
            assert notice.body == b"*** Room was created"
            assert notice.from_uri == CHAT
            via = notice.header("Via")
            assert via.startswith("SIP/2.0/WSS ") and ".invalid;branch=z9hG4bK" in via
            assert server.transport.statistics().ws_connections == 1


async def test_a_client_that_does_not_trust_the_certificate_fails_alone(tmp_path, tls):
    config = make_config(tmp_path, listen=["udp:127.0.0.1:0", "wss:127.0.0.1:0"], **tls.config())
    async with open_server(config) as server:
        host, port = wss_address(server)
        untrusting = ssl.create_default_context()  # the system CAs: not our test CA
        with pytest.raises(trio.BrokenResourceError):
            stream = await trio.open_ssl_over_tcp_stream(host, port, ssl_context=untrusting)
            await stream.do_handshake()
        # (with TLS 1.3 the server's side of the handshake has completed: its connection is
        # closed at the opening-handshake timeout at the latest, and was never a SIP one)
        assert server.transport.statistics().ws_connections == 0
        # the listener still serves the next client
        client_context, _ = tls.ua
        async with WsUA.connect((host, port), "alice", DOMAIN, ssl_context=client_context) as alice:
            assert (await alice.register()).code == 200


async def test_plain_websocket_to_a_wss_port_is_closed_at_once_and_counted(tmp_path, tls):
    config = make_config(tmp_path, listen=["udp:127.0.0.1:0", "wss:127.0.0.1:0"], **tls.config())
    async with open_server(config) as server:
        host, port = wss_address(server)
        stream = await trio.open_tcp_stream(host, port)
        await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n")
        # closed well before the 10 s opening-handshake timeout: the TLS handshake failed
        with trio.fail_after(HANDSHAKE_TIMEOUT / 2):
            while await stream.receive_some():
                pass
        assert server.transport.statistics().tls_handshake_failures == 1
        client_context, _ = tls.ua
        async with WsUA.connect((host, port), "alice", DOMAIN, ssl_context=client_context) as alice:
            assert (await alice.register()).code == 200


async def test_websocket_connections_count_against_tcp_max_per_ip(tmp_path, tls):
    config = make_config(
        tmp_path, listen=["udp:127.0.0.1:0", "ws:127.0.0.1:0", "wss:127.0.0.1:0"],
        tcp_max_per_ip=2, **tls.config(),
    )  # fmt: skip
    async with open_server(config) as server:
        ws = next(a for a in server.addresses if a.transport == "ws")
        client_context, _ = tls.ua
        async with (
            WsUA.connect((ws.host, ws.port), "alice", DOMAIN) as alice,
            WsUA.connect(wss_address(server), "bob", DOMAIN, ssl_context=client_context) as bob,
        ):
            assert (await alice.register()).code == 200
            assert (await bob.register()).code == 200
            # a third connection from 127.0.0.1 is closed before any handshake
            stream = await trio.open_tcp_stream(ws.host, ws.port)
            with trio.fail_after(HANDSHAKE_TIMEOUT / 2):
                assert await stream.receive_some() == b""
            assert server.transport.statistics().tcp_refused == 1
            assert server.transport.statistics().ws_connections == 2
        # once they closed, new ones are accepted again
        async with WsUA.connect((ws.host, ws.port), "carol", DOMAIN) as carol:
            assert (await carol.register()).code == 200


def test_wss_needs_the_tls_certificate():
    config = Config(listen=["udp:127.0.0.1:5060", "wss:127.0.0.1:7443"])
    with pytest.raises(ConfigError, match="a wss: listen address needs tls_cert and tls_key"):
        config.validate()


@pytest.mark.parametrize(
    ("text", "port"), [("wss:127.0.0.1", 7443), ("ws:127.0.0.1", 5066), ("tls:127.0.0.1", 5061)]
)
def test_websocket_listen_addresses_take_their_own_default_ports(text, port):
    from imc_actors.config import ListenAddress

    assert ListenAddress.parse(text).port == port
