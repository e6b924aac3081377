"""``SipTransport.start_request`` over connections: TCP, TLS and WebSocket, over real sockets.

A member registered over a connection, and a ``transport=tcp``/``tls`` hop with an open pooled
connection, are sent to without a task: the request is queued on the connection's send queue
and its client transaction (Timer F only: RFC 3261 §17.1.2, reliable) filed at once. A new
connection, and a full send queue, make it decline (``send_request`` then awaits them). A
connection that closes fails what was sent over it at once (503), never after Timer F; a peer
that stops reading fills its queue up to ``tcp_send_queue`` and no further, and costs nobody
else anything.
"""

from __future__ import annotations

import socket

import pytest
import trio
import trio.testing

from imc_actors.server import open_server
from imc_actors.sip import (
    Response,
    build_request,
    new_branch,
    new_call_id,
    new_tag,
    parse,
    parse_stream,
)
from imc_actors.transport import ClientResult
from imc_actors.transport.tls import server_context
from tests.integration.conftest import DOMAIN as E2E_DOMAIN
from tests.integration.conftest import MANAGER, expect, make_config, udp_address
from tests.integration.test_transport_start import Outcomes
from tests.support import TestUA, start_core
from tests.support.tls import TlsFiles, make_tls
from tests.support.ws import WsUA

DOMAIN = "example.org"
ROOM = "sip:room@example.org"


async def core(nursery: trio.Nursery, config: dict | None = None, **options: object):  # type: ignore[no-untyped-def]
    """A transport (``options``) + SipCore (``config``) whose REGISTERs bind contacts to their
    connection (as the server wires it)."""
    listen = options.pop("listen", ("udp:127.0.0.1:0", "tcp:127.0.0.1:0"))
    server = await start_core(
        nursery, listen=listen, transport_options=options or None, **(config or {})
    )  # type: ignore[arg-type]
    server.core.on_binding = server.transport.bind_contacts
    return server


def start(server, uri: str, outcomes: Outcomes, body: bytes = b"hi") -> bool:  # type: ignore[no-untyped-def]
    return server.transport.start_request(
        "MESSAGE", uri, from_uri=ROOM, to_uri=uri, on_result=outcomes, body=body,
        content_type="text/plain",
    )  # fmt: skip


@pytest.fixture
def tls(tmp_path) -> TlsFiles:
    return make_tls(tmp_path)


# ---------------------------------------------------------------------- registered connections
async def test_a_tcp_registered_member_is_sent_to_over_its_connection_without_a_task(
    nursery: trio.Nursery,
) -> None:
    server = await core(nursery)
    alice = await TestUA.open(nursery, "alice", DOMAIN, server.address("tcp"), transport="tcp")
    assert (await alice.register()).code == 200
    outcomes = Outcomes()
    assert start(server, alice.uri, outcomes) is True
    with trio.fail_after(5):
        await outcomes.wait()
        got = await alice.next_message()
    assert outcomes.results == [ClientResult(200, "OK")]
    assert got.body == b"hi" and got.uri == alice.contact
    assert (got.header("Via") or "").startswith("SIP/2.0/TCP ")
    assert alice.accepted == 0  # over the registering connection, nothing opened to alice
    stats = server.transport.statistics()
    assert (stats.client_ok, stats.client_failed, stats.client_transactions) == (1, 0, 0)
    assert stats.send_queued == 0 and stats.send_queue_full == 0


async def test_a_tls_registered_member_is_sent_to_over_its_connection_without_a_task(
    nursery: trio.Nursery, tls: TlsFiles
) -> None:
    server = await core(
        nursery,
        {"tls_cert": tls.cert, "tls_key": tls.key},
        listen=("udp:127.0.0.1:0", "tls:127.0.0.1:0"),
        tls_server=server_context(tls.cert, tls.key),
    )
    alice = await TestUA.open(
        nursery, "alice", DOMAIN, server.address("tls"), transport="tls", tls=tls.ua
    )
    assert (await alice.register()).code == 200
    outcomes = Outcomes()
    assert start(server, alice.uri, outcomes) is True
    with trio.fail_after(5):
        await outcomes.wait()
        got = await alice.next_message()
    assert outcomes.results == [ClientResult(200, "OK")]
    assert (got.header("Via") or "").startswith("SIP/2.0/TLS ")
    assert alice.accepted == 0
    assert server.transport.statistics().tls_connections == 1


