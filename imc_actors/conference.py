"""The conference: one entry point for every MESSAGE, as the original module's ``imc_manager()``.

:func:`open_conference` gives a running :class:`Conference` (store, supervisor, delivery; no
sockets) inside the caller's Trio code. The server uses exactly the same object: it turns each
SIP MESSAGE into an :class:`IncomingMessage`, calls :meth:`Conference.handle` and answers with
the returned code.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from functools import partial

import trio

from .actors.archive import expire_history
from .actors.delivery import Delivery, HandoffTarget, Hold, Sender
from .actors.leases import LeaseKeeper
from .actors.supervisor import RETRY, Answer, ApplyFn, Committer, Supervisor
from .cluster import ClusterSnapshot, ClusterView, node_views
from .config import Config
from .exits import plain_exits
from .imc import texts
from .imc.commands import CommandError, complete_argument, fits, parse_command, resolve
from .imc.effects import MAX_REASON_LENGTH, MAX_STORED_LENGTH, Notice
from .imc.history import HistoryLine
from .imc.room import (
    AdminAction,
    Policy,
    RoomRequest,
    help_text,
    new_room,
    notice_error,
    rooms_pages,
)
from .imc.room import apply as room_apply
from .imc.state import RoomState, member_key
from .notices import NoticeChannel, NoticeRouter, WhenFull
from .sip import canonical, reason_phrase, split_user_host
from .store.instance import CHECK_INTERVAL, DatabaseInUse, LockLost, ServingLock, serving_lock
from .store.nodes import RoomLocation
from .store.repository import Repository, StoreError
from .store.urls import DatabaseURL
from .store.writer import Backend, Store
from .transport.limits import FloodLimiter, LogBudget, LogInterval

log = logging.getLogger("imc_actors.conference")

#: Seconds a conference leaving normally waits for queued notices to be delivered.
SHUTDOWN_GRACE = 5.0


#: A request :meth:`Conference.start` queued in turn: the message, its answer's callback, its hold.
_Turn = tuple["IncomingMessage", Callable[[Answer], None], Hold | None]


class ConferenceClosed(RuntimeError):
    """A conference was used after its :func:`open_conference` block ended."""


#: The reason phrase of the 400 for a Request-URI or sender that is no SIP URI with a user
#: (the server's, for such a Request-URI or From; :meth:`Conference.handle`'s too).
INVALID_URI_REASON = "Invalid Request-URI or From"


@dataclass(frozen=True, slots=True)
class IncomingMessage:
    """One MESSAGE as the conference sees it.

    ``request_uri`` is the Request-URI and ``sender`` the sender (From, or the identity header
    when trusted): SIP URIs, bare or as a name-addr (``"Bob" <sip:bob@x>``). The conference
    reads both as the server reads them off the wire (:func:`imc_actors.sip.canonical`), so
    what is stored is the same whichever way a MESSAGE came: ``sip:user@host``, the host as
    spelled, a ``sips:`` scheme, port, parameters, password and display name dropped, the user
    part in canonical form (``sip:%61lice@x`` is ``sip:alice@x``). One that is no ``sip:`` or
    ``sips:`` URI with a user part (``alice``, ``alice@example.com``, ``tel:+123``) is answered
    400 (see :meth:`Conference.handle`). ``body`` is the raw body, ``bytes`` (a str is refused:
    encode it, e.g. ``text.encode()`` for UTF-8, and say so in ``content_type``);
    ``content_type`` the Content-Type header or None; ``call_id`` the Call-ID (outgoing
    MESSAGEs carry it as In-Reply-To). Raises TypeError for a field of another type.
    """

    request_uri: str
    sender: str
    body: bytes
    content_type: str | None = None
    call_id: str = ""
    #: The node that forwarded this MESSAGE here (issue 13; checked by the server), or None.
    #: A forwarded MESSAGE is never forwarded again.
    forwarded_by: str | None = None

    def __post_init__(self) -> None:
        # Types only (cheap: one check per field of every MESSAGE the server reads); the
        # values are the conference's to judge, with an answer (handle()).
        for name, value, kind in (
            ("request_uri", self.request_uri, "a str (a SIP URI)"),
            ("sender", self.sender, "a str (a SIP URI)"),
            ("call_id", self.call_id, "a str"),
        ):
            if not isinstance(value, str):
                raise TypeError(f"{name} must be {kind}, not {type(value).__name__}")
        for name, value in (("content_type", self.content_type), ("forwarded_by", self.forwarded_by)):
            if value is not None and not isinstance(value, str):
                raise TypeError(f"{name} must be a str or None, not {type(value).__name__}")
        if not isinstance(self.body, bytes):
            hint = " (encode it, e.g. body.encode() for UTF-8)" if isinstance(self.body, str) else ""
            raise TypeError(f"body must be bytes, not {type(self.body).__name__}{hint}")


#: The largest ``seq`` of an archived line (a signed 64-bit column).
_MAX_SEQ = 2**63 - 1


def _check_seq(name: str, value: object, low: int, high: float) -> None:
    """TypeError unless ``value`` is an int (not a bool), ValueError unless ``low <= value <= high``."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if not low <= value <= high:
        top = "" if high == math.inf else f" and at most {high}"
        raise ValueError(f"{name} must be at least {low}{top}, not {value}")


def _admitted(msg: IncomingMessage) -> IncomingMessage | Answer:
    """``msg`` with its Request-URI and sender as the server reads them
    (:func:`~imc_actors.sip.canonical`; the very same object when they already are: the
    server's always are), or the 400 when either is no SIP URI with a user part: no notice
    (there is no SIP address to send one to, or From), the ``***`` text in its body."""
    try:
        request_uri = canonical(msg.request_uri)
    except ValueError:
        return _not_admitted(msg.request_uri)
    try:
        sender = canonical(msg.sender)
    except ValueError:
        return _not_admitted(msg.sender)
    if request_uri == msg.request_uri and sender == msg.sender:
        return msg
    return replace(msg, request_uri=request_uri, sender=sender)


def _room_of(uri: str, what: str = "uri") -> tuple[str, str]:
    """``(name, domain)`` of a room URI an embedder or a management call names, read as the
    server reads a Request-URI (:func:`~imc_actors.sip.canonical`; one that is no SIP URI
    names no room: ``("", …)``, found nowhere). TypeError for a ``uri`` that is no str."""
    if not isinstance(uri, str):
        raise TypeError(f"{what} must be a str (a SIP URI), not {type(uri).__name__}")
    try:
        uri = canonical(uri)
    except ValueError:
        pass
    return split_user_host(uri)


def _not_admitted(bad: str) -> Answer:
    return Answer(400, INVALID_URI_REASON, body=texts.invalid_address(bad).encode())


@dataclass(frozen=True, slots=True)
class _Refuse:
    code: int
    text: str
    retry_after: int | None = None


