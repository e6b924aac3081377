"""Non-INVITE transaction machines: timers driven by explicit times, and under Trio's
MockClock (autojump), where the same machines run against virtual time."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from imc_actors.sip import (
    ClientTransaction,
    Request,
    Response,
    ServerTransaction,
    build_request,
    build_response,
    client_key,
    parse,
    server_key,
)

REQUEST_BYTES = b"MESSAGE sip:bob@example.com SIP/2.0\r\n...request bytes..."

# Timer E fires at T1, then doubling intervals capped at T2=4: 0.5, 1.5, 3.5, 7.5, 11.5, ...
UDP_SCHEDULE = [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]


def drive(tx: ClientTransaction, until: float = 1e9) -> list[float]:
    """Fire every deadline up to ``until``; return the times ``data`` was resent."""
    sent = []
    while (deadline := tx.deadline()) is not None and deadline <= until:
        if tx.on_timer(deadline) is not None:
            sent.append(deadline)
    return sent


# --- client, explicit times ------------------------------------------------------------


def test_client_unreliable_retransmits_then_times_out() -> None:
    tx = ClientTransaction(REQUEST_BYTES, reliable=False, now=0.0)
    assert tx.state == "trying"
    assert tx.deadline() == 0.5
    assert drive(tx) == UDP_SCHEDULE
    assert tx.state == "terminated"
    assert tx.timed_out
    assert tx.final_code is None
    assert tx.retransmissions == len(UDP_SCHEDULE)
    assert tx.deadline() is None
    assert tx.on_timer(100.0) is None


def test_client_timer_e_returns_the_request_bytes() -> None:
    tx = ClientTransaction(REQUEST_BYTES, reliable=False, now=10.0)
    assert tx.on_timer(10.4) is None  # early: nothing
    assert tx.on_timer(10.5) == REQUEST_BYTES
    assert tx.on_timer(10.5) is None  # same instant again: nothing
    assert tx.deadline() == 11.5


def test_client_timer_f_is_64_t1_with_custom_timers() -> None:
    tx = ClientTransaction(REQUEST_BYTES, reliable=False, now=0.0, t1=0.1, t2=0.4, t4=1.0)
    sent = drive(tx)
    assert sent[:4] == pytest.approx([0.1, 0.3, 0.7, 1.1])
    assert all(b - a == pytest.approx(0.4) for a, b in zip(sent[3:], sent[4:], strict=False))
    assert tx.timed_out
    assert sent[-1] < 6.4


def test_client_proceeding_retransmits_every_t2() -> None:
    tx = ClientTransaction(REQUEST_BYTES, reliable=False, now=0.0)
    assert drive(tx, until=1.5) == [0.5, 1.5]
    assert tx.on_response(100, 2.0) is True
    assert tx.state == "proceeding"
    # Timer E still due at 3.5; from then on every T2.
    assert drive(tx, until=20.0) == [3.5, 7.5, 11.5, 15.5, 19.5]
    assert drive(tx) == [23.5, 27.5, 31.5]
    assert tx.timed_out


def test_client_final_response_completes_then_timer_k() -> None:
    tx = ClientTransaction(REQUEST_BYTES, reliable=False, now=0.0)
    assert drive(tx, until=1.0) == [0.5]
    assert tx.on_response(200, 1.2, "OK") is True
    assert tx.state == "completed"
    assert (tx.final_code, tx.final_reason) == (200, "OK")
    assert tx.deadline() == pytest.approx(1.2 + 5.0)  # Timer K = T4
    assert tx.on_timer(5.0) is None and tx.state == "completed"  # no more retransmits
    assert tx.on_response(200, 3.0, "OK again") is False  # retransmission absorbed
    assert tx.final_reason == "OK"
    tx.on_timer(6.2)
    assert tx.state == "terminated"
    assert not tx.timed_out
    assert tx.on_response(200, 7.0) is False


def test_client_error_response_after_provisional() -> None:
    tx = ClientTransaction(REQUEST_BYTES, reliable=False, now=0.0)
    assert tx.on_response(180, 0.1) is True
    assert tx.on_response(404, 0.2, "Not Found") is True
    assert (tx.state, tx.final_code, tx.final_reason) == ("completed", 404, "Not Found")
    assert tx.on_response(100, 0.3) is False  # late provisional ignored
    assert tx.state == "completed"


def test_client_reliable_has_no_timer_e_and_zero_timer_k() -> None:
    tx = ClientTransaction(REQUEST_BYTES, reliable=True, now=0.0)
    assert tx.deadline() == 32.0  # only Timer F
    assert drive(tx, until=31.9) == []
    tx.on_response(202, 3.0, "Accepted")
    assert tx.deadline() == 3.0
    tx.on_timer(3.0)
    assert tx.state == "terminated"


def test_client_reliable_times_out() -> None:
    tx = ClientTransaction(REQUEST_BYTES, reliable=True, now=5.0)
    assert drive(tx) == []
    assert tx.timed_out and tx.state == "terminated"


# --- server, explicit times ------------------------------------------------------------


def test_server_trying_has_nothing_to_resend() -> None:
    tx = ServerTransaction(reliable=False, now=0.0)
    assert tx.state == "trying"
    assert tx.on_retransmission(0.1) is None
    assert tx.deadline() is None


def test_server_provisional_then_final_then_timer_j() -> None:
    tx = ServerTransaction(reliable=False, now=0.0)
    assert tx.respond(b"100", 100, 0.1) is True
    assert tx.state == "proceeding"
    assert tx.on_retransmission(0.2) == b"100"
    assert tx.deadline() is None
    assert tx.respond(b"200", 200, 1.0) is True
    assert tx.state == "completed"
    assert tx.on_retransmission(2.0) == b"200"
    assert tx.deadline() == pytest.approx(1.0 + 32.0)  # Timer J = 64*T1
    assert tx.respond(b"500", 500, 3.0) is False  # discarded in completed
    assert tx.on_retransmission(3.0) == b"200"
    tx.on_timer(32.9)
    assert tx.state == "completed"
    tx.on_timer(33.0)
    assert tx.state == "terminated"
    assert tx.on_retransmission(34.0) is None
    assert tx.deadline() is None


def test_server_reliable_timer_j_is_zero() -> None:
    tx = ServerTransaction(reliable=True, now=0.0)
    tx.respond(b"202", 202, 4.0)
    assert tx.deadline() == 4.0
    tx.on_timer(4.0)
    assert tx.state == "terminated"


def test_server_custom_t1() -> None:
    tx = ServerTransaction(reliable=False, now=0.0, t1=0.1)
    tx.respond(b"404", 404, 1.0)
    assert tx.deadline() == pytest.approx(1.0 + 6.4)


# --- keys ------------------------------------------------------------------------------

INCOMING = (
    b"MESSAGE sip:room@example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP PC33.example.com:5060;branch=z9hG4bKnashds8\r\n"
    b"From: <sip:alice@example.com>;tag=1928301774\r\n"
    b"To: <sip:room@example.com>\r\n"
    b"Call-ID: a84b4c76e66710\r\n"
    b"CSeq: 1 MESSAGE\r\n"
    b"Content-Length: 0\r\n"
    b"\r\n"
)


def request_of(data: bytes) -> Request:
    parsed = parse(data)
    assert isinstance(parsed, Request)
    return parsed


def test_server_key_rfc3261() -> None:
    first = request_of(INCOMING)
    assert server_key(first) == ("3261", "z9hG4bKnashds8", "pc33.example.com:5060", "MESSAGE")
    # A retransmission, even reformatted, has the same key.
    again = request_of(INCOMING.replace(b"Via: ", b"v:  ").replace(b"PC33", b"pc33"))
    assert server_key(again) == server_key(first)
    other = request_of(INCOMING.replace(b"nashds8", b"nashds9"))
    assert server_key(other) != server_key(first)
    other_host = request_of(INCOMING.replace(b"PC33", b"pc34"))
    assert server_key(other_host) != server_key(first)


def test_server_key_rfc2543_fallback() -> None:
    old = request_of(INCOMING.replace(b";branch=z9hG4bKnashds8", b";branch=oldstyle"))
    key = server_key(old)
    assert key[0] == "2543"
    assert key == server_key(
        request_of(INCOMING.replace(b";branch=z9hG4bKnashds8", b";branch=oldstyle"))
    )
    next_cseq = request_of(
        INCOMING.replace(b";branch=z9hG4bKnashds8", b";branch=oldstyle").replace(
            b"CSeq: 1", b"CSeq: 2"
        )
    )
    assert server_key(next_cseq) != key
    no_branch = request_of(INCOMING.replace(b";branch=z9hG4bKnashds8", b""))
    assert server_key(no_branch)[0] == "2543"
    assert server_key(no_branch) != key


def test_client_key_matches_what_build_request_sent() -> None:
    sent = build_request(
        "MESSAGE", "sip:bob@example.com", from_uri="sip:room@example.com", from_tag="f",
        to_uri="sip:bob@example.com", call_id="c@x", cseq=1, via_host="192.0.2.1",
        via_port=5060, via_transport="udp", branch="z9hG4bKours",
    )  # fmt: skip
    response = parse(build_response(request_of(sent), 200, to_tag="b"))
    assert isinstance(response, Response)
    assert client_key(response) == ("z9hG4bKours", "MESSAGE")


# --- under Trio time -------------------------------------------------------------------


async def run_client(
    tx: ClientTransaction,
    responses: trio.MemoryReceiveChannel[int],
    wire: list[float],
) -> None:
    """A minimal transport loop: sleep until the machine's deadline or a response."""
    while tx.state != "terminated":
        deadline = tx.deadline()
        assert deadline is not None
        with trio.move_on_at(deadline):
            code = await responses.receive()
            tx.on_response(code, trio.current_time(), "Reason")
            continue
        if tx.on_timer(trio.current_time()) is not None:
            wire.append(trio.current_time())


