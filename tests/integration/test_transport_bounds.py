"""Bounded under abuse (issue 15, items 4 and 5): the bytes transactions keep, the Via count, the
TCP connection caps, buffer and idle timeout, EMFILE on accept, and the per-source flood budget
that throttles a flooder while every other source is served."""

from __future__ import annotations

import errno
import logging
import os
import resource
import socket

import pytest
import trio
import trio.testing

from imc_actors.sip import build_request, new_branch, new_call_id, new_tag
from imc_actors.transport import Reply
from imc_actors.transport.connections import TCP_RETRY_AFTER, Connections
from imc_actors.transport.limits import FloodLimiter
from tests.support import RecordingHandler, TestUA, response_of, start_core

DOMAIN = "example.org"
ROOM = "sip:room@example.org"
SECOND_SOURCE = "127.0.0.2"  # another loopback address: another source for the server


async def answer(ua: TestUA, data: bytes, *, tcp: bool = False) -> bytes:
    await ua.send_raw(data, tcp=tcp)
    with trio.fail_after(5):  # safety net only: the answer comes at once
        return await ua.recv_raw()


def options(ua: TestUA) -> bytes:
    return ua.build("OPTIONS", f"sip:{DOMAIN}")


def request_from(host: str, port: int, method: str = "MESSAGE", body: bytes = b"") -> bytes:
    return build_request(
        method, ROOM, from_uri=f"sip:carol@{DOMAIN}", from_tag=new_tag(), to_uri=ROOM,
        call_id=new_call_id(host), cseq=1, via_host=host, via_port=port, via_transport="UDP",
        branch=new_branch(), body=body,
    )  # fmt: skip


async def exchange_from(host: str, server: tuple[str, int], method: str = "MESSAGE") -> bytes:
    """Send one request from a UDP socket bound to ``host`` and return the answer."""
    with trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        await sock.bind((host, 0))
        await sock.sendto(request_from(host, sock.getsockname()[1], method, b"hi"), server)
        with trio.fail_after(5):
            data, _ = await sock.recvfrom(70000)
    return data


async def tcp_options(stream: trio.SocketStream, ua: TestUA) -> int:
    """Send an OPTIONS on ``stream`` and return the status of its answer."""
    await stream.send_all(ua.build("OPTIONS", f"sip:{DOMAIN}", transport="tcp"))
    with trio.fail_after(5):
        data = await stream.receive_some(65536)
    return response_of(data).code


async def closed_by_peer(stream: trio.SocketStream) -> bool:
    """True when the server closed ``stream`` (EOF or reset) without sending anything."""
    with trio.fail_after(5):
        try:
            return await stream.receive_some(65536) == b""
        except trio.BrokenResourceError:
            return True