@dataclass(frozen=True, slots=True)
class _ToRoom:
    name: str
    domain: str
    op: RoomRequest
    create: bool | None  # create the room if missing (the private flag), or None: never


#: :meth:`Conference.claim`'s refusal while another node holds a live lease (forwardable).
_HELD_ELSEWHERE = _Refuse(503, "", None)

#: ``forward(request_uri, sender, body, content_type, call_id, location) -> Answer | None``.
Forward = Callable[[str, str, bytes, "str | None", str, RoomLocation], Awaitable[Answer | None]]

_HELP = "help"
#: Commands that may list one more member or invitation in a room (``max_members_total``).
_GROWS = frozenset({"join", "invite", "add"})
_ROOMS = "rooms"


@dataclass(frozen=True, slots=True)
class RoomStatus:
    """A read-only view of one room as its supervisor sees it (see :meth:`Conference.room_status`).

    ``state`` is the last committed state; ``running`` whether an actor task is running now
    (actors start on a room's first command and end when it is destroyed or quarantined);
    ``restarts`` how many times its actor crashed and was restarted; ``quarantined`` whether
    its commands are refused with 503 now, for ``retry_after`` more seconds (rounded up; None
    when not quarantined); ``mailbox_depth`` the commands waiting in its mailbox;
    ``processed`` the commands it has handled.
    """

    state: RoomState
    running: bool
    restarts: int
    quarantined: bool
    retry_after: int | None
    mailbox_depth: int
    processed: int


