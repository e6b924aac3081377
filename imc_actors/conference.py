"""The conference: one entry point for every MESSAGE, as the original module's ``imc_manager()``.

:func:`open_conference` gives a running :class:`Conference` (store, supervisor, delivery; no
sockets) inside the caller's Trio code. The server uses exactly the same object: it turns each
SIP MESSAGE into an :class:`IncomingMessage`, calls :meth:`Conference.handle` and answers with
the returned code.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import trio

from .actors.delivery import Delivery, DeliveryResult, Sender
from .actors.supervisor import RETRY, Answer, ApplyFn, Supervisor
from .config import Config
from .imc import texts
from .imc.commands import CommandError, parse_command, resolve
from .imc.effects import Notice
from .imc.room import Policy, RoomRequest, help_text, new_room, notice_error, rooms_reply
from .imc.state import RoomState
from .store.repository import Repository
from .store.writer import Backend, Store

log = logging.getLogger("imc_actors.conference")

#: Seconds a conference leaving normally waits for queued notices to be delivered.
SHUTDOWN_GRACE = 5.0

REASONS = {
    200: "OK",
    202: "Accepted",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    413: "Request Entity Too Large",
    500: "Server Internal Error",
    503: "Service Unavailable",
}


@dataclass(frozen=True, slots=True)
class IncomingMessage:
    """One MESSAGE as the conference sees it.

    ``request_uri`` is ``sip:user@host`` of the Request-URI (port and parameters dropped);
    ``sender`` is ``sip:user@host`` of the sender (From, or the identity header when trusted);
    ``body`` is the raw body; ``content_type`` the Content-Type header or None; ``call_id`` the
    Call-ID (outgoing MESSAGEs carry it as In-Reply-To).
    """

    request_uri: str
    sender: str
    body: bytes
    content_type: str | None = None
    call_id: str = ""


def split_user_host(uri: str) -> tuple[str, str]:
    """``sip:user@host`` -> ``(user, host)``; the user is empty when the URI has none."""
    rest = uri.split(":", 1)[1] if ":" in uri else uri
    user, sep, host = rest.rpartition("@")
    return (user, host) if sep else ("", rest)


class Conference:
    """Routes each MESSAGE to the right room actor, or answers it without one."""

    def __init__(self, config: Config, supervisor: Supervisor, delivery: Delivery) -> None:
        self.config = config
        self.supervisor = supervisor
        self.delivery = delivery
        self._domains = frozenset(config.served_domains)
        self._manager = config.manager_user.lower()
        self._start = config.imc_cmd_start_char[0]
        self._create_on_join = config.create_on_join
        self._max_body = config.max_body_size

    # ------------------------------------------------------------------ views
    def rooms(self) -> list[RoomState]:
        """Every room's committed state (immutable records), sorted by URI."""
        return sorted(self.supervisor.rooms(), key=lambda r: r.key)

    def room(self, uri: str) -> RoomState | None:
        """The committed state of the room at ``uri`` (``sip:name@domain``), or None."""
        name, domain = split_user_host(uri)
        handle = self.supervisor.lookup(name, domain)
        return handle.state if handle is not None and handle.committed else None

    # ------------------------------------------------------------------ entry point
    async def handle(self, msg: IncomingMessage) -> Answer:
        """Carry out one command or relay one chat message; return the SIP answer.

        Checkpoints. The answer comes only after any state change is durable; the notices
        it caused are queued for delivery before it returns.
        """
        ruri_user, ruri_host = split_user_host(msg.request_uri)
        if len(msg.body) > self._max_body:
            text = texts.BODY_TOO_LARGE.format(limit=self._max_body)
            return await self._refuse(413, text, msg)
        if ruri_host.lower() not in self._domains:
            return await self._refuse(404, texts.ROOM_NOT_FOUND, msg)
        try:
            command = parse_command(msg.body, self._start)
        except CommandError as exc:
            return await self._refuse(exc.code, exc.text, msg)
        at_manager = ruri_user.lower() == self._manager
        if command is None:
            if at_manager or not ruri_user:
                return await self._refuse(404, texts.ROOM_NOT_FOUND, msg)
            op = RoomRequest(msg.sender, None, None, msg.body, msg.content_type, msg.call_id)
            return await self._to_room(ruri_user, ruri_host, op, msg, create=None)
        if command.name == "help":
            return await self._reply(help_text(self._start).encode(), msg)
        if command.name == "rooms":
            return await self._reply(rooms_reply(self.rooms(), msg.sender), msg)
        try:
            target = resolve(command, ruri_user=ruri_user, ruri_host=ruri_host, manager_user=self.config.manager_user)
        except CommandError as exc:
            return await self._refuse(exc.code, exc.text, msg)
        assert target.room_name is not None and target.room_domain is not None
        if target.room_domain.lower() not in self._domains or target.room_name.lower() == self._manager:
            return await self._refuse(404, texts.ROOM_NOT_FOUND, msg)
        op = RoomRequest(msg.sender, command, target, msg.body, msg.content_type, msg.call_id)
        creates = command.name == "create" or (command.name == "join" and self._create_on_join)
        private = target.private if command.name == "create" else False
        return await self._to_room(target.room_name, target.room_domain, op, msg, create=private if creates else None)

    async def _to_room(
        self, name: str, domain: str, op: RoomRequest, msg: IncomingMessage, *, create: bool | None
    ) -> Answer:
        """Send ``op`` to the room; create it first when ``create`` is not None (its private flag)."""
        for _ in range(4):
            handle = self.supervisor.lookup(name, domain)
            if handle is not None:
                answer = await self.supervisor.call(handle, op, msg.call_id)
            elif create is not None:
                state, outcome = new_room(name, domain, msg.sender, create)
                answer = await self.supervisor.create(state, outcome, msg.call_id)
            else:
                return await self._refuse(404, texts.ROOM_NOT_FOUND, msg)
            if answer.code != RETRY:
                return answer
        return Answer(503, REASONS[503], retry_after=1)

    async def _refuse(self, code: int, text: str, msg: IncomingMessage) -> Answer:
        """A refusal with no room behind it: notice From the Request-URI, then the code."""
        outcome = notice_error(code, text, msg.sender, msg.request_uri)
        await self.delivery.submit(outcome.notices, msg.call_id)
        return Answer(code, REASONS.get(code, outcome.reason))

    async def _reply(self, body: bytes, msg: IncomingMessage) -> Answer:
        notice = Notice(to=msg.sender, body=body, sender=msg.request_uri, kind="reply")
        await self.delivery.submit((notice,), msg.call_id)
        return Answer(200, "OK", body=body)