# ---------------------------------------------------------------------- kept bytes, Vias
async def test_kept_response_bytes_are_bounded(
    nursery: trio.Nursery, autojump_clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="imc_actors.transport")
    server = await start_core(nursery, transport_options={"max_transaction_bytes": 1000})
    ua = await TestUA.open(nursery, "alice", DOMAIN, server.address())
    first = await answer(ua, options(ua))
    assert response_of(first).code == 200
    size = len(first)
    assert server.transport.statistics().transaction_bytes == size
    codes = [response_of(await answer(ua, options(ua))).code for _ in range(1000 // size + 2)]
    kept = 1000 // size + (1000 % size > 0)  # served while the total was below the limit
    assert codes == [200] * (kept - 1) + [503] * (len(codes) - kept + 1)
    stats = server.transport.statistics()
    assert stats.transaction_bytes >= 1000 and stats.server_transactions == kept
    refused = response_of(await answer(ua, options(ua)))
    assert (refused.code, refused.header("Retry-After")) == (503, "1")
    assert [r.getMessage() for r in caplog.records] == [
        "server transaction memory limit 1000 bytes reached: answering 503"
    ]
    await trio.sleep(33)  # Timer J frees them, and their bytes
    assert server.transport.statistics().transaction_bytes == 0
    assert response_of(await answer(ua, options(ua))).code == 200


class Gate:
    """A MESSAGE handler that answers 200 only once ``opened``."""

    def __init__(self) -> None:
        self.opened = trio.Event()
        self.waiting = 0

    async def __call__(self, request, source):  # type: ignore[no-untyped-def]
        self.waiting += 1
        await self.opened.wait()
        return Reply(200)


async def test_a_burst_admitted_together_cannot_overshoot_the_kept_bytes(nursery: trio.Nursery) -> None:
    # 40 MESSAGEs with a 3 kB second Via arrive before any is answered: each response would keep
    # about 3 kB. They count from admission, so no more than the limit's worth are admitted.
    gate = Gate()
    limit = 40_000
    server = await start_core(nursery, messages=gate, transport_options={"max_transaction_bytes": limit})
    ua = await TestUA.open(nursery, "alice", DOMAIN, server.address())
    second_via = b"Via: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bKpad;x=" + b"y" * 3000

    def padded_request() -> bytes:
        lines = ua.build("MESSAGE", ROOM, body=b"hi").split(b"\r\n")
        top = next(i for i, line in enumerate(lines) if line.startswith(b"Via:"))
        return b"\r\n".join([*lines[: top + 1], second_via, *lines[top + 1 :]])

    padded = [padded_request() for _ in range(40)]
    for data in padded:
        await ua.send_raw(data)
    refused = []
    with trio.fail_after(5):  # safety net only
        while gate.waiting + len(refused) < 40:
            with trio.move_on_after(0.2):
                refused.append(response_of(await ua.recv_raw()).code)
    admitted = gate.waiting
    assert refused == [503] * (40 - admitted) and 0 < admitted <= limit // 3000 + 1
    gate.opened.set()
    with trio.fail_after(5):
        answered = [response_of(await ua.recv_raw()).code for _ in range(admitted)]
    assert answered == [200] * admitted
    assert server.transport.statistics().transaction_bytes <= limit + 2 * 3200  # not 3x, as before


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_too_many_vias_get_483_before_anything_else(
    nursery: trio.Nursery, transport: str
) -> None:
    handler = RecordingHandler()
    server = await start_core(nursery, messages=handler, transport_options={"max_vias": 4})
    ua = await TestUA.open(nursery, "alice", DOMAIN, server.address(transport), transport=transport)
    tcp = transport == "tcp"
    proxies = [("Via", f"SIP/2.0/UDP 192.0.2.{i};branch=z9hG4bKp{i}") for i in range(3)]
    # TestUA's own Via comes first, the proxies' after it: 4 in all, the limit
    served = ua.build("MESSAGE", ROOM, body=b"four", headers=proxies)
    assert response_of(await answer(ua, served, tcp=tcp)).code == 202
    # one more, as a comma-separated list in one header: each Via counts
    listed = [
        ("Via", "SIP/2.0/UDP 192.0.2.8;branch=z9hG4bKa, SIP/2.0/UDP 192.0.2.9;branch=z9hG4bKb")
    ]
    data = ua.build("MESSAGE", ROOM, body=b"five", headers=proxies[:2] + listed)
    refused = response_of(await answer(ua, data, tcp=tcp))
    assert (refused.code, refused.reason) == (483, "Too Many Hops (Via)")
    assert refused.cseq_method == "MESSAGE"
    assert len(refused.header_list("Via")) == 4  # routed back along every Via
    assert [request.body for request, _ in handler.calls] == [b"four"]
    stats = server.transport.statistics()
    assert (stats.vias_refused, stats.server_transactions) == (1, 1)  # no transaction for it
    # its retransmission is refused again, statelessly
    assert response_of(await answer(ua, data, tcp=tcp)).code == 483
    assert server.transport.statistics().vias_refused == 2


# ---------------------------------------------------------------------- TCP
async def test_tcp_connection_cap_closes_the_extra_one(nursery: trio.Nursery) -> None:
    server = await start_core(nursery, transport_options={"tcp_max_connections": 2})
    ua = await TestUA.open(nursery, "alice", DOMAIN, server.address("tcp"), transport="tcp")
    address = server.address("tcp")
    first = await trio.open_tcp_stream(*address)
    second = await trio.open_tcp_stream(*address)
    assert await tcp_options(first, ua) == 200
    assert await tcp_options(second, ua) == 200
    third = await trio.open_tcp_stream(*address)  # the kernel accepts; we close it at once
    assert await closed_by_peer(third)
    assert server.transport.statistics().tcp_refused == 1
    assert await tcp_options(first, ua) == 200  # the others are still served
    await second.aclose()
    with trio.fail_after(5):  # until the server has seen the close
        while server.transport.statistics().tcp_connections > 1:
            await trio.sleep(0.01)
    fourth = await trio.open_tcp_stream(*address)  # room again
    assert await tcp_options(fourth, ua) == 200
    for stream in (first, third, fourth):
        await stream.aclose()


async def test_tcp_per_ip_cap_leaves_other_addresses_alone(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="imc_actors.transport")
    server = await start_core(nursery, transport_options={"tcp_max_per_ip": 1})
    ua = await TestUA.open(nursery, "alice", DOMAIN, server.address("tcp"), transport="tcp")
    address = server.address("tcp")
    mine = await trio.open_tcp_stream(*address)
    assert await tcp_options(mine, ua) == 200
    extras = [await trio.open_tcp_stream(*address) for _ in range(3)]
    for extra in extras:
        assert await closed_by_peer(extra)
    other = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    await other.bind((SECOND_SOURCE, 0))
    await other.connect(address)
    elsewhere = trio.SocketStream(other)
    assert await tcp_options(elsewhere, ua) == 200
    assert await tcp_options(mine, ua) == 200
    assert server.transport.statistics().tcp_refused == 3
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "tcp_max_per_ip 1 from 127.0.0.1 reached: closing new connections (1 so far; logged "
        "at most every 10 s)"
    ]
    for stream in (mine, elsewhere, *extras):
        await stream.aclose()


async def test_tcp_buffer_cap_answers_513_and_closes(nursery: trio.Nursery) -> None:
    server = await start_core(nursery, transport_options={"tcp_max_buffer": 2048})
    ua = await TestUA.open(nursery, "alice", DOMAIN, server.address("tcp"), transport="tcp")
    stream = await trio.open_tcp_stream(*server.address("tcp"))
    assert await tcp_options(stream, ua) == 200
    head = ua.build("MESSAGE", ROOM, body=b"x", transport="tcp").split(b"\r\n\r\n")[0]
    endless = head + b"\r\n" + b"".join(b"X-Pad-%d: %s\r\n" % (i, b"p" * 50) for i in range(60))
    assert len(endless) > 2048  # a head that never ends, bigger than the cap
    await stream.send_all(endless)
    with trio.fail_after(5):
        data = await stream.receive_some(65536)
    refused = response_of(data)
    assert (refused.code, refused.reason, refused.cseq_method) == (
        513,
        "Message too large",
        "MESSAGE",
    )
    assert await closed_by_peer(stream)
    assert server.transport.statistics().malformed == 1


async def test_tcp_idle_timeout_is_configurable(nursery: trio.Nursery, autojump_clock) -> None:
    server = await start_core(nursery, transport_options={"tcp_idle_timeout": 7.0})
    ua = await TestUA.open(nursery, "alice", DOMAIN, server.address("tcp"), transport="tcp")
    stream = await trio.open_tcp_stream(*server.address("tcp"))
    assert await tcp_options(stream, ua) == 200
    quiet_since = trio.current_time()
    with trio.fail_after(60):
        assert await stream.receive_some(65536) == b""  # closed by the server
    assert 7.0 <= trio.current_time() - quiet_since < 8.0
    await stream.aclose()


async def test_a_message_sent_a_byte_at_a_time_does_not_keep_a_connection_open(
    nursery: trio.Nursery, autojump_clock
) -> None:
    # slowloris: one byte a second of a request that never ends. Only whole messages (and
    # keep-alive CRLFs) count as use, so it is closed tcp_idle_timeout after its last one.
    server = await start_core(nursery, transport_options={"tcp_idle_timeout": 7.0})
    ua = await TestUA.open(nursery, "alice", DOMAIN, server.address("tcp"), transport="tcp")
    stream = await trio.open_tcp_stream(*server.address("tcp"))
    assert await tcp_options(stream, ua) == 200
    last_whole = trio.current_time()
    for _ in range(3):  # keep-alives count: the connection stays
        await trio.sleep(5.0)
        await stream.send_all(b"\r\n\r\n")
        last_whole = trio.current_time()
    partial = ua.build("OPTIONS", f"sip:{DOMAIN}", transport="tcp")
    closed_at = None
    with trio.fail_after(60):
        for byte in partial[:-10]:
            try:
                await stream.send_all(bytes([byte]))
            except trio.BrokenResourceError:
                break
            with trio.move_on_after(1.0):
                try:
                    data = await stream.receive_some(65536)
                except trio.BrokenResourceError:  # reset: closed with our bytes unread
                    data = b""
                if data == b"":
                    closed_at = trio.current_time()
                    break
    assert closed_at is not None, "still open after the whole request but its end"
    assert 7.0 <= closed_at - last_whole < 9.0
    await stream.aclose()


def _lowest_free_fd() -> int:
    fd = os.dup(0)
    os.close(fd)
    return fd


async def test_accept_without_file_descriptors_is_retried_and_logged_rarely(
    nursery: trio.Nursery, autojump_clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="imc_actors.transport")
    server = await start_core(nursery)
    ua = await TestUA.open(nursery, "alice", DOMAIN, server.address())  # builds the request
    client = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)  # its descriptor first
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (_lowest_free_fd(), hard))
    try:
        await client.connect(server.address("tcp"))  # in the backlog: accept has no descriptor
        await trio.sleep(25)  # the accept loop retries every 0.1 s
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    stream = trio.SocketStream(client)
    failures = server.transport.statistics().tcp_accept_failures
    assert 200 <= failures <= 260
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("imc_actors")]
    assert len(lines) == 3  # at 0, 10 and 20 s
    assert lines[0].startswith(f"tcp 127.0.0.1:{server.address('tcp')[1]}: accept failed: EMFILE")
    assert os.strerror(errno.EMFILE) in lines[0]
    assert await tcp_options(stream, ua) == 200  # accepted once descriptors are back
    await stream.aclose()