async def test_a_websocket_member_is_sent_to_without_a_task(nursery: trio.Nursery) -> None:
    server = await core(nursery, listen=("udp:127.0.0.1:0", "ws:127.0.0.1:0"))
    async with WsUA.connect(server.address("ws"), "alice", DOMAIN) as alice:
        assert (await alice.register()).code == 200
        outcomes = Outcomes()
        assert start(server, alice.uri, outcomes) is True
        with trio.fail_after(5):
            await outcomes.wait()
        got = await alice.next_message()
        assert outcomes.results == [ClientResult(200, "OK")]
        assert got.body == b"hi"
        assert (got.header("Via") or "").startswith("SIP/2.0/WS ")
        assert ".invalid" in (got.header("Via") or "")


async def test_two_contacts_over_two_connections_fork_without_a_task(
    nursery: trio.Nursery,
) -> None:
    """Several contacts, each registered over its own connection: forked on the spot, the
    first 2xx is the outcome."""
    server = await core(nursery)
    phone = await TestUA.open(nursery, "alice", DOMAIN, server.address("tcp"), transport="tcp")
    desk = await TestUA.open(nursery, "alice", DOMAIN, server.address("tcp"), transport="tcp")
    desk.answer = 486
    assert (await phone.register()).code == 200
    assert (await desk.register()).code == 200
    outcomes = Outcomes()
    assert start(server, phone.uri, outcomes) is True
    with trio.fail_after(5):
        await outcomes.wait()
        await phone.next_message()
        await desk.next_message()
    assert outcomes.results == [ClientResult(200, "OK")]


# ---------------------------------------------------------------------- pooled connections
async def test_an_open_pooled_tcp_connection_is_used_and_a_new_one_declined(
    nursery: trio.Nursery,
) -> None:
    server = await core(nursery)
    bob = await TestUA.open(nursery, "bob", DOMAIN, server.address("tcp"), transport="tcp")
    uri = f"sip:bob@127.0.0.1:{bob.port};transport=tcp"
    outcomes = Outcomes()
    assert start(server, uri, outcomes) is False  # no connection yet: opening one awaits
    await trio.testing.wait_all_tasks_blocked()
    assert bob.accepted == 0 and outcomes.results == []
    with trio.fail_after(5):  # the awaited path opens it
        result = await server.transport.send_request("MESSAGE", uri, from_uri=ROOM, to_uri=uri)
    assert result.ok and bob.accepted == 1
    assert start(server, uri, outcomes) is True  # now it is open: queued on it
    with trio.fail_after(5):
        await outcomes.wait()
    assert outcomes.results == [ClientResult(200, "OK")]
    assert bob.accepted == 1 and len(bob.received) == 2