class Conference:
    """Routes each MESSAGE to the right room actor, or answers it without one.

    Made by :func:`open_conference` (and used as is by the server). ``notices`` is the
    :class:`~imc_actors.notices.NoticeRouter` every notice goes through (see :meth:`subscribe`).
    """

    def __init__(
        self,
        config: Config,
        supervisor: Supervisor,
        delivery: Delivery,
        notices: NoticeRouter | None = None,
        store: Store | None = None,
    ) -> None:
        self.config = config
        self.supervisor = supervisor
        self.delivery = delivery
        self.notices = notices
        #: The store (group-committing writer) behind the rooms, or None.
        self.store = store
        #: The database lock held while serving (:mod:`imc_actors.store.instance`), or None.
        self._serving_lock: ServingLock | None = None
        #: This node's room leases (config ``node``), or None.
        self.leases: LeaseKeeper | None = None
        #: The node that is the home of a room name (workers of one machine), or None.
        self.home: Callable[[str], str] | None = None
        #: The database half of :meth:`snapshot` (with ``node`` set), or None.
        self.cluster: ClusterView | None = None
        #: Hands a MESSAGE for a room another node holds to that node (the server sets it:
        #: :class:`~imc_actors.forwarding.Forwarder`), or None: such a MESSAGE gets 503.
        self.forward: Forward | None = None
        #: ``is_user("user@host")``: whether that address is a user's (the server's registrar
        #: has a binding for it); a room of that name is not created. None: not checked.
        self.is_user: Callable[[str], bool] | None = None
        self._closed = False
        self._claims: dict[str, trio.Event] = {}  # room key -> takeover in progress
        # (sender, room key) -> its requests for a room served elsewhere, in the order they came
        self._turns: dict[tuple[str, str], deque[_Turn]] = {}
        self._claiming = 0  # lease takeovers and owner lookups under way (max_claims)
        self.claims_refused = 0
        self._claims_log = LogInterval(1.0)
        self._takeovers_failed = 0
        self._takeover_log = LogInterval(1.0)
        self._locate_log = LogBudget(1)  # a database outage: a line a second, not one a request
        self._domains = frozenset(config.served_domains)
        self._manager = config.manager_user.lower()
        self._start = config.imc_cmd_start_char[0]
        self._create_on_join = config.create_on_join
        self._max_body = config.max_body_size
        self._nursery: trio.Nursery | None = None  # set while open_conference runs
        self._max_rooms = config.max_rooms_per_user
        #: Chat budget per (room, sender): the transport's token bucket table, keyed by
        #: ``"<room key> <sender key>"``, bounded by ``chat_rate_senders`` (None: no limit).
        self.chat_limiter: FloodLimiter | None = None
        if config.chat_rate > 0:
            self.chat_limiter = FloodLimiter(
                config.chat_rate, config.chat_burst, 0.0, max_sources=config.chat_rate_senders
            )

    # ------------------------------------------------------------------ views
    def rooms(self) -> list[RoomState]:
        """Every room's committed state (immutable records), sorted by URI."""
        return sorted(self.supervisor.rooms(), key=lambda r: r.key)

    def room(self, uri: str) -> RoomState | None:
        """The committed state of the room at ``uri`` (``sip:name@domain``, read as the server
        reads a Request-URI: a port or parameters are no other room), or None."""
        name, domain = _room_of(uri)
        handle = self.supervisor.lookup(name, domain)
        return handle.state if handle is not None and handle.committed else None

    async def snapshot(self) -> ClusterSnapshot:
        """Every room of the cluster (issue 13 item 3; see :mod:`imc_actors.cluster`): the
        rooms this node serves as they are in memory, every other one as the database has it
        (at most ``cluster_view_age`` old), who holds each and the nodes. Without ``node``:
        this conference's rooms. Checkpoints when it reads; raises
        :class:`~imc_actors.store.repository.StoreError` when the database cannot be read,
        :class:`ConferenceClosed` once the conference has ended (:meth:`rooms` still works)."""
        self._check_open()
        keeper = self.leases
        if self.cluster is None or keeper is None:
            return ClusterSnapshot(self.rooms())
        found = await self.cluster.read()
        served = {room.key: room for room in self.rooms() if keeper.serving(room.key)}
        rooms = {room.key: room for room in found.rooms} | served
        owners = dict(found.owners) | dict.fromkeys(served, self.config.node)
        nodes = node_views(found.nodes, owners, found.now, self.config.lease_ttl)
        return ClusterSnapshot(rooms.values(), owners, nodes, self.config.node)  # type: ignore[arg-type]

    async def _listed_rooms(self) -> tuple[list[RoomState], bool]:
        """The rooms ``#rooms`` lists: the cluster's, or this node's alone (logged; True with
        them) while the database cannot be read."""
        try:
            return (await self.snapshot()).rooms(), False
        except StoreError as exc:
            self._locate_log.log(
                log, logging.WARNING, trio.current_time(),
                "#rooms lists this node's rooms only: reading the others failed: %s", exc,
                what="such lines",
            )  # fmt: skip
            return self.rooms(), True

    def room_status(self, uri: str) -> RoomStatus | None:
        """The supervisor's view of the room at ``uri`` (restarts, quarantine, mailbox), or None
        when there is no such room. A snapshot: it does not change afterwards."""
        name, domain = _room_of(uri)
        handle = self.supervisor.lookup(name, domain)
        if handle is None or not handle.committed:
            return None
        now = trio.current_time()
        quarantined = now < handle.quarantined_until
        return RoomStatus(
            state=handle.state,
            running=handle.running,
            restarts=handle.restarts,
            quarantined=quarantined,
            retry_after=max(1, math.ceil(handle.quarantined_until - now)) if quarantined else None,
            mailbox_depth=handle.send.statistics().current_buffer_used if handle.send is not None else 0,
            processed=handle.processed,
        )

    async def history(
        self, uri: str, limit: int, before: int | None = None
    ) -> list[HistoryLine] | None:
        """The newest ``limit`` archived lines (numbered below ``before``, when given) of the
        room at ``uri``, oldest first; None when the archive is off (``history_max = 0``).
        ``limit`` is an int of at least 1 (no cap: :attr:`history_limit` is what the
        management interface asks at most), ``before`` a line's ``seq`` (1 to 2^63-1) or
        None; TypeError for an argument of another type, ValueError for one out of range.
        Read in the store's thread (checkpoints); raises
        :class:`~imc_actors.store.repository.StoreError` when the database cannot be read,
        :class:`ConferenceClosed` once the conference has ended.
        A room that does not exist has no lines; ``uri`` names a room as for :meth:`room`."""
        self._check_open()
        name, domain = _room_of(uri)
        _check_seq("limit", limit, 1, math.inf)
        if before is not None:
            _check_seq("before", before, 1, _MAX_SEQ)
        if self.supervisor.history_reader is None:
            return None
        key, most = f"sip:{name}@{domain}".lower(), min(limit, _MAX_SEQ)  # a row's seq at most
        lines: list[HistoryLine] = await self.supervisor.history_reader.read(
            lambda r: r.load_history(key, most, before)
        )
        return lines

    @property
    def history_limit(self) -> int:
        """The most lines :meth:`history` is asked for at once (``history_lines_max``; 0 when
        the archive is off)."""
        return self.config.history_lines_max if self.supervisor.history_reader is not None else 0

    @property
    def closed(self) -> bool:
        """True once the :func:`open_conference` block that made this conference has ended.

        Its actors and store are gone then: every coroutine method (:meth:`handle`,
        :meth:`refuse`, :meth:`administer`, :meth:`history`, :meth:`snapshot`,
        :meth:`flush_notices`, :meth:`claim`, :meth:`lease_round`) and :meth:`subscribe`
        raise :class:`ConferenceClosed`, and :meth:`start` returns False. The read-only views
        (:meth:`rooms`, :meth:`room`, :meth:`room_status`, :attr:`history_limit`) keep
        answering with the state as it was when the conference ended (``running`` False);
        :meth:`hold` still gives a hold, which nothing will wait for."""
        return self._closed

    # ------------------------------------------------------------------ notices
    def _check_open(self) -> None:
        if self._closed:
            raise ConferenceClosed("this conference has ended; open a new one")

    async def flush_notices(self) -> None:
        """Wait until every notice queued so far has been handed to its subscription or sent
        by the sender (delivered or failed). Checkpoints. Raises :class:`ConferenceClosed`
        once the conference has ended (nothing would deliver them any more)."""
        self._check_open()
        await self.delivery.drain()

    def subscribe(
        self,
        *recipients: str,
        max_buffer: int = 256,
        observe: bool = False,
        when_full: WhenFull = "wait",
        confirm: bool = False,
        confirm_timeout: float | None = 32.0,
    ) -> NoticeChannel:
        """Receive what the rooms send to ``recipients`` (URIs; none: every notice) in a bounded
        channel, instead of the conference's sender delivering it (``observe=True``: a copy, the
        normal delivery goes on). Use it as a context manager to unsubscribe. See
        :mod:`imc_actors.notices` for backpressure (``max_buffer``, ``when_full``) and
        confirmations; ValueError or TypeError for options out of their range. Does not
        checkpoint. Raises :class:`ConferenceClosed` once the conference has ended."""
        self._check_open()
        if self.notices is None:
            raise RuntimeError("this Conference was built without a NoticeRouter")
        return self.notices.subscribe(
            *recipients, max_buffer=max_buffer, observe=observe, when_full=when_full,
            confirm=confirm, confirm_timeout=confirm_timeout,
        )

    # ------------------------------------------------------------------ entry point
    def hold(self) -> Hold:
        """A :class:`~imc_actors.actors.delivery.Hold` for :meth:`handle`/:meth:`start`: the
        notices a message causes wait until it is released (release it once the answer is
        sent; delivery releases a forgotten one after a few seconds). Never blocks."""
        return self.delivery.hold()

    async def handle(self, msg: IncomingMessage, *, hold: Hold | None = None) -> Answer:
        """Carry out one command or relay one chat message; return the SIP answer.

        Checkpoints. The answer comes only after any state change is durable; the notices
        it caused are queued for delivery before it returns (under ``hold``, when given: then
        they leave once it is released). A message from a member who has notices stored
        (unreachable earlier) makes them go out now. A Request-URI or sender that is no SIP
        URI with a user part gets 400 (``INVALID_URI_REASON``, as the server answers such a
        Request-URI or From) and no notice: the answer's ``body`` is
        ``*** Invalid address '<it>'``. Raises :class:`ConferenceClosed` once the
        :func:`open_conference` block has ended (no actor would answer).
        """
        self._check_open()
        admitted = _admitted(msg)
        if isinstance(admitted, Answer):
            await trio.lowlevel.checkpoint()
            return admitted
        msg = admitted
        self.delivery.wake(msg.sender)
        route = self._route(msg)
        if isinstance(route, _Refuse):
            return await self._refuse(route.code, route.text, msg, hold)
        if route is _HELP:
            return await self._reply([help_text(self._start).encode()], msg, hold)
        if route is _ROOMS:
            rooms, short = await self._listed_rooms()
            shown = rooms_pages(rooms, msg.sender, most=self.config.rooms_list_max)
            if short:  # said, not an empty "Rooms:" that looks like the whole cluster's
                shown = [*shown, texts.ROOMS_THIS_NODE_ONLY.encode()]
            return await self._reply(shown, msg, hold)
        assert isinstance(route, _ToRoom)
        limited = self._chat_limited(route)
        if limited is not None:
            return await self._refuse(limited.code, limited.text, msg, hold, limited.retry_after)
        return await self._to_room(route.name, route.domain, route.op, msg, create=route.create, hold=hold)

    def start(
        self, msg: IncomingMessage, on_answer: Callable[[Answer], None], *, hold: Hold | None = None
    ) -> bool:
        """:meth:`handle` without a task: for a command or chat message to an existing room,
        queue it and return True; ``on_answer`` is then called once, later, with the answer
        :meth:`handle` would have returned (from the room's actor; it must not block). Returns
        False, having done nothing, for everything else (refusals, ``#help``, ``#rooms``, room
        creation, a closed conference): use :meth:`handle`. Never checkpoints.
        """
        if self._closed or self._nursery is None:
            return False
        admitted = _admitted(msg)
        if isinstance(admitted, Answer):
            return False
        msg = admitted
        route = self._route(msg)
        if not isinstance(route, _ToRoom):
            return False
        handle = self.supervisor.lookup(route.name, route.domain)
        if self.leases is not None and not self.leases.serving(handle.state.key if handle else ""):
            # not this node's room (yet): handle() takes it over, forwards or refuses; in turn
            # per sender and room, so lines a client pipelines keep their order
            if msg.forwarded_by is not None:
                return False
            return self._in_turn(f"{route.name}@{route.domain}".lower(), msg, on_answer, hold)
        if handle is None:
            return False
        key = self._chat_key(route)
        if key is not None:  # one key, one clock reading: check, then spend
            assert self.chat_limiter is not None
            now = trio.current_time()
            if not self.chat_limiter.would_allow(key, now):
                return False  # a refusal goes through handle(), which counts it once
            self.chat_limiter.allow(key, now)
        self.delivery.wake(msg.sender)

        def answered(answer: Answer) -> None:
            if answer.code == RETRY:  # the room went away meanwhile: route it again, in a task
                assert self._nursery is not None
                self._nursery.start_soon(self._answer_later, msg, on_answer, hold)
            else:
                on_answer(answer)

        immediate = self.supervisor.post(handle, route.op, msg.call_id, answered, hold)
        if immediate is None:
            return True
        if immediate.code == RETRY:
            return False
        on_answer(immediate)
        return True

    def _in_turn(
        self, key: str, msg: IncomingMessage, on_answer: Callable[[Answer], None], hold: Hold | None
    ) -> bool:
        """Queue ``msg`` behind the sender's earlier requests for room ``key`` that are
        still being handled elsewhere (taken over, forwarded): one task per sender and room
        handles them one at a time, in the order they came. Each is a live server
        transaction, so ``max_transactions`` bounds the queues."""
        assert self._nursery is not None
        lane_key = (msg.sender, key)
        lane = self._turns.get(lane_key)
        if lane is None:
            lane = self._turns[lane_key] = deque()
            self._nursery.start_soon(self._take_turns, lane_key, lane)
        lane.append((msg, on_answer, hold))
        return True

    async def _take_turns(self, lane_key: tuple[str, str], lane: deque[_Turn]) -> None:
        try:
            while lane:
                msg, on_answer, hold = lane[0]
                try:
                    answer = await self._handled(msg, hold)
                except Exception:  # as a handler task's: answered 500, the others go on
                    log.exception("handling a MESSAGE for %s from %s failed", lane_key[1], msg.sender)
                    answer = Answer(500, reason_phrase(500))
                lane.popleft()
                on_answer(answer)
        finally:
            del self._turns[lane_key]

    async def _answer_later(
        self, msg: IncomingMessage, on_answer: Callable[[Answer], None], hold: Hold | None
    ) -> None:
        on_answer(await self._handled(msg, hold))

    async def _handled(self, msg: IncomingMessage, hold: Hold | None) -> Answer:
        """:meth:`handle` for a request taken by :meth:`start`: a closed conference is 503."""
        try:
            return await self.handle(msg, hold=hold)
        except ConferenceClosed:
            return Answer(503, reason_phrase(503), retry_after=5)

    def _route(self, msg: IncomingMessage) -> _Refuse | _ToRoom | str:
        """Where one MESSAGE goes (pure, no checkpoint): a refusal, ``#help``/``#rooms``
        (:data:`_HELP`/:data:`_ROOMS`), or a room with the request for its actor."""
        ruri_user, ruri_host = split_user_host(msg.request_uri)
        sender = msg.sender  # canonical: handle() and start() admitted msg
        if len(msg.body) > self._max_body:
            return _Refuse(413, texts.BODY_TOO_LARGE.format(limit=self._max_body))
        if ruri_host.lower() not in self._domains:
            return _Refuse(404, texts.ROOM_NOT_FOUND)
        try:
            command = parse_command(msg.body, self._start)
        except CommandError as exc:
            return _Refuse(exc.code, exc.text)
        if command is None:
            if not ruri_user or ruri_user.lower() == self._manager:
                return _Refuse(404, texts.ROOM_NOT_FOUND)
            op = RoomRequest(sender, None, None, msg.body, msg.content_type, msg.call_id, time.time())
            return _ToRoom(ruri_user, ruri_host, op, None)
        if command.name == "help":
            return _HELP
        if command.name == "rooms":
            return _ROOMS
        try:
            target = resolve(
                command, ruri_user=ruri_user, ruri_host=ruri_host,
                manager_user=self.config.manager_user, sender=sender,
            )  # fmt: skip
        except CommandError as exc:
            return _Refuse(exc.code, exc.text)
        assert target.room_name is not None and target.room_domain is not None
        if target.room_domain.lower() not in self._domains or target.room_name.lower() == self._manager:
            return _Refuse(404, texts.ROOM_NOT_FOUND)
        if command.name in ("invite", "add") and target.user is not None and self.is_room_address(member_key(target.user)):
            # a room (or the manager) as a member: its notices could never be delivered, and
            # a room that owns itself can be managed by no one
            return _Refuse(400, texts.address_is_no_user(target.user))
        op = RoomRequest(
            sender, command, target, msg.body, msg.content_type, msg.call_id, time.time()
        )
        creates = command.name == "create" or (command.name == "join" and self._create_on_join)
        private = target.private if command.name == "create" else False
        return _ToRoom(target.room_name, target.room_domain, op, private if creates else None)

    def is_room_address(self, key: str) -> bool:
        """Whether ``key`` (``user@host``, any case) is the address of one of this node's
        rooms, or of the manager, in one of its domains."""
        user, _, host = key.rpartition("@")
        if host.lower() not in self._domains:
            return False
        return user.lower() == self._manager or self.supervisor.lookup(user, host) is not None

    async def is_room_in_cluster(self, key: str) -> bool:
        """:meth:`is_room_address`, and in a cluster also a room another node or worker serves
        (the rooms table: one indexed read). Raises StoreError when that read fails."""
        if self.is_room_address(key):
            return True
        user, _, host = key.rpartition("@")
        if self.cluster is None or self.store is None or host.lower() not in self._domains:
            return False
        return bool(await self.store.read(lambda repository: repository.has_room(f"{user}@{host}")))

    async def _to_room(
        self,
        name: str,
        domain: str,
        op: RoomRequest,
        msg: IncomingMessage,
        *,
        create: bool | None,
        hold: Hold | None,
    ) -> Answer:
        """Send ``op`` to the room; create it first when ``create`` is not None (its private flag)."""
        key = f"{name}@{domain}".lower()
        for _ in range(4):
            refused = await self._claim(key)  # again after a RETRY: the room may have moved
            if refused is not None:
                return await self._elsewhere(key, refused, msg, hold)
            handle = self.supervisor.lookup(name, domain)
            if (handle is not None or create is not None) and self._members_full(op, handle):
                return await self._refuse(
                    403, texts.server_members_full(self.config.max_members_total), msg, hold
                )
            if handle is not None:
                answer = await self.supervisor.call(handle, op, msg.call_id, hold)
            elif create is not None:
                # Until the room is created (its lease held, committed with it), requests for it
                # wait in claim() as for a takeover under way: else each would find no lease
                # held here, take it over and replace the new room, or create it a second time.
                creating = None if self.leases is None or key in self._claims else trio.Event()
                if creating is not None:
                    self._claims[key] = creating
                try:
                    homed = await self._at_home(key, name, msg)
                    if homed is not None:
                        return homed
                    if self.is_user is not None and self.is_user(key):
                        # a room by that name would take the user's address: every MESSAGE
                        # from them would look like the room's own coming back (482)
                        return await self._refuse(403, texts.room_name_is_a_user(name), msg, hold)
                    if self.supervisor.owned(op.sender) >= self._max_rooms:
                        return await self._refuse(403, texts.too_many_rooms(self._max_rooms), msg, hold)
                    if self.supervisor.room_count() >= self.config.max_rooms:
                        return await self._refuse(403, texts.server_full(self.config.max_rooms), msg, hold)
                    state, outcome = new_room(name, domain, op.sender, create, now=op.time)
                    answer = await self.supervisor.create(state, outcome, msg.call_id, hold)
                finally:
                    if creating is not None:
                        del self._claims[key]
                        creating.set()
            else:
                return await self._refuse(404, texts.ROOM_NOT_FOUND, msg, hold)
            if answer.code != RETRY:
                return answer
        return Answer(503, reason_phrase(503), retry_after=1)

    def _members_full(self, op: RoomRequest, handle: object | None) -> bool:
        """True when ``op`` would list one more member or invitation (a creation, ``#join``,
        ``#invite``, ``#add``) and the rooms here list ``max_members_total`` already: each
        costs memory, and without authentication any From may create rooms and invite."""
        if self.supervisor.members_total() < self.config.max_members_total:
            return False
        return handle is None or (op.command is not None and op.command.name in _GROWS)

    async def _elsewhere(
        self, key: str, refused: _Refuse, msg: IncomingMessage, hold: Hold | None
    ) -> Answer:
        """``claim`` refused: forward ``msg`` to the room's node when it is another's live
        lease (and ``msg`` was not forwarded already), else answer the refusal."""
        if refused is _HELD_ELSEWHERE and self.forward is not None and msg.forwarded_by is None:
            answer = await self._forwarded(key, msg)
            if answer is not None:
                return answer
        if refused is _HELD_ELSEWHERE:
            seconds = max(1, math.ceil(self.config.lease_ttl))
            refused = _Refuse(503, texts.ROOM_HELD_ELSEWHERE.format(seconds=seconds), seconds)
        if refused.text:
            return await self._refuse(refused.code, refused.text, msg, hold, refused.retry_after)
        return Answer(refused.code, reason_phrase(refused.code), retry_after=refused.retry_after)

    # ------------------------------------------------------------------ ownership
    async def claim(self, key: str) -> _Refuse | None:
        """Make this node the one serving the room ``key`` (``name@domain``, lower case) when
        it has a node name and does not serve it now (issue 13, failover): take the room's
        lease over (free, expired, or its own lapsed one; epoch + 1) and serve the state read
        from the database after that. None when the room may be served here now (or is not
        stored: it may be created); else the refusal: :data:`_HELD_ELSEWHERE` while another
        node holds a live lease (the caller forwards, or refuses with
        ``texts.ROOM_HELD_ELSEWHERE``), 503 without a notice when the database fails.
        Concurrent claims of one room wait for the first. Checkpoints. Raises
        :class:`ConferenceClosed` once the conference has ended."""
        self._check_open()
        return await self._claim(key)

    async def _claim(self, key: str) -> _Refuse | None:
        """:meth:`claim` for the conference's own requests and lease rounds, which may be
        under way as it ends."""
        keeper, store = self.leases, self.store
        if keeper is None or store is None:
            return None
        # A claim under way is waited for even when the lease already looks held: it is taken
        # (in the store's thread) before the room's state is read and served.
        while (pending := self._claims.get(key)) is not None:
            await pending.wait()
        if keeper.serving(key):
            return None
        if self._busy():
            return _Refuse(503, "", 1)
        self._claims[key] = event = trio.Event()
        self._claiming += 1  # given back in the finally below
        try:
            await self.supervisor.stop(key)  # nothing of a stale actor may commit after this
            try:
                epoch, state = await store.read(partial(_take_over, key=key))
            except StoreError as exc:
                # The room's actor is stopped: unless the lease is let go here, the next
                # renewal would make the room look served again, with nothing serving it
                # (404 for its members; a #join would create it a second time).
                keeper.let_go(key)
                self._takeovers_failed += 1
                if self._takeover_log.due(trio.current_time()):
                    log.warning("room=%s taking the lease over failed (%d so far): %s",
                                key, self._takeovers_failed, exc)  # fmt: skip
                return _Refuse(503, "", 1)
            if epoch is None:
                return _HELD_ELSEWHERE
            keeper.taken(key, stored=state is not None)
            if state is not None:
                log.info("room=%s taken over (epoch %d), %d members", key, epoch, len(state.members))
                self.supervisor.replace(state)
            return None
        finally:
            self._claiming -= 1
            del self._claims[key]
            event.set()

    def _busy(self) -> bool:
        """True (counted, logged once a second) when ``max_claims`` lease takeovers and owner
        lookups are under way: each is a transaction on the store's thread, which commits
        too, and requests for rooms this node does not serve (any name: a flood of made-up
        ones) must not queue it full. The request then gets 503 with ``Retry-After: 1``."""
        if self._claiming < self.config.max_claims:
            return False
        self.claims_refused += 1
        if self._claims_log.due(trio.current_time()):
            log.warning("%d lease takeovers and owner lookups under way (max_claims): answering 503",
                        self._claiming)  # fmt: skip
        return True

    async def _forwarded(self, key: str, msg: IncomingMessage) -> Answer | None:
        """Hand ``msg`` to the node holding ``key``'s live lease; its answer, or None when no
        other node can be found (then the 503 stands)."""
        assert self.forward is not None and self.store is not None
        if self._busy():
            return Answer(503, reason_phrase(503), retry_after=1)
        self._claiming += 1
        try:
            location = await self._owner_elsewhere(key)
        finally:
            self._claiming -= 1
        if location is None:
            return None
        return await self.forward(
            msg.request_uri, msg.sender, msg.body, msg.content_type, msg.call_id, location
        )

    async def _owner_elsewhere(self, key: str) -> RoomLocation | None:
        """Where another node serves ``key``'s room now; None when no other node holds its
        live lease, or the database cannot be read (logged, a line a second at most)."""
        assert self.store is not None
        try:
            location = await self.store.read(partial(_locate, key=key))
        except StoreError as exc:
            self._locate_log.log(log, logging.WARNING, trio.current_time(),
                                 "room=%s locating its node failed: %s", key, exc, what="such lines")
            return None
        return None if location is None or location.node == self.config.node else location

    async def _at_home(self, key: str, name: str, msg: IncomingMessage) -> Answer | None:
        """A room to create here whose home is another live node: the answer of that node,
        to which ``msg`` is forwarded; None to create it here (no home, this node's own, a
        forwarded request, or its home is not live or cannot be reached)."""
        if self.home is None or self.forward is None or msg.forwarded_by is not None:
            return None
        node = self.home(name)
        if node == self.config.node or self.store is None:
            return None
        try:
            location = await self.store.read(
                partial(_node_location, key=key, node=node, ttl=self.config.lease_ttl)
            )
        except StoreError as exc:
            self._locate_log.log(log, logging.WARNING, trio.current_time(),
                                 "room=%s locating its home node %s failed: %s", key, node, exc,
                                 what="such lines")  # fmt: skip
            return None
        if location is None:
            return None
        answer = await self.forward(
            msg.request_uri, msg.sender, msg.body, msg.content_type, msg.call_id, location
        )
        if answer is None or answer.code in (408, 503):
            return None  # not reached: created here instead
        return answer

    async def lease_round(self) -> None:
        """One round of the lease keeper now (it runs one every ``lease_ttl / 3`` seconds):
        renew, stop the rooms another node took over, take over the rooms of dead nodes.
        Does nothing without a node name. Checkpoints. Raises :class:`ConferenceClosed` once
        the conference has ended."""
        self._check_open()
        if self.leases is not None:
            await self.leases.round(self._lost, self._orphans)

    def _lost(self, keys: list[str]) -> None:
        """The lease keeper found rooms another node took over: stop serving them here."""
        for key in keys:
            self.supervisor.retire(key)

    async def _orphans(self, keys: list[str]) -> None:
        """The lease keeper found rooms of dead nodes: take them over before anyone writes."""
        for key in keys:
            await self._claim(key)

    async def refuse(
        self, msg: IncomingMessage, code: int, text: str, *, hold: Hold | None = None
    ) -> Answer:
        """Refuse ``msg`` without routing it: ``text`` (a ``***`` notice) goes to its sender
        From its Request-URI, and the answer has ``code``. For refusals decided before the
        conference (the server's identity checks). A Request-URI or sender that is no SIP URI
        gets the 400 :meth:`handle` gives it instead. Checkpoints."""
        self._check_open()
        admitted = _admitted(msg)
        if isinstance(admitted, Answer):
            await trio.lowlevel.checkpoint()
            return admitted
        return await self._refuse(code, text, admitted, hold)

    async def _refuse(
        self, code: int, text: str, msg: IncomingMessage, hold: Hold | None, retry_after: int | None = None
    ) -> Answer:
        """A refusal with no room behind it: notice From the Request-URI, then the code."""
        outcome = notice_error(code, text, msg.sender, msg.request_uri)
        await self.delivery.submit(outcome.notices, msg.call_id, hold=hold)
        return Answer(code, reason_phrase(code), retry_after=retry_after)

    # ------------------------------------------------------------------ moderation
    def _chat_key(self, route: _ToRoom) -> str | None:
        """The sender's chat budget in the room (:attr:`chat_limiter`'s key), or None when
        ``route`` is a command or there is no limit. No checkpoint."""
        if self.chat_limiter is None or route.op.command is not None:
            return None
        return f"{route.name}@{route.domain} {route.op.sender}".lower()

    def _chat_limited(self, route: _ToRoom) -> _Refuse | None:
        """Spend one token of the sender's chat budget in the room (``chat_rate``,
        ``chat_burst``): None when the chat may go on (or is a command, or there is no
        limit), else the 503 refusal. Checked before the room's mailbox, so a flood costs
        the room nothing. No checkpoint."""
        key = self._chat_key(route)
        if key is None:
            return None
        assert self.chat_limiter is not None
        wait = self.chat_limiter.allow(key, trio.current_time())
        if wait <= 0.0:
            return None
        seconds = max(1, math.ceil(wait))
        return _Refuse(503, texts.sending_too_fast(seconds), seconds)

    async def administer(
        self, room_uri: str, action: str, user: str | None = None, reason: str = "", *,
        forwarded: bool = False,
    ) -> Answer:  # fmt: skip
        """A management action on the room at ``room_uri``: ``destroy``, ``kick`` or ``ban``
        ``user`` (completed as a command argument against the room's domain; ``*@domain`` bans
        a domain) with ``reason``. Carried out by the room's actor like a command, so it is
        durable before this returns. The answer's ``body`` is the ``***`` text of a refusal
        (404 no such room, 400 bad user, 403/404 from the room). A room another node holds:
        the action is handed to that node (``forward``, issue 13) unless it was ``forwarded``
        here already, else 503 naming that node. Checkpoints."""
        self._check_open()
        if action not in ("destroy", "kick", "ban"):
            raise ValueError(f"unknown action {action!r}")
        name, domain = _room_of(room_uri, "room_uri")
        target: str | None = None
        if action != "destroy":
            try:
                target = complete_argument(user or "", domain)
            except ValueError:
                return Answer(400, reason_phrase(400), body=texts.invalid_address(user or "").encode())
            if not fits(target):  # as #kick/#ban over SIP: a row could not hold it
                return Answer(400, reason_phrase(400), body=texts.address_too_long(MAX_STORED_LENGTH).encode())
        op = AdminAction(action, target, reason[:MAX_REASON_LENGTH])  # type: ignore[arg-type]
        key = f"{name}@{domain}".lower()
        for _ in range(4):
            refused = await self._claim(key)  # a room of a dead node is taken over first
            if refused is _HELD_ELSEWHERE:
                handed = None if forwarded else await self._admin_elsewhere(key, action, target, op.reason)
                return handed if handed is not None else await self._held_by(key)
            if refused is not None:
                return Answer(
                    refused.code, reason_phrase(refused.code), retry_after=refused.retry_after
                )
            handle = self.supervisor.lookup(name, domain)
            if handle is None or not handle.committed:
                return Answer(404, reason_phrase(404), body=texts.ROOM_NOT_FOUND.encode())
            answer = await self.supervisor.call(handle, op, f"admin-{action}")
            if answer.code != RETRY:
                return answer
        return Answer(503, reason_phrase(503), retry_after=1)

    async def _admin_elsewhere(
        self, key: str, action: str, user: str | None, reason: str
    ) -> Answer | None:
        """The answer of the node holding the room ``key`` to a management action handed to it
        (``forward.admin``); None when there is no such node or it cannot be reached."""
        admin = getattr(self.forward, "admin", None)
        if admin is None or self.store is None:
            return None
        location = await self._owner_elsewhere(key)
        if location is None:
            return None
        answer: Answer | None = await admin(f"sip:{key}", action, user, reason, location)
        return answer

    async def _held_by(self, key: str) -> Answer:
        """The answer to a management action for a room another node holds (issue 13): 503
        with ``Retry-After`` and ``texts.ROOM_HELD_BY`` naming that node. Actions are not
        forwarded: the operator sends them to the owner's management interface."""
        assert self.store is not None
        seconds = max(1, math.ceil(self.config.lease_ttl))
        location = await self._owner_elsewhere(key)
        if location is None:  # moved meanwhile
            body = texts.ROOM_HELD_ELSEWHERE.format(seconds=seconds)
        else:
            body = texts.ROOM_HELD_BY.format(node=location.node)
        return Answer(503, reason_phrase(503), body=body.encode(), retry_after=seconds)

    async def _reply(self, bodies: list[bytes], msg: IncomingMessage, hold: Hold | None) -> Answer:
        """200, and one reply notice per body (pages) to the sender, in order."""
        notices = tuple(Notice(to=msg.sender, body=body, sender=msg.request_uri, kind="reply") for body in bodies)
        await self.delivery.submit(notices, msg.call_id, hold=hold)
        return Answer(200, "OK", body=b"\n".join(bodies), replies=len(notices))


