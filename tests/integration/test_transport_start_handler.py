"""The task-free request path: a handler's ``start(request, source, respond)`` over real UDP
and TCP sockets (SipTransport), through SipCore, the server's MESSAGE handler and
Conference.start."""

from __future__ import annotations

import socket

import pytest
import trio
import trio.testing

from imc_actors.actors.supervisor import Answer
from imc_actors.conference import IncomingMessage, open_conference
from imc_actors.config import Config
from imc_actors.sip import Request, build_request, new_branch, new_call_id, new_tag
from imc_actors.store.repository import Repository
from imc_actors.transport import Reply, Responder, Source
from tests.support import TestUA, response_of, start_core

DOMAIN = "example.org"
ROOM = "sip:room@example.org"


class Deferred:
    """A handler that takes every request through ``start`` and answers when told to."""

    def __init__(self, *, take: bool = True, raises: bool = False) -> None:
        self.take = take
        self.raises = raises
        self.started: list[tuple[Request, Responder]] = []
        self.awaited: list[Request] = []

    async def __call__(self, request: Request, source: Source) -> Reply:
        self.awaited.append(request)
        await trio.lowlevel.checkpoint()
        return Reply(202)

    def start(self, request: Request, source: Source, respond: Responder) -> bool:
        if self.raises:
            raise RuntimeError("boom")
        if not self.take:
            return False
        self.started.append((request, respond))
        return True


async def test_started_request_is_answered_by_callback_without_a_task(
    nursery: trio.Nursery,
) -> None:
    handler = Deferred()
    server = await start_core(nursery, messages=handler)
    ua = await TestUA.open(nursery, "alice", DOMAIN, server.address())
    data = ua.build("MESSAGE", ROOM, body=b"hello")
    await ua.send_raw(data)
    await ua.send_raw(data)  # a retransmission while nobody has answered yet: absorbed
    await trio.testing.wait_all_tasks_blocked()
    assert len(handler.started) == 1 and handler.awaited == []
    _, respond = handler.started[0]
    respond(Reply(202, headers=(("Retry-After", "3"),)))
    respond(Reply(500))  # a second answer to the same request is ignored
    with trio.fail_after(5):
        raw = await ua.recv_raw()
    first = response_of(raw)
    assert (first.code, first.header("Retry-After")) == (202, "3")
    await ua.send_raw(data)
    with trio.fail_after(5):
        assert await ua.recv_raw() == raw  # the transaction's response, byte for byte
    stats = server.transport.statistics()
    assert stats.retransmissions_absorbed == 2 and stats.handler_errors == 0


async def test_declined_request_takes_a_handler_task(nursery: trio.Nursery) -> None:
    handler = Deferred(take=False)
    server = await start_core(nursery, messages=handler)
    ua = await TestUA.open(nursery, "alice", DOMAIN, server.address())
    await ua.send_raw(ua.build("MESSAGE", ROOM, body=b"hello"))
    with trio.fail_after(5):
        answer = response_of(await ua.recv_raw())
    assert answer.code == 202 and len(handler.awaited) == 1


async def test_start_that_raises_is_answered_500(nursery: trio.Nursery) -> None:
    server = await start_core(nursery, messages=Deferred(raises=True))
    ua = await TestUA.open(nursery, "alice", DOMAIN, server.address())
    await ua.send_raw(ua.build("MESSAGE", ROOM, body=b"hello"))
    with trio.fail_after(5):
        answer = response_of(await ua.recv_raw())
    assert answer.code == 500
    assert server.transport.statistics().handler_errors == 1


async def test_tcp_requests_are_started_in_the_order_they_were_read(nursery: trio.Nursery) -> None:
    # Several requests in one read: handler tasks would run in either order, start keeps it.
    handler = Deferred()
    server = await start_core(nursery, messages=handler)
    ua = await TestUA.open(nursery, "alice", DOMAIN, server.address("tcp"), transport="tcp")
    lines = [f"line {index}".encode() for index in range(8)]
    await ua.send_raw(b"".join(ua.build("MESSAGE", ROOM, body=line) for line in lines), tcp=True)
    await trio.testing.wait_all_tasks_blocked()
    assert [request.body for request, _ in handler.started] == lines and handler.awaited == []
    for _, respond in reversed(handler.started):
        respond(Reply(202))
    with trio.fail_after(5):
        answers = [response_of(await ua.recv_raw()) for _ in lines]
    assert [a.code for a in answers] == [202] * len(lines)
    assert server.transport.statistics().handler_errors == 0