# ---------------------------------------------------------------------- flood budget
async def test_a_flooding_source_is_throttled_and_others_are_served(
    nursery: trio.Nursery, mock_clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="imc_actors.transport")
    handler = RecordingHandler()
    flood = {"flood_rate": 10.0, "flood_burst": 5, "flood_block": 3.0}
    server = await start_core(nursery, messages=handler, transport_options=flood)
    flooder = await TestUA.open(nursery, "mallory", DOMAIN, server.address())
    answers = [response_of(await answer(flooder, options(flooder))) for _ in range(20)]
    assert [a.code for a in answers] == [200] * 5 + [503] * 15
    assert {a.header("Retry-After") for a in answers[5:]} == {"3"}
    # another source is served all along: its chat lines reach the handler
    for _ in range(3):
        served = response_of(await exchange_from(SECOND_SOURCE, server.address()))
        assert served.code == 202
    assert [source.host for _, source in handler.calls] == [SECOND_SOURCE] * 3
    stats = server.transport.statistics()
    assert (stats.throttled, stats.transactions_refused) == (15, 0)
    assert [r.getMessage() for r in caplog.records] == [
        "source 127.0.0.1 over flood_rate 10/s (burst 5): throttled for 3 s"
    ]
    # still blocked 2 s later, even though tokens came back; served once the block is over
    mock_clock.jump(2.0)
    refused = response_of(await answer(flooder, options(flooder)))
    assert (refused.code, refused.header("Retry-After")) == (503, "1")
    mock_clock.jump(1.0)
    assert [response_of(await answer(flooder, options(flooder))).code for _ in range(5)] == [
        200
    ] * 5
    assert server.transport.statistics().throttled == 16