def _locate(repository: Repository, *, key: str) -> RoomLocation | None:
    return repository.locate(key)


def _node_location(repository: Repository, *, key: str, node: str, ttl: float) -> RoomLocation | None:
    """``node`` as the place to serve ``key`` when it is live (heartbeat within ``ttl``)."""
    for info in repository.nodes():
        if info.name == node and info.addresses and info.live(time.time(), ttl):
            return RoomLocation(key, node, 0, info.addresses)
    return None


def _take_over(repository: Repository, *, key: str) -> tuple[int | None, RoomState | None]:
    return repository.take_over(key)


def repository_of(config: Config) -> Repository:
    """The configured database's :class:`Repository` (not connected yet)."""
    return Repository(
        config.db_url, config.rooms_table, config.members_table,
        pending_table=config.pending_table, location_table=config.location_table,
        subscriber_table=config.subscriber_table, secret_table=config.secret_table,
        lock_timeout=config.db_timeout, bans_table=config.bans_table,
        limits_table=config.limits_table,
        lease_table=config.lease_table, node_table=config.node_table, node=config.node,
        metrics_table=config.metrics_table,
        lease_ttl=config.lease_ttl,
        history_table=config.history_table, room_info_table=config.room_info_table,
    )  # fmt: skip


def open_repository(config: Config) -> Repository:
    """The configured database with its tables created if absent (blocking: call in a thread)."""
    repository = repository_of(config)
    repository.init_schema()
    problems = repository.check_schema()  # tables made elsewhere (or altered) that cannot work
    if problems:
        repository.close()
        more = f" (and {len(problems) - 1} more: imc-actors db check lists them)" if len(problems) > 1 else ""
        raise StoreError(f"the database's tables do not fit: {problems[0]}{more}")
    return repository


