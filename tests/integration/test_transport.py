"""SipTransport end to end over real sockets on 127.0.0.1: server transactions, malformed
input, client transactions, next-hop choice, UDP and TCP."""

from __future__ import annotations

import random
import re
import socket

import pytest
import trio
import trio.testing

from imc_actors.config import ListenAddress
from imc_actors.sip import Request
from imc_actors.transport import ClientResult, Hop, Reply, SipTransport, Source, parse_hop
from tests.support import (
    RecordingHandler,
    TestUA,
    free_port,
    response_of,
    silent_udp,
    start_core,
)

DOMAIN = "example.org"
ROOM = "sip:room@example.org"


# ------------------------------------------------------------------------ server side
@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_register_and_options(nursery: trio.Nursery, transport: str) -> None:
    server = await start_core(nursery)
    ua = await TestUA.open(nursery, "alice", DOMAIN, server.address(transport), transport=transport)
    registered = await ua.register(600)
    assert registered.code == 200
    assert registered.header("Contact") == f"<{ua.contact}>;expires=600"
    assert registered.header("To").startswith(f"<{ua.uri}>;tag=")
    options = await ua.request("OPTIONS", f"sip:{DOMAIN}")
    assert options.code == 200
    assert options.header("Allow") == "MESSAGE, OPTIONS, REGISTER"
    assert options.header("Supported") == "kamailio/imc"
    assert server.registrar is not None
    assert server.registrar.lookup("alice@example.org", trio.current_time()) == [ua.contact]
    stats = server.transport.statistics()
    assert stats.requests == 2
    assert stats.malformed == 0
    ua.close()


async def test_via_gets_received_and_rport(nursery: trio.Nursery) -> None:
    server = await start_core(nursery)
    ua = await TestUA.open(nursery, "alice", DOMAIN, server.address())
    response = await ua.request("OPTIONS", f"sip:{DOMAIN}")
    via = response.header("Via")
    assert via is not None and via.endswith(f";received=127.0.0.1;rport={ua.port}")


async def test_udp_response_without_rport_goes_to_via_port(nursery: trio.Nursery) -> None:
    """RFC 3261 §18.2.2: no rport -> source IP, port from the Via sent-by."""
    server = await start_core(nursery)
    sender = await TestUA.open(nursery, "alice", DOMAIN, server.address())
    listener = await TestUA.open(nursery, "bob", DOMAIN, server.address())
    data = (
        sender.build("OPTIONS", f"sip:{DOMAIN}")
        .replace(f"127.0.0.1:{sender.port};".encode(), f"127.0.0.1:{listener.port};".encode())
        .replace(b";rport", b"")
    )
    await sender.send_raw(data)
    with trio.fail_after(5):
        answer = response_of(await listener.recv_raw())
    assert answer.code == 200


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_retransmission_answered_byte_equal_handler_once(
    nursery: trio.Nursery, transport: str
) -> None:
    handler = RecordingHandler()
    server = await start_core(nursery, messages=handler)
    ua = await TestUA.open(nursery, "alice", DOMAIN, server.address(transport), transport=transport)
    data = ua.build("MESSAGE", ROOM, body=b"hello")
    tcp = transport == "tcp"
    await ua.send_raw(data, tcp=tcp)
    with trio.fail_after(5):
        first = await ua.recv_raw()
    await ua.send_raw(data, tcp=tcp)
    with trio.fail_after(5):
        second = await ua.recv_raw()
    assert response_of(first).code == 202
    assert first == second
    assert len(handler.calls) == 1
    assert server.transport.statistics().retransmissions_absorbed == 1


async def test_retransmission_while_handler_runs_is_absorbed(nursery: trio.Nursery) -> None:
    release = trio.Event()
    calls: list[Request] = []

    async def slow(request: Request, source: Source) -> Reply:
        calls.append(request)
        await release.wait()
        return Reply(202)

    server = await start_core(nursery, messages=slow)
    ua = await TestUA.open(nursery, "alice", DOMAIN, server.address())
    data = ua.build("MESSAGE", ROOM, body=b"x")
    await ua.send_raw(data)
    await ua.send_raw(data)
    await trio.testing.wait_all_tasks_blocked()
    assert len(calls) == 1
    release.set()
    with trio.fail_after(5):
        first = await ua.recv_raw()
    await ua.send_raw(data)
    with trio.fail_after(5):
        again = await ua.recv_raw()
    assert first == again
    assert len(calls) == 1
    assert server.transport.statistics().retransmissions_absorbed == 2


