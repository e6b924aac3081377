"""The public embedding API: open_conference/serve_conference/serve_server, subscriptions to
what the rooms send, read-only views, and clean, durable shutdown on cancellation."""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import socket
import subprocess
import sys

import pytest
import trio
import trio.testing

import imc_actors
from imc_actors import (
    ConferenceClosed,
    Config,
    Delivered,
    DeliveryResult,
    IncomingMessage,
    Notice,
    NoticeRouter,
    RoomStatus,
    open_conference,
    serve_conference,
    serve_server,
)
from imc_actors.actors.supervisor import Answer
from imc_actors.conference import INVALID_URI_REASON
from imc_actors.sip import parse
from imc_actors.testing import Faults, assert_no_leaked_tasks, members_of
from imc_actors.transport import Source

DOMAIN = "example.com"
MANAGER = f"sip:imc-manager@{DOMAIN}"
ROOM = f"sip:chat@{DOMAIN}"


def say(uri: str, user: str, body: str, call_id: str = "") -> IncomingMessage:
    return IncomingMessage(uri, f"sip:{user}@{DOMAIN}", body.encode(), "text/plain", call_id)


class Outbox:
    """A sender that records what it is asked to deliver."""

    def __init__(self) -> None:
        self.sent: list[Notice] = []

    async def __call__(self, notice: Notice, in_reply_to: str) -> DeliveryResult:
        self.sent.append(notice)
        return DeliveryResult(200, "OK")

    def to(self, user: str) -> list[bytes]:
        return [n.body for n in self.sent if n.to == f"sip:{user}@{DOMAIN}"]


@pytest.fixture
def config(tmp_path) -> Config:
    return Config(db_url=f"sqlite:///{tmp_path}/rooms.db", domains=[DOMAIN])


async def chat_room(conference) -> None:
    assert (await conference.handle(say(MANAGER, "alice", "#create chat"))).code == 200
    assert (await conference.handle(say(ROOM, "bob", "#join"))).code == 200
    await conference.flush_notices()


# ---------------------------------------------------------------------- the package
def test_every_public_name_resolves():
    for name in imc_actors.__all__:
        assert getattr(imc_actors, name) is not None, name
    from imc_actors import Server, open_server  # lazily imported

    assert open_server.__module__ == "imc_actors.server" and Server.__name__ == "Server"
    assert {"open_server", "serve_conference"} <= set(dir(imc_actors))