async def test_retransmissions_of_a_served_request_are_not_throttled(
    nursery: trio.Nursery, mock_clock
) -> None:
    flood = {"flood_rate": 1.0, "flood_burst": 1, "flood_block": 5.0}
    server = await start_core(nursery, transport_options=flood)
    ua = await TestUA.open(nursery, "alice", DOMAIN, server.address())
    data = options(ua)
    first = await answer(ua, data)
    assert response_of(first).code == 200
    assert [await answer(ua, data) for _ in range(5)] == [first] * 5  # from the transaction
    assert response_of(await answer(ua, options(ua))).code == 503  # a new one: over budget
    assert server.transport.statistics().throttled == 1


async def test_exempt_sources_have_no_budget(nursery: trio.Nursery, mock_clock) -> None:
    flood = {
        "flood_rate": 1.0,
        "flood_burst": 2,
        "flood_block": 5.0,
        "flood_exempt": ["127.0.0.1/32"],
    }
    server = await start_core(nursery, transport_options=flood)
    ua = await TestUA.open(nursery, "alice", DOMAIN, server.address())
    assert [response_of(await answer(ua, options(ua))).code for _ in range(10)] == [200] * 10
    codes = [
        response_of(await exchange_from(SECOND_SOURCE, server.address())).code for _ in range(3)
    ]
    assert codes == [202, 202, 503]
    assert server.transport.statistics().throttled == 1