async def test_timer_j_forgets_the_transaction(nursery: trio.Nursery, autojump_clock) -> None:
    handler = RecordingHandler()
    server = await start_core(nursery, messages=handler)
    ua = await TestUA.open(nursery, "alice", DOMAIN, server.address())
    data = ua.build("MESSAGE", ROOM, body=b"x")
    await ua.send_raw(data)
    await ua.recv_raw()
    assert server.transport.statistics().server_transactions == 1
    await trio.sleep(31.9)
    assert server.transport.statistics().server_transactions == 1
    await trio.sleep(0.2)  # Timer J = 64*T1 = 32 s has fired
    assert server.transport.statistics().server_transactions == 0
    await ua.send_raw(data)  # now it is a new request again
    await ua.recv_raw()
    assert len(handler.calls) == 2


async def test_handler_error_is_500_and_server_survives(nursery: trio.Nursery) -> None:
    async def broken(request: Request, source: Source) -> Reply:
        if request.body == b"boom":
            raise RuntimeError("handler bug")
        await trio.lowlevel.checkpoint()
        return Reply(202)

    server = await start_core(nursery, messages=broken)
    ua = await TestUA.open(nursery, "alice", DOMAIN, server.address())
    assert (await ua.message(ROOM, "boom")).code == 500
    assert (await ua.message(ROOM, "fine")).code == 202
    assert server.transport.statistics().handler_errors == 1


async def test_reply_body_and_headers(nursery: trio.Nursery) -> None:
    async def answer(request: Request, source: Source) -> Reply:
        await trio.lowlevel.checkpoint()
        return Reply(200, "Done", headers=(("X-Test", "1"),), body=b"Members:\n[a]",
                     content_type="text/plain;charset=UTF-8")  # fmt: skip

    server = await start_core(nursery, messages=answer)
    ua = await TestUA.open(nursery, "alice", DOMAIN, server.address())
    response = await ua.message(ROOM, "#members")
    assert (response.code, response.reason) == (200, "Done")
    assert response.header("X-Test") == "1"
    assert response.header("Content-Type") == "text/plain;charset=UTF-8"
    assert response.body == b"Members:\n[a]"


def _truncated_requests(rng: random.Random, ua: TestUA, count: int) -> list[bytes]:
    out = []
    for _ in range(count):
        full = ua.build("MESSAGE", ROOM, body=b"body text " * rng.randint(1, 20))
        out.append(full[: rng.randrange(1, len(full))])  # always missing at least one byte
    return out


async def test_garbage_then_normal_requests(nursery: trio.Nursery) -> None:
    handler = RecordingHandler()
    server = await start_core(nursery, messages=handler)
    ua = await TestUA.open(nursery, "alice", DOMAIN, server.address())
    rng = random.Random(3261)
    garbage = [rng.randbytes(rng.randint(0, 1400)) for _ in range(5000)]
    garbage += _truncated_requests(rng, ua, 5000)
    rng.shuffle(garbage)
    blaster = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    await blaster.bind(("127.0.0.1", 0))
    with blaster:
        for start in range(0, len(garbage), 100):
            for data in garbage[start : start + 100]:
                await blaster.sendto(data, server.address())
            # Let the server drain its socket (no drops in the kernel, no sleeping).
            await trio.testing.wait_all_tasks_blocked()
    stats = server.transport.statistics()
    assert stats.malformed == len(garbage)
    assert stats.rejected > 0  # truncated requests with complete Via..CSeq lines got a 400
    assert stats.requests == 0 and not handler.calls
    # The server still works.
    assert (await ua.request("OPTIONS", f"sip:{DOMAIN}")).code == 200
    assert (await ua.message(ROOM, "hello")).code == 202
    assert len(handler.calls) == 1


@pytest.mark.parametrize(
    ("mangle", "reason"),
    [
        (
            lambda d: d.replace(b"Content-Length: 5", b"Content-Length: 50"),
            "Content-Length mismatch",
        ),
        (lambda d: d.replace(b"Max-Forwards: 70", b"Max-Forwards: many"), "Invalid Max-Forwards"),
        (lambda d: d.replace(b"1 MESSAGE", b"1 OPTIONS"), "CSeq method mismatch"),
        (lambda d: d.replace(b"SIP/2.0\r\n", b"SIP/3.0\r\n", 1), "Unsupported SIP version"),
    ],
)
async def test_malformed_but_salvageable_gets_400_with_reason(
    nursery: trio.Nursery, mangle, reason: str
) -> None:
    server = await start_core(nursery)
    ua = await TestUA.open(nursery, "alice", DOMAIN, server.address())
    await ua.send_raw(mangle(ua.build("MESSAGE", ROOM, body=b"hello", cseq=1)))
    with trio.fail_after(5):
        answer = response_of(await ua.recv_raw())
    assert answer.code in (400, 505)
    assert answer.reason == reason
    assert answer.header("To").startswith(f"<{ROOM}>;tag=")
    assert server.transport.statistics().rejected == 1