@plain_exits
@asynccontextmanager
async def open_conference(
    config: Config,
    *,
    sender: Sender | None = None,
    repository: Backend | None = None,
    apply: ApplyFn | None = None,
    wrap_sender: Callable[[Sender], Sender] | None = None,
    wrap_store: Callable[[Committer], Committer] | None = None,
    home: Callable[[str], str] | None = None,
    handoff: HandoffTarget | None = None,
    node_free: bool = False,
) -> AsyncIterator[Conference]:
    """Run a conference (store, supervisor, delivery; no sockets) for the body of the block.

    Rooms in the configured database are recovered first. ``sender`` delivers each notice
    that no subscription claims (the server passes its SIP client; embedders pass their own;
    default: discard); a :class:`~imc_actors.notices.NoticeRouter` passed as ``sender`` becomes
    the conference's router (:meth:`Conference.subscribe`). ``repository`` replaces the peewee
    repository built from ``config.db_url``; ``apply`` the pure room transition;
    ``wrap_sender`` wraps what delivery calls (outside the router) and ``wrap_store`` what the
    room actors commit through: the four boundaries :mod:`imc_actors.testing` injects faults at.
    Leaving the block, or cancellation of the caller, stops every actor; changes already
    acknowledged are durable. Leaving normally first waits (at most ``SHUTDOWN_GRACE`` seconds)
    until the notices already queued have been delivered. Subscriptions end with the block.
    A KeyboardInterrupt or SystemExit (in the block or in one of the conference's tasks)
    leaves it as itself, not inside exception groups (:mod:`imc_actors.exits`).

    ``home(room_name)``, with ``node`` set: the node that is the room's home (the workers of
    ``serve --workers N``, see :mod:`imc_actors.transport.steering`). At startup this node
    takes the leases of its home rooms only, leaving the others to their homes (a room whose
    home never claims it is taken over by the first node it is asked of); a room created
    through this node (``#create`` sent to the manager URI) is created at its home, the
    request being forwarded there, unless that node is not live.

    ``handoff`` (the workers of ``serve --workers N``, :class:`~imc_actors.handoff.Handoff`):
    notices for members another worker delivers to are handed to it, and only this worker's
    members' stored notices are restored here.

    ``node_free``: the caller knows no other process runs as ``node`` (a worker started again
    after its predecessor died), so startup does not wait to find out
    (:meth:`~imc_actors.actors.leases.LeaseKeeper.ensure_alone`).

    Raises :class:`~imc_actors.config.ConfigError` for a ``config`` that
    :meth:`Config.validate` refuses, before anything starts, and
    :class:`~imc_actors.store.instance.DatabaseInUse` when another process (or conference)
    serves the same database in a way this one cannot share it with: two without a node
    name, or one without and nodes (:mod:`imc_actors.store.instance`).
    """
    config.validate()  # a Config built directly is checked here (inf seconds ended the run)
    if repository is None:
        repository = await trio.to_thread.run_sync(open_repository, config)
    store = Store(repository, db_timeout=config.db_timeout, inline=config.sqlite_inline)
    policy = Policy(
        start_char=config.imc_cmd_start_char[0],
        check_on_create=config.check_on_create,
        owner_leave=config.owner_leave,
        max_members=config.max_members,
        max_bans=config.max_bans,
        history_max=config.history_max if hasattr(repository, "load_history") else 0,
        history_on_join=config.history_on_join,
        history_lines_max=config.history_lines_max,
    )
    router = sender if isinstance(sender, NoticeRouter) else NoticeRouter(sender)
    lock = _serving_lock(repository, config)
    if lock is not None:  # one process without a node name, or nodes only (store.instance)
        await trio.to_thread.run_sync(lock.acquire)
    try:
        async with _running(
            config, store, router, policy, apply, wrap_sender, wrap_store, home, handoff,
            node_free, lock,
        ) as conference:  # fmt: skip
            yield conference
    finally:
        router.close()
        if lock is not None:  # after the leases were handed over
            lock.release()