def test_the_bucket_table_is_bounded() -> None:
    limiter = FloodLimiter(10.0, 5, 1.0, max_sources=3)
    for i in range(3):
        assert limiter.allow(f"10.0.0.{i}", 0.0) == 0.0
    assert limiter.allow("10.0.0.9", 0.0) == 0.0  # full and nobody idle: the oldest goes
    assert len(limiter) == 3
    for _ in range(5):
        limiter.allow("10.0.0.9", 0.0)
    assert limiter.allow("10.0.0.9", 0.0) == 1.0  # over budget: blocked for 1 s
    # later the others are idle (full buckets again) and are swept out, not the blocked one
    assert limiter.allow("10.0.0.20", 0.9) == 0.0
    assert limiter.allow("10.0.0.21", 0.9) == 0.0
    assert len(limiter) == 3
    assert limiter.allow("10.0.0.9", 0.9) == pytest.approx(0.1)  # still blocked: kept
    assert limiter.allow("10.0.0.9", 1.0) == 0.0  # its block is over
    assert (limiter.throttled, limiter.blocked) == (3, 1)


def _closed_ports(count: int) -> list[int]:
    """``count`` TCP ports of 127.0.0.1 nobody listens on (a connect is refused at once)."""
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


async def test_refused_destinations_are_forgotten_once_their_retry_time_has_passed(
    nursery: trio.Nursery, autojump_clock
) -> None:
    # a contact registered with one port after another, each refusing: the refusals that still
    # count (TCP_RETRY_AFTER) are remembered, the older ones must not pile up for ever
    connections = Connections(lambda *a: None, lambda *a: None, lambda conn: None)
    connections.open(nursery, connect_timeout=1.0, idle_timeout=10.0)
    first, second, third = _closed_ports(3)
    assert await connections.get(("127.0.0.1", first), required=True) is None
    assert await connections.get(("127.0.0.1", second), required=True) is None
    assert len(connections._refused_until) == 2  # both within their retry time
    await trio.sleep(TCP_RETRY_AFTER)
    assert await connections.get(("127.0.0.1", third), required=True) is None
    assert list(connections._refused_until) == [("tcp", ("127.0.0.1", third))]
    # one that refuses again is remembered from its latest refusal, not its first
    await trio.sleep(TCP_RETRY_AFTER / 2)
    assert await connections.get(("127.0.0.1", first), required=True) is None
    await trio.sleep(TCP_RETRY_AFTER / 2)
    assert await connections.get(("127.0.0.1", second), required=True) is None
    assert list(connections._refused_until) == [
        ("tcp", ("127.0.0.1", first)), ("tcp", ("127.0.0.1", second))
    ]
    await connections.aclose()