@pytest.mark.parametrize("port", [b"0", b"65536", b"99999"])
async def test_a_via_port_no_answer_could_go_to_gets_400_at_the_source(
    nursery: trio.Nursery, port: bytes
) -> None:
    # was a traceback ("sendto(): port must be 0-65535") and the chat line relayed unanswered
    server = await start_core(nursery)
    ua = await TestUA.open(nursery, "alice", DOMAIN, server.address())
    data = ua.build("MESSAGE", ROOM, body=b"hello", cseq=1)
    await ua.send_raw(re.sub(rb"(Via: SIP/2\.0/UDP [^:;]+:)\d+", rb"\g<1>" + port, data, count=1))
    with trio.fail_after(5):
        raw = await ua.recv_raw()
    assert raw.startswith(b"SIP/2.0 400 Invalid Via\r\n"), raw
    stats = server.transport.statistics()
    assert (stats.rejected, stats.requests) == (1, 0)


def _without_line(data: bytes, name: bytes) -> bytes:
    return b"\r\n".join(line for line in data.split(b"\r\n") if not line.startswith(name + b":"))


def _header_names(raw: bytes) -> list[bytes]:
    head = raw.split(b"\r\n\r\n", 1)[0]
    return [line.split(b":", 1)[0] for line in head.split(b"\r\n")[1:]]


@pytest.mark.parametrize(
    ("mangle", "reason", "absent"),
    [
        (lambda d: _without_line(d, b"Call-ID"), "Missing Call-ID", b"Call-ID"),
        (lambda d: _without_line(d, b"CSeq"), "Missing CSeq", b"CSeq"),
        (lambda d: _without_line(d, b"From"), "Missing From", b"From"),
        (lambda d: _without_line(d, b"To"), "Missing To", b"To"),
        (
            lambda d: b"\r\n".join(
                b"Call-ID:" if line.startswith(b"Call-ID:") else line for line in d.split(b"\r\n")
            ),
            "Invalid Call-ID",
            b"Call-ID",
        ),
        (lambda d: d.replace(b"\r\n", b"\r"), "Bad line ending", None),
    ],
)
async def test_request_with_a_via_but_no_call_id_cseq_from_or_to_gets_400(
    nursery: trio.Nursery, mangle, reason: str, absent: bytes | None
) -> None:
    """Whenever a Via lets it be routed back, malformed SIP gets a 400 (as Kamailio's sanity
    module answers): what the request lacks is left out of the answer, the rest is copied."""
    server = await start_core(nursery)
    ua = await TestUA.open(nursery, "alice", DOMAIN, server.address())
    data = ua.build("MESSAGE", ROOM, body=b"hello", call_id="abuse-1@127.0.0.1", cseq=7)
    await ua.send_raw(mangle(data))
    with trio.fail_after(5):
        raw = await ua.recv_raw()
    assert raw.startswith(f"SIP/2.0 400 {reason}\r\n".encode()), raw
    expected = [b"Via", b"From", b"To", b"Call-ID", b"CSeq", b"Content-Length"]
    assert _header_names(raw) == [name for name in expected if name != absent]
    assert f"Via: SIP/2.0/UDP 127.0.0.1:{ua.port};branch=".encode() in raw
    if absent != b"Call-ID":
        assert b"\r\nCall-ID: abuse-1@127.0.0.1\r\n" in raw
    if absent != b"CSeq":
        assert b"\r\nCSeq: 7 MESSAGE\r\n" in raw
    stats = server.transport.statistics()
    assert (stats.malformed, stats.rejected, stats.requests) == (1, 1, 0)


@pytest.mark.parametrize("transport", ["udp", "tcp"])
@pytest.mark.parametrize(
    "first_line", [b"\xff\xfe GARBAGE", b"\x00\x01\x02", b"MESSAGE", b"<<<>>> sip:x SIP/2.0"]
)
async def test_junk_instead_of_a_request_line_still_gets_400_along_its_via(
    nursery: trio.Nursery, transport: str, first_line: bytes
) -> None:
    # was dropped without an answer (over TCP the connection closed silently)
    server = await start_core(nursery)
    ua = await TestUA.open(
        nursery, "alice", DOMAIN, server.address(transport), transport=transport
    )
    data = ua.build("MESSAGE", ROOM, body=b"hello", transport=transport, cseq=3)
    await ua.send_raw(first_line + b"\r\n" + data.split(b"\r\n", 1)[1], tcp=transport == "tcp")
    with trio.fail_after(5):
        answer = response_of(await ua.recv_raw())
    assert answer.code == 400 and answer.reason
    assert answer.cseq_method == "MESSAGE"
    assert answer.header("Via").startswith(f"SIP/2.0/{transport.upper()} 127.0.0.1:{ua.port}")
    stats = server.transport.statistics()
    assert (stats.malformed, stats.rejected, stats.requests) == (1, 1, 0)


