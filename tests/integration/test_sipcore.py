"""SipCore, the request router, through a real SipTransport on 127.0.0.1."""

from __future__ import annotations

import pytest
import trio

from imc_actors.config import Config
from imc_actors.registrar import Registrar
from imc_actors.sip import Request, build_request, parse
from imc_actors.sipcore import SipCore
from imc_actors.transport import Source
from tests.support import RecordingHandler, TestUA, start_core

DOMAIN = "example.org"
ROOM = "sip:room@example.org"


async def test_message_goes_to_the_message_handler(nursery: trio.Nursery) -> None:
    handler = RecordingHandler()
    server = await start_core(nursery, messages=handler)
    ua = await TestUA.open(nursery, "alice", DOMAIN, server.address())
    response = await ua.message(ROOM, "hello room")
    assert response.code == 202
    [(request, source)] = handler.calls
    assert request.body == b"hello room" and request.uri == ROOM
    assert source == Source("udp", "127.0.0.1", ua.port)


@pytest.mark.parametrize("method", ["MESSAGE", "REGISTER", "INVITE"])
async def test_max_forwards_zero_is_483(nursery: trio.Nursery, method: str) -> None:
    handler = RecordingHandler()
    server = await start_core(nursery, messages=handler)
    ua = await TestUA.open(nursery, "alice", DOMAIN, server.address())
    data = ua.build(method, ROOM, body=b"x").replace(b"Max-Forwards: 70", b"Max-Forwards: 0")
    await ua.send_raw(data)
    with trio.fail_after(5):
        answer = parse(await ua.recv_raw())
    assert (answer.code, answer.reason) == (483, "Too Many Hops")
    assert not handler.calls


@pytest.mark.parametrize("method", ["MESSAGE", "REGISTER", "OPTIONS"])
async def test_a_required_extension_this_server_lacks_is_420(nursery: trio.Nursery, method: str) -> None:
    # RFC 3261 §8.2.2.3; was: Require ignored, the request served
    handler = RecordingHandler()
    server = await start_core(nursery, messages=handler)
    ua = await TestUA.open(nursery, "alice", DOMAIN, server.address())
    data = ua.build(method, ROOM, body=b"x").replace(
        b"Max-Forwards: 70", b"Max-Forwards: 70\r\nRequire: no-such-ext, 100rel\r\nRequire: no-such-ext"
    )
    await ua.send_raw(data)
    with trio.fail_after(5):
        answer = parse(await ua.recv_raw())
    assert (answer.code, answer.reason) == (420, "Bad Extension")
    assert answer.header("Unsupported") == "no-such-ext, 100rel"
    assert not handler.calls


async def test_options_with_max_forwards_zero_is_answered(nursery: trio.Nursery) -> None:
    """RFC 3261 §16.3: the final recipient may answer an OPTIONS whose Max-Forwards is 0."""
    server = await start_core(nursery)
    ua = await TestUA.open(nursery, "alice", DOMAIN, server.address())
    data = ua.build("OPTIONS", f"sip:{DOMAIN}").replace(b"Max-Forwards: 70", b"Max-Forwards: 0")
    await ua.send_raw(data)
    with trio.fail_after(5):
        answer = parse(await ua.recv_raw())
    assert answer.code == 200


async def test_options_advertises_capabilities(nursery: trio.Nursery) -> None:
    server = await start_core(nursery)
    ua = await TestUA.open(nursery, "alice", DOMAIN, server.address())
    response = await ua.request("OPTIONS", ROOM)
    assert response.code == 200
    assert response.header("Allow") == "MESSAGE, OPTIONS, REGISTER"
    assert response.header("Accept") == "text/plain"
    assert response.header("Supported") == "kamailio/imc"


@pytest.mark.parametrize("method", ["INVITE", "SUBSCRIBE", "BYE", "PUBLISH", "INFO"])
async def test_other_methods_are_405_with_allow(nursery: trio.Nursery, method: str) -> None:
    handler = RecordingHandler()
    server = await start_core(nursery, messages=handler)
    ua = await TestUA.open(nursery, "alice", DOMAIN, server.address())
    response = await ua.request(method, ROOM)
    assert (response.code, response.reason) == (405, "Method Not Allowed")
    assert response.header("Allow") == "MESSAGE, OPTIONS, REGISTER"
    assert not handler.calls