async def test_a_started_answer_waits_for_room_on_a_full_connection(nursery: trio.Nursery) -> None:
    # A client that stops reading: the answers fill the kernel's buffers and the connection's
    # queue (tcp_send_queue); those that do not fit wait in a task, none is dropped, and each
    # answer's `after` hook runs once it is queued or sent.
    handler = Deferred()
    server = await start_core(nursery, messages=handler, transport_options={"tcp_send_queue": 64 * 1024})
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    await sock.connect(server.address("tcp"))
    stream = trio.SocketStream(sock)
    host, port = sock.getsockname()[:2]
    count = 600  # 600 answers of 8 kB: more than the kernel's buffers and the queue hold
    requests = [
        build_request("MESSAGE", ROOM, from_uri=f"sip:alice@{DOMAIN}", from_tag=new_tag(), to_uri=ROOM,
                      call_id=new_call_id(host), cseq=1, via_host=host, via_port=port,
                      via_transport="TCP", branch=new_branch(), body=b"hi")
        for _ in range(count)
    ]  # fmt: skip
    await stream.send_all(b"".join(requests))
    with trio.fail_after(10):  # safety net only
        while len(handler.started) < count:
            await trio.testing.wait_all_tasks_blocked()
    released: list[int] = []
    for index, (_, respond) in enumerate(handler.started):
        respond(Reply(202, body=b"x" * 8000, content_type="text/plain",
                      after=lambda index=index: released.append(index)))  # fmt: skip
    await trio.testing.wait_all_tasks_blocked()
    stats = server.transport.statistics()
    assert stats.send_queued <= 64 * 1024 and len(released) < count  # some wait for room
    received = bytearray()
    with trio.fail_after(10):  # safety net only
        while received.count(b"SIP/2.0 202 ") < count:
            received += await stream.receive_some(1 << 20)
    await trio.testing.wait_all_tasks_blocked()
    assert received.count(b"SIP/2.0 202 ") == count and sorted(released) == list(range(count))
    await stream.aclose()


@pytest.mark.parametrize("case", ["untrusted", "max-forwards"])
async def test_sipcore_refusals_are_left_to_the_task_path(nursery: trio.Nursery, case: str) -> None:
    handler = Deferred()
    changes = {"trusted_sources": ["10.0.0.0/8"]} if case == "untrusted" else {}
    server = await start_core(nursery, messages=handler, **changes)
    ua = await TestUA.open(nursery, "alice", DOMAIN, server.address())
    data = ua.build("MESSAGE", ROOM, body=b"hello")
    if case == "max-forwards":
        data = data.replace(b"Max-Forwards: 70", b"Max-Forwards: 0")
    await ua.send_raw(data)
    with trio.fail_after(5):
        answer = response_of(await ua.recv_raw())
    assert answer.code == (403 if case == "untrusted" else 483)
    assert handler.started == [] and handler.awaited == []


async def test_register_is_answered_without_a_task(nursery: trio.Nursery, monkeypatch) -> None:
    server = await start_core(nursery, messages=Deferred())
    tasks: list[str] = []
    serve_request = server.transport._serve_request

    async def recording(request: Request, *args: object) -> None:
        tasks.append(request.method)
        await serve_request(request, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(server.transport, "_serve_request", recording)
    ua = await TestUA.open(nursery, "alice", DOMAIN, server.address())
    with trio.fail_after(5):
        answer = await ua.register()
        options = await ua.request("OPTIONS", f"sip:{DOMAIN}")
    assert answer.code == 200 and options.code == 200
    assert tasks == ["OPTIONS"]  # REGISTER was answered on the spot
    assert server.registrar is not None
    assert server.registrar.lookup("alice@example.org", trio.current_time()) == [ua.contact]


# ------------------------------------------------------------------------ Conference.start
async def test_conference_start_takes_only_commands_for_existing_rooms() -> None:
    config = Config(domains=["example.org"], db_url="sqlite:///:memory:")
    repository = Repository(config.db_url)
    repository.init_schema()
    answers: list[int] = []
    async with open_conference(config, repository=repository) as conf:
        owner = "sip:owner@example.org"

        def msg(body: bytes, ruri: str = ROOM, sender: str = owner) -> IncomingMessage:
            return IncomingMessage(ruri, sender, body, None, "c1")

        # Declined (nothing done): creation, #help, #rooms, refusals, unknown room.
        for declined in (msg(b"#create room"), msg(b"#help"), msg(b"#rooms"), msg(b"#bogus"),
                         msg(b"hi", ruri="sip:nosuch@example.org"), msg(b"hi", ruri="sip:r@other.org")):  # fmt: skip
            assert conf.start(declined, lambda a: answers.append(a.code)) is False
        assert conf.rooms() == [] and answers == []
        assert (await conf.handle(msg(b"#create room"))).code == 200

        async def started(message: IncomingMessage) -> int:
            done = trio.Event()

            def on_answer(answer: Answer) -> None:
                answers.append(answer.code)
                done.set()

            assert conf.start(message, on_answer) is True
            assert not done.is_set()  # answered later, by the room's actor
            with trio.fail_after(5):
                await done.wait()
            return answers[-1]

        # Taken: a join to the existing room, answered by the room's actor.
        assert await started(msg(b"#join", sender="sip:bob@example.org")) == 200
        room = conf.room(ROOM)
        assert room is not None and room.find("sip:bob@example.org") is not None
        # A chat message, and a refusal decided by the room itself, come the same way.
        assert await started(msg(b"hello", sender="sip:bob@example.org")) == 202  # relayed
        assert (
            await started(msg(b"#remove sip:owner@example.org", sender="sip:bob@example.org"))
            >= 400
        )
    assert conf.start(msg(b"hi"), lambda a: answers.append(a.code)) is False  # closed