async def test_request_without_call_id_over_tcp_gets_400(nursery: trio.Nursery) -> None:
    server = await start_core(nursery)
    ua = await TestUA.open(nursery, "alice", DOMAIN, server.address("tcp"), transport="tcp")
    await ua.send_raw(_without_line(ua.build("MESSAGE", ROOM, body=b"hello"), b"Call-ID"), tcp=True)
    with trio.fail_after(5):
        raw = await ua.recv_raw()
    assert raw.startswith(b"SIP/2.0 400 Missing Call-ID\r\n"), raw
    assert b"\r\nCall-ID:" not in raw and b"\r\nCSeq: 1 MESSAGE\r\n" in raw


async def test_request_without_via_is_dropped(nursery: trio.Nursery) -> None:
    """No Via: nowhere to send an answer along (RFC 3261 §18.2.2), so nothing is sent."""
    server = await start_core(nursery)
    ua = await TestUA.open(nursery, "alice", DOMAIN, server.address())
    await ua.send_raw(_without_line(ua.build("MESSAGE", ROOM, body=b"hello"), b"Via"))
    # Datagrams are handled in order: had the first been answered, its answer came first.
    probe = ua.build("OPTIONS", f"sip:{DOMAIN}")
    await ua.send_raw(probe)
    with trio.fail_after(5):
        answer = response_of(await ua.recv_raw())
    assert answer.cseq_method == "OPTIONS"
    stats = server.transport.statistics()
    assert (stats.malformed, stats.rejected) == (1, 0)


@pytest.mark.parametrize(
    ("length", "reason"),
    [
        (b"", "Missing Content-Length"),
        # the first one larger than the body: it used to wait for the rest until the idle timeout
        (b"Content-Length: 5\r\nContent-Length: 0\r\n", "Multiple Content-Length headers"),
    ],
)
async def test_tcp_framing_error_answers_400_and_closes(
    nursery: trio.Nursery, length: bytes, reason: str
) -> None:
    server = await start_core(nursery)
    ua = await TestUA.open(nursery, "alice", DOMAIN, server.address())
    stream = await trio.open_tcp_stream(*server.address("tcp"))
    data = ua.build("OPTIONS", f"sip:{DOMAIN}", transport="tcp")
    await stream.send_all(data.replace(b"Content-Length: 0\r\n", length))
    received = b""
    with trio.fail_after(5):
        while chunk := await stream.receive_some(65536):
            received += chunk
    answer = response_of(received)  # exactly one response, then EOF
    assert (answer.code, answer.reason) == (400, reason)
    await stream.aclose()


async def test_tcp_two_requests_in_one_segment(nursery: trio.Nursery) -> None:
    handler = RecordingHandler()
    server = await start_core(nursery, messages=handler)
    ua = await TestUA.open(nursery, "alice", DOMAIN, server.address("tcp"), transport="tcp")
    both = (
        ua.build("MESSAGE", ROOM, body=b"one")
        + b"\r\n\r\n"
        + ua.build("MESSAGE", ROOM, body=b"two")
    )
    await ua.send_raw(both, tcp=True)
    with trio.fail_after(5):
        codes = [response_of(await ua.recv_raw()).code for _ in range(2)]
    assert codes == [202, 202]
    assert sorted(r.body for r, _ in handler.calls) == [b"one", b"two"]
    assert {s.transport for _, s in handler.calls} == {"tcp"}


async def test_bind_failure_names_the_address(nursery: trio.Nursery) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        transport = SipTransport([ListenAddress("udp", "127.0.0.1", port)])
        with pytest.raises(OSError, match=f"udp:127.0.0.1:{port}"):
            await nursery.start(transport.run, RecordingHandler())


async def test_ack_is_absorbed(nursery: trio.Nursery) -> None:
    handler = RecordingHandler()
    server = await start_core(nursery, messages=handler)
    ua = await TestUA.open(nursery, "alice", DOMAIN, server.address())
    await ua.send_raw(ua.build("ACK", ROOM))
    await ua.send_raw(ua.build("OPTIONS", f"sip:{DOMAIN}"))
    with trio.fail_after(5):
        answer = response_of(await ua.recv_raw())
    assert answer.cseq_method == "OPTIONS"
    assert server.transport.statistics().acks == 1
    assert not handler.calls


async def test_cancel_matching_a_transaction_gets_200(nursery: trio.Nursery) -> None:
    release = trio.Event()

    async def slow(request: Request, source: Source) -> Reply:
        await release.wait()
        return Reply(202)

    server = await start_core(nursery, messages=slow)
    ua = await TestUA.open(nursery, "alice", DOMAIN, server.address())
    message = ua.build("MESSAGE", ROOM, body=b"x", branch="z9hG4bKcancelme", cseq=7,
                       call_id="c1@127.0.0.1")  # fmt: skip
    await ua.send_raw(message)
    await trio.testing.wait_all_tasks_blocked()
    cancel = ua.build("CANCEL", ROOM, branch="z9hG4bKcancelme", cseq=7, call_id="c1@127.0.0.1")
    await ua.send_raw(cancel)
    with trio.fail_after(5):
        answer = response_of(await ua.recv_raw())
    assert (answer.code, answer.cseq_method) == (200, "CANCEL")
    release.set()
    with trio.fail_after(5):
        answer = response_of(await ua.recv_raw())
    assert (answer.code, answer.cseq_method) == (202, "MESSAGE")  # CANCEL has no effect on it