def test_importing_the_package_stays_light():
    code = (
        "import sys, imc_actors; "
        "heavy = [m for m in ('imc_actors.server', 'trio_asyncio', 'hypercorn') if m in sys.modules]; "
        "print(heavy); sys.exit(1 if heavy else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


# ---------------------------------------------------------------------- views
async def test_handle_and_read_only_views(config):
    async with open_conference(config) as conference:
        await chat_room(conference)
        answer = await conference.handle(say(ROOM, "bob", "#members"))
        assert (answer.code, answer.body) == (200, b"Members:\n*[alice]\n[bob]")
        [room] = conference.rooms()
        assert room is conference.room("sip:CHAT@example.com")
        assert [m.uri for m in room.members] == [f"sip:alice@{DOMAIN}", f"sip:bob@{DOMAIN}"]
        with pytest.raises(dataclasses.FrozenInstanceError):
            room.members = ()  # type: ignore[misc]
        status = conference.room_status(ROOM)
        assert isinstance(status, RoomStatus)
        assert (status.running, status.restarts, status.quarantined, status.retry_after) == (True, 0, False, None)
        assert status.processed >= 2 and status.mailbox_depth == 0
        assert conference.room_status(f"sip:nope@{DOMAIN}") is None
        assert not conference.closed
    assert conference.closed
    with pytest.raises(RuntimeError, match="conference has ended"):
        await conference.handle(say(ROOM, "bob", "#members"))


# ---------------------------------------------------------------------- what handle() accepts
def sip_message(request_uri: str, from_: str, body: bytes) -> object:
    """A MESSAGE as the server reads it off the wire (From as written, a tag added)."""
    from_header = from_ if "<" in from_ else f"<{from_}>;tag=1"
    return parse(
        f"MESSAGE {request_uri} SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.9:5060;branch=z9hG4bK-e1\r\n"
        f"From: {from_header}\r\nTo: <{request_uri}>\r\nCall-ID: e1\r\nCSeq: 1 MESSAGE\r\n"
        f"Max-Forwards: 70\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body
    )


@pytest.mark.parametrize(
    "sender",
    [
        "sips:dave@example.com",
        "sip:dave@example.com;transport=tcp",
        "sip:dave@example.com:5070",
        "sip:dave:secret@example.com",
        "SIP:dave@example.com",
        "sip:%64ave@example.com",
        '"Dave" <sip:dave@example.com>;tag=9',
        "sip:dave@EXAMPLE.COM",  # the host keeps its spelling, on both paths
    ],
)
async def test_a_sender_is_stored_as_the_server_stores_it(config, sender):
    from imc_actors.server import MessageHandler

    lobby = f"sip:lobby@{DOMAIN}"
    async with open_conference(config) as conference:
        await chat_room(conference)
        assert (await conference.handle(say(MANAGER, "alice", "#create lobby"))).code == 200
        assert (await conference.handle(IncomingMessage(ROOM, sender, b"#join"))).code == 200
        handler = MessageHandler(conference, config)
        reply = await handler(sip_message(lobby, sender, b"#join"), Source("udp", "10.0.0.9", 5060))
        assert reply.code == 200 and reply.after is not None
        reply.after()  # the answer is "sent": the notices the server held may leave
        via_api = conference.room(ROOM).members[-1].uri
        via_sip = conference.room(lobby).members[-1].uri
    host = "EXAMPLE.COM" if "EXAMPLE" in sender else DOMAIN
    assert via_api == via_sip == f"sip:dave@{host}"


async def test_a_request_uri_is_read_as_the_server_reads_it(config):
    async with open_conference(config) as conference:
        await chat_room(conference)
        for uri in (f"sips:chat@{DOMAIN}", f"sip:chat@{DOMAIN}:5060;transport=tcp"):
            answer = await conference.handle(say(uri, "carol", "#join"))
            assert answer.code == 200, uri
            assert (await conference.handle(say(uri, "carol", "#leave"))).code == 200, uri


async def test_a_nul_ends_a_command_line_over_sip_as_through_handle(config):
    from imc_actors.server import MessageHandler

    async with open_conference(config) as conference:
        answer = await conference.handle(say(MANAGER, "alice", "#create a\x00b"))
        handler = MessageHandler(conference, config)
        request = sip_message(MANAGER, f"sip:bob@{DOMAIN}", b"#create c\x00d")
        reply = await handler(request, Source("udp", "10.0.0.9", 5060))
        assert reply.after is not None
        reply.after()
        assert (answer.code, reply.code) == (200, 200)  # spec section 2: CR, LF or NUL end it
        assert [room.name for room in conference.rooms()] == ["a", "c"]


@pytest.mark.parametrize("field", ["sender", "request_uri"])
@pytest.mark.parametrize("value", ["alice", "alice@example.com", "tel:+123", f"sip:{DOMAIN}", ""])
async def test_an_address_that_is_no_sip_uri_gets_400_and_no_notice(config, field, value):
    outbox = Outbox()
    async with open_conference(config, sender=outbox) as conference:
        await chat_room(conference)
        before = (conference.rooms(), len(outbox.sent))
        msg = dataclasses.replace(say(ROOM, "carol", "#join"), **{field: value})
        expected = Answer(400, INVALID_URI_REASON, body=f"*** Invalid address '{value}'".encode())
        assert await conference.handle(msg) == expected
        assert await conference.refuse(msg, 403, "*** no") == expected
        assert conference.start(msg, pytest.fail) is False  # handle() answers it
        await conference.flush_notices()
        assert (conference.rooms(), len(outbox.sent)) == before  # no notice, nothing stored


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"sender": None}, "sender must be a str (a SIP URI), not NoneType"),
        ({"sender": 5}, "sender must be a str (a SIP URI), not int"),
        ({"request_uri": None}, "request_uri must be a str (a SIP URI), not NoneType"),
        ({"body": "#join"}, "body must be bytes, not str (encode it"),
        ({"body": None}, "body must be bytes, not NoneType"),
        ({"body": bytearray(b"#join")}, "body must be bytes, not bytearray"),
        ({"content_type": b"text/plain"}, "content_type must be a str or None, not bytes"),
        ({"call_id": None}, "call_id must be a str, not NoneType"),
        ({"forwarded_by": 1}, "forwarded_by must be a str or None, not int"),
    ],
)
def test_an_incoming_message_of_wrong_types_is_refused_when_made(fields, message):
    values = {"request_uri": ROOM, "sender": f"sip:bob@{DOMAIN}", "body": b"#join"} | fields
    with pytest.raises(TypeError, match=f"^{re.escape(message)}"):
        IncomingMessage(**values)