async def _same_room_tables(store: Store, config: Config, rooms: list[RoomState]) -> None:
    """Raise :class:`DatabaseInUse` when another live node holds leases of rooms that are
    not in this node's rooms table (``rooms``, as just loaded): it uses other room tables on
    the same lease and node tables, and each would recreate the other's rooms (a private one
    as public, its owners mixed) instead of forwarding to it."""
    if not hasattr(store.repository, "foreign_rooms"):
        return  # a stand-in repository
    known = [room.key for room in rooms]
    strangers = await store.read(lambda repository: repository.foreign_rooms(known))
    if strangers:
        room, node = strangers[0]
        raise DatabaseInUse(
            f"node {node!r} serves rooms that are not in this node's rooms table "
            f"{config.rooms_table} (such as {room}): the nodes of a cluster must use the same "
            "room tables (rooms_table, members_table and the others) on the same lease_table"
        )


def _serving_lock(repository: Backend, config: Config) -> ServingLock | None:
    """The lock a conference on ``repository`` holds while it runs (a peewee repository's
    database, also behind a wrapper that passes its attributes on; none for other backends):
    shared for a node, else exclusive."""
    url = getattr(repository, "database_url", None)
    if not isinstance(url, DatabaseURL):
        return None
    node_table = getattr(repository, "node_table", config.node_table)
    return serving_lock(url, getattr(repository, "rooms_table", config.rooms_table), config.node, node_table)