# ------------------------------------------------------------------------ client side
async def test_send_request_udp_200(nursery: trio.Nursery) -> None:
    server = await start_core(nursery)
    ua = await TestUA.open(nursery, "alice", DOMAIN, server.address())
    result = await server.transport.send_request(
        "MESSAGE", ua.contact, from_uri=ROOM, to_uri=ua.uri,
        headers=[("Supported", "kamailio/imc"), ("In-Reply-To", "abc")], body=b"hi",
        content_type="text/plain;charset=UTF-8",
    )  # fmt: skip
    assert result == ClientResult(200, "OK") and result.ok
    [got] = ua.received
    assert got.uri == ua.contact
    assert got.body == b"hi"
    assert got.from_uri == ROOM and got.from_tag
    assert got.to_uri == ua.uri and got.to_tag is None
    assert got.cseq == 1 and got.max_forwards == 70
    assert got.branch is not None and got.branch.startswith("z9hG4bK")
    assert [n for n, _ in got.headers][-4:] == [
        "Supported",
        "In-Reply-To",
        "Content-Type",
        "Content-Length",
    ]
    assert got.header("Via").startswith(f"SIP/2.0/UDP {server.address()[0]}:{server.address()[1]};")
    assert got.header("Via").endswith(";rport")
    stats = server.transport.statistics()
    assert (stats.client_ok, stats.client_failed) == (1, 0)


async def test_send_request_keeps_given_call_id(nursery: trio.Nursery) -> None:
    server = await start_core(nursery)
    ua = await TestUA.open(nursery, "alice", DOMAIN, server.address())
    await server.transport.send_request("MESSAGE", ua.contact, from_uri=ROOM, to_uri=ua.uri,
                                        body=b"x", call_id="given@host")  # fmt: skip
    assert ua.received[0].call_id == "given@host"


async def test_send_request_to_ua_answering_480(nursery: trio.Nursery) -> None:
    server = await start_core(nursery)
    ua = await TestUA.open(nursery, "alice", DOMAIN, server.address(), answer=480)
    result = await server.transport.send_request("MESSAGE", ua.contact, from_uri=ROOM,
                                                 to_uri=ua.uri, body=b"x")  # fmt: skip
    assert result == ClientResult(480, "Temporarily Unavailable")
    assert server.transport.statistics().client_failed == 1


async def test_send_request_to_dead_port_times_out(nursery: trio.Nursery, autojump_clock) -> None:
    server = await start_core(nursery)
    hole = silent_udp()  # bound and silent: no ICMP error ends it early
    dead = hole.getsockname()[1]
    start = trio.current_time()
    result = await server.transport.send_request(
        "MESSAGE", f"sip:ghost@127.0.0.1:{dead}", from_uri=ROOM, to_uri="sip:ghost@example.org",
        body=b"anyone?",
    )  # fmt: skip
    assert result == ClientResult(408, "Request Timeout")
    assert trio.current_time() - start == pytest.approx(32.0, abs=0.01)  # Timer F = 64*T1
    stats = server.transport.statistics()
    assert stats.client_timeouts == 1
    # Timer E: 0.5, 1, 2, 4, 4, 4, ... up to 32 s -> 10 retransmissions.
    assert stats.client_retransmissions == 10
    assert stats.client_transactions == 0
    assert stats.client_unreachable == 0
    hole.close()


async def test_staggered_timeouts_each_fire_on_time(nursery: trio.Nursery, autojump_clock) -> None:
    """Timers filed out of order (first Timer E in its FIFO lane, later ones on the heap,
    Timer J and K in lanes of their own) still fire at their own deadlines."""
    server = await start_core(nursery)
    ua = await TestUA.open(nursery, "alice", DOMAIN, server.address())
    hole = silent_udp()  # bound and silent: no ICMP error ends them early
    dead = hole.getsockname()[1]
    took: dict[int, float] = {}

    async def one(index: int) -> None:
        await trio.sleep(index * 0.3)
        start = trio.current_time()
        if index % 2:  # answered at once: Timer K (5 s) in the same run
            result = await server.transport.send_request(
                "MESSAGE", ua.contact, from_uri=ROOM, to_uri=ua.uri, body=b"hi")  # fmt: skip
            assert result.code == 200
        else:
            result = await server.transport.send_request(
                "MESSAGE", f"sip:ghost@127.0.0.1:{dead}", from_uri=ROOM,
                to_uri="sip:ghost@example.org", body=b"anyone?",
            )  # fmt: skip
            assert result == ClientResult(408, "Request Timeout")
        took[index] = trio.current_time() - start

    async with trio.open_nursery() as inner:
        for index in range(7):
            inner.start_soon(one, index)
    for index, seconds in took.items():
        assert seconds == pytest.approx(0.0 if index % 2 else 32.0, abs=0.01), index
    stats = server.transport.statistics()
    assert stats.client_timeouts == 4
    assert stats.client_retransmissions == 40  # 10 each for the four that timed out
    await trio.sleep(5.1)  # past Timer K of the answered ones
    assert server.transport.statistics().client_transactions == 0
    hole.close()


