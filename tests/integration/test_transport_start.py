"""``SipTransport.start_request``: the task-free send the fan-out uses, over real sockets.

It must behave as ``send_request`` (same request on the wire, same outcomes, same counters)
when it takes a request, and take none (return False, send nothing) when the request needs
the general path: a DNS name, TCP, several contacts, a message too big for UDP.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

from imc_actors.actors.delivery import Delivery, DeliveryResult
from imc_actors.imc.effects import Notice
from imc_actors.transport import ClientResult
from tests.support import TestUA, free_port, silent_udp, start_core

DOMAIN = "example.org"
ROOM = "sip:room@example.org"


class Outcomes:
    """Collects what ``on_result`` is called with; ``wait()`` until ``n`` came."""

    def __init__(self) -> None:
        self.results: list[ClientResult] = []
        self._event = trio.Event()

    def __call__(self, result: ClientResult) -> None:
        self.results.append(result)
        self._event.set()

    async def wait(self, n: int = 1) -> None:
        while len(self.results) < n:
            self._event = trio.Event()
            await self._event.wait()


async def test_start_request_sends_and_calls_back(nursery: trio.Nursery) -> None:
    server = await start_core(nursery)
    ua = await TestUA.open(nursery, "alice", DOMAIN, server.address())
    outcomes = Outcomes()
    started = server.transport.start_request(
        "MESSAGE", ua.contact, from_uri=ROOM, to_uri=ua.uri, on_result=outcomes,
        headers=[("Supported", "kamailio/imc")], body=b"hi", content_type="text/plain",
    )  # fmt: skip
    assert started is True
    with trio.fail_after(5):
        await outcomes.wait()
    assert outcomes.results == [ClientResult(200, "OK")]
    [got] = ua.received
    assert got.uri == ua.contact and got.body == b"hi"
    assert got.from_uri == ROOM and got.from_tag and got.to_uri == ua.uri
    assert got.branch is not None and got.branch.startswith("z9hG4bK")
    assert [n for n, _ in got.headers][-3:] == ["Supported", "Content-Type", "Content-Length"]
    stats = server.transport.statistics()
    assert (stats.client_ok, stats.client_failed) == (1, 0)


async def test_start_request_failure_and_timeout(nursery: trio.Nursery, autojump_clock) -> None:
    server = await start_core(nursery)
    ua = await TestUA.open(nursery, "bob", DOMAIN, server.address(), answer=480)
    outcomes = Outcomes()
    assert server.transport.start_request("MESSAGE", ua.contact, from_uri=ROOM, to_uri=ua.uri,
                                          body=b"x", on_result=outcomes)  # fmt: skip
    hole = silent_udp()  # bound and silent: no ICMP error ends it early
    dead = f"sip:ghost@127.0.0.1:{hole.getsockname()[1]}"
    start = trio.current_time()
    assert server.transport.start_request("MESSAGE", dead, from_uri=ROOM, to_uri=dead,
                                          body=b"x", on_result=outcomes)  # fmt: skip
    await outcomes.wait(2)
    assert outcomes.results == [ClientResult(480, "Temporarily Unavailable"), ClientResult(408, "Request Timeout")]
    assert trio.current_time() - start == pytest.approx(32.0, abs=0.01)  # Timer F
    stats = server.transport.statistics()
    assert (stats.client_failed, stats.client_timeouts, stats.client_retransmissions) == (2, 1, 10)
    hole.close()


async def test_start_request_declines_what_needs_the_general_path(nursery: trio.Nursery) -> None:
    server = await start_core(nursery)
    outcomes = Outcomes()

    def start(uri: str, body: bytes = b"x") -> bool:
        return server.transport.start_request("MESSAGE", uri, from_uri=ROOM, to_uri=uri,
                                              body=body, on_result=outcomes)  # fmt: skip

    assert start("sip:carol@example.org") is False  # a DNS name: send_request resolves it
    assert start(f"sip:carol@127.0.0.1:{free_port()};transport=tcp") is False
    assert start(f"sip:carol@127.0.0.1:{free_port()}", body=b"x" * 2000) is False  # TCP first
    assert start("not a uri") is False
    await trio.testing.wait_all_tasks_blocked()
    assert outcomes.results == []
    stats = server.transport.statistics()
    assert stats.client_transactions == 0 and stats.sent == 0


class StartingSender:
    """A sender with ``start``: completes at once with ``code``, or declines (``code=None``)."""

    def __init__(self, code: int | None) -> None:
        self.code = code
        self.started: list[Notice] = []
        self.called: list[Notice] = []

    async def __call__(self, notice: Notice, in_reply_to: str) -> DeliveryResult:
        self.called.append(notice)
        await trio.lowlevel.checkpoint()
        return DeliveryResult(200, "OK")

    def start(self, notice: Notice, in_reply_to: str, on_done) -> bool:  # type: ignore[no-untyped-def]
        if self.code is None:
            return False
        self.started.append(notice)
        on_done(DeliveryResult(self.code, "x"))
        return True


@pytest.mark.parametrize("code", [200, 480, None])
async def test_delivery_uses_start_when_offered(nursery: trio.Nursery, code: int | None) -> None:
    sender = StartingSender(code)
    outcomes: list[tuple[str, int]] = []
    delivery = Delivery(sender, on_outcome=lambda n, r, res: outcomes.append((n.to, res.code)))
    await nursery.start(delivery.run)
    notices = [Notice(f"sip:u{i}@x", b"hi", ROOM) for i in range(3)]
    await delivery.submit(notices, "cid")
    with trio.fail_after(5):
        await delivery.drain()
    if code is None:  # declined: the workers deliver through __call__
        assert sender.started == [] and len(sender.called) == 3
        assert sorted(outcomes) == [(f"sip:u{i}@x", 200) for i in range(3)]
    else:
        assert sender.called == [] and sender.started == notices
        assert outcomes == [(f"sip:u{i}@x", code) for i in range(3)]
    stats = delivery.statistics()
    assert stats.submitted == 3 and stats.in_flight == 0 and stats.queued == 0
    assert (stats.ok, stats.failed) == ((3, 0) if code in (200, None) else (0, 3))


class HoldingSender(StartingSender):
    """A sender whose started deliveries finish only when the test says so (``started``
    holds each notice with its ``on_done``)."""

    def __init__(self) -> None:
        super().__init__(None)
        self.started: list[tuple[Notice, object]] = []  # type: ignore[assignment]

    def start(self, notice: Notice, in_reply_to: str, on_done) -> bool:  # type: ignore[no-untyped-def]
        self.started.append((notice, on_done))
        return True


async def test_full_start_slots_queue_notices_and_start_them_as_slots_free(
    nursery: trio.Nursery,
) -> None:
    """With every in-flight slot held (members not answering yet), notices queue; each freed
    slot starts the next queued notice through ``start``, in order: never the slow way."""
    sender = HoldingSender()
    delivery = Delivery(sender, max_in_flight=2)
    await nursery.start(delivery.run)
    notices = [Notice(f"sip:u{i}@x", b"hi", ROOM) for i in range(5)]
    await delivery.submit(notices, "cid")
    await trio.testing.wait_all_tasks_blocked()
    assert [n for n, _ in sender.started] == notices[:2]
    assert delivery.statistics().in_flight == 2
    for index in range(2, 5):
        _, done = sender.started[index - 2]
        done(DeliveryResult(200, "OK"))  # frees a slot: the next queued notice takes it
        await trio.testing.wait_all_tasks_blocked()
        assert [n for n, _ in sender.started] == notices[: index + 1]
        assert delivery.statistics().in_flight == 2
    for _, done in sender.started[3:]:
        done(DeliveryResult(200, "OK"))
    with trio.fail_after(5):
        await delivery.drain()
    assert sender.called == []
    assert sorted(n.to for n, _ in sender.started) == sorted(n.to for n in notices)
    stats = delivery.statistics()
    assert (stats.submitted, stats.ok, stats.in_flight, stats.queued) == (5, 5, 0, 0)