async def _keep_lock(lock: ServingLock) -> None:
    """Keep a server database's lock connection alive (and the lock taken again after it was
    lost) while the conference runs. :class:`LockLost` (another process took the lock while
    its connection was down) ends the conference: two would split every room; any other
    failure is logged and the next check tries again."""
    while True:
        await trio.sleep(CHECK_INTERVAL)
        try:
            await trio.to_thread.run_sync(lock.check)
        except LockLost:  # the caller says so (serve: one line, exit 1)
            raise
        except Exception:  # noqa: BLE001 - the next check tries again
            log.exception("checking the database lock failed")


@asynccontextmanager
async def _running(
    config: Config,
    store: Store,
    router: NoticeRouter,
    policy: Policy,
    apply: ApplyFn | None,
    wrap_sender: Callable[[Sender], Sender] | None,
    wrap_store: Callable[[Committer], Committer] | None,
    home: Callable[[str], str] | None = None,
    handoff: HandoffTarget | None = None,
    node_free: bool = False,
    lock: ServingLock | None = None,
) -> AsyncIterator[Conference]:
    # ownership (issue 13): with a node name, hold the rooms' leases while serving them
    keeper = (
        LeaseKeeper(store, config.lease_ttl, node_free=node_free)
        if config.node is not None and hasattr(store.repository, "acquire") else None
    )  # fmt: skip
    try:
        async with _serving(
            config, store, router, policy, apply, wrap_sender, wrap_store, keeper, home, handoff,
            lock,
        ) as conference:  # fmt: skip
            yield conference
    finally:
        if keeper is not None:  # the store has stopped writing: hand the rooms over at once
            with trio.CancelScope(shield=True):
                await keeper.release()


