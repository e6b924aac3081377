"""``max_transactions``: the number of live server transactions is bounded. A new request beyond
the bound gets a stateless 503 + ``Retry-After: 1`` and never reaches the handler; transactions
already held keep answering retransmissions; once Timer J frees them new requests are served."""

from __future__ import annotations

import logging

import pytest
import trio
import trio.testing

from imc_actors.config import ListenAddress
from imc_actors.sip import Request
from imc_actors.transport import Reply, SipTransport, Source
from tests.support import RecordingHandler, TestUA, response_of, start_core

DOMAIN = "example.org"
ROOM = "sip:room@example.org"
LIMIT_LOG = "server transaction limit 3 reached: answering 503"


async def answer(ua: TestUA, data: bytes, *, tcp: bool) -> bytes:
    await ua.send_raw(data, tcp=tcp)
    with trio.fail_after(5):  # safety net only: the answer comes at once
        return await ua.recv_raw()


def limit_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage() == LIMIT_LOG]


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_request_beyond_the_limit_gets_503_until_timer_j(
    nursery: trio.Nursery, autojump_clock, caplog: pytest.LogCaptureFixture, transport: str
) -> None:
    caplog.set_level(logging.WARNING, logger="imc_actors.transport")
    handler = RecordingHandler()
    server = await start_core(nursery, messages=handler, transport_options={"max_transactions": 3})
    ua = await TestUA.open(nursery, "alice", DOMAIN, server.address(transport), transport=transport)
    tcp = transport == "tcp"

    held = [ua.build("MESSAGE", ROOM, body=f"m{i}".encode()) for i in range(3)]
    answers = [await answer(ua, data, tcp=tcp) for data in held]
    assert [response_of(a).code for a in answers] == [202, 202, 202]
    assert len(handler.calls) == 3
    assert server.transport.statistics().server_transactions == 3

    extra = ua.build("MESSAGE", ROOM, body=b"one too many")
    refused = response_of(await answer(ua, extra, tcp=tcp))
    assert (refused.code, refused.reason) == (503, "Service Unavailable")
    assert refused.header("Retry-After") == "1"
    assert refused.cseq_method == "MESSAGE"
    assert ";tag=" in (refused.header("To") or "")  # a final response (RFC 3261 §8.2.6.2)
    if not tcp:
        via = refused.header("Via")
        assert via is not None and via.endswith(f";received=127.0.0.1;rport={ua.port}")
    assert len(handler.calls) == 3  # never reached the handler
    assert server.transport.statistics().server_transactions == 3  # and got no transaction

    # the transactions held still answer their retransmissions, byte for byte
    assert await answer(ua, held[1], tcp=tcp) == answers[1]
    # the refused request has no transaction: its retransmission is refused again
    assert response_of(await answer(ua, extra, tcp=tcp)).code == 503
    stats = server.transport.statistics()
    assert (stats.transactions_refused, stats.requests, stats.retransmissions_absorbed) == (2, 3, 1)
    assert len(limit_warnings(caplog)) == 1  # two refusals in the same second: one line

    await trio.sleep(33)  # Timer J (64*T1 = 32 s) frees the three transactions
    assert server.transport.statistics().server_transactions == 0
    assert response_of(await answer(ua, extra, tcp=tcp)).code == 202
    assert [request.body for request, _ in handler.calls][-1] == b"one too many"
    assert server.transport.statistics().transactions_refused == 2


async def test_limit_warning_is_logged_at_most_once_a_second(
    nursery: trio.Nursery, autojump_clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="imc_actors.transport")
    server = await start_core(nursery, transport_options={"max_transactions": 3})
    ua = await TestUA.open(nursery, "alice", DOMAIN, server.address())

    async def options() -> int:
        return response_of(await answer(ua, ua.build("OPTIONS", f"sip:{DOMAIN}"), tcp=False)).code

    assert [await options() for _ in range(3)] == [200, 200, 200]
    for _ in range(20):  # a flood within one second: one warning
        assert await options() == 503
        await trio.sleep(0.04)
    assert len(limit_warnings(caplog)) == 1
    await trio.sleep(0.5)  # more than a second after the first warning
    assert await options() == 503
    warnings = limit_warnings(caplog)
    assert len(warnings) == 2 and all(r.levelno == logging.WARNING for r in warnings)
    assert server.transport.statistics().transactions_refused == 21


async def test_cancel_still_works_and_counts_against_the_limit(nursery: trio.Nursery) -> None:
    release = trio.Event()

    async def slow(request: Request, source: Source) -> Reply:
        await release.wait()
        return Reply(202)

    server = await start_core(nursery, messages=slow, transport_options={"max_transactions": 2})
    ua = await TestUA.open(nursery, "alice", DOMAIN, server.address())
    message = ua.build("MESSAGE", ROOM, body=b"x", branch="z9hG4bKcancelme", cseq=7,
                       call_id="c1@127.0.0.1")  # fmt: skip
    await ua.send_raw(message)
    await trio.testing.wait_all_tasks_blocked()
    cancel = ua.build("CANCEL", ROOM, branch="z9hG4bKcancelme", cseq=7, call_id="c1@127.0.0.1")
    cancelled = await answer(ua, cancel, tcp=False)
    assert (response_of(cancelled).code, response_of(cancelled).cseq_method) == (200, "CANCEL")
    assert await answer(ua, cancel, tcp=False) == cancelled  # retransmitted CANCEL: same answer
    assert server.transport.statistics().server_transactions == 2  # the MESSAGE and the CANCEL
    options = ua.build("OPTIONS", f"sip:{DOMAIN}")
    refused = response_of(await answer(ua, options, tcp=False))
    assert (refused.code, refused.cseq_method) == (503, "OPTIONS")
    release.set()
    with trio.fail_after(5):
        final = response_of(await ua.recv_raw())
    assert (final.code, final.cseq_method) == (202, "MESSAGE")  # CANCEL had no effect on it
    assert server.transport.statistics().transactions_refused == 1


def test_max_transactions_must_be_positive() -> None:
    listen = [ListenAddress.parse("udp:127.0.0.1:0")]
    with pytest.raises(ValueError, match="max_transactions"):
        SipTransport(listen, max_transactions=0)
    assert SipTransport(listen).max_transactions == 100_000