async def test_lost_request_is_retransmitted(nursery: trio.Nursery, autojump_clock) -> None:
    server = await start_core(nursery)
    ua = await TestUA.open(nursery, "alice", DOMAIN, server.address())
    ua.drop_next = 1  # the first copy is "lost"
    start = trio.current_time()
    result = await server.transport.send_request("MESSAGE", ua.contact, from_uri=ROOM,
                                                 to_uri=ua.uri, body=b"again")  # fmt: skip
    assert result.code == 200
    assert trio.current_time() - start == pytest.approx(0.5, abs=0.01)  # one T1
    assert len(ua.ignored) == 1 and len(ua.received) == 1
    assert ua.ignored[0].branch == ua.received[0].branch
    assert server.transport.statistics().client_retransmissions == 1


async def test_duplicate_final_response_is_absorbed(nursery: trio.Nursery) -> None:
    server = await start_core(nursery)
    ua = await TestUA.open(nursery, "alice", DOMAIN, server.address())
    sent = trio.Event()

    async def send() -> None:
        await server.transport.send_request("MESSAGE", ua.contact, from_uri=ROOM,
                                            to_uri=ua.uri, body=b"x")  # fmt: skip
        sent.set()

    nursery.start_soon(send)
    got = await ua.next_message()
    await sent.wait()
    # Replay the UA's answer: the client transaction (Timer K) absorbs it.
    answer = ua._answered[(got.branch, got.via_sent_by, "MESSAGE")]
    await ua._udp.sendto(answer, server.address())
    await ua._udp.sendto(answer.replace(got.branch.encode(), b"z9hG4bKunknown"), server.address())
    await trio.testing.wait_all_tasks_blocked()
    stats = server.transport.statistics()
    assert stats.retransmissions_absorbed == 1
    assert stats.stray_responses == 1


async def test_large_message_goes_over_tcp(nursery: trio.Nursery) -> None:
    server = await start_core(nursery)
    ua = await TestUA.open(nursery, "alice", DOMAIN, server.address(), transport="tcp")
    body = b"x" * 2000
    result = await server.transport.send_request("MESSAGE", ua.contact, from_uri=ROOM,
                                                 to_uri=ua.uri, body=body)  # fmt: skip
    assert result.code == 200
    [got] = ua.received
    assert got.body == body
    assert got.header("Via").startswith("SIP/2.0/TCP ")
    # A second large message reuses the connection.
    await server.transport.send_request("MESSAGE", ua.contact, from_uri=ROOM, to_uri=ua.uri,
                                        body=body)  # fmt: skip
    assert server.transport.statistics().tcp_connections == 1
    # A small one still goes over UDP.
    await server.transport.send_request("MESSAGE", ua.contact, from_uri=ROOM, to_uri=ua.uri,
                                        body=b"small")  # fmt: skip
    assert ua.received[-1].header("Via").startswith("SIP/2.0/UDP ")


async def test_large_message_falls_back_to_udp_without_tcp(nursery: trio.Nursery) -> None:
    server = await start_core(nursery)
    ua = await TestUA.open(nursery, "alice", DOMAIN, server.address())  # no TCP listener
    body = b"y" * 2000
    result = await server.transport.send_request("MESSAGE", ua.contact, from_uri=ROOM,
                                                 to_uri=ua.uri, body=body)  # fmt: skip
    assert result.code == 200
    assert ua.received[0].body == body
    assert ua.received[0].header("Via").startswith("SIP/2.0/UDP ")


async def test_transport_tcp_uri_param(nursery: trio.Nursery) -> None:
    server = await start_core(nursery)
    ua = await TestUA.open(nursery, "alice", DOMAIN, server.address(), transport="tcp")
    result = await server.transport.send_request("MESSAGE", ua.contact + ";transport=tcp",
                                                 from_uri=ROOM, to_uri=ua.uri, body=b"s")  # fmt: skip
    assert result.code == 200
    assert ua.received[0].header("Via").startswith("SIP/2.0/TCP ")
    # transport=tcp to a port nobody listens on: 503, no UDP fallback.
    dead = free_port(socket.SOCK_STREAM)
    result = await server.transport.send_request(
        "MESSAGE", f"sip:x@127.0.0.1:{dead};transport=tcp", from_uri=ROOM, to_uri=ua.uri,
        body=b"s",
    )  # fmt: skip
    assert result == ClientResult(503, "Service Unavailable")