@asynccontextmanager
async def _serving(
    config: Config,
    store: Store,
    router: NoticeRouter,
    policy: Policy,
    apply: ApplyFn | None,
    wrap_sender: Callable[[Sender], Sender] | None,
    wrap_store: Callable[[Committer], Committer] | None,
    keeper: LeaseKeeper | None,
    home: Callable[[str], str] | None = None,
    handoff: HandoffTarget | None = None,
    lock: ServingLock | None = None,
) -> AsyncIterator[Conference]:
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        if lock is not None and lock.on_server:
            nursery.start_soon(_keep_lock, lock)
        delivery = Delivery(
            wrap_sender(router) if wrap_sender is not None else router,
            store=store if hasattr(store.repository, "load_pending") else None,
            window=config.delivery_window,
            burst=config.delivery_burst,
            member_queue=config.delivery_member_queue,
            queue_size=config.delivery_queue,
            queue_bytes=config.delivery_queue_bytes,
            max_in_flight=config.max_deliveries,
            pending_max=config.pending_max,
            pending_total_max=config.pending_total_max,
            pending_ttl=config.pending_ttl,
            pending_retry=config.pending_retry,
            overdue=config.delivery_overdue,
        )
        supervisor = Supervisor(
            store=wrap_store(store) if wrap_store is not None else store,
            delivery=delivery,
            policy=policy,
            hash_size=config.hash_size,
            mailbox_size=config.mailbox_size,
            restart_limit=config.restart_limit,
            restart_window=config.restart_window,
            apply=apply if apply is not None else room_apply,
            reader=store if policy.history_max > 0 else None,
        )
        delivery.on_outcome = supervisor.on_delivery
        delivery.handoff = handoff
        rooms = await store.load_rooms()
        if keeper is not None:  # leases first, then the state they guard
            await keeper.ensure_alone()
            await _same_room_tables(store, config, rooms)
            mine = rooms if home is None else [r for r in rooms if home(r.name) == config.node]
            ours = {room.key for room in mine} - set(await keeper.acquire(mine))
            await keeper.advertise([])  # a node without SIP sockets; the server names its own
            # only the rooms this node holds: the others' would count in its metrics and
            # max_rooms (their requests are forwarded; a takeover loads a room when it comes)
            rooms = [room for room in await store.load_rooms() if room.key in ours]
        supervisor.load(rooms)
        await delivery.restore()
        await nursery.start(delivery.run)
        await nursery.start(supervisor.run)
        if policy.history_max > 0 and config.history_days > 0:
            nursery.start_soon(expire_history, store, config.history_days)
        conference = Conference(config, supervisor, delivery, router, store)
        conference._serving_lock = lock
        conference.leases = keeper
        conference.home = home if keeper is not None else None
        if keeper is not None:
            conference.cluster = ClusterView(store, config.cluster_view_age)
        conference._nursery = nursery
        if keeper is not None:
            await nursery.start(keeper.run, conference._lost, conference._orphans)
        try:
            yield conference
            with trio.move_on_after(SHUTDOWN_GRACE):  # notices already queued still go out
                await delivery.drain()
        finally:
            conference._closed = True
            nursery.cancel_scope.cancel()