async def test_client_timers_under_mock_clock(autojump_clock: trio.testing.MockClock) -> None:
    start = trio.current_time()
    send, receive = trio.open_memory_channel[int](0)
    wire: list[float] = []
    tx = ClientTransaction(REQUEST_BYTES, reliable=False, now=start)
    async with send, receive:
        await run_client(tx, receive, wire)
    assert [t - start for t in wire] == pytest.approx(UDP_SCHEDULE)
    assert tx.timed_out
    assert trio.current_time() - start == pytest.approx(32.0)


async def test_client_final_response_under_mock_clock(
    autojump_clock: trio.testing.MockClock,
) -> None:
    start = trio.current_time()
    send, receive = trio.open_memory_channel[int](0)
    wire: list[float] = []
    tx = ClientTransaction(REQUEST_BYTES, reliable=False, now=start)

    async def network() -> None:
        await trio.sleep(2.0)
        await send.send(200)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(network)
        await run_client(tx, receive, wire)
    assert [t - start for t in wire] == pytest.approx([0.5, 1.5])
    assert (tx.final_code, tx.final_reason, tx.timed_out) == (200, "Reason", False)
    assert trio.current_time() - start == pytest.approx(2.0 + 5.0)  # Timer K = T4


async def test_server_timer_j_under_mock_clock(autojump_clock: trio.testing.MockClock) -> None:
    start = trio.current_time()
    tx = ServerTransaction(reliable=False, now=start)
    await trio.sleep(0.3)
    tx.respond(b"SIP/2.0 200 OK", 200, trio.current_time())
    resent: list[bytes | None] = []
    while (deadline := tx.deadline()) is not None:
        with trio.move_on_at(deadline):
            await trio.sleep(10.0)  # a retransmission arrives every 10 s
            resent.append(tx.on_retransmission(trio.current_time()))
            continue
        tx.on_timer(trio.current_time())
    assert resent == [b"SIP/2.0 200 OK"] * 3
    assert tx.state == "terminated"
    assert trio.current_time() - start == pytest.approx(0.3 + 32.0)