# ---------------------------------------------------------------------- timers and failures
async def test_an_unanswered_request_over_tcp_ends_at_timer_f_without_retransmissions(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    server = await core(nursery)
    alice = await TestUA.open(nursery, "alice", DOMAIN, server.address("tcp"), transport="tcp")
    assert (await alice.register()).code == 200
    alice.drop_next = 1
    outcomes = Outcomes()
    began = trio.current_time()
    assert start(server, alice.uri, outcomes) is True
    await outcomes.wait()
    assert outcomes.results == [ClientResult(408, "Request Timeout")]
    assert trio.current_time() - began == pytest.approx(32.0, abs=0.01)  # 64*T1, Timer F
    assert len(alice.ignored) == 1 and alice.retransmissions == 0  # reliable: never resent
    stats = server.transport.statistics()
    assert (stats.client_timeouts, stats.client_retransmissions) == (1, 0)


async def test_a_closed_connection_fails_what_was_sent_over_it_at_once(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    server = await core(nursery)
    alice = await TestUA.open(nursery, "alice", DOMAIN, server.address("tcp"), transport="tcp")
    assert (await alice.register()).code == 200
    alice.drop_next = 1  # it arrives, and is never answered
    outcomes = Outcomes()
    began = trio.current_time()
    assert start(server, alice.uri, outcomes) is True
    await trio.testing.wait_all_tasks_blocked()
    assert len(alice.ignored) == 1
    await alice.close_connection()
    await outcomes.wait()
    assert outcomes.results == [ClientResult(503, "Service Unavailable")]
    assert trio.current_time() - began < 1.0  # not Timer F's 32 s
    assert server.transport.statistics().client_transactions == 0


# ---------------------------------------------------------------------- a peer that stopped reading
async def stalled_member(server, user: str) -> trio.SocketStream:  # type: ignore[no-untyped-def]
    """A TCP client that registers ``sip:<user>@example.org`` over its connection, then
    never reads again (a tiny receive buffer, so the server's writes back up soon)."""
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    await sock.connect(server.address("tcp"))
    stream = trio.SocketStream(sock)
    host, port = sock.getsockname()[:2]
    register = build_request(
        "REGISTER", f"sip:{DOMAIN}", from_uri=f"sip:{user}@{DOMAIN}", from_tag=new_tag(),
        to_uri=f"sip:{user}@{DOMAIN}", call_id=new_call_id(host), cseq=1, via_host=host,
        via_port=port, via_transport="TCP", branch=new_branch(),
        headers=[("Contact", f"<sip:{user}@{host}:{port};transport=tcp>"), ("Expires", "600")],
    )  # fmt: skip
    await stream.send_all(register)
    buffer = bytearray()
    while not (frames := parse_stream(buffer)):
        buffer += await stream.receive_some(65536)
    answer = parse(frames[0])
    assert isinstance(answer, Response) and answer.code == 200
    return stream


async def test_a_peer_that_stops_reading_fills_its_queue_to_the_bound_and_no_further(
    nursery: trio.Nursery, mock_clock: trio.testing.MockClock
) -> None:
    """Time stands still while the queue fills (the mock clock moves only when told): the
    kernel's buffers fill first, then the send queue up to ``tcp_send_queue``; then
    ``start_request`` declines, the awaited path waits for room, and a member on another
    connection is served meanwhile. Once the stalled write is ``tcp_idle_timeout`` old the
    connection is closed and everything sent or queued over it fails at once (503)."""
    limit = 64 * 1024
    server = await core(nursery, tcp_send_queue=limit, tcp_idle_timeout=10.0)
    stalled = await stalled_member(server, "stall")
    other = await TestUA.open(nursery, "other", DOMAIN, server.address("tcp"), transport="tcp")
    assert (await other.register()).code == 200

    stuck = Outcomes()
    body = b"x" * 8000
    started = 0
    for _ in range(10_000):  # far more than the kernel's buffers and the queue hold
        if not start(server, f"sip:stall@{DOMAIN}", stuck, body=body):
            break
        started += 1
        await trio.testing.wait_all_tasks_blocked()  # the writer moves what the kernel takes
        assert server.transport.statistics().send_queued <= limit
    print(f"{started} notices of 8 kB started before the queue was full")
    stats = server.transport.statistics()
    assert stats.send_queue_full == 1
    assert limit - 8500 < stats.send_queued <= limit  # full: one more would not fit
    assert started > limit // 8000 and stuck.results == []

    # the awaited path waits for room (it does not grow the queue) ...
    async def awaited(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        uri = f"sip:stall@{DOMAIN}"
        stuck(
            await server.transport.send_request(
                "MESSAGE", uri, from_uri=ROOM, to_uri=uri, body=body
            )
        )

    await nursery.start(awaited)
    await trio.testing.wait_all_tasks_blocked()
    assert server.transport.statistics().send_queued <= limit and stuck.results == []

    # ... while another member, over another connection, is served at once
    fine = Outcomes()
    assert start(server, other.uri, fine) is True
    await fine.wait()
    assert fine.results == [ClientResult(200, "OK")]
    assert stuck.results == []

    mock_clock.jump(10.0)  # the stalled write is tcp_idle_timeout old: the connection goes
    await stuck.wait(started + 1)
    assert set(stuck.results) == {ClientResult(503, "Service Unavailable")}
    stats = server.transport.statistics()
    assert stats.send_queued == 0 and stats.client_transactions == 0
    assert stats.client_timeouts == 0  # failed by the close, not by Timer F
    await stalled.aclose()


# ---------------------------------------------------------------------- through the server
async def test_room_notices_to_a_tcp_member_leave_without_a_task(
    nursery: trio.Nursery, tmp_path
) -> None:
    """The whole way: a room's fan-out to a member registered over TCP goes through
    ``start_request`` (True every time), in order, over the member's own connection."""
    async with open_server(make_config(tmp_path)) as srv:
        transport = srv.transport
        started: list[tuple[str, bool]] = []
        plain = transport.start_request

        def watched(method: str, uri: str, **kwargs: object) -> bool:
            taken = plain(method, uri, **kwargs)  # type: ignore[arg-type]
            started.append((uri, taken))
            return taken

        transport.start_request = watched  # type: ignore[method-assign]
        tcp = next((a.host, a.port) for a in srv.addresses if a.transport == "tcp")
        bob = await TestUA.open(nursery, "bob", E2E_DOMAIN, tcp, transport="tcp")
        alice = await TestUA.open(nursery, "alice", E2E_DOMAIN, udp_address(srv))
        for agent in (alice, bob):
            assert (await agent.register()).code == 200
        assert (await alice.message(MANAGER, "#create chat")).code == 200
        await expect(alice, "*** Room was created")
        assert (await bob.message(f"sip:chat@{E2E_DOMAIN}", "#join")).code == 200
        await expect(bob, "*** [bob] has joined the room")  # the notice to its own joiner
        for n in range(5):
            assert (await alice.message(f"sip:chat@{E2E_DOMAIN}", f"line {n}")).code == 202
        for n in range(5):
            await expect(bob, f"[alice]: line {n}")  # in order, over its connection
        assert bob.accepted == 0
        to_bob = [taken for uri, taken in started if uri == bob.uri]
        assert len(to_bob) >= 6 and all(to_bob)


async def test_a_message_the_kernel_takes_only_part_of_stays_whole_and_in_order(
    nursery: trio.Nursery, mock_clock: trio.testing.MockClock
) -> None:
    """A message written straight to the socket (the queue was idle) that the kernel takes
    only part of: the rest is queued first, so the peer reads it whole, then the next one."""
    server = await core(nursery)
    stalled = await stalled_member(server, "slow")
    uri = f"sip:slow@{DOMAIN}"
    outcomes = Outcomes()
    big = b"B" * 60_000  # more than the socket buffers of a new connection take at once
    assert start(server, uri, outcomes, body=big) is True
    assert server.transport.statistics().send_queued > 0  # the part the kernel did not take
    assert start(server, uri, outcomes, body=b"after") is True  # queued behind that rest
    buffer = bytearray()
    frames: list[bytes] = []
    while len(frames) < 2:
        buffer += await stalled.receive_some(65536)
        frames += parse_stream(buffer)
    first, second = (parse(frame) for frame in frames)
    assert first.body == big and second.body == b"after"  # type: ignore[union-attr]
    await trio.testing.wait_all_tasks_blocked()
    assert server.transport.statistics().send_queued == 0
    await stalled.aclose()