async def test_unusable_uri_is_503(nursery: trio.Nursery) -> None:
    server = await start_core(nursery)
    for uri in ("sip:x@127.0.0.1;transport=sctp", "sips:x@127.0.0.1", "sip:x@127.0.0.1:99999"):
        result = await server.transport.send_request("MESSAGE", uri, from_uri=ROOM, to_uri=uri)
        assert result.code == 503, uri


async def test_registrar_retargets_to_contact(nursery: trio.Nursery) -> None:
    server = await start_core(nursery)
    ua = await TestUA.open(nursery, "alice", DOMAIN, server.address())
    assert (await ua.register()).code == 200
    result = await server.transport.send_request("MESSAGE", "sip:Alice@Example.org",
                                                 from_uri=ROOM, to_uri=ua.uri, body=b"hi")  # fmt: skip
    assert result.code == 200
    [got] = ua.received
    assert got.uri == ua.contact  # Request-URI rewritten to the contact
    assert got.to_uri == ua.uri  # To unchanged


async def test_parallel_delivery_to_every_contact(nursery: trio.Nursery) -> None:
    server = await start_core(nursery)
    phone = await TestUA.open(nursery, "alice", DOMAIN, server.address(), answer=480)
    laptop = await TestUA.open(nursery, "alice", DOMAIN, server.address())
    assert (await phone.register()).code == 200
    assert (await laptop.register()).code == 200
    result = await server.transport.send_request("MESSAGE", "sip:alice@example.org",
                                                 from_uri=ROOM, to_uri=phone.uri, body=b"hi")  # fmt: skip
    assert result.code == 200  # the best response wins
    assert len(phone.received) == len(laptop.received) == 1
    assert phone.received[0].call_id == laptop.received[0].call_id
    assert phone.received[0].branch != laptop.received[0].branch


async def test_outbound_proxy(nursery: trio.Nursery) -> None:
    proxy = await TestUA.open(nursery, "proxy", DOMAIN, ("127.0.0.1", 9))
    transport = SipTransport([ListenAddress("udp", "127.0.0.1", 0)],
                             outbound_proxy=f"sip:127.0.0.1:{proxy.port};lr")  # fmt: skip
    await nursery.start(transport.run, RecordingHandler())
    result = await transport.send_request("MESSAGE", "sip:bob@far.away.invalid", from_uri=ROOM,
                                          to_uri="sip:bob@far.away.invalid", body=b"via proxy")  # fmt: skip
    assert result.code == 200
    assert proxy.received[0].uri == "sip:bob@far.away.invalid"


async def test_a_direct_request_bypasses_the_outbound_proxy(nursery: trio.Nursery) -> None:
    # a node forwarding to another node (issue 13): the proxy in front would not route it
    proxy = await TestUA.open(nursery, "proxy", DOMAIN, ("127.0.0.1", 9))
    node = await TestUA.open(nursery, "node", DOMAIN, ("127.0.0.1", 9))
    transport = SipTransport([ListenAddress("udp", "127.0.0.1", 0)],
                             outbound_proxy=f"sip:127.0.0.1:{proxy.port};lr")  # fmt: skip
    await nursery.start(transport.run, RecordingHandler())
    result = await transport.send_request("MESSAGE", f"sip:127.0.0.1:{node.port}", from_uri=ROOM,
                                          to_uri=ROOM, body=b"to the node", direct=True)  # fmt: skip
    assert result.code == 200
    assert [r.body for r in node.received] == [b"to the node"] and proxy.received == []


async def test_dns_name_hop(nursery: trio.Nursery) -> None:
    server = await start_core(nursery)
    ua = await TestUA.open(nursery, "alice", DOMAIN, server.address())
    result = await server.transport.send_request("MESSAGE", f"sip:alice@localhost:{ua.port}",
                                                 from_uri=ROOM, to_uri=ua.uri, body=b"x")  # fmt: skip
    assert result.code == 200


async def test_cancelled_send_request_leaves_nothing(nursery: trio.Nursery) -> None:
    server = await start_core(nursery)
    with silent_udp() as hole, trio.move_on_after(0.05) as scope:
        await server.transport.send_request("MESSAGE", f"sip:x@127.0.0.1:{hole.getsockname()[1]}",
                                            from_uri=ROOM, to_uri=ROOM)  # fmt: skip
    assert scope.cancelled_caught
    assert server.transport.statistics().client_transactions == 0