def open_repository(config: Config) -> Repository:
    """The configured database with its tables created if absent (blocking: call in a thread)."""
    repository = Repository(config.db_url, config.rooms_table, config.members_table)
    repository.init_schema()
    return repository


async def _discard(notice: Notice, in_reply_to: str) -> DeliveryResult:
    return DeliveryResult(200, "OK")


@asynccontextmanager
async def open_conference(
    config: Config,
    *,
    sender: Sender | None = None,
    repository: Backend | None = None,
    apply: ApplyFn | None = None,
) -> AsyncIterator[Conference]:
    """Run a conference (store, supervisor, delivery; no sockets) for the body of the block.

    Rooms in the configured database are recovered first. ``sender`` delivers each notice
    (the server passes its SIP client; embedders pass their own; default: discard).
    ``repository`` replaces the peewee repository built from ``config.db_url`` and ``apply``
    the pure room transition (both are how :mod:`imc_actors.testing` injects faults). Leaving the
    block, or cancellation of the caller, stops every actor; changes already acknowledged are
    durable. Leaving normally first waits (at most ``SHUTDOWN_GRACE`` seconds) until the
    notices already queued have been delivered.
    """
    if repository is None:
        repository = await trio.to_thread.run_sync(open_repository, config)
    store = Store(repository)
    policy = Policy(
        start_char=config.imc_cmd_start_char[0],
        check_on_create=config.check_on_create,
        owner_leave=config.owner_leave,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        delivery = Delivery(sender or _discard)
        supervisor = Supervisor(
            store=store,
            delivery=delivery,
            policy=policy,
            hash_size=config.hash_size,
            mailbox_size=config.mailbox_size,
            restart_limit=config.restart_limit,
            restart_window=config.restart_window,
            **({"apply": apply} if apply is not None else {}),
        )
        delivery.on_outcome = supervisor.on_delivery
        supervisor.load(await store.load_rooms())
        await nursery.start(delivery.run)
        await nursery.start(supervisor.run)
        conference = Conference(config, supervisor, delivery)
        try:
            yield conference
            with trio.move_on_after(SHUTDOWN_GRACE):  # notices already queued still go out
                await delivery.drain()
        finally:
            nursery.cancel_scope.cancel()