# ---------------------------------------------------------------------- views
async def test_history_refuses_a_limit_or_before_of_the_wrong_type_or_range(config):
    async with open_conference(config) as conference:
        await chat_room(conference)
        assert (await conference.handle(say(ROOM, "alice", "hi"))).code == 202
        [line] = await conference.history(ROOM, 5)
        assert line.body == b"hi"
        assert await conference.history(f"sip:%63hat@{DOMAIN}", 5) == [line]  # as room() reads it
        assert await conference.history(ROOM, 10**30) == [line]  # any size: every line
        assert await conference.history(ROOM, 5, before=line.seq) == []
        for limit in (0, -1):
            with pytest.raises(ValueError, match=f"^limit must be at least 1, not {limit}$"):
                await conference.history(ROOM, limit)
        for limit in (1.5, "3", None, True):
            with pytest.raises(TypeError, match="^limit must be an int, not "):
                await conference.history(ROOM, limit)  # type: ignore[arg-type]
        for before in (0, -5, 2**63):
            with pytest.raises(ValueError, match=f"^before must be at least 1 and at most {2**63 - 1}"):
                await conference.history(ROOM, 5, before=before)
        with pytest.raises(TypeError, match="^before must be an int, not str$"):
            await conference.history(ROOM, 5, before="3")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="^uri must be a str"):
            await conference.history(None, 5)  # type: ignore[arg-type]


async def test_room_views_and_actions_read_the_room_uri_as_the_server_does(config):
    # a port or parameters made room()/room_status() say None and administer() 404
    async with open_conference(config) as conference:
        await chat_room(conference)
        for written in (f"sip:chat@{DOMAIN}:5060", f"<sip:%63hat@{DOMAIN};transport=tcp>"):
            assert conference.room(written) is not None
            assert conference.room_status(written) is not None
        assert conference.room("chat") is None  # no SIP URI: no room, no traceback
        kicked = await conference.administer(f"sip:chat@{DOMAIN}:5060", "kick", "bob")
        assert kicked.code == 200
        for call in (lambda: conference.room(None), lambda: conference.room_status(5)):
            with pytest.raises(TypeError, match="^uri must be a str"):
                call()
        with pytest.raises(TypeError, match="^room_uri must be a str"):
            await conference.administer(None, "destroy")  # type: ignore[arg-type]


# ---------------------------------------------------------------------- subscriptions
async def test_a_subscription_claims_its_recipients(config):
    outbox = Outbox()
    async with open_conference(config, sender=outbox) as conference:
        with conference.subscribe(f"sip:BOB@{DOMAIN}") as bob:
            await chat_room(conference)
            assert (await conference.handle(say(ROOM, "alice", "hi bob"))).code == 202
            await conference.flush_notices()
            got = [bob.receive_nowait().notice.body for _ in range(2)]
            assert got == [b"*** [bob] has joined the room", b"[alice]: hi bob"]
            assert outbox.to("bob") == []  # the app delivered them, not the sender
            assert outbox.to("alice") == [b"*** Room was created", b"*** [bob] has joined the room"]
            assert bob.statistics().received == 2
        # unsubscribed: bob's notices go the normal way again
        assert (await conference.handle(say(ROOM, "alice", "still there?"))).code == 202
        await conference.flush_notices()
        assert outbox.to("bob") == [b"[alice]: still there?"]


@pytest.mark.parametrize(
    "written", [f"sip:bob@{DOMAIN}:5060", f'"Bob" <sip:%62ob@{DOMAIN}>', f"sips:bob@{DOMAIN};transport=tls"]
)
async def test_a_subscription_reads_its_recipients_as_the_server_reads_a_from(config, written):
    # a port, parameters or a display name made a subscription that never matched anything
    outbox = Outbox()
    async with open_conference(config, sender=outbox) as conference:
        with conference.subscribe(written) as bob:
            await chat_room(conference)
            await conference.flush_notices()
            assert bob.receive_nowait().notice.body == b"*** [bob] has joined the room"
            assert outbox.to("bob") == []


async def test_an_observer_gets_copies_and_delivery_goes_on(config):
    outbox = Outbox()
    async with open_conference(config, sender=outbox) as conference:
        with conference.subscribe(observe=True) as tap:
            await chat_room(conference)
            seen = []
            while True:
                try:
                    seen.append(tap.receive_nowait())
                except trio.WouldBlock:
                    break
        assert sorted(d.notice.to for d in seen) == sorted(n.to for n in outbox.sent)
        assert len(seen) == 3
        assert all(isinstance(d, Delivered) and d.in_reply_to == "" for d in seen)