def test_parse_hop() -> None:
    assert parse_hop("sip:bob@Host.example") == Hop("Host.example", 5060, None)
    assert parse_hop("sip:bob@h?subject=x") == Hop("h", 5060, None)
    hop = parse_hop("<sip:bob@[::1]:5070;transport=TCP;lr>")
    assert (hop.host, hop.port, hop.transport) == ("::1", 5070, "tcp")
    hop = parse_hop("10.0.0.1:5080")
    assert (hop.host, hop.port, hop.transport) == ("10.0.0.1", 5080, None)
    hop = parse_hop("sip:k3x@df7jal23ls0d.invalid;transport=WS")
    assert (hop.host, hop.port, hop.transport) == ("df7jal23ls0d.invalid", 5060, "ws")
    # TLS: sips: URIs and transport=tls, port 5061 unless given; sips is never sent in the clear
    assert parse_hop("sips:bob@example.org") == Hop("example.org", 5061, "tls")
    assert parse_hop("sip:bob@10.0.0.1;transport=TLS") == Hop("10.0.0.1", 5061, "tls")
    assert parse_hop("sips:bob@10.0.0.1:5070;transport=tcp") == Hop("10.0.0.1", 5070, "tls")
    for bad in ("sip:a@", "sip:a@h:0", "sip:a@h;transport=wss", "sips:a@h;transport=udp",
                "sips:a@h;transport=ws", "sip:a@h;transport=sctp"):  # fmt: skip
        with pytest.raises(ValueError):
            parse_hop(bad)


# ------------------------------------------------------------------------ connections and sockets
async def test_idle_tcp_connection_is_closed(nursery: trio.Nursery, autojump_clock) -> None:
    server = await start_core(nursery)
    ua = await TestUA.open(nursery, "alice", DOMAIN, server.address())
    stream = await trio.open_tcp_stream(*server.address("tcp"))
    await stream.send_all(ua.build("OPTIONS", f"sip:{DOMAIN}", transport="tcp"))
    answer = await stream.receive_some(65536)
    assert response_of(answer).code == 200
    assert server.transport.statistics().tcp_connections == 1
    start = trio.current_time()
    assert await stream.receive_some(65536) == b""  # the server closed it
    assert trio.current_time() - start == pytest.approx(120.0, abs=0.01)
    await trio.testing.wait_all_tasks_blocked()
    assert server.transport.statistics().tcp_connections == 0
    await stream.aclose()


async def test_tcp_connection_lost_while_waiting_is_503(nursery: trio.Nursery) -> None:
    server = await start_core(nursery)
    [listener] = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listener.socket.getsockname()[1]

    async def hang_up() -> None:
        stream = await listener.accept()
        await stream.receive_some(65536)  # read the request, then drop the connection
        await stream.aclose()

    nursery.start_soon(hang_up)
    with trio.fail_after(5):
        result = await server.transport.send_request(
            "MESSAGE", f"sip:x@127.0.0.1:{port};transport=tcp", from_uri=ROOM, to_uri=ROOM,
            body=b"x",
        )  # fmt: skip
    assert result == ClientResult(503, "Service Unavailable")
    await listener.aclose()


class _FullBufferSocket(socket.socket):
    """A UDP socket whose first ``full`` sends fail as if the send buffer were full."""

    full = 0

    def sendto(self, data, address):  # type: ignore[override]
        if self.full > 0:
            self.full -= 1
            raise BlockingIOError
        return super().sendto(data, address)


async def test_udp_senders_wait_for_a_full_buffer_in_turn() -> None:
    from imc_actors.transport.udp import UdpEndpoint

    receiver = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    await receiver.bind(("127.0.0.1", 0))
    sock = _FullBufferSocket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    endpoint = UdpEndpoint(sock)
    sock.full = 20
    async with trio.open_nursery() as nursery:
        for i in range(10):  # ten tasks hit the "full" buffer at once
            nursery.start_soon(endpoint.send, b"%d" % i, receiver.getsockname())
    got = sorted([int(await receiver.recv(100)) for _ in range(10)])
    assert got == list(range(10))
    assert endpoint.sent == 10
    endpoint.close()
    receiver.close()


async def test_a_notice_sent_after_the_transport_stopped_is_503_not_a_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # the last notices of a shutdown (a worker whose parent died): stored, quietly
    from imc_actors.config import Config
    from imc_actors.imc.effects import Notice
    from imc_actors.server import MessageSender
    from imc_actors.transport.client import TransportStopped

    transport = SipTransport([ListenAddress("udp", "127.0.0.1", 0)])
    async with trio.open_nursery() as running:
        await running.start(transport.run, RecordingHandler())
        running.cancel_scope.cancel()
    sender = MessageSender(transport, Config.from_sources(environ={}, overrides={}))
    with pytest.raises(TransportStopped):
        await transport.send_request("MESSAGE", "sip:bob@127.0.0.1", from_uri=ROOM, to_uri=ROOM)
    result = await sender(Notice("sip:bob@127.0.0.1", b"hi", ROOM, "relay", keep=True), "c1")
    assert (result.code, result.unreachable) == (503, True)  # a member notice is stored
    assert "Traceback" not in caplog.text and not [r for r in caplog.records if r.levelname == "ERROR"]
