"""Steering between workers (issue 13): the home of a room, the Request-URI user read off a
datagram, and relaying over real Unix sockets (transport/steering.py)."""

from __future__ import annotations

import trio
import trio.testing

from imc_actors.transport.steering import Steering, home_of, request_user


def test_the_home_of_a_room_ignores_case_and_spreads_rooms():
    assert home_of("Lobby", 4) == home_of("lobby", 4) == home_of(b"LOBBY", 4)
    homes = [home_of(f"room{i}", 2) for i in range(1000)]
    assert 400 < homes.count(0) < 600  # about half each


def test_the_request_uri_user_comes_from_the_request_line():
    assert request_user(b"MESSAGE sip:Lobby@example.com SIP/2.0\r\nVia: x\r\n") == b"Lobby"
    assert request_user(b"MESSAGE sips:r1@example.com;transport=tls SIP/2.0\r\n") == b"r1"
    assert request_user(b"REGISTER sip:example.com SIP/2.0\r\n") is None  # no user
    assert request_user(b"SIP/2.0 200 OK\r\nVia: x\r\n") is None  # a response
    assert request_user(b"MESSAGE tel:+123 SIP/2.0\r\n") is None
    assert request_user(b"MESSAGE sip:a@b") is None  # no line end
    assert request_user(b"garbage") is None
    # the user ends at the URI's end: an "@" in a header does not count
    assert request_user(b"OPTIONS sip:example.com SIP/2.0\r\nFrom: <sip:x@y>\r\n") is None


async def test_a_request_for_another_workers_room_reaches_it_with_its_source(tmp_path):
    first, second = Steering(0, 2, tmp_path), Steering(1, 2, tmp_path)
    name = next(f"room{i}" for i in range(100) if home_of(f"room{i}", 2) == 1)
    data = f"MESSAGE sip:{name}@example.com SIP/2.0\r\n\r\n".encode()
    assert first.target(data) == 1 and second.target(data) is None
    got: list[tuple[int, bytes, tuple[str, int]]] = []
    sent: list[tuple[int, bytes, tuple[str, int]]] = []
    arrived = trio.Event()

    def on_relayed(endpoint, payload, source):
        got.append((endpoint, payload, source))
        if len(got) == 3:
            arrived.set()
        return (b"answer", source)

    first.open()
    second.open()
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(second.serve, on_relayed, lambda *args: sent.append(args))
            await trio.testing.wait_all_tasks_blocked()
            for port in (5061, 5062, 5063):
                assert first.relay(1, 0, ("127.0.0.9", port), data)
            with trio.fail_after(5):
                await arrived.wait()
            nursery.cancel_scope.cancel()
    finally:
        first.close()
        second.close()
    assert got == [(0, data, ("127.0.0.9", p)) for p in (5061, 5062, 5063)]
    assert sent == [(0, b"answer", ("127.0.0.9", p)) for p in (5061, 5062, 5063)]
    assert (first.relayed, second.received, first.fallbacks) == (3, 3, 0)


async def test_a_worker_that_is_not_listening_is_not_relayed_to(tmp_path, autojump_clock):
    """The home worker is down: the relay says so at once (the request is handled where it
    arrived) and is tried again a second later, when the worker may be back."""
    first, second = Steering(0, 2, tmp_path), Steering(1, 2, tmp_path)
    first.open()
    try:
        assert not first.relay(1, 0, ("127.0.0.9", 5060), b"x")
        second.open()  # back, but within the reconnect delay: still handled here
        assert not first.relay(1, 0, ("127.0.0.9", 5060), b"x")
        await trio.sleep(1.1)
        assert first.relay(1, 0, ("127.0.0.9", 5060), b"x")
        second.close()  # gone again: the connection fails, the request stays here
        assert not first.relay(1, 0, ("127.0.0.9", 5060), b"x")
        assert (first.relayed, first.fallbacks) == (1, 3)
    finally:
        first.close()
        second.close()


async def test_a_registration_wakes_the_member_on_every_other_worker(tmp_path):
    """``wake_all``: each other listening worker hears ``on_wake(member)``; one that is down
    is skipped (it starts again with no lanes to wake)."""
    workers = [Steering(i, 3, tmp_path) for i in range(3)]
    woken: list[tuple[int, str]] = []
    arrived = trio.Event()

    def on_wake_of(index: int):
        def on_wake(member: str) -> None:
            woken.append((index, member))
            arrived.set()

        return on_wake

    for index in (0, 1):  # worker 2 is down
        workers[index].open()
        workers[index].on_wake = on_wake_of(index)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(workers[1].serve, lambda *args: None, lambda *args: None)
            await trio.testing.wait_all_tasks_blocked()
            assert workers[0].wake_all("alice@example.com") == 1
            with trio.fail_after(5):
                await arrived.wait()
            nursery.cancel_scope.cancel()
    finally:
        for worker in workers:
            worker.close()
    assert woken == [(1, "alice@example.com")]
    assert workers[1].received == 0  # a wake is not a relayed datagram