async def test_a_full_subscription_fails_deliveries_when_asked_to(config):
    async with open_conference(config) as conference:
        with conference.subscribe(f"sip:bob@{DOMAIN}", max_buffer=0, when_full="fail") as bob:
            await chat_room(conference)
            assert bob.statistics().dropped == 1  # the join notice found no room
            stats = conference.delivery.statistics()  # 503: bob is busy, his notice waits
            assert (stats.failed, stats.stored, stats.pending) == (0, 1, 1)


async def test_a_full_subscription_applies_backpressure(config):
    async with open_conference(config) as conference:
        with conference.subscribe(f"sip:bob@{DOMAIN}", max_buffer=1) as bob:
            await chat_room(conference)  # bob's join notice fills the buffer
            assert (await conference.handle(say(ROOM, "alice", "one"))).code == 202
            await trio.testing.wait_all_tasks_blocked()
            assert conference.delivery.statistics().in_flight == 1  # waits for the app
            assert (await bob.receive()).notice.body == b"*** [bob] has joined the room"
            await conference.flush_notices()
            assert bob.receive_nowait().notice.body == b"[alice]: one"
            assert conference.delivery.statistics().in_flight == 0


async def withdrawal_told_to_alice(alice) -> bytes:
    """The notice the room sends the inviter once it has withdrawn the invitation."""
    while True:
        body = (await alice.receive()).notice.body
        if body.startswith(b"*** Invitation to [carol] failed"):
            return body


async def test_a_confirmed_subscription_reports_failures_to_the_room(config):
    async with open_conference(config) as conference:
        await chat_room(conference)
        alice = conference.subscribe(f"sip:alice@{DOMAIN}")
        with conference.subscribe(f"sip:carol@{DOMAIN}", confirm=True) as carol:
            assert (await conference.handle(say(ROOM, "alice", "#invite carol"))).code == 200
            invitation = await carol.receive()
            assert invitation.notice.invite_of == f"sip:carol@{DOMAIN}"
            await trio.testing.wait_all_tasks_blocked()
            assert conference.delivery.statistics().in_flight == 1  # waiting for our answer
            invitation.confirm(480, "Temporarily Unavailable")  # carol is offline
            assert await withdrawal_told_to_alice(alice) == (
                b"*** Invitation to [carol] failed: 480 Temporarily Unavailable"
            )
        assert f"carol@{DOMAIN}" not in members_of(conference.room(ROOM))  # withdrawn


async def test_an_unconfirmed_delivery_times_out(config, autojump_clock):
    async with open_conference(config) as conference:
        await chat_room(conference)
        alice = conference.subscribe(f"sip:alice@{DOMAIN}")
        with conference.subscribe(f"sip:carol@{DOMAIN}", confirm=True, confirm_timeout=5) as carol:
            assert (await conference.handle(say(ROOM, "alice", "#invite carol"))).code == 200
            await carol.receive()  # and never confirmed
            started = trio.current_time()
            body = await withdrawal_told_to_alice(alice)
            assert body == b"*** Invitation to [carol] failed: 408 Request Timeout"
            assert trio.current_time() - started >= 5
        assert f"carol@{DOMAIN}" not in members_of(conference.room(ROOM))


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"confirm_timeout": -1}, ValueError, "confirm_timeout must be >= 0 seconds (None: no limit), not -1"),
        ({"confirm_timeout": math.nan}, ValueError, "confirm_timeout must be >= 0 seconds (None: no limit), not nan"),
        ({"confirm_timeout": "5"}, TypeError, "confirm_timeout must be a number of seconds or None, not str"),
        ({"max_buffer": 1.5}, TypeError, "max_buffer must be an int, not float"),
        ({"max_buffer": -1}, ValueError, "max_buffer must be >= 0"),
    ],
)
async def test_subscribe_refuses_bad_options(config, options, error, message):
    async with open_conference(config) as conference:
        with pytest.raises(error, match=f"^{re.escape(message)}$"):
            conference.subscribe(f"sip:bob@{DOMAIN}", confirm=True, **options)
        assert conference.notices.subscriptions() == []
        with conference.subscribe(confirm=True, confirm_timeout=0), conference.subscribe(confirm_timeout=None):
            pass  # 0 (no wait) and None (no limit) are fine


async def test_subscriptions_end_with_the_conference(config):
    router = NoticeRouter()
    everything = router.subscribe()  # before the conference starts
    async with open_conference(config, sender=router) as conference:
        assert conference.notices is router
        await chat_room(conference)
    bodies = [delivered.notice.body async for delivered in everything]  # ends: no hang
    assert b"*** Room was created" in bodies and len(bodies) == 3
    with pytest.raises(RuntimeError):
        conference.subscribe()