async def test_unmatched_cancel_is_481(nursery: trio.Nursery) -> None:
    server = await start_core(nursery)
    ua = await TestUA.open(nursery, "alice", DOMAIN, server.address())
    await ua.send_raw(ua.build("CANCEL", ROOM))
    with trio.fail_after(5):
        answer = parse(await ua.recv_raw())
    assert answer.code == 481


async def test_registrar_off(nursery: trio.Nursery) -> None:
    server = await start_core(nursery, registrar=False)
    ua = await TestUA.open(nursery, "alice", DOMAIN, server.address())
    response = await ua.register()
    assert response.code == 405
    assert response.header("Allow") == "MESSAGE, OPTIONS"
    assert (await ua.request("OPTIONS", ROOM)).header("Allow") == "MESSAGE, OPTIONS"


async def test_register_errors_come_from_the_registrar(nursery: trio.Nursery) -> None:
    server = await start_core(nursery)
    ua = await TestUA.open(nursery, "alice", DOMAIN, server.address())
    response = await ua.register(expires=10)
    assert (response.code, response.header("Min-Expires")) == (423, "60")
    stranger = await TestUA.open(nursery, "eve", "elsewhere.net", server.address())
    assert (await stranger.register()).code == 404


@pytest.mark.parametrize("method", ["MESSAGE", "OPTIONS", "REGISTER"])
async def test_untrusted_source_is_403(nursery: trio.Nursery, method: str) -> None:
    handler = RecordingHandler()
    server = await start_core(nursery, messages=handler, trusted_sources=["10.0.0.0/8", "::1/128"])
    ua = await TestUA.open(nursery, "alice", DOMAIN, server.address())
    response = await ua.request(method, ROOM, body=b"x" if method == "MESSAGE" else b"")
    assert (response.code, response.reason) == (403, "Forbidden")
    assert not handler.calls


async def test_trusted_source_is_served(nursery: trio.Nursery) -> None:
    handler = RecordingHandler()
    server = await start_core(nursery, messages=handler, trusted_sources=["127.0.0.0/8"])
    ua = await TestUA.open(nursery, "alice", DOMAIN, server.address())
    assert (await ua.message(ROOM, "hi")).code == 202
    assert len(handler.calls) == 1


def _request(method: str, *, uri: str = ROOM) -> Request:
    data = build_request(
        method, uri, from_uri="sip:alice@example.org", from_tag="f", to_uri=uri, call_id="c@h",
        cseq=1, via_host="127.0.0.1", via_port=5070, via_transport="UDP", branch="z9hG4bKx",
        headers=[("Contact", "<sip:alice@127.0.0.1:5070>"), ("Expires", "60")],
    )  # fmt: skip
    request = parse(data)
    assert isinstance(request, Request)
    return request


async def test_is_trusted() -> None:
    core = SipCore(Config(trusted_sources=["192.0.2.0/24", "2001:db8::/32"]), None,
                   RecordingHandler())  # fmt: skip
    assert core.is_trusted("192.0.2.7")
    assert core.is_trusted("::ffff:192.0.2.7")
    assert core.is_trusted("2001:db8::1")
    assert not core.is_trusted("198.51.100.1")
    assert not core.is_trusted("not-an-ip")
    assert SipCore(Config(), None, RecordingHandler()).is_trusted("anything")


async def test_registrar_uses_the_injected_clock() -> None:
    now = [1000.0]
    registrar = Registrar(["example.org"])
    core = SipCore(Config(domains=["example.org"]), registrar, RecordingHandler(),
                   clock=lambda: now[0])  # fmt: skip
    source = Source("udp", "127.0.0.1", 5070)
    reply = await core(_request("REGISTER", uri="sip:alice@example.org"), source)
    assert reply.code == 200
    assert registrar.lookup("alice@example.org", 1059.0) == ["sip:alice@127.0.0.1:5070"]
    assert registrar.lookup("alice@example.org", 1060.0) == []