async def test_outgoing_connections_are_bounded_by_max_outgoing(nursery: trio.Nursery, caplog) -> None:
    # notices to contacts registered over TCP, one port after another, each opened a
    # connection (a file descriptor) without a bound (memory tour)
    listeners = [await trio.open_tcp_listeners(0, host="127.0.0.1") for _ in range(3)]
    ports = [group[0].socket.getsockname()[1] for group in listeners]
    connections = Connections(lambda *a: None, lambda *a: None, lambda conn: None)
    connections.open(nursery, connect_timeout=1.0, idle_timeout=10.0, max_outgoing=2)
    first = await connections.get(("127.0.0.1", ports[0]), required=True)
    second = await connections.get(("127.0.0.1", ports[1]), required=True)
    assert first is not None and second is not None
    with caplog.at_level("WARNING", logger="imc_actors.transport"):
        assert await connections.get(("127.0.0.1", ports[2]), required=True) is None
        assert await connections.get(("127.0.0.1", ports[2]), required=True) is None
    assert connections.outgoing_refused == 2
    assert sum("tcp_max_outgoing 2 reached" in r.getMessage() for r in caplog.records) == 1
    assert await connections.get(("127.0.0.1", ports[0]), required=True) is first  # pooled: fine
    await first.aclose()
    connections.closed(first)  # its reader ended: a place is free again
    assert await connections.get(("127.0.0.1", ports[2]), required=True) is not None
    await connections.aclose()
    for group in listeners:
        for listener in group:
            await listener.aclose()


BOUNDS = {
    "max_transaction_bytes": 12345, "max_vias": 9, "tcp_max_connections": 33, "tcp_max_per_ip": 3,
    "tcp_max_outgoing": 44,
    "tcp_max_buffer": 4096, "tcp_idle_timeout": 42.0, "flood_rate": 7.0, "flood_burst": 70,
    "flood_block": 1.5, "flood_sources": 99, "trusted_sources": ["10.0.0.0/8"],
}  # fmt: skip


@pytest.mark.parametrize("config_overrides", [BOUNDS])
async def test_the_server_passes_every_bound_to_its_transport(server) -> None:
    transport = server.transport
    for name in ("max_transaction_bytes", "max_vias", "tcp_max_connections", "tcp_max_per_ip",
                 "tcp_max_outgoing", "tcp_max_buffer", "tcp_idle_timeout"):  # fmt: skip
        assert getattr(transport, name) == BOUNDS[name], name
    flood = transport.flood
    assert flood is not None
    assert (flood.rate, flood.burst, flood.block, flood.max_sources) == (7.0, 70, 1.5, 99)
    assert flood.allow("10.1.2.3", 0.0) == 0.0 and len(flood) == 0  # trusted: no bucket
    assert flood.allow("192.0.2.1", 0.0) == 0.0 and len(flood) == 1


@pytest.mark.parametrize("config_overrides", [{"flood_rate": 0}])
async def test_flood_rate_zero_turns_the_budget_off(server) -> None:
    assert server.transport.flood is None