# ---------------------------------------------------------------------- lifecycle
async def test_once_the_block_ended_every_call_needing_the_actors_raises_conference_closed(config):
    async with open_conference(config) as conference:
        await chat_room(conference)
        status = conference.room_status(ROOM)
    msg = say(ROOM, "bob", "#members")
    calls = {
        "handle": lambda: conference.handle(msg),
        "refuse": lambda: conference.refuse(msg, 403, "*** no"),
        "administer": lambda: conference.administer(ROOM, "destroy"),
        "history": lambda: conference.history(ROOM, 5),
        "snapshot": conference.snapshot,
        "flush_notices": conference.flush_notices,
        "claim": lambda: conference.claim(f"chat@{DOMAIN}"),
        "lease_round": conference.lease_round,
        "subscribe": conference.subscribe,
    }
    raised: dict[str, str | None] = {}
    for name, call in calls.items():
        try:
            result = call()
            if name != "subscribe":
                await result
            raised[name] = None
        except ConferenceClosed as exc:
            raised[name] = str(exc)
    assert raised == dict.fromkeys(calls, "this conference has ended; open a new one")
    assert conference.start(msg, pytest.fail) is False  # as documented: handle() then raises
    # the read-only views keep the state as it was when the conference ended
    assert [room.uri for room in conference.rooms()] == [ROOM]
    assert conference.room(ROOM) is status.state
    assert conference.room_status(ROOM) == dataclasses.replace(status, running=False)


async def test_serve_conference_with_nursery_start_shuts_down_durably(config):
    acknowledged: list[str] = []
    some_acknowledged = trio.Event()
    with assert_no_leaked_tasks():
        async with trio.open_nursery() as nursery:
            conference = await nursery.start(serve_conference, config)
            await chat_room(conference)

            async def join(user: str) -> None:
                if (await conference.handle(say(ROOM, user, "#join"))).code == 200:
                    acknowledged.append(f"{user}@{DOMAIN}")
                    if len(acknowledged) == 5:
                        some_acknowledged.set()

            for i in range(200):
                nursery.start_soon(join, f"user{i}")
            await some_acknowledged.wait()
            nursery.cancel_scope.cancel()  # the caller's scope, with joins in flight
    assert conference.closed and 5 <= len(acknowledged) < 200
    async with open_conference(config) as again:
        stored = set(members_of(again.room(ROOM)))
    # every acknowledged join is durable; a join whose transaction had started when the
    # cancellation came may be durable too, although its caller never heard back
    assert set(acknowledged) <= stored
    assert stored - set(acknowledged) <= {f"alice@{DOMAIN}", f"bob@{DOMAIN}"} | {f"user{i}@{DOMAIN}" for i in range(200)}


async def test_cancellation_mid_commit_keeps_acknowledged_and_drops_unacknowledged(config):
    faults = Faults(seed=3)
    answers: dict[str, int] = {}
    with assert_no_leaked_tasks(faults):
        async with trio.open_nursery() as outer:
            with trio.CancelScope() as scope:
                async with faults.open_conference(config) as conference:
                    await chat_room(conference)
                    faults.hang_commit(room=ROOM, command="join")  # never released

                    async def join(user: str) -> None:
                        answers[user] = (await conference.handle(say(ROOM, user, "#join"))).code

                    outer.start_soon(join, "dave")
                    await trio.testing.wait_all_tasks_blocked()
                    scope.cancel()
    assert answers == {"dave": 503}, faults  # told to retry, never acknowledged
    async with open_conference(config) as again:
        assert set(members_of(again.room(ROOM))) == {f"alice@{DOMAIN}", f"bob@{DOMAIN}"}, faults


async def test_serve_server_with_nursery_start(tmp_path):
    config = Config.from_sources(environ={}, overrides={
        "listen": ["udp:127.0.0.1:0"], "db_url": f"sqlite:///{tmp_path}/rooms.db", "domains": ["127.0.0.1"],
    })
    async with trio.open_nursery() as nursery:
        server = await nursery.start(functools.partial(serve_server, config))
        [address] = server.addresses
        assert address.transport == "udp" and address.port != 0
        answer = await server.conference.handle(
            IncomingMessage("sip:imc-manager@127.0.0.1", "sip:alice@127.0.0.1", b"#create lobby")
        )
        assert answer.code == 200
        nursery.cancel_scope.cancel()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", address.port))  # the server's socket is closed
